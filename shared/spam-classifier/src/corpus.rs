//! Labeled corpora in the `label<TAB>text` format of the SMS Spam Collection.
//!
//! One example per line: the label `ham` or `spam` (any case), a tab, then the text (which may itself contain
//! tabs). A first line `label<TAB>text` is a header and skipped; so are empty lines. `\r\n` line ends are accepted.

use std::path::{Path, PathBuf};

/// Why a corpus could not be loaded. Line numbers count from 1, header included.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The file could not be read.
    #[error("cannot read corpus {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not valid UTF-8.
    #[error("line {line}: not valid UTF-8")]
    InvalidUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// A line has no tab between label and text.
    #[error("line {line}: expected `label<TAB>text`, found no tab")]
    MissingTab {
        /// 1-based line number.
        line: usize,
    },
    /// A line's label is neither `ham` nor `spam`.
    #[error("line {line}: unknown label {label:?}, expected `ham` or `spam`")]
    BadLabel {
        /// 1-based line number.
        line: usize,
        /// The label found (at most 40 characters of it).
        label: String,
    },
}

/// Reads a corpus file; each example is `(is_spam, text)`.
pub fn load_tsv(path: impl AsRef<Path>) -> Result<Vec<(bool, String)>, CorpusError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| CorpusError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_tsv(&bytes)
}

/// Parses corpus text (the contents of a `.tsv` file); see [`load_tsv`].
pub fn parse_tsv(bytes: &[u8]) -> Result<Vec<(bool, String)>, CorpusError> {
    let mut examples = Vec::new();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(raw).map_err(|_| CorpusError::InvalidUtf8 { line })?;
        let (label, body) = text
            .split_once('\t')
            .ok_or(CorpusError::MissingTab { line })?;
        let is_spam = if label.eq_ignore_ascii_case("spam") {
            true
        } else if label.eq_ignore_ascii_case("ham") {
            false
        } else if line == 1 && label.eq_ignore_ascii_case("label") {
            continue;
        } else {
            return Err(CorpusError::BadLabel {
                line,
                label: label.chars().take(40).collect(),
            });
        };
        examples.push((is_spam, body.to_owned()));
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_crlf_tabs_and_blank_lines() {
        let corpus =
            parse_tsv(b"label\ttext\r\nham\thi\tthere\r\n\nSPAM\tWIN \xc2\xa3100\nham\t\n")
                .unwrap();
        assert_eq!(
            corpus,
            [
                (false, "hi\tthere".to_owned()),
                (true, "WIN £100".to_owned()),
                (false, String::new())
            ]
        );
        assert!(parse_tsv(b"").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert!(matches!(
            parse_tsv(b"ham\tok\nspam no tab\n"),
            Err(CorpusError::MissingTab { line: 2 })
        ));
        match parse_tsv(b"label\ttext\nham\tok\nphish\tx") {
            Err(CorpusError::BadLabel { line: 3, label }) => assert_eq!(label, "phish"),
            other => panic!("unexpected {other:?}"),
        }
        // A header is only allowed on the first line.
        assert!(matches!(
            parse_tsv(b"ham\tok\nlabel\ttext"),
            Err(CorpusError::BadLabel { line: 2, .. })
        ));
        assert!(matches!(
            parse_tsv(b"ham\tok\nham\t\xff\xfe"),
            Err(CorpusError::InvalidUtf8 { line: 2 })
        ));
    }

    #[test]
    fn missing_file_is_an_io_error_with_the_path() {
        let err = load_tsv("/nonexistent/corpus.tsv").unwrap_err();
        assert!(matches!(err, CorpusError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/corpus.tsv"), "{err}");
    }
}
