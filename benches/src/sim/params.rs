//! The simulator's parameters, read from a TOML file (`benches/sim/paper-sort.toml` is the
//! MapReduce paper's sort and the default). Every field is documented in that file; units
//! are in the field names (`_mb_s` = 10^6 bytes per second, `_ms`, `_s`, `_ns_per_byte`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::SimError;

/// Everything that drives one simulated job. The same value drives all three Figure 3 runs;
/// only [`Run`] differs between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Seed of every random draw (straggler choice, jitter, join times, the killed workers).
    pub seed: u64,
    /// The job's shape.
    pub job: JobParams,
    /// The machines and the network.
    pub cluster: ClusterParams,
    /// CPU and protocol costs of the tasks.
    pub costs: CostParams,
    /// Machines that are slow, as the paper saw them.
    pub stragglers: StragglerParams,
    /// The scheduler's knobs that are not its defaults.
    pub scheduler: SchedulerParams,
    /// The `killed` run's failure.
    pub kill: KillParams,
    /// The `--scale` run's overrides.
    pub scale: ScaleParams,
    /// Simulation resolution.
    pub sim: SimParams,
}

/// The job's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobParams {
    /// Job name in the report.
    pub name: String,
    /// Total input, bytes.
    pub input_bytes: f64,
    /// Map tasks (M).
    pub maps: u32,
    /// Reduce tasks (R).
    pub reduces: u32,
    /// Map output bytes per input byte.
    pub intermediate_ratio: f64,
    /// Reduce output bytes per intermediate byte.
    pub output_ratio: f64,
    /// Copies of the output written (the paper's GFS output: 2).
    pub output_replicas: u32,
}

/// The machines and the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterParams {
    /// Worker processes, one per machine.
    pub workers: u32,
    /// Attempts a worker runs at once.
    pub slots: u32,
    /// Disks per machine.
    pub disks: u32,
    /// Sequential transfer rate of one disk, MB/s.
    pub disk_mb_s: f64,
    /// Average seek plus rotational delay, ms.
    pub disk_seek_ms: f64,
    /// Bytes a disk transfers per seek when several streams share it, KiB.
    pub io_chunk_kib: f64,
    /// NIC rate, each direction, MB/s.
    pub nic_mb_s: f64,
    /// Aggregate bandwidth at the root of the switch tree, Gbit/s.
    pub bisection_gbps: f64,
    /// Round trip of one fetch request, ms.
    pub rtt_ms: f64,
    /// Worker processes join at times uniform in `0..startup_s`, s.
    pub startup_s: f64,
    /// Heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// The scheduler declares a silent worker lost after this, ms.
    pub heartbeat_timeout_ms: u64,
    /// Reduce memory for fetched data, MB; a larger partition is spilled and read back.
    pub reduce_memory_mb: f64,
    /// Rate one reduce writes its output file at, all replicas, MB/s (the output file
    /// system's pace per writer, below what its disks and NIC would allow).
    pub output_write_mb_s: f64,
}

/// CPU and protocol costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostParams {
    /// Map: parse, extract the key, partition, ns per input byte.
    pub map_ns_per_byte: f64,
    /// Map: sort the buffered output, ns per intermediate byte.
    pub map_sort_ns_per_byte: f64,
    /// Reduce: merge and sort, ns per intermediate byte.
    pub reduce_sort_ns_per_byte: f64,
    /// Reduce: the reduce function and output formatting, ns per output byte.
    pub reduce_ns_per_byte: f64,
    /// Fetches a reducer keeps in flight.
    pub fetches_in_flight: u32,
    /// Each attempt's speed is multiplied by a factor uniform in `1 ± task_jitter`.
    pub task_jitter: f64,
}

/// Slow machines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StragglerParams {
    /// Machines whose disks read this many times slower.
    pub bad_disk_workers: u32,
    /// Read slowdown of a bad disk.
    pub bad_disk_factor: f64,
    /// Machines that other jobs' tasks come to share during the job.
    pub busy_workers: u32,
    /// Slowdown of a busy machine's CPU, disks and NIC once they do.
    pub busy_factor: f64,
    /// Each busy machine's contention starts at a time uniform in `0..busy_onset_s`, s.
    pub busy_onset_s: f64,
    /// Machines whose processor caches are disabled (§3.6's initialization bug).
    pub no_cache_workers: u32,
    /// Their CPU slowdown.
    pub no_cache_factor: f64,
}

/// Scheduler knobs (everything else is `quern_scheduler::Config::default()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerParams {
    /// `Config::min_runtime`, s.
    pub min_runtime_s: f64,
}

/// The `killed` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    /// Worker processes killed.
    pub workers: u32,
    /// When, s since job start.
    pub at_s: f64,
    /// The cluster manager restarts each killed process on its machine after this, s; the
    /// new process joins under a new id.
    pub restart_s: f64,
}

/// `--scale`: the job and cluster shape overridden, no stragglers, no kill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleParams {
    /// M.
    pub maps: u32,
    /// R.
    pub reduces: u32,
    /// Worker processes.
    pub workers: u32,
    /// Heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// Total input, bytes.
    pub input_bytes: f64,
}

/// Resolution of the simulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimParams {
    /// The fluid model's time step, ms.
    pub step_ms: u64,
    /// Width of a `RateSeries` bucket, ms.
    pub rate_bucket_ms: u64,
    /// Give up after this much simulated time, s.
    pub max_sim_s: f64,
}

/// What differs between the runs of one parameter file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Run {
    /// Backups on, no failures.
    Normal,
    /// Speculation off.
    NoBackups,
    /// `kill.workers` worker processes go silent at `kill.at_s`.
    Killed,
}

impl Run {
    /// All three, in the paper's order.
    pub const ALL: [Run; 3] = [Run::Normal, Run::NoBackups, Run::Killed];

    /// The run's name (its directory under `--out`).
    pub fn name(self) -> &'static str {
        match self {
            Run::Normal => "normal",
            Run::NoBackups => "no-backups",
            Run::Killed => "killed",
        }
    }

    /// The run called `name`.
    pub fn parse(name: &str) -> Option<Run> {
        Run::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// The paper's sort, shipped as `benches/sim/paper-sort.toml`.
pub const PAPER_SORT: &str = include_str!("../../sim/paper-sort.toml");

impl Params {
    /// Parses TOML `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Params, SimError> {
        let params: Params = toml::from_str(text).map_err(|e| SimError::Params {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        params.validate(origin)?;
        Ok(params)
    }

    /// Reads and parses the TOML file at `path`.
    pub fn load(path: &Path) -> Result<Params, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Params::parse(&text, &path.display().to_string())
    }

    /// The shipped default, the paper's sort.
    pub fn paper_sort() -> Result<Params, SimError> {
        Params::parse(PAPER_SORT, "benches/sim/paper-sort.toml")
    }

    /// These parameters with `[scale]` applied: its job and cluster shape, no stragglers.
    pub fn scaled(&self) -> Params {
        let mut p = self.clone();
        p.job.maps = self.scale.maps;
        p.job.reduces = self.scale.reduces;
        p.job.input_bytes = self.scale.input_bytes;
        p.cluster.workers = self.scale.workers;
        p.cluster.heartbeat_ms = self.scale.heartbeat_ms;
        p.stragglers.bad_disk_workers = 0;
        p.stragglers.busy_workers = 0;
        p.stragglers.no_cache_workers = 0;
        p
    }

    fn validate(&self, origin: &str) -> Result<(), SimError> {
        let bad = |message: &str| {
            Err(SimError::Params {
                origin: origin.to_string(),
                message: message.to_string(),
            })
        };
        let c = &self.cluster;
        let positive = [
            self.job.input_bytes,
            c.disk_mb_s,
            c.io_chunk_kib,
            c.nic_mb_s,
            c.bisection_gbps,
            c.output_write_mb_s,
            self.stragglers.bad_disk_factor,
            self.stragglers.busy_factor,
            self.stragglers.no_cache_factor,
        ];
        if positive.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return bad("rates, sizes and slowdown factors must be positive");
        }
        if self.job.maps == 0 || c.workers == 0 || c.slots == 0 || c.disks == 0 {
            return bad("maps, workers, slots and disks must be at least 1");
        }
        if self.job.output_replicas == 0 || self.costs.fetches_in_flight == 0 {
            return bad("output_replicas and fetches_in_flight must be at least 1");
        }
        if c.heartbeat_ms == 0 || self.sim.step_ms == 0 || self.sim.rate_bucket_ms == 0 {
            return bad("heartbeat_ms, step_ms and rate_bucket_ms must be at least 1");
        }
        if !(self.stragglers.busy_onset_s.is_finite() && self.stragglers.busy_onset_s >= 0.0) {
            return bad("busy_onset_s must be a time, 0 or more");
        }
        if !(0.0..1.0).contains(&self.costs.task_jitter) {
            return bad("task_jitter must be in 0..1");
        }
        let s = &self.stragglers;
        let stragglers = s.bad_disk_workers + s.busy_workers + s.no_cache_workers;
        if stragglers > c.workers || self.kill.workers >= c.workers {
            return bad("more stragglers or killed workers than workers");
        }
        if self.scale.maps == 0 || self.scale.workers == 0 || self.scale.heartbeat_ms == 0 {
            return bad("scale.maps, scale.workers and scale.heartbeat_ms must be at least 1");
        }
        Ok(())
    }
}
