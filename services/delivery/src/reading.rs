//! How a session reads the user's store (docs/adr/0016): a state machine
//! with no I/O, so each transition is tested on its own. The session does
//! the reading (`crate::session`) and tells this what happened.
//!
//! - **Live**: the session takes what the store republishes once stored
//!   and holds no JetStream consumer; the store holds nothing it has not
//!   taken.
//! - **Behind**: the store may hold messages that did not come live (at
//!   connect, after a gap, a pause or a look-again). Once the un-acked
//!   deliveries are at most [`RESUME_AT`], the session looks at the store
//!   (unless a gap made it `known`) and opens a consumer.
//! - **CatchingUp**: an ordered consumer reads the store from the last
//!   message taken; what comes live meanwhile is buffered (up to
//!   [`LIVE_BUFFER`]). It is closed when it has caught up (the buffer is
//!   then taken), when it gave nothing for [`CLOSE_IDLE_CONSUMER_AFTER`], or
//!   at [`MAX_UNACKED`] un-acked deliveries (a pause: the consumer is
//!   dropped rather than left unpolled, the buffer with it).
//!
//! A look asks the store's leader; a consumer reads whichever replica of
//! the stream the server placed it on (nats-server before 2.12 places an
//! ephemeral consumer on any of them), which may be behind the leader
//! after a node restarted. So a consumer's "nothing (more) to give" is
//! checked with a look before the session goes live: when a consumer
//! closes with nothing come live meanwhile (what comes live is the
//! leader's, and shows a gap), and when it had nothing although the leader
//! or a gap said the store holds more (the session then takes the
//! leader's message itself).
//!
//! Generic over the consumer `C` and the live message `M` so tests need no
//! NATS.

use std::collections::VecDeque;
use std::time::Duration;

use interop_proto::limits::MAX_UNACKED;
use tokio::time::Instant;

/// After a pause at `MAX_UNACKED` outstanding deliveries, reading resumes
/// once acks bring them down to this many.
pub(crate) const RESUME_AT: usize = MAX_UNACKED * 3 / 4;

/// An open store consumer is closed when it has caught up; one that gives
/// nothing for this long is closed too (what it was opened for is gone).
pub(crate) const CLOSE_IDLE_CONSUMER_AFTER: Duration = Duration::from_secs(10);

/// Stored messages that arrive live while the store consumer is open are
/// kept, up to this many, and taken when it closes; past it they are
/// dropped and read from the store instead.
pub(crate) const LIVE_BUFFER: usize = MAX_UNACKED;

/// Where a session is in reading its store.
#[derive(Debug)]
pub(crate) enum Reading<C, M> {
    /// Taking what comes live; nothing else is stored for the session.
    Live,
    /// The store may hold messages that did not come live; `known`: it
    /// does (a gap was seen), so it is read without a look first.
    Behind { known: bool },
    /// A store consumer is open.
    CatchingUp(CatchingUp<C, M>),
}

/// An open store consumer and what came live while it was open.
#[derive(Debug)]
pub(crate) struct CatchingUp<C, M> {
    pub(crate) consumer: C,
    /// When it is closed if it gives nothing.
    idle_at: Instant,
    /// Stored messages that came live meanwhile, in order.
    buffered: VecDeque<M>,
    /// Whether some were dropped because the buffer was full.
    overflow: bool,
    /// Told to look again meanwhile: republished messages may have been
    /// lost after what was buffered, so the store is looked at on close.
    look_again: bool,
}

/// What came live while a consumer was open, handed back when it closes.
#[derive(Debug)]
pub(crate) struct Buffered<M> {
    pub(crate) messages: VecDeque<M>,
    /// Some were dropped: the store must be read again.
    pub(crate) overflow: bool,
}

/// What to do with a message the store republished.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LiveEvent<M> {
    /// Take it now (no consumer is open).
    Take(M),
    /// Kept (or dropped for a full buffer) until the consumer closes.
    Held,
}

impl<C, M> Default for Reading<C, M> {
    /// A new session may have a backlog: it looks at its store.
    fn default() -> Self {
        Self::Behind { known: false }
    }
}

impl<C, M> Reading<C, M> {
    /// At `MAX_UNACKED` un-acked deliveries an open consumer is dropped
    /// (the session reopens it after the last delivered message, so there
    /// is no gap and no duplicate). Returns whether it paused.
    pub(crate) fn pause_if_full(&mut self, unacked: usize) -> bool {
        if matches!(self, Self::CatchingUp(_)) && unacked >= MAX_UNACKED {
            *self = Self::Behind { known: true };
            return true;
        }
        false
    }

    /// Whether the session should read its store now: `Some(known)` when
    /// it is behind and the un-acked deliveries allow (`known`: open a
    /// consumer without looking first). The session then reports
    /// [`Reading::opened`] (or [`Reading::nothing_stored`], or
    /// [`Reading::consumer_had_nothing`]).
    pub(crate) fn wants_to_read(&self, unacked: usize) -> Option<bool> {
        match self {
            Self::Behind { known } if unacked <= RESUME_AT => Some(*known),
            _ => None,
        }
    }

    /// The look (the store's leader) found nothing past what was taken:
    /// live.
    pub(crate) fn nothing_stored(&mut self) {
        *self = Self::Live;
    }

    /// A consumer opened because the leader or a gap said the store holds
    /// more had nothing to give: it reads a replica behind the leader, or
    /// what it was opened for was erased meanwhile. Look again (the
    /// leader answers) rather than go live on its word.
    pub(crate) fn consumer_had_nothing(&mut self) {
        *self = Self::Behind { known: false };
    }

    /// A consumer was opened at `now`.
    pub(crate) fn opened(&mut self, consumer: C, now: Instant) {
        *self = Self::CatchingUp(CatchingUp {
            consumer,
            idle_at: now + CLOSE_IDLE_CONSUMER_AFTER,
            buffered: VecDeque::new(),
            overflow: false,
            look_again: false,
        });
    }

    /// The open consumer, if any.
    pub(crate) fn consumer(&mut self) -> Option<&mut C> {
        match self {
            Self::CatchingUp(c) => Some(&mut c.consumer),
            _ => None,
        }
    }

    /// When the open consumer is closed if it gives nothing.
    pub(crate) fn idle_at(&self) -> Option<Instant> {
        match self {
            Self::CatchingUp(c) => Some(c.idle_at),
            _ => None,
        }
    }

    /// The open consumer gave a message at `now`.
    pub(crate) fn gave(&mut self, now: Instant) {
        if let Self::CatchingUp(c) = self {
            c.idle_at = now + CLOSE_IDLE_CONSUMER_AFTER;
        }
    }

    /// A message the store republished: taken now unless a consumer is open.
    pub(crate) fn live(&mut self, msg: M) -> LiveEvent<M> {
        let Self::CatchingUp(c) = self else {
            return LiveEvent::Take(msg);
        };
        if c.buffered.len() < LIVE_BUFFER {
            c.buffered.push_back(msg);
        } else {
            c.overflow = true;
        }
        LiveEvent::Held
    }

    /// A message taken live did not follow what the session had taken (or
    /// the un-acked limit held it back): the store holds it.
    pub(crate) fn gap(&mut self) {
        *self = Self::Behind { known: true };
    }

    /// Republished messages may have been lost (NATS reconnected, the store
    /// elected a leader): look at the store. An open consumer reads on; the
    /// store is looked at when it closes.
    pub(crate) fn look_again(&mut self) {
        match self {
            Self::Live => *self = Self::Behind { known: false },
            Self::CatchingUp(c) => c.look_again = true,
            Self::Behind { .. } => {}
        }
    }

    /// Closes the open consumer (caught up or idle) and hands back what came
    /// live meanwhile, to be taken; the session is live until it reports a
    /// [`Reading::gap`] or [`Reading::look_again`]. What came live is the
    /// leader's word (each names the message before it), so taking it shows
    /// any gap; if nothing came (or the session was told to look again
    /// meanwhile), the consumer's replica may be behind the leader: the
    /// session looks at the store once, then goes live if the leader has
    /// nothing more. `None` if none was open.
    pub(crate) fn close(&mut self) -> Option<Buffered<M>> {
        match std::mem::replace(self, Self::Live) {
            Self::CatchingUp(c) => {
                if (c.buffered.is_empty() || c.look_again) && !c.overflow {
                    *self = Self::Behind { known: false };
                }
                Some(Buffered {
                    messages: c.buffered,
                    overflow: c.overflow,
                })
            }
            other => {
                *self = other;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Reading<&'static str, u32>;

    fn catching_up(now: Instant) -> R {
        let mut r = R::default();
        r.opened("consumer", now);
        r
    }

    fn is_behind(r: &R, want: bool) -> bool {
        matches!(r, Reading::Behind { known } if *known == want)
    }

    #[test]
    fn a_new_session_looks_at_its_store_once_acks_allow() {
        let r = R::default();
        assert_eq!(r.wants_to_read(0), Some(false));
        assert_eq!(r.wants_to_read(RESUME_AT), Some(false));
        assert_eq!(r.wants_to_read(RESUME_AT + 1), None);
    }

    #[test]
    fn nothing_stored_makes_it_live_and_live_reads_nothing() {
        let mut r = R::default();
        r.nothing_stored();
        assert!(matches!(r, Reading::Live));
        assert_eq!(r.wants_to_read(0), None);
        assert!(r.consumer().is_none());
        assert!(r.idle_at().is_none());
    }

    #[test]
    fn opening_a_consumer_starts_catching_up_with_an_idle_deadline() {
        let now = Instant::now();
        let mut r = catching_up(now);
        assert_eq!(r.consumer(), Some(&mut "consumer"));
        assert_eq!(r.idle_at(), Some(now + CLOSE_IDLE_CONSUMER_AFTER));
        assert_eq!(r.wants_to_read(0), None);
    }

    #[test]
    fn a_message_from_the_consumer_moves_the_idle_deadline() {
        let now = Instant::now();
        let mut r = catching_up(now);
        let later = now + Duration::from_secs(3);
        r.gave(later);
        assert_eq!(r.idle_at(), Some(later + CLOSE_IDLE_CONSUMER_AFTER));
    }

    #[test]
    fn live_messages_are_taken_unless_a_consumer_is_open() {
        let mut r = R::Live;
        assert_eq!(r.live(1), LiveEvent::Take(1));
        let mut r = R::Behind { known: false };
        assert_eq!(r.live(1), LiveEvent::Take(1));
        let mut r = catching_up(Instant::now());
        assert_eq!(r.live(1), LiveEvent::Held);
    }

    #[test]
    fn live_messages_while_catching_up_are_buffered_up_to_the_limit() {
        let mut r = catching_up(Instant::now());
        for i in 0..=LIVE_BUFFER as u32 {
            assert_eq!(r.live(i), LiveEvent::Held);
        }
        let b = r.close().expect("a consumer was open");
        assert_eq!(b.messages.len(), LIVE_BUFFER);
        assert_eq!(b.messages.front(), Some(&0));
        assert!(b.overflow, "the message past the buffer was dropped");
        assert!(matches!(r, Reading::Live));
    }

    #[test]
    fn closing_hands_back_the_buffer_in_order_and_goes_live() {
        // What came live names the message before it: taking it shows a
        // gap if the consumer's replica was behind.
        let mut r = catching_up(Instant::now());
        r.live(7);
        r.live(8);
        let b = r.close().expect("a consumer was open");
        assert_eq!(Vec::from(b.messages), vec![7, 8]);
        assert!(!b.overflow);
        assert!(matches!(r, Reading::Live));
        assert!(r.close().is_none(), "nothing left to close");
    }

    #[test]
    fn closing_with_nothing_live_looks_at_the_leader_before_going_live() {
        // The consumer's replica may be behind the store's leader and
        // nothing came live to show it: one look first.
        let mut r = catching_up(Instant::now());
        let b = r.close().expect("a consumer was open");
        assert!(b.messages.is_empty());
        assert!(is_behind(&r, false));
        assert_eq!(r.wants_to_read(0), Some(false));
        r.nothing_stored();
        assert!(matches!(r, Reading::Live));
    }

    #[test]
    fn a_look_again_while_catching_up_is_not_lost() {
        // Told to look (an election) while a consumer reads a replica: a
        // republish after what was buffered may be lost, so the look
        // happens when it closes.
        let mut r = catching_up(Instant::now());
        r.live(7);
        r.look_again();
        assert!(r.consumer().is_some(), "the open consumer reads on");
        let b = r.close().expect("a consumer was open");
        assert_eq!(Vec::from(b.messages), vec![7]);
        assert_eq!(r.wants_to_read(0), Some(false));
    }

    #[test]
    fn a_consumer_with_nothing_where_the_store_holds_more_means_look_again() {
        // A gap said the store holds more, or the leader did; the consumer
        // (on a replica behind the leader) has nothing: not live.
        for mut r in [R::Behind { known: true }, R::Behind { known: false }] {
            r.consumer_had_nothing();
            assert!(is_behind(&r, false));
            assert_eq!(r.wants_to_read(0), Some(false));
        }
    }

    #[test]
    fn closing_without_a_consumer_changes_nothing() {
        let mut r = R::Behind { known: true };
        assert!(r.close().is_none());
        assert!(is_behind(&r, true));
    }

    #[test]
    fn at_max_unacked_an_open_consumer_pauses_and_resumes_without_a_look() {
        let mut r = catching_up(Instant::now());
        r.live(1);
        assert!(!r.pause_if_full(MAX_UNACKED - 1));
        assert!(r.consumer().is_some());
        assert!(r.pause_if_full(MAX_UNACKED));
        assert!(is_behind(&r, true));
        assert!(r.consumer().is_none(), "the consumer is dropped");
        assert_eq!(r.wants_to_read(RESUME_AT + 1), None);
        assert_eq!(r.wants_to_read(RESUME_AT), Some(true));
        r.opened("again", Instant::now());
        assert!(
            r.close().expect("reopened").messages.is_empty(),
            "the buffer went with the paused consumer"
        );
    }

    #[test]
    fn only_an_open_consumer_pauses() {
        for mut r in [R::Live, R::Behind { known: false }] {
            assert!(!r.pause_if_full(MAX_UNACKED));
        }
        let mut r = R::Behind { known: false };
        r.pause_if_full(MAX_UNACKED);
        assert!(is_behind(&r, false));
    }

    #[test]
    fn a_gap_means_the_store_holds_more_for_sure() {
        let mut r = R::Live;
        r.gap();
        assert!(is_behind(&r, true));
        assert_eq!(r.wants_to_read(0), Some(true));
        let mut r = R::Behind { known: false };
        r.gap();
        assert!(is_behind(&r, true));
    }

    #[test]
    fn a_look_again_makes_a_live_session_look_and_leaves_others() {
        let mut r = R::Live;
        r.look_again();
        assert!(is_behind(&r, false));
        let mut r = R::Behind { known: true };
        r.look_again();
        assert!(is_behind(&r, true), "a known gap stays known");
        let mut r = catching_up(Instant::now());
        r.look_again();
        assert!(r.consumer().is_some(), "the open consumer reads on");
    }
}
