//! Records what happens to every message: sends, answers, deliveries and
//! receipts, into HdrHistograms and per-second buckets.
//!
//! Latency is from the message's **intended** send time (the open-loop
//! schedule) to its arrival at the recipient's session. The same deliveries
//! are also recorded from the **actual** send time (stamped into the client
//! message id) as "uncorrected" latency, which is what a naive tester would
//! report; the difference between the two shows the generator or the
//! gateway holding messages back.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;

use interop_proto::v1::RejectCode;

use crate::ledger::{Ledger, Mark};
use crate::plan::{Origin, Plan};
use crate::schedule::Schedule;

/// Largest latency recorded exactly (larger values are clamped): 1 hour.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in µs, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // Constant bounds that satisfy the crate's rules (low >= 1, high >= 2 *
    // low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid constant bounds")
}

fn second_histogram() -> Histogram<u32> {
    // As above, with 2 significant digits to keep one per second small.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid constant bounds")
}

/// How the gateway answered a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    Rejected(RejectCode),
    /// No answer: the connection failed first.
    Unanswered,
}

/// A receipt's status, as far as the load test cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    Failed(RejectCode),
    Other,
}

/// One second of the run (by offset from the start).
#[derive(Debug, Clone, Default)]
pub struct Second {
    /// Messages actually sent in this second.
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    /// First deliveries received in this second.
    pub delivered: u64,
    /// Latency of messages *intended* in this second (measured ones).
    pub latency: Option<Histogram<u32>>,
}

/// Per measured step.
#[derive(Debug, Clone)]
pub struct StepStats {
    pub latency: Histogram<u64>,
    /// First deliveries received while the step ran.
    pub delivered_in_window: u64,
}

/// Everything counted, behind one lock.
#[derive(Debug, Clone)]
pub struct Stats {
    pub corrected: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
    /// Intended send time to `Accepted`.
    pub accept: Histogram<u64>,
    /// Intended send time to the sender's `DELIVERED` receipt.
    pub receipt: Histogram<u64>,
    pub steps: Vec<StepStats>,
    pub seconds: Vec<Second>,
    pub sent: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    pub unanswered: u64,
    pub failed: BTreeMap<&'static str, u64>,
    pub receipts_delivered: u64,
    /// First deliveries of messages whose sender has a receipt session.
    pub tracked_delivered: u64,
    /// Deliveries that are not messages of this run.
    pub foreign: u64,
    /// Receipts for messages that were already receipted.
    pub duplicate_receipts: u64,
    pub spam: SpamStats,
    pub first_contacts: FirstContactStats,
    pub groups: GroupStats,
    pub media: MediaStats,
    /// Set-up's uploads of the media pool, each.
    pub media_upload: Histogram<u64>,
    /// Recipients' downloads of delivered media (`mix.fetch_media`), each.
    pub media_download: Histogram<u64>,
    /// Session or connection failures (each reconnected).
    pub connection_errors: u64,
    /// Per sender and recipient (`order_key`), the highest sequence number
    /// delivered so far: a sender's messages to one recipient are numbered
    /// in the order they were sent, on one ingest connection.
    pub last_delivered: HashMap<(u64, u32), u64>,
    /// First deliveries of an accepted message after a later one of the
    /// same sender to the same recipient: what a user would see out of
    /// order, against the order the gateway promises (that of its
    /// `Accepted` answers, docs/protocol.md).
    pub out_of_order: u64,
    /// The same for a send that was not accepted (refused `UNAVAILABLE`
    /// when the store did not acknowledge in time, yet stored):
    /// docs/protocol.md says such a send may have been stored, and it has
    /// no place in the order of the `Accepted` answers.
    pub out_of_order_unaccepted: u64,
    /// The first few of `out_of_order` (at most [`ORDER_SAMPLE`]), to look
    /// up in the services' logs.
    pub out_of_order_sample: Vec<OrderBreak>,
}

/// How many out-of-order deliveries a report shows in detail.
pub const ORDER_SAMPLE: usize = 10;

/// An accepted message that reached its app after a later one of the same
/// sender to the same recipient. Times are milliseconds since the run's
/// start: when each was planned to be sent, and when the first came.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OrderBreak {
    pub seq: u64,
    /// The later message delivered before it (the highest of the pair so
    /// far).
    pub after_seq: u64,
    pub planned_ms: u64,
    pub after_planned_ms: u64,
    pub delivered_ms: u64,
}

/// The sender of `from`, as a key for the per-pair order check (group
/// messages are not checked: they arrive as copies).
fn order_key(from: Origin) -> Option<u64> {
    match from {
        Origin::Normal(i) => Some(u64::from(i)),
        Origin::Spammer(i) => Some((1 << 32) | u64::from(i)),
        Origin::GroupAdmin(_) => None,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SpamStats {
    pub sent: u64,
    pub accepted: u64,
    /// Reached a recipient's inbox.
    pub reached_inboxes: u64,
    /// Refused with a `FAILED`/`SPAM` receipt.
    pub refused_as_spam: u64,
    /// Of `reached_inboxes`: filed as message requests.
    pub reached_requests: u64,
}

/// Normal senders' first messages to strangers (`mix.first_contact_share`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FirstContactStats {
    pub sent: u64,
    pub accepted: u64,
    pub delivered: u64,
    /// Of `delivered`: filed as message requests (the usual for a first contact).
    pub as_requests: u64,
}

/// Messages to groups (`mix.group_share`) and their copies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct GroupStats {
    pub sent: u64,
    pub accepted: u64,
    /// Members' copies received (first time each).
    pub copies_delivered: u64,
}

/// Media messages (`mix.media_share`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MediaStats {
    pub sent: u64,
    pub accepted: u64,
    /// Blobs uploaded at set-up, and their bytes.
    pub pool_blobs: u64,
    pub pool_bytes: u64,
    /// Downloads by recipients that succeeded, and that failed.
    pub downloads: u64,
    pub download_errors: u64,
}

/// A short summary for the progress line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub now_us: u64,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub delivered: u64,
    /// Delivered in the last full second.
    pub delivered_last_s: u64,
    pub sent_last_s: u64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// The shared recorder of one run.
#[derive(Debug)]
pub struct Recorder {
    schedule: Schedule,
    plan: Arc<Plan>,
    pub ledger: Ledger,
    stats: Mutex<Stats>,
}

fn code_name(code: RejectCode) -> &'static str {
    code.as_str_name().trim_start_matches("REJECT_CODE_")
}

fn second_of(us: u64) -> usize {
    (us / 1_000_000) as usize
}

impl Stats {
    fn second(&mut self, us: u64) -> &mut Second {
        let i = second_of(us);
        if self.seconds.len() <= i {
            self.seconds.resize_with(i + 1, Second::default);
        }
        &mut self.seconds[i]
    }
}

impl Recorder {
    pub fn new(schedule: Schedule, plan: Arc<Plan>) -> Self {
        let steps = schedule
            .steps()
            .map(|_| StepStats {
                latency: latency_histogram(),
                delivered_in_window: 0,
            })
            .collect();
        let seconds = (0..=second_of(schedule.end_us()))
            .map(|_| Second::default())
            .collect();
        let copies = if plan.group_admins().is_empty() {
            0
        } else {
            plan.group_messages_upper_bound(schedule.total()) * u64::from(plan.members_per_group())
        };
        Self {
            ledger: Ledger::with_copies(schedule.total(), copies),
            schedule,
            plan,
            stats: Mutex::new(Stats {
                corrected: latency_histogram(),
                uncorrected: latency_histogram(),
                accept: latency_histogram(),
                receipt: latency_histogram(),
                steps,
                seconds,
                sent: 0,
                rejected: BTreeMap::new(),
                unanswered: 0,
                failed: BTreeMap::new(),
                receipts_delivered: 0,
                tracked_delivered: 0,
                foreign: 0,
                duplicate_receipts: 0,
                spam: SpamStats::default(),
                first_contacts: FirstContactStats::default(),
                groups: GroupStats::default(),
                media: MediaStats::default(),
                media_upload: latency_histogram(),
                media_download: latency_histogram(),
                connection_errors: 0,
                last_delivered: HashMap::new(),
                out_of_order: 0,
                out_of_order_unaccepted: 0,
                out_of_order_sample: Vec::new(),
            }),
        }
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        // A panic while holding the lock only happens in a bug of ours; the
        // counts are still usable, so take them.
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_spam(&self, seq: u64) -> bool {
        matches!(self.plan.at(seq).from, Origin::Spammer(_))
    }

    /// A copy of the counts so far.
    pub fn stats(&self) -> Stats {
        self.lock().clone()
    }

    /// Message `seq` went on the wire at `now_us`.
    pub fn sent(&self, seq: u64, now_us: u64) {
        let planned = self.plan.at(seq);
        let spam = matches!(planned.from, Origin::Spammer(_));
        let mut s = self.lock();
        s.sent += 1;
        s.spam.sent += u64::from(spam);
        s.first_contacts.sent += u64::from(planned.first_contact);
        s.groups.sent += u64::from(planned.group_ordinal.is_some());
        s.media.sent += u64::from(planned.media.is_some());
        s.second(now_us).sent += 1;
    }

    /// The gateway answered the send of `seq` at `now_us`.
    pub fn answered(&self, seq: u64, answer: Answer, now_us: u64) {
        let measured = self.schedule.is_measured(seq);
        let intended = self.schedule.offset_us(seq).unwrap_or(now_us);
        let planned = self.plan.at(seq);
        let spam = matches!(planned.from, Origin::Spammer(_));
        if answer == Answer::Accepted && self.ledger.accepted.mark(seq) != Mark::New {
            return;
        }
        let mut s = self.lock();
        match answer {
            Answer::Accepted => {
                s.second(now_us).accepted += 1;
                s.spam.accepted += u64::from(spam);
                s.first_contacts.accepted += u64::from(planned.first_contact);
                s.groups.accepted += u64::from(planned.group_ordinal.is_some());
                s.media.accepted += u64::from(planned.media.is_some());
                if measured {
                    s.accept.saturating_record(now_us.saturating_sub(intended));
                }
            }
            Answer::Rejected(code) => {
                s.second(now_us).rejected += 1;
                *s.rejected.entry(code_name(code)).or_default() += 1;
            }
            Answer::Unanswered => s.unanswered += 1,
        }
    }

    /// Recipients' sessions received these messages (`(seq, actual send
    /// offset)`, as read from their client message ids) at `now_us`.
    /// Returns how many were duplicates.
    pub fn delivered(&self, batch: &[(u64, u64)], now_us: u64) -> u64 {
        self.delivered_filed(batch, &[], now_us)
    }

    /// Like [`Recorder::delivered`]; `requests[i]` says whether `batch[i]`
    /// was filed as a message request (missing entries: it was not).
    pub fn delivered_filed(&self, batch: &[(u64, u64)], requests: &[bool], now_us: u64) -> u64 {
        let mut s = self.lock();
        let mut duplicates = 0;
        for (i, &(seq, sent_us)) in batch.iter().enumerate() {
            let as_request = requests.get(i).copied().unwrap_or(false);
            if seq < self.schedule.total() && self.plan.at(seq).group_ordinal.is_some() {
                // Group messages arrive as copies (`delivered_copy`); one
                // without its group is not what was sent.
                s.foreign += 1;
                continue;
            }
            match self.ledger.deliver(seq) {
                Mark::OutOfRange => {
                    s.foreign += 1;
                    continue;
                }
                Mark::Duplicate => {
                    duplicates += 1;
                    continue;
                }
                Mark::New => {}
            }
            s.second(now_us).delivered += 1;
            let planned = self.plan.at(seq);
            if let Some(sender) = order_key(planned.from) {
                let pair = (sender, planned.to);
                let last = s.last_delivered.get(&pair).copied();
                if let Some(last) = last.filter(|&last| last > seq) {
                    // A later message of this pair reached the app first.
                    if self.ledger.was_accepted(seq) {
                        s.out_of_order += 1;
                        if s.out_of_order_sample.len() < ORDER_SAMPLE {
                            let ms = |seq| self.schedule.offset_us(seq).unwrap_or(0) / 1000;
                            s.out_of_order_sample.push(OrderBreak {
                                seq,
                                after_seq: last,
                                planned_ms: ms(seq),
                                after_planned_ms: ms(last),
                                delivered_ms: now_us / 1000,
                            });
                        }
                    } else {
                        s.out_of_order_unaccepted += 1;
                    }
                } else {
                    s.last_delivered.insert(pair, seq);
                }
            }
            if matches!(planned.from, Origin::Spammer(_)) {
                s.spam.reached_inboxes += 1;
                s.spam.reached_requests += u64::from(as_request);
            }
            if planned.first_contact {
                s.first_contacts.delivered += 1;
                s.first_contacts.as_requests += u64::from(as_request);
            }
            if self.plan.has_receipts(&planned) {
                s.tracked_delivered += 1;
            }
            self.count_in_window(&mut s, now_us);
            self.record_latency(&mut s, seq, sent_us, now_us);
        }
        duplicates
    }

    fn count_in_window(&self, s: &mut Stats, now_us: u64) {
        for (i, step) in self.schedule.steps().enumerate() {
            if now_us >= step.start_us && now_us < step.end_us() {
                s.steps[i].delivered_in_window += 1;
            }
        }
    }

    fn record_latency(&self, s: &mut Stats, seq: u64, sent_us: u64, now_us: u64) {
        let Some(step) = self.schedule.step_of(seq) else {
            return;
        };
        // In range: step_of found it.
        let intended = self.schedule.offset_us(seq).unwrap_or(now_us);
        let corrected = now_us.saturating_sub(intended);
        s.corrected.saturating_record(corrected);
        s.uncorrected
            .saturating_record(now_us.saturating_sub(sent_us));
        s.steps[step].latency.saturating_record(corrected);
        s.second(intended)
            .latency
            .get_or_insert_with(second_histogram)
            .saturating_record(corrected);
    }

    /// A member's session received its copy of group message `seq` (sent
    /// at `sent_us`) at `now_us`. Latency is recorded per copy; the message
    /// counts as delivered (once) when its last member has its copy.
    /// Returns whether the copy was a duplicate.
    pub fn delivered_copy(&self, seq: u64, sent_us: u64, member: &str, now_us: u64) -> bool {
        let planned = self.plan.at(seq);
        let mut s = self.lock();
        let slot = planned
            .group_ordinal
            .filter(|_| seq < self.schedule.total())
            .and_then(|o| self.plan.copy_slot(o, member));
        let (Some(ordinal), Some(slot)) = (planned.group_ordinal, slot) else {
            s.foreign += 1;
            return false;
        };
        match self.ledger.deliver_copy(slot) {
            Mark::New => {}
            Mark::Duplicate => return true,
            Mark::OutOfRange => {
                s.foreign += 1;
                return false;
            }
        }
        s.groups.copies_delivered += 1;
        self.record_latency(&mut s, seq, sent_us, now_us);
        let m = u64::from(self.plan.members_per_group());
        if self.ledger.copies_in(ordinal * m, m) == m
            && self.ledger.delivered.mark(seq) == Mark::New
        {
            s.second(now_us).delivered += 1;
            self.count_in_window(&mut s, now_us);
        }
        false
    }

    /// A sender's session received a receipt about `seq` at `now_us`.
    pub fn receipt(&self, seq: u64, kind: ReceiptKind, now_us: u64) {
        let mut s = self.lock();
        match kind {
            ReceiptKind::Delivered => match self.ledger.receipted.mark(seq) {
                Mark::New => {
                    s.receipts_delivered += 1;
                    if let (true, Some(intended)) =
                        (self.schedule.is_measured(seq), self.schedule.offset_us(seq))
                    {
                        s.receipt.saturating_record(now_us.saturating_sub(intended));
                    }
                }
                Mark::Duplicate => s.duplicate_receipts += 1,
                Mark::OutOfRange => s.foreign += 1,
            },
            ReceiptKind::Failed(code) => match self.ledger.failed.mark(seq) {
                Mark::New => {
                    *s.failed.entry(code_name(code)).or_default() += 1;
                    if code == RejectCode::Spam && self.is_spam(seq) {
                        s.spam.refused_as_spam += 1;
                    }
                }
                Mark::Duplicate => s.duplicate_receipts += 1,
                Mark::OutOfRange => s.foreign += 1,
            },
            ReceiptKind::Other => {}
        }
    }

    /// Messages whose delivery is known but whose `DELIVERED` receipt has
    /// not arrived yet (senders with a receipt session only).
    pub fn pending_receipts(&self) -> u64 {
        let s = self.lock();
        s.tracked_delivered.saturating_sub(s.receipts_delivered)
    }

    /// Set-up uploaded a blob of `bytes` in `took_us`.
    pub fn media_uploaded(&self, bytes: u64, took_us: u64) {
        let mut s = self.lock();
        s.media.pool_blobs += 1;
        s.media.pool_bytes += bytes;
        s.media_upload.saturating_record(took_us);
    }

    /// A recipient downloaded a delivered blob in `took_us` (`None`: failed).
    pub fn media_downloaded(&self, took_us: Option<u64>) {
        let mut s = self.lock();
        match took_us {
            Some(us) => {
                s.media.downloads += 1;
                s.media_download.saturating_record(us);
            }
            None => s.media.download_errors += 1,
        }
    }

    /// A connection or session failed (and is being re-opened).
    pub fn connection_error(&self) {
        self.lock().connection_errors += 1;
    }

    /// Counts for the progress line.
    pub fn snapshot(&self, now_us: u64) -> Snapshot {
        let s = self.lock();
        let last = second_of(now_us).checked_sub(1);
        let get = |f: fn(&Second) -> u64| last.and_then(|i| s.seconds.get(i)).map_or(0, f);
        let (delivered_last_s, sent_last_s) = (get(|x| x.delivered), get(|x| x.sent));
        Snapshot {
            now_us,
            sent: s.sent,
            accepted: s.seconds.iter().map(|x| x.accepted).sum(),
            rejected: s.rejected.values().sum(),
            delivered: s.seconds.iter().map(|x| x.delivered).sum(),
            delivered_last_s,
            sent_last_s,
            p99_ms: s.corrected.value_at_quantile(0.99) as f64 / 1000.0,
            errors: s.unanswered + s.connection_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RunId;
    use crate::scenario::Scenario;

    fn recorder(extra: &str) -> Recorder {
        let s = Scenario::from_toml(&format!(
            "name='t'\n[rate]\nmsgs_per_s=10\nduration_s=2\nwarmup_s=1\n{extra}"
        ))
        .unwrap();
        let plan = Arc::new(Plan::new(&s, RunId(1)));
        Recorder::new(s.schedule, plan)
    }

    #[test]
    fn latency_is_measured_from_the_intended_time_and_warmup_is_left_out() {
        let r = recorder("");
        assert_eq!(r.schedule().total(), 30);
        // seq 12 is meant for 1.2 s, actually sent at 1.5 s, delivered at 1.6 s.
        r.sent(12, 1_500_000);
        r.answered(12, Answer::Accepted, 1_550_000);
        assert_eq!(r.delivered(&[(12, 1_500_000)], 1_600_000), 0);
        // A warm-up message: counted, not measured.
        r.answered(3, Answer::Accepted, 350_000);
        r.delivered(&[(3, 300_000)], 400_000);
        // A duplicate and a foreign number.
        assert_eq!(r.delivered(&[(12, 1_500_000), (99, 0)], 1_700_000), 1);
        let s = r.stats();
        assert_eq!(s.corrected.len(), 1);
        assert_eq!(s.corrected.max(), s.corrected.highest_equivalent(400_000));
        assert_eq!(
            s.uncorrected.max(),
            s.uncorrected.highest_equivalent(100_000)
        );
        assert_eq!(s.accept.len(), 1);
        assert_eq!(s.foreign, 1);
        assert_eq!(r.ledger.duplicates_seen_by_apps(), 1);
        assert_eq!(s.steps[0].latency.len(), 1);
        assert_eq!(s.steps[0].delivered_in_window, 1);
        assert_eq!(s.seconds[1].delivered, 1);
        assert_eq!(s.seconds[0].delivered, 1);
        assert_eq!(s.seconds[1].latency.as_ref().map(|h| h.len()), Some(1));
        let t = r.ledger.tally();
        assert_eq!((t.accepted, t.delivered, t.lost), (2, 2, 0));
        let snap = r.snapshot(2_000_000);
        assert_eq!(
            (snap.delivered, snap.delivered_last_s, snap.sent_last_s),
            (2, 1, 1)
        );
        assert!((snap.p99_ms - 400.0).abs() < 1.0, "{snap:?}");
    }

    #[test]
    fn rejections_failures_and_spam_are_counted_by_code() {
        let r = recorder(
            "[users]\nspam_limit_per_min=100\nsender_budget_per_min=50\n[spammers]\ncount=1\nshare=0.5",
        );
        // With half spam, odd numbers are the spammer's.
        assert!(r.is_spam(1) && !r.is_spam(0));
        r.sent(0, 0);
        r.sent(1, 0);
        r.answered(0, Answer::Rejected(RejectCode::RecipientUnavailable), 10);
        r.answered(1, Answer::Accepted, 10);
        r.answered(2, Answer::Unanswered, 10);
        r.receipt(1, ReceiptKind::Failed(RejectCode::Spam), 20);
        r.receipt(1, ReceiptKind::Failed(RejectCode::Spam), 30);
        r.answered(3, Answer::Accepted, 10);
        r.delivered(&[(3, 0)], 40);
        r.receipt(3, ReceiptKind::Delivered, 50);
        let s = r.stats();
        assert_eq!(s.rejected.get("RECIPIENT_UNAVAILABLE"), Some(&1));
        assert_eq!(s.failed.get("SPAM"), Some(&1));
        assert_eq!(s.unanswered, 1);
        assert_eq!(s.duplicate_receipts, 1);
        assert_eq!(
            s.spam,
            SpamStats {
                sent: 1,
                accepted: 2,
                reached_inboxes: 1,
                refused_as_spam: 1,
                reached_requests: 0,
            }
        );
        assert_eq!(s.receipts_delivered, 1);
        // Warm-up: no receipt latency recorded.
        assert_eq!(s.receipt.len(), 0);
        assert_eq!(r.ledger.tally().lost, 0);
    }

    #[test]
    fn a_pairs_later_message_delivered_first_counts_out_of_order() {
        // 30 messages; find three of one sender to one recipient, and one of
        // another pair.
        let r = recorder("[users]\nrecipients=2");
        let plan = r.plan().clone();
        let key = |seq: u64| {
            let p = plan.at(seq);
            (order_key(p.from), p.to)
        };
        let pair: Vec<u64> = (0..30).filter(|&s| key(s) == key(0)).take(3).collect();
        assert_eq!(pair.len(), 3, "the plan repeats a pair within 30 messages");
        let other = (0..30).find(|&s| key(s) != key(0)).expect("another pair");
        let (a, b, c) = (pair[0], pair[1], pair[2]);
        for seq in [a, c, other] {
            r.answered(seq, Answer::Accepted, 5);
        }
        // c before b: b is out of order; a after c too; the other pair is
        // not affected, and a duplicate of c is not counted again. b was
        // refused (UNAVAILABLE) and stored after all: counted apart, since
        // the promised order is that of the Accepted answers.
        r.answered(b, Answer::Rejected(RejectCode::Unavailable), 5);
        r.delivered(&[(c, 0), (other, 0)], 10);
        r.delivered(&[(b, 0), (c, 0)], 20);
        assert_eq!(r.stats().out_of_order, 0);
        assert_eq!(r.stats().out_of_order_unaccepted, 1);
        r.delivered(&[(a, 0)], 30);
        assert_eq!(r.stats().out_of_order, 1);
        assert_eq!(r.stats().out_of_order_unaccepted, 1);
        // The accepted one is shown in detail: a, after c, delivered at 30 µs.
        let sample = r.stats().out_of_order_sample.clone();
        assert_eq!(sample.len(), 1, "{sample:?}");
        assert_eq!((sample[0].seq, sample[0].after_seq), (a, c));
        assert_eq!(sample[0].delivered_ms, 0);
        assert!(sample[0].planned_ms <= sample[0].after_planned_ms);
        // In order: a fresh recorder sees none.
        let r = recorder("[users]\nrecipients=2");
        r.delivered(&[(a, 0), (b, 0), (other, 0), (c, 0)], 10);
        assert_eq!(r.stats().out_of_order, 0);
    }
}
