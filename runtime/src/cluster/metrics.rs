//! What the coordinator measures about the running job: the attempt timeline, byte rates,
//! phase ends, heartbeat lag, and the histograms committed attempts ship. At the end it
//! becomes a [`Report`]; while the job runs it feeds the status page.
//!
//! Histograms from workers are merged only when their attempt commits, so, like counters,
//! losing attempts are not counted. Rates are physical (every attempt's bytes count).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use quern_scheduler::{AttemptId, AttemptState, Phase, Scheduler, WorkerId};
use quern_shuffle::wire::{HistogramMsg, JobIoMsg};

use crate::job::Counters;
use crate::report::{
    self, hist, AttemptRecord, NamedHistogram, Outcome, Percentiles, PhaseName, PhaseRecord,
    RateSeries, Report, WorkerRecord, REPORT_VERSION,
};

/// Width of a rate bucket.
const BUCKET: Duration = Duration::from_millis(100);

/// Histograms of a report, in display order, with their units.
const HISTOGRAMS: [(&str, &str); 7] = [
    (hist::MAP_ATTEMPT, "us"),
    (hist::REDUCE_ATTEMPT, "us"),
    (hist::FETCH_LATENCY, "us"),
    (hist::FETCH_THROUGHPUT, "KiB/s"),
    (hist::MAP_PHASE_END, "us"),
    (hist::JOB_END, "us"),
    (hist::HEARTBEAT_LAG, "us"),
];

/// The running job's measurements. Times are since the job started (the scheduler's clock).
#[derive(Debug)]
pub(super) struct JobMetrics {
    started_unix_ms: u64,
    histograms: BTreeMap<&'static str, Histogram<u64>>,
    /// Attempts assigned and not yet seen to end.
    open: BTreeSet<AttemptId>,
    ended: HashMap<AttemptId, Duration>,
    map_phase_end: Option<Duration>,
    /// Per worker: when its last byte counts arrived and what they were (input, shuffle,
    /// output).
    io_last: HashMap<WorkerId, (Duration, [u64; 3])>,
    /// Bytes per bucket: input, shuffle, output.
    rates: [Vec<u64>; 3],
    workers: BTreeMap<WorkerId, WorkerRecord>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl JobMetrics {
    pub(super) fn new() -> JobMetrics {
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        JobMetrics {
            started_unix_ms,
            histograms: HISTOGRAMS
                .iter()
                .map(|(name, _)| (*name, report::new_histogram()))
                .collect(),
            open: BTreeSet::new(),
            ended: HashMap::new(),
            map_phase_end: None,
            io_last: HashMap::new(),
            rates: Default::default(),
            workers: BTreeMap::new(),
        }
    }

    /// A worker took part in the job.
    pub(super) fn worker(&mut self, id: WorkerId, record: WorkerRecord) {
        self.workers.insert(id, record);
    }

    /// `id`'s work dir failed with `error`: it takes no map tasks until it has room.
    pub(super) fn work_dir_fault(&mut self, id: WorkerId, error: &str) {
        if let Some(w) = self.workers.get_mut(&id) {
            w.work_dir_fault = Some(error.to_string());
        }
    }

    /// An attempt was assigned.
    pub(super) fn assigned(&mut self, attempt: AttemptId) {
        self.open.insert(attempt);
    }

    /// A heartbeat arrived `lag` after the worker's previous one.
    pub(super) fn heartbeat_lag(&mut self, lag: Duration) {
        self.record(hist::HEARTBEAT_LAG, us(lag));
    }

    fn record(&mut self, name: &'static str, value: u64) {
        if let Some(h) = self.histograms.get_mut(name) {
            let _ = h.record(value.max(1));
        }
    }

    /// A worker's cumulative byte counts for the job at `now`: the growth since its last
    /// counts is spread evenly over the time between them.
    pub(super) fn io(&mut self, worker: WorkerId, now: Duration, msg: &JobIoMsg) {
        let counts = [msg.input, msg.shuffle, msg.output];
        let (since, before) = self
            .io_last
            .get(&worker)
            .copied()
            .unwrap_or((Duration::ZERO, [0; 3]));
        let now = now.max(since);
        let mut last = before;
        for (series, (new, old)) in self.rates.iter_mut().zip(counts.iter().zip(&mut last)) {
            let delta = new.saturating_sub(*old);
            *old = (*old).max(*new);
            spread(series, since, now, delta);
        }
        self.io_last.insert(worker, (now, last));
    }

    /// Merges the histograms a committed attempt shipped. Unknown names and undecodable
    /// histograms (a newer or broken worker) are logged and skipped.
    pub(super) fn merge(&mut self, histograms: &[HistogramMsg]) {
        for msg in histograms {
            let Some(h) = self.histograms.get_mut(msg.name.as_str()) else {
                tracing::debug!("ignoring unknown histogram {:?}", msg.name);
                continue;
            };
            match report::decode_v2(&msg.v2) {
                Ok(other) => {
                    if let Err(e) = h.add(&other) {
                        tracing::warn!("cannot merge histogram {}: {e}", msg.name);
                    }
                }
                Err(e) => tracing::warn!("bad histogram {} from a worker: {e}", msg.name),
            }
        }
    }

    /// Notes attempts that ended and the end of the map phase, after the scheduler moved.
    pub(super) fn sweep(&mut self, now: Duration, sched: &Scheduler) {
        let ended: Vec<AttemptId> = self
            .open
            .iter()
            .filter(|id| {
                sched
                    .attempt(**id)
                    .is_none_or(|a| a.state != AttemptState::Running)
            })
            .copied()
            .collect();
        for id in ended {
            self.open.remove(&id);
            self.ended.insert(id, now);
        }
        if self.map_phase_end.is_none() && sched.stats().maps_committed >= sched.config().maps {
            self.map_phase_end = Some(now);
            self.record(hist::MAP_PHASE_END, us(now));
        }
    }

    /// Bytes per second moved over the last second before `now`: input, shuffle, output.
    pub(super) fn current_rates(&self, now: Duration) -> [f64; 3] {
        let end = (now.as_nanos() / BUCKET.as_nanos()) as usize;
        let n = (Duration::from_secs(1).as_nanos() / BUCKET.as_nanos()) as usize;
        self.rates.each_ref().map(|series| {
            let sum: u64 = (end.saturating_sub(n)..end)
                .filter_map(|i| series.get(i))
                .sum();
            sum as f64
        })
    }

    /// Name, unit and percentiles of every histogram so far (cheap: no serialisation).
    pub(super) fn percentiles(&self) -> Vec<(&'static str, &'static str, Percentiles)> {
        HISTOGRAMS
            .iter()
            .filter_map(|(name, unit)| {
                Some((*name, *unit, Percentiles::of(self.histograms.get(name)?)))
            })
            .collect()
    }

    /// The histograms so far, with their units.
    fn named_histograms(&self) -> Vec<NamedHistogram> {
        HISTOGRAMS
            .iter()
            .filter_map(|(name, unit)| {
                Some(NamedHistogram::new(name, unit, self.histograms.get(name)?))
            })
            .collect()
    }

    /// The job's report, at its commit `now`.
    pub(super) fn report(
        mut self,
        name: &str,
        now: Duration,
        sched: &Scheduler,
        counters: &Counters,
    ) -> Report {
        self.sweep(now, sched);
        self.record(hist::JOB_END, us(now));
        let config = sched.config();
        let mut phases = Vec::new();
        if let Some(end) = self.map_phase_end {
            phases.push(PhaseRecord {
                phase: PhaseName::Map,
                end_us: us(end),
            });
        }
        if config.reduces > 0 {
            phases.push(PhaseRecord {
                phase: PhaseName::Reduce,
                end_us: us(now),
            });
        }
        let attempts = sched
            .attempts()
            .map(|(id, a)| AttemptRecord {
                phase: match a.task.phase {
                    Phase::Map => PhaseName::Map,
                    Phase::Reduce => PhaseName::Reduce,
                },
                task: a.task.index,
                attempt: id.0,
                worker: a.worker.0,
                start_us: us(a.started),
                end_us: us(self.ended.get(&id).copied().unwrap_or(now).max(a.started)),
                outcome: match a.state {
                    AttemptState::Running => Outcome::Running,
                    AttemptState::Committed => Outcome::Committed,
                    AttemptState::OutputLost | AttemptState::Lost => Outcome::Lost,
                    AttemptState::Failed { .. } => Outcome::Failed,
                    AttemptState::Cancelled { .. } => Outcome::Cancelled,
                },
                backup: a.backup,
            })
            .collect();
        let [input, shuffle, output] = self.rates.clone();
        Report {
            version: REPORT_VERSION,
            job: name.to_string(),
            started_unix_ms: self.started_unix_ms,
            wall_us: us(now),
            map_tasks: config.maps,
            reduce_tasks: config.reduces,
            workers: self.workers.values().cloned().collect(),
            counters: counters.iter().map(|(k, v)| (k.to_string(), v)).collect(),
            phases,
            attempts,
            rates: RateSeries {
                bucket_us: us(BUCKET),
                input,
                shuffle,
                output,
            },
            histograms: self.named_histograms(),
        }
    }
}

/// Adds `bytes` to `series`, spread evenly over the buckets `from..to` covers (all into the
/// bucket of `to` when the span is empty).
fn spread(series: &mut Vec<u64>, from: Duration, to: Duration, bytes: u64) {
    if bytes == 0 {
        return;
    }
    let bucket = BUCKET.as_nanos();
    let (a, b) = (from.as_nanos(), to.as_nanos());
    let last = (b / bucket) as usize;
    if series.len() <= last {
        series.resize(last + 1, 0);
    }
    if b <= a {
        series[last] += bytes;
        return;
    }
    let span = b - a;
    let mut given = 0u64;
    let mut t = a;
    while t < b {
        let i = (t / bucket) as usize;
        let end = ((i as u128 + 1) * bucket).min(b);
        let share = (u128::from(bytes) * (end - a) / span) as u64 - given;
        series[i] += share;
        given += share;
        t = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_keeps_every_byte_and_fills_the_span() {
        let mut s = Vec::new();
        spread(
            &mut s,
            Duration::from_millis(50),
            Duration::from_millis(350),
            3000,
        );
        assert_eq!(s.iter().sum::<u64>(), 3000);
        assert_eq!(s, vec![500, 1000, 1000, 500]);
        spread(
            &mut s,
            Duration::from_millis(350),
            Duration::from_millis(350),
            7,
        );
        assert_eq!(s[3], 507);
    }

    #[test]
    fn io_counts_only_growth() {
        let mut m = JobMetrics::new();
        let w = WorkerId(1);
        let msg = |input, shuffle, output| JobIoMsg {
            job: 1,
            input,
            shuffle,
            output,
        };
        m.io(w, Duration::from_millis(100), &msg(1000, 0, 0));
        m.io(w, Duration::from_millis(200), &msg(3000, 10, 0));
        // A count that went back (should not happen) adds nothing, and is not counted twice.
        m.io(w, Duration::from_millis(300), &msg(2000, 10, 5));
        m.io(w, Duration::from_millis(400), &msg(3500, 10, 5));
        assert_eq!(m.rates[0].iter().sum::<u64>(), 3500);
        assert_eq!(m.rates[1].iter().sum::<u64>(), 10);
        assert_eq!(m.rates[2].iter().sum::<u64>(), 5);
    }
}
