//! Job reports: what a finished job measured, in one serialisable value.
//!
//! The coordinator builds a [`Report`] while a job runs (attempt timeline, byte rates,
//! counters) and merges the HDR histograms workers ship with their results. The client
//! prints [`Report::summary`] on stderr and, with `--report DIR`, writes it with
//! [`write_dir`]: `report.json` (this value), one `NAME.hgrm` per histogram (HdrHistogram's
//! percentile-distribution text) and `report.html` (a self-contained page with inline SVG
//! plots). [`load_dir`] reads `report.json` back, so `quern report DIR` can re-render it.
//!
//! Times are microseconds since the job started, unless a field says otherwise.
//!
//! Submodules, all re-exported here:
//! - `codec`: [`encode_v2`] / [`decode_v2`], histograms as bytes (network-safe decoding).
//! - `text`: [`Report::summary`] and the human formatting of durations, rates and bytes.
//! - `hgrm`: [`percentile_distribution`] / [`parse_hgrm`], Java HdrHistogram's `.hgrm` text.
//! - `html`: [`render_html`], the self-contained page with the timeline, rate and
//!   percentile plots.
//! - `dir`: [`write_dir`] / [`load_dir`] (its text parsed by [`parse_report`]), the report
//!   directory, written atomically.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

mod codec;
mod dir;
mod hgrm;
mod html;
mod text;

pub use codec::{decode_v2, encode_v2};
pub use dir::{load_dir, parse_report, write_dir, REPORT_HTML, REPORT_JSON};
pub use hgrm::{parse_hgrm, percentile_distribution, TICKS_PER_HALF_DISTANCE};
pub use html::render_html;
pub(crate) use text::escape_html;
pub use text::{
    headline, human_bytes, human_mb_per_s, human_us, human_value, own_counters,
    COUNTER_INPUT_BYTES, COUNTER_OUTPUT_BYTES, ENGINE_COUNTER_GROUPS,
};

/// Version of the `report.json` layout.
pub const REPORT_VERSION: u32 = 1;

/// Significant figures of every histogram.
pub const SIGFIG: u8 = 3;

/// Histogram names (also the `.hgrm` file stems) and their units.
pub mod hist {
    /// Duration of a map attempt that committed, µs.
    pub const MAP_ATTEMPT: &str = "map_attempt";
    /// Duration of a reduce attempt that committed, µs.
    pub const REDUCE_ATTEMPT: &str = "reduce_attempt";
    /// One shuffle fetch, request sent → last byte received, µs.
    pub const FETCH_LATENCY: &str = "fetch_latency";
    /// Throughput of one shuffle fetch, KiB/s.
    pub const FETCH_THROUGHPUT: &str = "fetch_throughput";
    /// Job start → end of the map phase, µs (one sample per job).
    pub const MAP_PHASE_END: &str = "map_phase_end";
    /// Job start → end of the reduce phase (the job's commit), µs (one sample per job).
    pub const JOB_END: &str = "job_end";
    /// Gap between consecutive heartbeats of a worker as the coordinator receives them, µs
    /// (sent every 250 ms; the tail shows stalls).
    pub const HEARTBEAT_LAG: &str = "heartbeat_lag";
}

/// A new empty histogram with quern's precision (3 significant figures, auto-resizing).
pub fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(SIGFIG).expect("3 significant figures is a valid precision");
    h.auto(true);
    h
}

/// Everything a finished job measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// Job name (`terasort`, `wc`, ...).
    pub job: String,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Job start → commit, µs.
    pub wall_us: u64,
    /// Map tasks (M).
    pub map_tasks: u32,
    /// Reduce tasks (R; 0 for a map-only job).
    pub reduce_tasks: u32,
    /// Workers that took part.
    pub workers: Vec<WorkerRecord>,
    /// Counters of the committed attempts, plus the scheduler's (`attempts.*`, `backups.*`).
    pub counters: BTreeMap<String, u128>,
    /// When each phase ended.
    pub phases: Vec<PhaseRecord>,
    /// Every attempt the job launched, committed or not, in launch order.
    pub attempts: Vec<AttemptRecord>,
    /// Input, shuffle and output bytes over time.
    pub rates: RateSeries,
    /// Latency histograms, by name (see [`hist`]).
    pub histograms: Vec<NamedHistogram>,
}

/// One worker of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The worker's id in the coordinator.
    pub id: u32,
    /// `ip:port` of its endpoint.
    pub addr: String,
    /// Its process id.
    pub pid: u32,
    /// Attempts it runs at once.
    pub slots: u32,
    /// The failure of its work dir (full, failing disk) that took it off map tasks during
    /// the job, if one did: the last one reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir_fault: Option<String>,
}

/// A task phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseName {
    /// Map tasks.
    Map,
    /// Reduce tasks.
    Reduce,
}

/// The end of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// The phase.
    pub phase: PhaseName,
    /// When its last task committed, µs since job start.
    pub end_us: u64,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Its output is the task's output.
    Committed,
    /// It failed (error reported by the worker).
    Failed,
    /// The coordinator cancelled it (another attempt of the task won, or the job ended).
    Cancelled,
    /// Its worker was lost while it ran.
    Lost,
    /// It was still running when the job ended (should not happen for a job that succeeded).
    Running,
}

/// One attempt of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Phase of its task.
    pub phase: PhaseName,
    /// Task index (map index, or reduce partition).
    pub task: u32,
    /// Attempt id (unique within the job).
    pub attempt: u64,
    /// Worker id it ran on.
    pub worker: u32,
    /// Assigned at, µs since job start.
    pub start_us: u64,
    /// Ended at, µs since job start.
    pub end_us: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// It was a speculative backup of a running attempt.
    pub backup: bool,
}

/// Bytes moved per time bucket, summed over workers (losing attempts included: these are
/// physical rates, like Figure 3 of the MapReduce paper).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RateSeries {
    /// Width of a bucket, µs.
    pub bucket_us: u64,
    /// Map input bytes read in each bucket.
    pub input: Vec<u64>,
    /// Shuffle bytes fetched by reducers in each bucket.
    pub shuffle: Vec<u64>,
    /// Output bytes written in each bucket.
    pub output: Vec<u64>,
}

/// Percentiles of a histogram, as printed and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Smallest sample.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A histogram with its name and unit, stored as the crate's V2 serialization (base64)
/// next to its percentiles, so the JSON is readable and lossless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedHistogram {
    /// Name, one of [`hist`].
    pub name: String,
    /// Unit of the values (`us`, `KiB/s`).
    pub unit: String,
    /// Percentiles of the histogram.
    pub percentiles: Percentiles,
    /// `hdrhistogram::serialization::V2Serializer` output, base64 (standard alphabet).
    pub v2: String,
}

impl NamedHistogram {
    /// `h` under `name`, with its percentiles and its V2 encoding.
    pub fn new(name: &str, unit: &str, h: &Histogram<u64>) -> Self {
        Self {
            name: name.to_owned(),
            unit: unit.to_owned(),
            percentiles: Percentiles::of(h),
            v2: base64::engine::general_purpose::STANDARD.encode(encode_v2(h)),
        }
    }

    /// Decodes the histogram from [`NamedHistogram::v2`].
    pub fn histogram(&self) -> crate::Result<Histogram<u64>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.v2)
            .map_err(|e| {
                crate::Error::Report(format!("histogram {}: bad base64: {e}", self.name))
            })?;
        decode_v2(&bytes).map_err(|e| match e {
            crate::Error::Report(why) => {
                crate::Error::Report(format!("histogram {}: {why}", self.name))
            }
            other => other,
        })
    }
}

impl Report {
    /// The histogram called `name` (see [`hist`]), if the report has it.
    pub fn histogram(&self, name: &str) -> Option<&NamedHistogram> {
        self.histograms.iter().find(|h| h.name == name)
    }
}

#[cfg(test)]
mod tests;
