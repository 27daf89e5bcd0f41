//! When a scenario loses a message, where it went: every pipeline stream
//! and the offline store are searched for the lost sequence numbers (the
//! load generator's client message id `lt.<run>.<seq>.<sent_us>` is in
//! every copy of the message, in clear, E2EE or not), and the stage
//! consumers' state is read, so a failure explains itself: still in
//! `INTEROP_INGEST` (not routed yet, or routed and its ack lost), in the
//! store but not pushed, or nowhere (never stored). The store
//! (`INTEROP_INBOX`, or each `INTEROP_INBOX_<i>` with `--inbox-partitions`
//! above 1; tens of thousands of messages after a few scenarios) is
//! searched by the run's recipients' subjects, each read whole in the
//! stream holding it, so the search does not stop at a stream's size.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use async_nats::jetstream;

use interop_bus::inbox::{existing_store_streams, is_store_stream, stream_holding};
use interop_bus::recipient_path;
use interop_bus::subjects::{
    delivery_queued, CONSUMER_MEDIA_TRANSCODING, CONSUMER_ROUTING, STREAM_INGEST, STREAM_MEDIA,
    STREAM_QUARANTINE,
};
use interop_loadtest::plan::RunId;

/// Most messages read from one stream (the inspection is for a failure
/// message; a bigger stream is reported as not searched through).
const MAX_SCAN: u64 = 50_000;

/// A report of where the messages `seqs` of load run `run` are in the
/// streams behind `nats_urls` (comma-separated), and of the stage
/// consumers' state. Never panics: what cannot be read is said so.
pub async fn where_are(nats_urls: &str, run: RunId, seqs: &[u64], recipients: &[String]) -> String {
    match tokio::time::timeout(
        Duration::from_secs(120),
        inspect(nats_urls, run, seqs, recipients),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("(cannot inspect the streams: {e})"),
        Err(_) => "(inspecting the streams took over 120 s; gave up)".to_owned(),
    }
}

async fn inspect(
    nats_urls: &str,
    run: RunId,
    seqs: &[u64],
    recipients: &[String],
) -> anyhow::Result<String> {
    let client = async_nats::ConnectOptions::new()
        .name("faults-inspect")
        .connect(interop_bus::server_list(nats_urls))
        .await?;
    let js = jetstream::new(client);
    let needles: Vec<(u64, Vec<u8>)> = seqs
        .iter()
        .map(|s| (*s, format!("lt.{run}.{s}.").into_bytes()))
        .collect();
    let mut out = String::new();
    let mut found: Vec<(u64, String)> = Vec::new();
    let mut names: Vec<String> = [STREAM_INGEST, STREAM_MEDIA, STREAM_QUARANTINE]
        .map(str::to_owned)
        .to_vec();
    match existing_store_streams(&js).await {
        Ok(store) => names.extend(store),
        Err(e) => writeln!(out, "  the store's streams: cannot list ({e})")?,
    }
    for name in &names {
        let name = name.as_str();
        let mut stream = match js.get_stream(name).await {
            Ok(s) => s,
            Err(e) => {
                writeln!(out, "  {name}: cannot read ({e})")?;
                continue;
            }
        };
        let info = stream.info().await?.clone();
        let st = &info.state;
        let leader = info.cluster.as_ref().and_then(|c| c.leader.clone());
        writeln!(
            out,
            "  {name}: {} messages, seq {}..={}, leader {leader:?}",
            st.messages, st.first_sequence, st.last_sequence
        )?;
        if st.messages == 0 {
            continue;
        }
        if is_store_stream(name) {
            // By the run's recipients' subjects: each holds only this run's
            // messages to them (and receipts), however big the stream.
            for recipient in recipients {
                let subject = delivery_queued(&recipient_path(recipient));
                match stream_holding(&js, &subject).await {
                    Ok(holder) if holder == name => {}
                    _ => continue,
                }
                let read = search_subject(&stream, name, &subject, &needles, &mut found).await;
                match read {
                    Ok(n) => writeln!(out, "    {recipient} ({subject}): {n} messages searched")?,
                    Err(e) => writeln!(out, "    {recipient} ({subject}): cannot read ({e})")?,
                }
            }
            continue;
        }
        if st.last_sequence - st.first_sequence >= MAX_SCAN {
            writeln!(out, "    (too many to search)")?;
            continue;
        }
        // The last message seen on each subject: (seq, stored at).
        let mut previous: HashMap<String, (u64, String)> = HashMap::new();
        for seq in st.first_sequence..=st.last_sequence {
            // Deleted (acked from a work queue) sequences are gaps.
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let at = m.time.to_string();
            for (lost, needle) in &needles {
                if contains(&m.payload, needle) {
                    let before = previous
                        .get(m.subject.as_str())
                        .map_or_else(|| "none".to_owned(), |(s, t)| format!("seq {s} at {t}"));
                    found.push((
                        *lost,
                        format!(
                            "{name} seq {seq} stored at {at} (subject {}; the message before on it: {before})",
                            m.subject
                        ),
                    ));
                }
            }
            previous.insert(m.subject.to_string(), (seq, at));
        }
    }
    writeln!(out, "  where the lost messages are:")?;
    for (lost, _) in &needles {
        let at: Vec<&str> = found
            .iter()
            .filter(|(s, _)| s == lost)
            .map(|(_, w)| w.as_str())
            .collect();
        if at.is_empty() {
            writeln!(out, "    seq {lost}: in no stream")?;
        } else {
            writeln!(out, "    seq {lost}: {}", at.join("; "))?;
        }
    }
    for (stream, consumer) in [
        (STREAM_INGEST, CONSUMER_ROUTING),
        (STREAM_MEDIA, CONSUMER_MEDIA_TRANSCODING),
    ] {
        let s = js.get_stream(stream).await?;
        match s.consumer_info(consumer).await {
            Ok(c) => writeln!(
                out,
                "  consumer {consumer}: delivered stream seq {}, ack floor stream seq {}, ack pending {}, redelivered {}, pending {}, waiting pulls {}, leader {:?}",
                c.delivered.stream_sequence,
                c.ack_floor.stream_sequence,
                c.num_ack_pending,
                c.num_redelivered,
                c.num_pending,
                c.num_waiting,
                c.cluster.as_ref().and_then(|c| c.leader.clone()),
            )?,
            Err(e) => writeln!(out, "  consumer {consumer}: cannot read ({e})")?,
        }
    }
    Ok(out)
}

/// Reads every message on `subject` of `stream`, one after the other
/// (`next_by_subj`, nats-server 2.9), noting where each needle is; how
/// many it read.
async fn search_subject(
    stream: &jetstream::stream::Stream,
    name: &str,
    subject: &str,
    needles: &[(u64, Vec<u8>)],
    found: &mut Vec<(u64, String)>,
) -> anyhow::Result<u64> {
    use jetstream::stream::RawMessageErrorKind;
    let mut next = 1u64;
    let mut read = 0u64;
    let mut previous: Option<(u64, String)> = None;
    loop {
        let m = match stream.get_first_raw_message_by_subject(subject, next).await {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(e.into()),
        };
        let (seq, at) = (m.sequence, m.time.to_string());
        for (lost, needle) in needles {
            if contains(&m.payload, needle) {
                let before = previous
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |(s, t)| format!("seq {s} at {t}"));
                found.push((
                    *lost,
                    format!("{name} seq {seq} stored at {at} (subject {subject}; the message before on it: {before})"),
                ));
            }
        }
        previous = Some((seq, at));
        read += 1;
        next = seq + 1;
    }
    Ok(read)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::contains;

    #[test]
    fn finds_a_client_message_id_in_bytes() {
        assert!(contains(b"\x0a\x10lt.000042.17.123", b"lt.000042.17."));
        assert!(!contains(b"lt.000042.171.123", b"lt.000042.17."));
        assert!(!contains(b"", b"lt."));
    }
}
