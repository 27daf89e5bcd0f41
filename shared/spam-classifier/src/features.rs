//! Feature extraction: one pass over the text that hashes every feature on the fly and hands its 64-bit hash to a
//! [`Sink`], without allocating (the description closure is only called by sinks that explain).
//!
//! Features (each occurrence counts 1; the model divides the sum by the square root of the number of occurrences,
//! which puts short and long messages on one scale):
//! - words: maximal runs of letters and digits, lower-cased, apostrophes inside dropped (`don't` -> `dont`);
//! - number shapes: a word of only digits also yields `<phone>` (10+ digits), `<longnum>` (7-9), `<shortcode>`
//!   (5-6) or `<num>` (1-4); a word mixing letters and digits (`150p`, `b4`) also yields `<alnum>`; a number right
//!   after a currency sign (`£100`) also yields `<money>`; a word of two or more capitals only yields `<allcaps>`;
//! - word bigrams, over words with numbers replaced by their shape (`call <phone>`);
//! - character 3-, 4- and 5-grams of the lower-cased text with whitespace runs collapsed to one space and a space
//!   added at both ends (so `" fre"` marks a word start);
//! - each punctuation or symbol character (`!`, `£`, `&`);
//! - message length in characters and count of digits, bucketed;
//! - each non-zero link-check signal of [`crate::links`].
//!
//! Hashing is FNV-1a over code points, finished with the MurmurHash3 64-bit mixer; each kind of feature has its
//! own seed so a word cannot collide with the character gram of the same text except by chance. The hash is
//! fixed here, not `std`'s, because a model file stores weights by hash bucket.

use crate::links::LinkStats;

/// Version of the feature definition; stored in model files, which must be retrained when it changes.
pub(crate) const FEATURE_SET: u8 = 1;

/// Receives the features of one message.
pub(crate) trait Sink {
    /// One occurrence of the feature with this hash; `describe` names it for people (only explainers call it).
    fn emit(&mut self, hash: u64, describe: impl FnOnce() -> String);
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const SEED_WORD: u64 = 0xcbf2_9ce4_8422_2325;
const SEED_BIGRAM: u64 = 0x9e37_79b9_7f4a_7c15;
const SEED_CHARS: u64 = 0x6a09_e667_f3bc_c908;
const SEED_PUNCT: u64 = 0xbb67_ae85_84ca_a73b;
const SEED_NAMED: u64 = 0x3c6e_f372_fe94_f82b;

#[inline(always)]
fn step(h: u64, c: u32) -> u64 {
    (h ^ u64::from(c)).wrapping_mul(FNV_PRIME)
}

/// MurmurHash3's 64-bit finaliser: spreads the FNV state over all bits before the bucket mask.
#[inline(always)]
const fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A feature with a fixed name, hashed at compile time.
#[derive(Clone, Copy)]
struct Named {
    hash: u64,
    desc: &'static str,
}

impl Named {
    const fn new(desc: &'static str) -> Self {
        let bytes = desc.as_bytes();
        let mut h = SEED_NAMED;
        let mut i = 0;
        while i < bytes.len() {
            h = (h ^ bytes[i] as u64).wrapping_mul(FNV_PRIME);
            i += 1;
        }
        Self { hash: mix(h), desc }
    }

    #[inline(always)]
    fn emit(self, sink: &mut impl Sink) {
        sink.emit(self.hash, || self.desc.to_owned());
    }
}

const PHONE: Named = Named::new("<phone>");
const LONGNUM: Named = Named::new("<longnum>");
const SHORTCODE: Named = Named::new("<shortcode>");
const NUM: Named = Named::new("<num>");
const ALNUM: Named = Named::new("<alnum>");
const MONEY: Named = Named::new("<money>");
const ALLCAPS: Named = Named::new("<allcaps>");

const LENGTH_BUCKETS: [(u32, Named); 9] = [
    (10, Named::new("length <10 chars")),
    (25, Named::new("length 10-24 chars")),
    (50, Named::new("length 25-49 chars")),
    (80, Named::new("length 50-79 chars")),
    (110, Named::new("length 80-109 chars")),
    (140, Named::new("length 110-139 chars")),
    (160, Named::new("length 140-159 chars")),
    (200, Named::new("length 160-199 chars")),
    (u32::MAX, Named::new("length 200+ chars")),
];

const DIGIT_BUCKETS: [(u32, Named); 6] = [
    (1, Named::new("no digits")),
    (3, Named::new("1-2 digits")),
    (6, Named::new("3-5 digits")),
    (10, Named::new("6-9 digits")),
    (20, Named::new("10-19 digits")),
    (u32::MAX, Named::new("20+ digits")),
];

const LINK_SIGNALS: [Named; 7] = [
    Named::new("link url"),
    Named::new("link url_shortener"),
    Named::new("link ip_host"),
    Named::new("link suspicious_tld"),
    Named::new("link punycode_host"),
    Named::new("link non_ascii_host"),
    Named::new("link userinfo_in_url"),
];

fn bucket(value: u32, buckets: &[(u32, Named)]) -> Named {
    buckets
        .iter()
        .find(|&&(below, _)| value < below)
        .map_or(buckets[buckets.len() - 1].1, |&(_, named)| named)
}

/// How a word appears in a bigram: its own text, or its number shape.
#[derive(Clone, Copy)]
enum Term {
    Span(usize, usize),
    Named(&'static str),
}

impl Term {
    fn describe(self, text: &str) -> String {
        match self {
            Term::Span(start, end) => lower_word(&text[start..end]),
            Term::Named(name) => name.to_owned(),
        }
    }
}

/// The word as hashed: lower-cased, without apostrophes.
fn lower_word(word: &str) -> String {
    word.chars()
        .filter(|&c| !is_apostrophe(c))
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

fn is_currency(c: char) -> bool {
    matches!(c, '£' | '$' | '€' | '¥' | '₹' | '₤')
}

#[derive(Default)]
struct Word {
    start: usize,
    end: usize,
    hash: u64,
    chars: u32,
    digits: u32,
    upper: u32,
    lower: u32,
    after_currency: bool,
}

/// The last five characters of the normalised text, oldest first.
struct Window {
    buf: [u32; 5],
    len: usize,
}

impl Window {
    #[inline(always)]
    fn push(&mut self, c: char, sink: &mut impl Sink) {
        self.buf.copy_within(1..5, 0);
        self.buf[4] = u32::from(c);
        self.len = (self.len + 1).min(5);
        // Hash right to left so the 3-, 4- and 5-gram ending here share work; the length is mixed in at the end.
        let mut h = SEED_CHARS;
        for n in 1..=self.len {
            h = step(h, self.buf[5 - n]);
            if n >= 3 {
                let gram = self.buf;
                sink.emit(mix(h ^ n as u64), || {
                    let text: String = gram[5 - n..]
                        .iter()
                        .filter_map(|&c| char::from_u32(c))
                        .collect();
                    format!("chars {:?}", text.replace(' ', "_"))
                });
            }
        }
    }
}

/// Extracts the features of `text` into `sink`.
pub(crate) fn extract(text: &str, sink: &mut impl Sink) {
    let mut window = Window {
        buf: [0; 5],
        len: 0,
    };
    window.push(' ', sink);
    let mut in_space = true;
    let mut word: Option<Word> = None;
    let mut prev: Option<(u64, Term)> = None;
    let mut currency = false;
    let mut chars = 0u32;
    let mut digits = 0u32;

    for (i, c) in text.char_indices() {
        chars += 1;
        let space = c.is_whitespace();
        if space {
            if !in_space {
                window.push(' ', sink);
            }
        } else if c.is_ascii() {
            window.push(c.to_ascii_lowercase(), sink);
        } else {
            for lower in c.to_lowercase() {
                window.push(lower, sink);
            }
        }
        in_space = space;

        if c.is_alphanumeric() {
            let w = word.get_or_insert_with(|| Word {
                start: i,
                hash: SEED_WORD,
                after_currency: currency,
                ..Word::default()
            });
            w.end = i + c.len_utf8();
            w.chars += 1;
            if c.is_ascii_digit() {
                w.digits += 1;
                digits += 1;
            } else if c.is_uppercase() {
                w.upper += 1;
            } else if c.is_lowercase() {
                w.lower += 1;
            }
            if c.is_ascii() {
                w.hash = step(w.hash, u32::from(c.to_ascii_lowercase()));
            } else {
                for lower in c.to_lowercase() {
                    w.hash = step(w.hash, u32::from(lower));
                }
            }
            currency = false;
        } else if is_apostrophe(c) && word.is_some() {
            // Inside a word: `don't` is the word `dont`.
        } else {
            if let Some(w) = word.take() {
                finish_word(text, &w, &mut prev, sink);
            }
            currency = is_currency(c);
            if !space {
                let h = mix(step(SEED_PUNCT, u32::from(c)));
                sink.emit(h, || format!("symbol {c:?}"));
            }
        }
    }
    if let Some(w) = word.take() {
        finish_word(text, &w, &mut prev, sink);
    }
    if !in_space {
        window.push(' ', sink);
    }

    bucket(chars, &LENGTH_BUCKETS).emit(sink);
    bucket(digits, &DIGIT_BUCKETS).emit(sink);
    let links = LinkStats::of(text);
    for ((_, count, _), named) in links.all().into_iter().zip(LINK_SIGNALS) {
        if count > 0 {
            named.emit(sink);
        }
    }
}

fn finish_word(text: &str, w: &Word, prev: &mut Option<(u64, Term)>, sink: &mut impl Sink) {
    let span = Term::Span(w.start, w.end);
    let raw = mix(w.hash);
    sink.emit(raw, || format!("word {:?}", span.describe(text)));
    let term = if w.digits == 0 {
        if w.upper >= 2 && w.lower == 0 {
            ALLCAPS.emit(sink);
        }
        (raw, span)
    } else if w.digits == w.chars {
        let shape = match w.digits {
            10.. => PHONE,
            7..=9 => LONGNUM,
            5 | 6 => SHORTCODE,
            _ => NUM,
        };
        shape.emit(sink);
        (shape.hash, Term::Named(shape.desc))
    } else {
        ALNUM.emit(sink);
        (raw, span)
    };
    if w.digits > 0 && w.after_currency {
        MONEY.emit(sink);
    }
    if let Some((prev_hash, prev_term)) = *prev {
        let h = mix(prev_hash.rotate_left(23) ^ term.0 ^ SEED_BIGRAM);
        sink.emit(h, || {
            format!(
                "bigram \"{} {}\"",
                prev_term.describe(text),
                term.1.describe(text)
            )
        });
    }
    *prev = Some(term);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<(u64, String)>);

    impl Sink for Collect {
        fn emit(&mut self, hash: u64, describe: impl FnOnce() -> String) {
            self.0.push((hash, describe()));
        }
    }

    fn features(text: &str) -> Vec<(u64, String)> {
        let mut sink = Collect(Vec::new());
        extract(text, &mut sink);
        sink.0
    }

    fn names(text: &str) -> Vec<String> {
        features(text).into_iter().map(|(_, d)| d).collect()
    }

    #[test]
    fn words_shapes_and_bigrams() {
        let names = names("Call 09061701461 now! £100 WIN");
        for expected in [
            "word \"call\"",
            "word \"09061701461\"",
            "<phone>",
            "bigram \"call <phone>\"",
            "bigram \"<phone> now\"",
            "symbol '!'",
            "symbol '£'",
            "<money>",
            "<num>",
            "<allcaps>",
            "chars \"_cal\"",
            "chars \"win_\"",
            "length 25-49 chars",
            "10-19 digits",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.starts_with("link")));
    }

    #[test]
    fn case_and_apostrophes_normalised() {
        let a = features("DON'T");
        let b = features("dont");
        assert_eq!(
            a.iter().find(|f| f.1 == "word \"dont\"").map(|f| f.0),
            b.iter().find(|f| f.1 == "word \"dont\"").map(|f| f.0)
        );
    }

    #[test]
    fn same_text_same_hashes_different_kinds_differ() {
        assert_eq!(features("free entry"), features("free entry"));
        let f = features("abc");
        let word = f.iter().find(|x| x.1 == "word \"abc\"").map(|x| x.0);
        let gram = f.iter().find(|x| x.1 == "chars \"abc\"").map(|x| x.0);
        assert!(word.is_some() && gram.is_some() && word != gram);
    }

    #[test]
    fn empty_and_unicode_text() {
        // Empty text still has its length and digit buckets (and the lone space is too short for a gram).
        assert_eq!(names(""), ["length <10 chars", "no digits"]);
        let names = names("Ça va? 😀 Привет");
        assert!(names.iter().any(|n| n == "word \"привет\""), "{names:?}");
        assert!(names.iter().any(|n| n == "symbol '😀'"), "{names:?}");
        assert!(names.iter().any(|n| n == "chars \"ça_\""), "{names:?}");
    }

    #[test]
    fn random_text_never_panics() {
        let palette: Vec<char> = "aZ09 \t\n.'’£$!&İǅﬃß\u{431}😀\u{0}\u{301}"
            .chars()
            .collect();
        let mut rng = crate::rng::SplitMix64::new(5);
        for _ in 0..5_000 {
            let len = rng.below(16);
            let text: String = (0..len)
                .map(|_| palette[rng.below(palette.len())])
                .collect();
            // `Collect` also runs every description.
            assert!(features(&text).len() >= 2, "{text:?}");
        }
    }

    #[test]
    fn links_become_features() {
        let names = names("go to bit.ly/x");
        assert!(names.iter().any(|n| n == "link url"));
        assert!(names.iter().any(|n| n == "link url_shortener"));
    }
}
