//! A discrete-event simulator of a MapReduce cluster around the real scheduler.
//!
//! [`simulate`] drives `quern_scheduler::Scheduler` — the same state machine the
//! coordinator drives — with simulated workers on a simulated clock: no threads, no
//! sockets, no wall clock in the model. Workers join, heartbeat the progress of their
//! attempts (the real worker's progress weights: a map is read 1 / sorted 1 / spilled 2 per
//! input byte; a reduce is fetched 1 / merged and written 2 per byte, and reports 0 until
//! every map's output is known), report success, and go silent when killed; the
//! scheduler's commands (`Assign`, `Cancel`, `MapOutputReady`, `MapOutputLost`, `JobDone`)
//! are carried out as the coordinator would.
//!
//! # The model
//!
//! Time advances in fixed steps (`sim.step_ms`); within a step every running attempt moves
//! at the rate its resources allow (a fluid model), and events carry their exact times
//! within the step, so the scheduler sees heartbeats and commits in time order.
//!
//! * **Machines** ([`params::ClusterParams`]): `disks` disks of `disk_mb_s`, used in
//!   `io_chunk_kib` pieces with a seek before each (streams share every disk), so a disk
//!   streams at `chunk / (seek + chunk / rate)`; one NIC of `nic_mb_s` each way; a shared
//!   root of `bisection_gbps` for all cross-machine traffic.
//! * **A map** reads its split from local disk (GFS locality) at the lower of the disk and
//!   its CPU cost per byte, sorts its output in memory (CPU), and spills it to local disk.
//! * **A reduce** fetches its region of every committed map output, in the order the
//!   outputs were announced (quern's worker reads map locations from an append-only news
//!   log), with `fetches_in_flight` requests, each one round trip plus one seek on the
//!   serving machine's disk; the cluster's disks can serve only so many seeks a second, and
//!   that disk time is taken from every machine's local streams. Fetched data beyond
//!   `reduce_memory_mb` is spilled to local disk as it arrives; once every map's region is
//!   in, the reduce reads it back, sorts and merges (CPU), and writes `output_replicas`
//!   copies: one to its local disk, the others across the network to other machines' disks
//!   (under the cluster's symmetry, each machine's disk takes one copy from a peer), at no
//!   more than `output_write_mb_s`, the output file system's pace per writer.
//! * **Stragglers** ([`params::StragglerParams`]): a few machines whose disks read
//!   `bad_disk_factor` times slower (§3.6's 30 MB/s → 1 MB/s), a few whose processor
//!   caches are disabled (`no_cache_factor` slower CPU), and a few that other jobs' tasks
//!   come to share at a random time during the job (§3.6's "competition for CPU, memory,
//!   local disk, or network bandwidth"): from then on the job gets `busy_factor` of their
//!   CPU, disks and NIC.
//! * **Failures** ([`Run::Killed`]): `kill.workers` worker processes go silent at
//!   `kill.at_s`; their running attempts and map outputs are gone, and the scheduler finds
//!   out by heartbeat timeout. The cluster manager restarts the processes (the machines are
//!   fine), which join again under new ids after `kill.restart_s`.
//!
//! What it does not model: the serving side of a fetch per machine (a bad disk serves its
//! map outputs as fast as a good one: fetch capacity is pooled), rack locality of the
//! network, GFS input reads from remote replicas, memory beyond the reduce's buffer.
//!
//! [`report::build`] turns an [`Outcome`] into the same `quern_runtime::report::Report` a
//! real run writes, with the input / shuffle / output rates of Figure 3.

pub mod engine;
pub mod params;
pub mod report;

use std::path::PathBuf;

pub use engine::{simulate, Outcome};
pub use params::{Params, Run};

/// What can go wrong in the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A parameter file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A parameter file is malformed or out of range.
    #[error("{origin}: {message}")]
    Params {
        /// The file (or built-in) it came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The simulated job did not finish.
    #[error("the simulated job did not finish: {0}")]
    Unfinished(String),
    /// Writing a report failed.
    #[error("report: {0}")]
    Report(#[from] quern_runtime::Error),
}
