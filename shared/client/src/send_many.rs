//! (Of the `interop` binary.) `interop send-many`: messages read as JSON
//! lines, sent in transactions of up to the gateway's limit
//! (`Welcome.max_transaction_items`, 256), one answer printed per line.

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use interop_client::transaction::{self, send_item, TransactionOutcome};
use interop_client::SendOutcome;
use interop_proto::v1::{envelope::Content, Ciphertext, Encryption, Envelope, Text};
use interop_proto::Address;

use crate::{usage, Ctx, EXIT_OK, EXIT_REFUSED};

/// One line of the input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    group: String,
    text: Option<String>,
    ciphertext_b64: Option<String>,
    client_message_id: Option<String>,
}

/// The envelopes of `input`'s non-empty lines, with their line numbers
/// (from 1), and the provider of their senders; a usage error names the
/// first bad line.
fn parse(input: &str) -> anyhow::Result<(String, Vec<(u64, Envelope)>)> {
    let mut provider: Option<String> = None;
    let mut out = Vec::new();
    for (i, raw) in input.lines().enumerate() {
        let n = i as u64 + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |what: String| usage(format!("line {n}: {what}"));
        let line: Line = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let from = Address::parse(&line.from)
            .map_err(|e| bad(format!("{:?} is not an address: {e}", line.from)))?;
        match &provider {
            None => provider = Some(from.provider().to_owned()),
            Some(p) if p != from.provider() => {
                return Err(bad(format!(
                    "every sender must be a user of one provider ({p}), not {:?}",
                    from.provider()
                )))
            }
            Some(_) => {}
        }
        if line.to.is_empty() == line.group.is_empty() {
            return Err(bad("give either \"to\" or \"group\"".to_owned()));
        }
        let (encryption, content) = match (line.text, line.ciphertext_b64) {
            (Some(body), None) => (Encryption::TransportOnly, Content::Text(Text { body })),
            (None, Some(b64)) => {
                let payload = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| bad("\"ciphertext_b64\" is not base64".to_owned()))?;
                (
                    Encryption::E2ee,
                    Content::Ciphertext(Ciphertext {
                        scheme: "opaque".into(),
                        payload: payload.into(),
                        ..Default::default()
                    }),
                )
            }
            _ => return Err(bad("give either \"text\" or \"ciphertext_b64\"".to_owned())),
        };
        out.push((
            n,
            Envelope {
                client_message_id: line
                    .client_message_id
                    .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                from: line.from,
                to: line.to,
                group_id: line.group,
                encryption: encryption as i32,
                sent_at_ms: interop_proto::now_ms(),
                content: Some(content),
                ..Default::default()
            },
        ));
    }
    let provider = provider.ok_or_else(|| usage("no messages in the input"))?;
    Ok((provider, out))
}

/// `interop send-many --file FILE` (`-`: stdin).
pub(crate) async fn send_many(
    ctx: &Ctx,
    file: &Path,
    ingest_url: Option<String>,
) -> anyhow::Result<i32> {
    let input = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?
    };
    let (_provider, lines) = parse(&input)?;
    // Any sender: they all authenticate as the same provider.
    let sender = ctx.sender(&lines[0].1.from, ingest_url).await?;
    let max = sender.max_transaction_items();
    anyhow::ensure!(max > 0, "this gateway takes no transactions");
    let mut code = EXIT_OK;
    for chunk in transaction::split(lines, max) {
        // Each item's request id is its line number, echoed in its answer.
        let items = chunk
            .iter()
            .map(|(n, env)| send_item(*n, env.clone()))
            .collect();
        match sender.transact(items).await? {
            TransactionOutcome::Answered(answers) => {
                for ((n, _), answer) in chunk.iter().zip(answers) {
                    let outcome = transaction::send_outcome(answer)?;
                    if matches!(outcome, SendOutcome::Rejected(_)) {
                        code = EXIT_REFUSED;
                    }
                    let mut v = crate::send_answer(&outcome);
                    v["line"] = json!(n);
                    ctx.out.print(&v);
                }
            }
            // The whole transaction: every line of it.
            TransactionOutcome::Rejected(r) => {
                code = EXIT_REFUSED;
                for (n, _) in &chunk {
                    let mut v = crate::send_answer(&SendOutcome::Rejected(r.clone()));
                    v["line"] = json!(n);
                    ctx.out.print(&v);
                }
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_envelopes_with_their_line_numbers() {
        let input = r#"{"from": "signal:alice", "to": "home:+4915112345678", "text": "hi", "client_message_id": "c-1"}

{"from": "signal:bob", "group": "g-0123456789abcdef0123456789abcdef", "ciphertext_b64": "AAEC"}
"#;
        let (provider, lines) = parse(input).expect("valid");
        assert_eq!(provider, "signal");
        assert_eq!(
            lines.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [1, 3],
            "blank lines are skipped, numbers kept"
        );
        let (_, first) = &lines[0];
        assert_eq!(first.client_message_id, "c-1");
        assert_eq!(first.to, "home:+4915112345678");
        assert_eq!(first.encryption, Encryption::TransportOnly as i32);
        let (_, second) = &lines[1];
        assert!(!second.client_message_id.is_empty(), "a fresh id");
        assert_eq!(second.encryption, Encryption::E2ee as i32);
        assert!(
            matches!(&second.content, Some(Content::Ciphertext(c)) if c.payload.as_ref() == [0, 1, 2])
        );
    }

    #[test]
    fn bad_lines_are_usage_errors_naming_the_line() {
        let err = |input: &str| {
            let e = parse(input).expect_err("refused");
            assert_eq!(crate::exit_code(&e), crate::EXIT_USAGE, "{e}");
            e.to_string()
        };
        let ok = r#"{"from": "signal:alice", "to": "home:+4915112345678", "text": "hi"}"#;
        assert!(err(&format!("{ok}\nnot json")).starts_with("line 2:"));
        assert!(err(&format!(
            "{ok}\n{}",
            r#"{"from": "telegram:carol", "to": "home:+4915112345678", "text": "hi"}"#
        ))
        .contains("one provider"));
        assert!(err(r#"{"from": "signal:alice", "text": "hi"}"#).contains("\"to\" or \"group\""));
        assert!(
            err(r#"{"from": "signal:alice", "to": "home:+4915112345678"}"#)
                .contains("\"text\" or \"ciphertext_b64\"")
        );
        assert!(
            err(r#"{"from": "signal:alice", "to": "x", "text": "hi", "colour": 1}"#)
                .contains("unknown field")
        );
        assert!(err("").contains("no messages"));
    }
}
