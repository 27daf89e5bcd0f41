//! The open-loop schedule: when each message is *meant* to be sent, and the
//! pacer that submits messages at those times whatever the system under
//! test does.
//!
//! Message `seq` (0, 1, 2, …) has a fixed intended send time, a pure
//! function of `seq` ([`Schedule::offset_us`]). Latency is measured from
//! that time, not from when the send actually happened: if the gateway (or
//! the load generator) stalls, the messages that should have gone out during
//! the stall are sent late, all at once, and their latency includes the
//! wait. This is the correction for *coordinated omission* (Gil Tene): a
//! closed-loop tester that waits for each answer before sending the next
//! would quietly send fewer messages during a stall and report a p99 that
//! never saw it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a phase of the schedule is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseKind {
    /// Sent, delivered and accounted for, but left out of latency and
    /// throughput figures.
    Warmup,
    /// A measured step (a constant-rate run has one).
    Step,
}

/// A stretch of constant rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub kind: PhaseKind,
    /// Offered rate, messages per second.
    pub rate: f64,
    /// Offset of the phase's start from the run's start.
    pub start_us: u64,
    pub duration_us: u64,
    /// Sequence number of the phase's first message.
    pub first_seq: u64,
    /// Messages in the phase.
    pub count: u64,
}

impl Phase {
    pub fn end_us(&self) -> u64 {
        self.start_us + self.duration_us
    }
}

/// The intended send time of every message of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    phases: Vec<Phase>,
    total: u64,
}

impl Schedule {
    /// A constant rate, after a warm-up at the same rate.
    pub fn constant(rate: f64, warmup: Duration, duration: Duration) -> Self {
        Self::stepped(&[rate], warmup, duration)
    }

    /// Steps of `step` each at the given rates, after a warm-up at the first
    /// rate. Rates must be positive (the scenario checks).
    pub fn stepped(rates: &[f64], warmup: Duration, step: Duration) -> Self {
        let mut phases = Vec::with_capacity(rates.len() + 1);
        let mut start_us = 0;
        let mut first_seq = 0;
        let mut push = |kind, rate: f64, duration: Duration| {
            let duration_us = duration.as_micros() as u64;
            if duration_us == 0 {
                return;
            }
            let count = (rate * duration.as_secs_f64()).round() as u64;
            phases.push(Phase {
                kind,
                rate,
                start_us,
                duration_us,
                first_seq,
                count,
            });
            start_us += duration_us;
            first_seq += count;
        };
        if let Some(&first) = rates.first() {
            push(PhaseKind::Warmup, first, warmup);
        }
        for &rate in rates {
            push(PhaseKind::Step, rate, step);
        }
        Self {
            phases,
            total: first_seq,
        }
    }

    /// Messages in the whole run.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// The measured steps (phases that are not warm-up), in order.
    pub fn steps(&self) -> impl Iterator<Item = &Phase> {
        self.phases.iter().filter(|p| p.kind == PhaseKind::Step)
    }

    /// Offset of the end of the schedule (the last intended send is before it).
    pub fn end_us(&self) -> u64 {
        self.phases.last().map_or(0, Phase::end_us)
    }

    /// Offset where measurement starts (the end of the warm-up).
    pub fn measured_start_us(&self) -> u64 {
        self.steps().next().map_or(0, |p| p.start_us)
    }

    /// Index (into [`Schedule::phases`]) of the phase `seq` belongs to.
    pub fn phase_of(&self, seq: u64) -> Option<usize> {
        if seq >= self.total {
            return None;
        }
        // Few phases: the first whose range holds seq.
        self.phases
            .iter()
            .position(|p| seq >= p.first_seq && seq < p.first_seq + p.count)
    }

    /// Index of the measured step `seq` belongs to (None in the warm-up).
    pub fn step_of(&self, seq: u64) -> Option<usize> {
        let phase = self.phase_of(seq)?;
        if self.phases[phase].kind != PhaseKind::Step {
            return None;
        }
        Some(
            self.phases[..phase]
                .iter()
                .filter(|p| p.kind == PhaseKind::Step)
                .count(),
        )
    }

    /// Whether `seq` counts in latency and throughput figures.
    pub fn is_measured(&self, seq: u64) -> bool {
        self.step_of(seq).is_some()
    }

    /// The intended send time of `seq`, as an offset from the run's start:
    /// messages of a phase are spread evenly over it.
    pub fn offset_us(&self, seq: u64) -> Option<u64> {
        let p = &self.phases[self.phase_of(seq)?];
        let k = u128::from(seq - p.first_seq);
        Some(p.start_us + (k * u128::from(p.duration_us) / u128::from(p.count)) as u64)
    }

    /// The offered rate at offset `us` (0 outside the schedule).
    pub fn rate_at_us(&self, us: u64) -> f64 {
        self.phases
            .iter()
            .find(|p| us >= p.start_us && us < p.end_us())
            .map_or(0.0, |p| p.rate)
    }
}

/// The run's time origin, shared by everything that records a time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    t0: Instant,
}

impl Clock {
    pub fn starting_at(t0: Instant) -> Self {
        Self { t0 }
    }

    pub fn instant_at(&self, us: u64) -> Instant {
        self.t0 + Duration::from_micros(us)
    }

    /// Microseconds since the start (0 before it).
    pub fn now_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.t0)
            .as_micros() as u64
    }
}

/// One message the pacer hands to the sink: its sequence number and when it
/// was meant to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub seq: u64,
    pub intended_us: u64,
}

/// Where the pacer puts messages. `submit` may wait (backpressure); the
/// pacer then falls behind and catches up by submitting every overdue
/// message at once, each keeping its intended time.
pub trait Sink {
    /// Takes one message; `false` when the sink is closed (the pacer stops).
    fn submit(&mut self, job: Job) -> impl Future<Output = bool> + Send;
}

/// How the pacing went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaceOutcome {
    /// Messages submitted.
    pub submitted: u64,
    /// Stopped early (by `stop` or a closed sink).
    pub interrupted: bool,
    /// The largest delay between a message's intended time and its
    /// submission, in µs: how far the generator itself fell behind.
    pub max_lag_us: u64,
}

/// Submits every message of `schedule` to `sink` at its intended time (open
/// loop), until the schedule ends or `stop` is cancelled.
pub async fn pace<S: Sink>(
    schedule: &Schedule,
    clock: Clock,
    sink: &mut S,
    stop: &CancellationToken,
) -> PaceOutcome {
    let mut outcome = PaceOutcome {
        submitted: 0,
        interrupted: false,
        max_lag_us: 0,
    };
    for seq in 0..schedule.total() {
        let Some(intended_us) = schedule.offset_us(seq) else {
            break;
        };
        let now_us = clock.now_us();
        if intended_us > now_us {
            tokio::select! {
                () = tokio::time::sleep_until(clock.instant_at(intended_us)) => {}
                () = stop.cancelled() => {
                    outcome.interrupted = true;
                    return outcome;
                }
            }
        } else {
            outcome.max_lag_us = outcome.max_lag_us.max(now_us - intended_us);
            if stop.is_cancelled() {
                outcome.interrupted = true;
                return outcome;
            }
        }
        if !sink.submit(Job { seq, intended_us }).await {
            outcome.interrupted = true;
            return outcome;
        }
        outcome.submitted += 1;
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_spreads_messages_evenly_and_warmup_is_not_measured() {
        let s = Schedule::constant(100.0, Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(s.total(), 300);
        assert_eq!(s.phases().len(), 2);
        assert_eq!(s.offset_us(0), Some(0));
        assert_eq!(s.offset_us(1), Some(10_000));
        assert_eq!(s.offset_us(99), Some(990_000));
        assert_eq!(s.offset_us(100), Some(1_000_000));
        assert_eq!(s.offset_us(299), Some(2_990_000));
        assert_eq!(s.offset_us(300), None);
        assert!(!s.is_measured(99));
        assert!(s.is_measured(100));
        assert_eq!(s.measured_start_us(), 1_000_000);
        assert_eq!(s.end_us(), 3_000_000);
        assert_eq!(s.rate_at_us(2_500_000), 100.0);
        assert_eq!(s.rate_at_us(3_000_000), 0.0);
    }

    #[test]
    fn steps_change_the_rate_and_intended_times_never_go_backwards() {
        let s = Schedule::stepped(
            &[10.0, 20.0, 40.0],
            Duration::from_millis(500),
            Duration::from_secs(1),
        );
        assert_eq!(s.total(), 5 + 10 + 20 + 40);
        assert_eq!(s.step_of(4), None);
        assert_eq!(s.step_of(5), Some(0));
        assert_eq!(s.step_of(15), Some(1));
        assert_eq!(s.step_of(35), Some(2));
        // Step 2 (40/s) starts at 1.5 s + 1 s.
        assert_eq!(s.offset_us(35), Some(2_500_000));
        assert_eq!(s.offset_us(36), Some(2_525_000));
        let mut last = 0;
        for seq in 0..s.total() {
            let t = s.offset_us(seq).unwrap();
            assert!(t >= last, "seq {seq} goes back in time");
            last = t;
        }
        assert_eq!(
            s.steps().map(|p| p.rate).collect::<Vec<_>>(),
            [10.0, 20.0, 40.0]
        );
    }

    struct Recording {
        clock: Clock,
        got: Vec<(Job, u64)>,
        stall_at: Option<u64>,
    }

    impl Sink for Recording {
        async fn submit(&mut self, job: Job) -> bool {
            self.got.push((job, self.clock.now_us()));
            if self.stall_at == Some(job.seq) {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            true
        }
    }

    #[tokio::test]
    async fn the_pacer_submits_on_schedule_and_catches_up_after_a_stall() {
        let s = Schedule::constant(200.0, Duration::ZERO, Duration::from_secs(1));
        let clock = Clock::starting_at(Instant::now());
        let mut sink = Recording {
            clock,
            got: Vec::new(),
            stall_at: Some(50),
        };
        let outcome = pace(&s, clock, &mut sink, &CancellationToken::new()).await;
        assert_eq!(outcome.submitted, 200);
        assert!(!outcome.interrupted);
        assert!(outcome.max_lag_us >= 250_000, "{outcome:?}");
        for (job, at) in &sink.got {
            // Open loop: never early.
            assert!(*at >= job.intended_us, "{job:?} submitted at {at}");
            assert_eq!(Some(job.intended_us), s.offset_us(job.seq));
        }
        // Messages due during the stall went out together right after it,
        // keeping their own intended times.
        let (j51, at51) = sink.got[51];
        let (j100, at100) = sink.got[100];
        assert!(at100 - at51 < 50_000, "caught up in a burst");
        assert!(j100.intended_us - j51.intended_us >= 240_000);
    }

    #[tokio::test]
    async fn stopping_interrupts_the_pacer() {
        let s = Schedule::constant(10.0, Duration::ZERO, Duration::from_secs(60));
        let clock = Clock::starting_at(Instant::now());
        let mut sink = Recording {
            clock,
            got: Vec::new(),
            stall_at: None,
        };
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            stopper.cancel();
        });
        let outcome = pace(&s, clock, &mut sink, &stop).await;
        assert!(outcome.interrupted);
        assert_eq!(outcome.submitted, 3);
    }
}
