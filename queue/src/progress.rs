//! Progress, percent and ETA, computed here once so every client sees the same numbers.
//!
//! A handler calls [`Progress::report`]`(stage, done, total)` as often as it likes (it only
//! updates memory). A per-job [`Flusher`] writes to Redis: stage changes and log lines at once,
//! progress at most once per second (DESIGN §2), and every write renews the job's lease.
//! Percent comes from the kind's stage weights; ETA from a smoothed rate of overall progress
//! ([`EtaEstimator`]); speed from a smoothed rate of the current stage's units.

use crate::{JobKind, Queue};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Exponentially smoothed rate of progress, for ETA and speed.
///
/// Samples may arrive at any interval: the smoothing factor is `1 - exp(-dt / tau)`, so the
/// estimate forgets the past at the same speed whatever the reporting rate. A constant workload
/// gives its exact rate; a stall drives the rate (and so the ETA) smoothly toward "longer".
///
/// The average is bias-corrected: it starts from no knowledge rather than from a rate of zero
/// (or from the first interval alone), so early on it is the plain average since the first
/// sample, and it weighs recent intervals more only as they accumulate. Without this, a job
/// whose first report is "stage set, nothing done yet" started from a rate near zero and its
/// ETA stayed far too long for several `tau`.
#[derive(Clone, Debug)]
pub struct EtaEstimator {
    tau: f64,
    last: Option<(f64, f64)>,
    /// Sum of `a · instantaneous rate`, decayed.
    acc: f64,
    /// Sum of the weights `a`, decayed the same way (1 − e^(−elapsed/τ)).
    weight: f64,
}

impl Default for EtaEstimator {
    fn default() -> Self {
        EtaEstimator::new(Duration::from_secs(8))
    }
}

impl EtaEstimator {
    /// An estimator with smoothing time constant `tau`.
    pub fn new(tau: Duration) -> Self {
        EtaEstimator {
            tau: tau.as_secs_f64().max(0.001),
            last: None,
            acc: 0.0,
            weight: 0.0,
        }
    }

    /// Feed a sample: `value` (e.g. fraction done, or bytes) at time `t` seconds. Returns the
    /// smoothed rate in value units per second once two samples are known.
    pub fn update(&mut self, t: f64, value: f64) -> Option<f64> {
        match self.last {
            None => {
                self.last = Some((t, value));
            }
            Some((t0, v0)) => {
                let dt = t - t0;
                if dt <= 0.0 {
                    // Same instant: keep the newest value, rate unchanged.
                    self.last = Some((t0, value));
                    return self.rate();
                }
                let inst = ((value - v0) / dt).max(0.0);
                let a = 1.0 - (-dt / self.tau).exp();
                self.acc += a * (inst - self.acc);
                self.weight += a * (1.0 - self.weight);
                self.last = Some((t, value));
            }
        }
        self.rate()
    }

    /// Smoothed rate, if known.
    pub fn rate(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.acc / self.weight)
    }

    /// Seconds until `value` reaches `target` at the smoothed rate; `None` while unknown or
    /// stalled (rate zero).
    pub fn eta(&self, target: f64) -> Option<f64> {
        let (_, v) = self.last?;
        let r = self.rate()?;
        if r <= f64::EPSILON {
            return None;
        }
        Some(((target - v) / r).max(0.0))
    }
}

/// Overall percent for `done` of `total` in `stage`, from the kind's stage weights. Unknown
/// stages of a weighted kind keep `previous` (percent never goes backwards).
pub fn percent(kind: JobKind, stage: &str, done: u64, total: u64, previous: f64) -> f64 {
    let frac = if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    };
    let stages = kind.stages();
    let p = if stages.is_empty() {
        frac * 100.0
    } else {
        match stages.iter().find(|s| s.name == stage) {
            Some(s) => s.start + (s.end - s.start) * frac,
            None => previous,
        }
    };
    p.max(previous).min(100.0)
}

/// At most one progress message per this interval (DESIGN §2).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// An attempt's `running` status event goes out with its first write, or once it has run this
/// long with nothing to write. The claim does not publish it: an attempt over sooner (most
/// jobs of a busy queue) goes from `queued` straight to `complete` on the stream, which saves
/// Redis a stream entry per job; nobody could have watched it run anyway. Its hash says
/// `running` from the claim on.
pub const ANNOUNCE_AFTER: Duration = Duration::from_millis(100);

/// One write to Redis, built by the flusher.
#[derive(Clone, Debug, Default)]
pub struct ProgressWrite {
    /// Hash fields to set.
    pub fields: Vec<(&'static str, String)>,
    /// Event type to append (`""` for none).
    pub event_type: &'static str,
    /// Event data.
    pub event_data: serde_json::Value,
    /// Log lines to append.
    pub logs: Vec<String>,
    /// Publish the attempt's `running` status event (with this attempt number) before the rest.
    pub announce: Option<u32>,
}

#[derive(Debug, Default)]
struct State {
    stage: String,
    done: u64,
    total: u64,
    /// Share of the stage done, when the handler knows it better than `done / total`
    /// ([`Progress::report_time`]).
    share: Option<f64>,
    /// Seconds the handler predicts are left, when it predicts them ([`Progress::report_time`]).
    left: Option<f64>,
    /// When `stage`/`done`/`total` last changed: the time the progress is true of.
    reported_at: Option<Instant>,
    dirty: bool,
    stage_changed: bool,
    logs: Vec<String>,
    done_flag: bool,
}

/// The handler's side: cheap, synchronous, clonable.
#[derive(Clone, Debug)]
pub struct Progress {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

impl Progress {
    /// Report `done` of `total` units in `stage`.
    pub fn report(&self, stage: &str, done: u64, total: u64) {
        self.report_inner(stage, done, total, None, None);
    }

    /// Report `done` of `total` units in `stage` (speed and the units shown) for work whose
    /// time does not follow its units (a restore's small files cost more per byte than its
    /// big ones) and whose handler predicts its time: `spent` seconds in the stage so far,
    /// `left` seconds to go. Percent is then `spent / (spent + left)` of the stage and the ETA
    /// is `left`, counted down until the next report, instead of a rate of percent.
    pub fn report_time(&self, stage: &str, done: u64, total: u64, spent: f64, left: f64) {
        let (spent, left) = (spent.max(0.0), left.max(0.0));
        let share = if spent + left > 0.0 {
            spent / (spent + left)
        } else {
            0.0
        };
        self.report_inner(stage, done, total, Some(share), Some(left));
    }

    fn report_inner(
        &self,
        stage: &str,
        done: u64,
        total: u64,
        share: Option<f64>,
        left: Option<f64>,
    ) {
        let mut s = self.state.lock().expect("progress lock");
        if s.share != share || s.left != left {
            s.reported_at = None;
        }
        s.share = share;
        s.left = left;
        if s.stage != stage {
            s.stage = stage.to_string();
            s.stage_changed = true;
            self.notify.notify_one();
        }
        if s.stage_changed || s.done != done || s.total != total || s.reported_at.is_none() {
            s.reported_at = Some(Instant::now());
        }
        s.done = done;
        s.total = total;
        s.dirty = true;
    }

    /// Add a log line (sent at once; the job keeps its last 100).
    pub fn log(&self, line: impl Into<String>) {
        let mut s = self.state.lock().expect("progress lock");
        s.logs.push(line.into());
        self.notify.notify_one();
    }
}

/// Writes one job's progress to Redis; lives as long as the job runs.
pub struct Flusher {
    queue: Queue,
    id: String,
    token: String,
    kind: JobKind,
    attempt: u32,
    /// The `running` event is out (see [`ANNOUNCE_AFTER`]).
    announced: bool,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    start: Instant,
    eta: EtaEstimator,
    speed: EtaEstimator,
    percent: f64,
    last_progress_event: Option<Instant>,
    /// Time (s since `start`) of the last sample given to `eta`.
    last_sample: f64,
    /// Smoothed interval between reports, seconds: silence much longer than this is a stall.
    report_gap: Option<f64>,
    cancel: CancellationToken,
}

impl Flusher {
    /// A reporter for a claimed job's attempt, and the flusher to drive with [`Flusher::run`].
    /// When a write learns the job was cancelled, `cancel` is triggered.
    pub fn new(
        queue: Queue,
        id: String,
        token: String,
        kind: JobKind,
        attempt: u32,
        cancel: CancellationToken,
    ) -> (Progress, Flusher) {
        let state = Arc::new(Mutex::new(State::default()));
        let notify = Arc::new(Notify::new());
        let p = Progress {
            state: state.clone(),
            notify: notify.clone(),
        };
        let mut eta = EtaEstimator::default();
        eta.update(0.0, 0.0);
        let f = Flusher {
            queue,
            id,
            token,
            kind,
            attempt,
            announced: false,
            state,
            notify,
            start: Instant::now(),
            eta,
            speed: EtaEstimator::default(),
            percent: 0.0,
            last_progress_event: None,
            last_sample: 0.0,
            report_gap: None,
            cancel,
        };
        (p, f)
    }

    /// Write until `stop` fires, then write whatever is left once.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let next = self.next_wake(Instant::now());
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            self.flush(false).await;
        }
        {
            let mut s = self.state.lock().expect("progress lock");
            s.done_flag = true;
        }
        self.flush(true).await;
    }

    /// When to write next without a report. The next progress message is due exactly a second
    /// after the last one: a fixed ticker beside it drifts, finds it due 1 ms too early, and
    /// skips a whole second. When that time has passed with nothing to send, wait a whole
    /// interval. Until the `running` event is out, wake at `ANNOUNCE_AFTER` to send it; once
    /// that time has passed (the write failed: Redis unreachable), retry at the interval like
    /// any other write. Never a time already past: that would spin.
    fn next_wake(&self, now: Instant) -> Instant {
        let next = match self.last_progress_event {
            Some(l) if l + PROGRESS_EVERY > now => l + PROGRESS_EVERY,
            _ => now + PROGRESS_EVERY,
        };
        let announce_at = self.start + ANNOUNCE_AFTER;
        if !self.announced && announce_at > now {
            next.min(announce_at)
        } else {
            next
        }
    }

    fn build(&mut self, last: bool) -> Option<ProgressWrite> {
        let mut s = self.state.lock().expect("progress lock");
        let now = Instant::now();
        let t = now.duration_since(self.start).as_secs_f64();
        let logs = std::mem::take(&mut s.logs);
        let stage_changed = std::mem::take(&mut s.stage_changed);
        let due = self
            .last_progress_event
            .is_none_or(|l| now.duration_since(l) >= PROGRESS_EVERY);
        if stage_changed {
            self.speed = EtaEstimator::default();
        }
        let ticking = !s.stage.is_empty() && s.total > 0;
        let announce_due = !self.announced && now.duration_since(self.start) >= ANNOUNCE_AFTER;
        if !(stage_changed
            || !logs.is_empty()
            || ((s.dirty || ticking) && due)
            || last && s.dirty
            || announce_due && !last)
        {
            return None;
        }
        let mut w = ProgressWrite {
            logs,
            announce: (!self.announced).then_some(self.attempt),
            ..Default::default()
        };
        if s.dirty || stage_changed || ticking {
            let (done, total) = match s.share {
                Some(share) => ((share * 1e6) as u64, 1_000_000),
                None => (s.done, s.total),
            };
            self.percent = percent(self.kind, &s.stage, done, total, self.percent);
            // The estimator learns from reports at the time they were made (a flush comes up
            // to a second later, and sampling then made every rate, and so every ETA, late);
            // between reports the ETA counts down; silence well past the usual interval
            // between reports is a stall, and is sampled as no progress so the ETA grows.
            let reported = s
                .reported_at
                .map_or(t, |r| r.duration_since(self.start).as_secs_f64());
            if reported > self.last_sample {
                let gap = reported - self.last_sample;
                self.report_gap = Some(match self.report_gap {
                    None => gap,
                    Some(g) => g + 0.25 * (gap - g),
                });
                self.eta.update(reported, self.percent);
                self.last_sample = reported;
            } else if t - self.last_sample > (3.0 * self.report_gap.unwrap_or(1.0)).max(2.0) {
                self.eta.update(t, self.percent);
                self.last_sample = t;
            }
            let speed = self.speed.update(self.last_sample, s.done as f64);
            let eta = match s.left {
                // The handler's own prediction, counted down from when it was made.
                Some(left) => Some((left - (t - reported)).max(0.0)),
                None => self
                    .eta
                    .eta(100.0)
                    .map(|e| (e - (t - self.last_sample)).max(0.0)),
            };
            w.fields = vec![
                ("stage", s.stage.clone()),
                ("done", s.done.to_string()),
                ("total", s.total.to_string()),
                ("percent", format!("{:.2}", self.percent)),
                (
                    "speed",
                    speed.map(|v| format!("{v:.0}")).unwrap_or_default(),
                ),
                ("eta", eta.map(|v| format!("{v:.1}")).unwrap_or_default()),
                // When `eta` was estimated: a reader counts down from it between writes.
                ("eta_at", crate::now_ms().to_string()),
            ];
            let data = serde_json::json!({
                "progress_percent": (self.percent * 100.0).round() / 100.0,
                "current_stage": s.stage,
                "bytes_processed": s.done,
                "bytes_total": s.total,
                "speed_mbps": speed.map(|v| v / 1e6),
                "eta_seconds": eta.map(|v| (v * 10.0).round() / 10.0),
            });
            if stage_changed {
                w.event_type = "stage";
                w.event_data = data;
                self.last_progress_event = Some(now);
            } else if due {
                w.event_type = "progress";
                w.event_data = data;
                self.last_progress_event = Some(now);
            }
            s.dirty = false;
        }
        Some(w)
    }

    async fn flush(&mut self, last: bool) {
        let Some(w) = self.build(last) else { return };
        match self.queue.write_progress(&self.id, &self.token, &w).await {
            Ok((owned, cancel)) => {
                self.announced |= w.announce.is_some();
                if cancel || !owned {
                    self.cancel.cancel();
                }
            }
            Err(e) => {
                tracing::warn!(job_id = %self.id, error = %e, "Progress write failed; will retry at the next tick.");
                // Keep the logs for the next attempt.
                let mut s = self.state.lock().expect("progress lock");
                let mut logs = w.logs;
                logs.append(&mut s.logs);
                s.logs = logs;
                s.dirty = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulate a job: `f(t)` = fraction done at time t (seconds), true end `t_end`; sample every
    /// second; return (t, estimated eta, true remaining) for each sample.
    fn simulate(f: impl Fn(f64) -> f64, t_end: f64) -> Vec<(f64, Option<f64>, f64, f64)> {
        let mut e = EtaEstimator::default();
        e.update(0.0, 0.0);
        let mut out = Vec::new();
        let mut t = 1.0;
        while t < t_end {
            let frac = f(t);
            e.update(t, frac * 100.0);
            out.push((t, e.eta(100.0), t_end - t, frac));
            t += 1.0;
        }
        out
    }

    #[test]
    fn constant_rate_eta_within_10_percent_after_10_percent_done() {
        let samples = simulate(|t| t / 200.0, 200.0);
        for (t, eta, truth, frac) in samples {
            if frac >= 0.10 {
                let eta = eta.expect("eta known");
                let err = (eta - truth).abs() / truth;
                assert!(err <= 0.10, "t={t} eta={eta} truth={truth} err={err}");
            }
        }
    }

    #[test]
    fn constant_rate_with_jittery_reports_stays_within_10_percent() {
        // Reports at uneven intervals (0.3 s .. 1.7 s) on a constant 120 s workload.
        let mut e = EtaEstimator::default();
        e.update(0.0, 0.0);
        let mut t = 0.0;
        let mut i = 0u32;
        while t < 119.0 {
            t += 0.3 + 1.4 * f64::from(i % 5) / 4.0;
            i += 1;
            let frac = (t / 120.0).min(1.0);
            e.update(t, frac * 100.0);
            if (0.1..1.0).contains(&frac) {
                let truth = 120.0 - t;
                let eta = e.eta(100.0).unwrap();
                assert!((eta - truth).abs() / truth <= 0.10, "t={t} eta={eta}");
            }
        }
    }

    #[test]
    fn accelerating_workload_overestimates_then_converges() {
        // Rate grows linearly: frac = (t/100)^2, done at t=100.
        let samples = simulate(|t| (t / 100.0).powi(2), 100.0);
        let mut last_err = f64::MAX;
        for (t, eta, truth, _) in &samples {
            if *t >= 20.0 {
                let eta = eta.unwrap();
                // A smoothed rate lags behind an accelerating one: it can only overestimate.
                assert!(eta >= truth * 0.95, "t={t} eta={eta} truth={truth}");
            }
            if *t >= 50.0 {
                last_err = (eta.unwrap() - truth).abs();
            }
        }
        assert!(
            last_err < 5.0,
            "converges near the end, last error {last_err}s"
        );
    }

    #[test]
    fn stalling_workload_eta_grows_then_recovers() {
        // 1 %/s for 30 s, stall (no progress) for 30 s, then 1 %/s again.
        let f = |t: f64| {
            if t < 30.0 {
                t / 100.0
            } else if t < 60.0 {
                0.30
            } else {
                0.30 + (t - 60.0) / 100.0
            }
        };
        let samples = simulate(f, 130.0);
        let at = |tt: f64| samples.iter().find(|s| s.0 == tt).unwrap().1;
        let before = at(29.0).unwrap();
        let mid = at(45.0).unwrap_or(f64::INFINITY);
        let late = at(59.0).unwrap_or(f64::INFINITY);
        assert!(
            mid > before * 2.0,
            "eta grows during a stall: {before} -> {mid}"
        );
        assert!(late > mid, "keeps growing: {mid} -> {late}");
        let recovered = at(110.0).unwrap();
        let truth = 130.0 - 110.0;
        assert!(
            (recovered - truth).abs() / truth <= 0.25,
            "recovers after the stall: {recovered} vs {truth}"
        );
    }

    /// The cause of the ETA a user saw 16 % off at the median (243 % at worst): a job whose
    /// first report is "stage set, nothing done" gave a first rate of zero, and the smoothed
    /// rate took several τ to climb from it. From the first interval that moves, the ETA must
    /// be right for a constant workload.
    #[test]
    fn a_first_report_of_nothing_done_does_not_drag_the_rate() {
        let mut e = EtaEstimator::default();
        e.update(0.0, 0.0);
        e.update(0.01, 0.0); // "stage set, 0 of 40"
        let mut t = 0.5;
        while t < 20.0 {
            e.update(t, t / 20.0 * 100.0); // one step every 0.5 s, 20 s in all
            let truth = 20.0 - t;
            let eta = e.eta(100.0).expect("eta known");
            assert!(
                (eta - truth).abs() <= 0.02 * 20.0,
                "t={t} eta={eta} truth={truth}"
            );
            t += 0.5;
        }
    }

    #[test]
    fn zero_rate_has_no_eta_and_no_panic() {
        let mut e = EtaEstimator::default();
        assert_eq!(e.eta(100.0), None);
        e.update(0.0, 0.0);
        e.update(1.0, 0.0);
        assert_eq!(e.eta(100.0), None);
        e.update(1.0, 5.0); // same instant
        assert_eq!(e.rate(), Some(0.0));
    }

    #[test]
    fn percent_follows_restore_stage_weights() {
        let k = JobKind::Restore;
        assert_eq!(percent(k, "extracting", 50, 100, 0.0), 45.0);
        assert_eq!(percent(k, "validating", 0, 10, 10.0), 90.0);
        assert_eq!(percent(k, "restoring_data", 1, 2, 0.0), 97.0);
        assert_eq!(percent(k, "finalizing", 1, 1, 0.0), 100.0);
        // unknown stage and going backwards keep the previous value
        assert_eq!(percent(k, "mystery", 1, 2, 42.0), 42.0);
        assert_eq!(percent(k, "extracting", 0, 1, 42.0), 42.0);
        // unweighted kinds use done/total directly
        assert_eq!(percent(JobKind::Diagnostic, "sleeping", 3, 4, 0.0), 75.0);
        assert_eq!(percent(JobKind::Diagnostic, "sleeping", 3, 0, 0.0), 0.0);
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    fn unconnected() -> Queue {
        Queue::new(crate::QueueConfig {
            redis_url: "redis://127.0.0.1:1".into(),
            ..crate::QueueConfig::default()
        })
        .expect("queue (never connected)")
    }

    /// The flusher wakes at ANNOUNCE_AFTER to send `running`; if that write failed, it retries
    /// a whole interval later, never at a time already past (which would spin while Redis is
    /// down).
    #[test]
    fn the_running_announcement_is_due_once_then_retried_at_the_interval() {
        let (_p, mut f) = Flusher::new(
            unconnected(),
            "j".into(),
            "t".into(),
            JobKind::Diagnostic,
            1,
            CancellationToken::new(),
        );
        let start = f.start;
        assert_eq!(f.next_wake(start), start + ANNOUNCE_AFTER);
        let late = start + ANNOUNCE_AFTER * 3;
        assert_eq!(
            f.next_wake(late),
            late + PROGRESS_EVERY,
            "not announced yet: no spin"
        );
        f.announced = true;
        assert_eq!(f.next_wake(start), start + PROGRESS_EVERY);
    }

    /// A handler that predicts its time: percent is the share of time spent (inside the
    /// stage's weight), the ETA is its `left`, the units stay the bytes for speed and display.
    #[tokio::test]
    async fn a_reported_time_sets_percent_and_eta() {
        let (p, mut f) = Flusher::new(
            unconnected(),
            "j".into(),
            "t".into(),
            JobKind::Restore,
            1,
            CancellationToken::new(),
        );
        p.report_time("extracting", 300, 1000, 3.0, 7.0);
        let w = f.build(false).expect("a write");
        let field = |k: &str| {
            w.fields
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        };
        // 30 % of the stage's 0–90.
        assert_eq!(field("percent").as_deref(), Some("27.00"));
        let eta: f64 = field("eta").unwrap().parse().unwrap();
        assert!((6.9..=7.0).contains(&eta), "{eta}");
        assert_eq!(field("done").as_deref(), Some("300"));
        assert_eq!(field("total").as_deref(), Some("1000"));
        assert_eq!(w.event_data["bytes_total"], 1000);
    }
}
