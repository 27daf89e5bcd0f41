//! Loss and duplicate accounting: which sequence numbers were accepted,
//! delivered, and failed, one bit each.
//!
//! Every message of a run has a sequence number (in its client message id),
//! so one bitset per outcome over the run's sequence space does what a
//! bitset per sender would, with one allocation. Deliveries are marked here
//! as the application gets them from the client library, which has already
//! dropped redeliveries of a server message id it handed out (its
//! de-duplication window, kept across reconnects of a device's session): a
//! second mark of the same number is a duplicate **an app would see**,
//! whatever the message id says (a re-send that got a new server id passes
//! the client's de-duplication). The report adds the redeliveries the
//! client library dropped to get the duplicates on the wire, before any
//! de-duplication.

use std::sync::atomic::{AtomicU64, Ordering};

/// A fixed-size set of sequence numbers, safe to mark from many tasks.
#[derive(Debug)]
pub struct SeqSet {
    words: Vec<AtomicU64>,
    len: u64,
}

/// What marking a number found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    New,
    Duplicate,
    /// Not a number of this run.
    OutOfRange,
}

impl SeqSet {
    pub fn new(len: u64) -> Self {
        let words = len.div_ceil(64) as usize;
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    pub fn mark(&self, seq: u64) -> Mark {
        if seq >= self.len {
            return Mark::OutOfRange;
        }
        let bit = 1u64 << (seq % 64);
        let before = self.words[(seq / 64) as usize].fetch_or(bit, Ordering::Relaxed);
        if before & bit == 0 {
            Mark::New
        } else {
            Mark::Duplicate
        }
    }

    pub fn contains(&self, seq: u64) -> bool {
        seq < self.len
            && self.words[(seq / 64) as usize].load(Ordering::Relaxed) & (1u64 << (seq % 64)) != 0
    }

    /// How many numbers are marked.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    fn word(&self, i: usize) -> u64 {
        self.words[i].load(Ordering::Relaxed)
    }
}

/// The outcome of every message of a run.
#[derive(Debug)]
pub struct Ledger {
    /// The gateway answered `Accepted`.
    pub accepted: SeqSet,
    /// A recipient's session got it (first time).
    pub delivered: SeqSet,
    /// The sender's session got a `FAILED` receipt for it.
    pub failed: SeqSet,
    /// The sender's session got a `DELIVERED` receipt for it.
    pub receipted: SeqSet,
    /// Group messages' copies, one slot per member (`Plan::copy_slot`). A
    /// group message is `delivered` once every member has its copy.
    pub copies: SeqSet,
    /// Deliveries of a number already delivered, seen here: after the
    /// client library's de-duplication, as an app sees them.
    duplicates_seen_by_apps: AtomicU64,
}

/// Counts derived from the ledger once the run has drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub accepted: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Accepted, and neither delivered nor failed with a receipt.
    pub lost: u64,
    /// Delivered without an `Accepted` (the answer was lost, e.g. the
    /// connection dropped after the gateway stored the message).
    pub delivered_unacknowledged: u64,
    /// A number delivered again after the client library's de-duplication:
    /// a duplicate the app sees.
    pub duplicates_seen_by_apps: u64,
}

impl Ledger {
    pub fn new(len: u64) -> Self {
        Self::with_copies(len, 0)
    }

    /// A ledger with `copies` slots for group messages' copies.
    pub fn with_copies(len: u64, copies: u64) -> Self {
        Self {
            accepted: SeqSet::new(len),
            delivered: SeqSet::new(len),
            failed: SeqSet::new(len),
            receipted: SeqSet::new(len),
            copies: SeqSet::new(copies),
            duplicates_seen_by_apps: AtomicU64::new(0),
        }
    }

    /// Marks a group message's copy; counts a duplicate if it was seen before.
    pub fn deliver_copy(&self, slot: u64) -> Mark {
        let mark = self.copies.mark(slot);
        if mark == Mark::Duplicate {
            self.duplicates_seen_by_apps.fetch_add(1, Ordering::Relaxed);
        }
        mark
    }

    /// Copies marked in the slots `first..first + n`.
    pub fn copies_in(&self, first: u64, n: u64) -> u64 {
        (first..first + n)
            .filter(|&slot| self.copies.contains(slot))
            .count() as u64
    }

    /// Marks a delivery; counts a duplicate if it was delivered before.
    pub fn deliver(&self, seq: u64) -> Mark {
        let mark = self.delivered.mark(seq);
        if mark == Mark::Duplicate {
            self.duplicates_seen_by_apps.fetch_add(1, Ordering::Relaxed);
        }
        mark
    }

    /// Deliveries of a number (or group copy) already delivered, after the
    /// client library's de-duplication: the duplicates apps see.
    pub fn duplicates_seen_by_apps(&self) -> u64 {
        self.duplicates_seen_by_apps.load(Ordering::Relaxed)
    }

    /// Accepted messages with no outcome yet (not delivered, no FAILED).
    pub fn unresolved(&self) -> u64 {
        self.tally().lost
    }

    /// Sequence numbers lost so far (accepted, no outcome), at most `limit`.
    pub fn lost_sample(&self, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for i in 0..self.accepted.words.len() {
            let mut lost = self.accepted.word(i) & !self.delivered.word(i) & !self.failed.word(i);
            while lost != 0 && out.len() < limit {
                let bit = lost.trailing_zeros();
                out.push(i as u64 * 64 + u64::from(bit));
                lost &= lost - 1;
            }
        }
        out
    }

    /// Whether the send numbered `seq` was answered `Accepted`.
    pub fn was_accepted(&self, seq: u64) -> bool {
        self.accepted.contains(seq)
    }

    pub fn tally(&self) -> Tally {
        let mut t = self.tally_range(0, self.accepted.len);
        t.duplicates_seen_by_apps = self.duplicates_seen_by_apps();
        t
    }

    /// Counts over the sequence numbers `start..end` (duplicates are not
    /// kept per number: 0 here).
    pub fn tally_range(&self, start: u64, end: u64) -> Tally {
        let end = end.min(self.accepted.len);
        let mut t = Tally::default();
        if start >= end {
            return t;
        }
        let (first, last) = ((start / 64) as usize, ((end - 1) / 64) as usize);
        for i in first..=last {
            let mut mask = u64::MAX;
            if i == first {
                mask &= u64::MAX << (start % 64);
            }
            if i == last && !end.is_multiple_of(64) {
                mask &= u64::MAX >> (64 - end % 64);
            }
            let (a, d, f) = (
                self.accepted.word(i) & mask,
                self.delivered.word(i) & mask,
                self.failed.word(i) & mask,
            );
            t.accepted += u64::from(a.count_ones());
            t.delivered += u64::from(d.count_ones());
            t.failed += u64::from(f.count_ones());
            t.lost += u64::from((a & !d & !f).count_ones());
            t.delivered_unacknowledged += u64::from((d & !a).count_ones());
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_count_and_range() {
        let s = SeqSet::new(130);
        assert_eq!(s.mark(0), Mark::New);
        assert_eq!(s.mark(129), Mark::New);
        assert_eq!(s.mark(129), Mark::Duplicate);
        assert_eq!(s.mark(130), Mark::OutOfRange);
        assert!(s.contains(129) && !s.contains(64) && !s.contains(1000));
        assert_eq!(s.count(), 2);
    }

    #[test]
    fn the_tally_finds_losses_and_duplicates() {
        let l = Ledger::new(200);
        for seq in 0..200 {
            l.accepted.mark(seq);
        }
        // Everything delivered except 7, 64 and 199; 10 failed (spam) instead;
        // 3 and 150 reached the app twice.
        for seq in 0..200 {
            if ![7, 10, 64, 199].contains(&seq) {
                assert_eq!(l.deliver(seq), Mark::New);
            }
        }
        l.failed.mark(10);
        assert_eq!(l.deliver(3), Mark::Duplicate);
        assert_eq!(l.deliver(150), Mark::Duplicate);
        assert_eq!(l.deliver(5000), Mark::OutOfRange);
        let t = l.tally();
        assert_eq!(
            t,
            Tally {
                accepted: 200,
                delivered: 196,
                failed: 1,
                lost: 3,
                delivered_unacknowledged: 0,
                duplicates_seen_by_apps: 2,
            }
        );
        assert_eq!(l.lost_sample(10), vec![7, 64, 199]);
        assert_eq!(l.lost_sample(2), vec![7, 64]);
    }

    #[test]
    fn ranges_count_only_their_own_numbers() {
        let l = Ledger::new(300);
        for seq in 0..300 {
            l.accepted.mark(seq);
            if seq % 3 != 0 {
                l.deliver(seq);
            }
        }
        let whole = l.tally();
        assert_eq!((whole.accepted, whole.lost), (300, 100));
        let parts: Vec<Tally> = [(0, 64), (64, 65), (65, 130), (130, 300), (250, 1000)]
            .iter()
            .map(|&(a, b)| l.tally_range(a, b))
            .collect();
        assert_eq!(parts[0].accepted, 64);
        assert_eq!(parts[0].lost, 22);
        assert_eq!((parts[1].accepted, parts[1].lost), (1, 0));
        assert_eq!(parts[2].accepted, 65);
        assert_eq!(
            parts[0].lost + parts[1].lost + parts[2].lost + parts[3].lost,
            100
        );
        assert_eq!(parts[4].accepted, 50);
        assert_eq!(l.tally_range(10, 10), Tally::default());
    }

    #[test]
    fn a_delivery_without_an_accept_is_not_lost_but_counted() {
        let l = Ledger::new(10);
        l.accepted.mark(1);
        l.deliver(1);
        l.deliver(2);
        let t = l.tally();
        assert_eq!((t.lost, t.delivered_unacknowledged), (0, 1));
    }
}
