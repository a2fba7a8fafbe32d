//! The distributed runtime: a coordinator and workers talking QUIC.
//!
//! ```text
//!  client (quern <job>)          coordinator                        worker × N
//!  plan splits, sample ──Submit─▶ claims output dir, runs the   ◀── Register / Heartbeat /
//!                      ◀─Done─── pure `Scheduler`, turns its      Finished / Failed
//!                                commands into messages       ──▶ StartJob / Assign /
//!                                                                 MapOutputReady / Cancel
//!                                              worker ◀── FetchRequest ── worker (reducer)
//!                                                     ── block segments ─▶
//! ```
//!
//! Threads and runtimes (one design, used by every process): QUIC (quinn) runs on a
//! multi-threaded tokio runtime; file I/O runs on the dedicated tokio-uring thread behind
//! [`crate::io::IoService`], reached through channels (its futures are `!Send`); CPU work
//! (map, sort, merge, reduce) runs on tokio's blocking pool, at most `slots` attempts at
//! once per worker because the scheduler never assigns more.
//!
//! Data: a map attempt writes its runs to the worker's local work directory and keeps
//! serving them until the job ends. A reducer reads map output that lives on its own host
//! (same IP address) straight from disk, and fetches the rest over QUIC as the raw block
//! bytes stored on disk; either way each block is validated once, by the merge, before its
//! records are read in place. Outputs are committed by the attempt itself into the shared
//! output directory (first `link` wins); the coordinator commits the job.

pub mod client;
pub mod coordinator;
mod job_run;
pub mod journal;
pub mod launch;
mod metrics;
pub mod status;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use quern_shuffle::wire::{
    ChunkMsg, CounterMsg, InputFileMsg, JobSpec, RunMsg, SegmentMsg, SplitMsg,
};

use crate::input::{Chunk, Split};
use crate::job::{Counters, InputFile, Job};
use crate::map::RunFile;

/// Turns a job descriptor (from [`quern_shuffle::wire::JobSpec::job`]) into a runnable job.
/// Every process of a cluster runs the same binary, so they share the same factory.
pub type JobFactory = Arc<dyn Fn(&[u8]) -> Result<Arc<dyn Job>, String> + Send + Sync>;

/// Largest control frame accepted.
pub const MAX_FRAME: usize = 64 << 20;

pub(crate) fn inputs_from_msg(inputs: &[InputFileMsg]) -> Vec<InputFile> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, f)| InputFile {
            index: i as u32,
            path: PathBuf::from(&f.path),
            name: f.name.clone(),
            size: f.size,
        })
        .collect()
}

/// Wire form of input files.
pub fn inputs_to_msg(inputs: &[InputFile]) -> Vec<InputFileMsg> {
    inputs
        .iter()
        .map(|f| InputFileMsg {
            path: f.path.display().to_string(),
            name: f.name.clone(),
            size: f.size,
        })
        .collect()
}

/// Wire form of splits.
pub fn splits_to_msg(splits: &[Split]) -> Vec<SplitMsg> {
    splits
        .iter()
        .map(|s| SplitMsg {
            chunks: s
                .chunks
                .iter()
                .map(|c| ChunkMsg {
                    file: c.file,
                    start: c.start,
                    len: c.len,
                })
                .collect(),
        })
        .collect()
}

pub(crate) fn split_from_msg(s: &SplitMsg) -> Split {
    Split {
        chunks: s
            .chunks
            .iter()
            .map(|c| Chunk {
                file: c.file,
                start: c.start,
                len: c.len,
            })
            .collect(),
    }
}

/// The input name and byte offset of the record at position `pos` of map `map`'s split
/// (records are named by split position across attempts; see [`Split`]).
pub(crate) fn locate_record(spec: &JobSpec, map: u32, pos: u64) -> (String, u64) {
    let located = spec
        .splits
        .get(map as usize)
        .map(split_from_msg)
        .and_then(|s| s.locate(pos));
    match located {
        Some((file, offset)) => (
            spec.inputs
                .get(file as usize)
                .map_or_else(|| "?".to_string(), |f| f.name.clone()),
            offset,
        ),
        None => ("?".to_string(), pos),
    }
}

pub(crate) fn run_to_msg(run: &RunFile) -> RunMsg {
    RunMsg {
        path: run.path.display().to_string(),
        segments: run
            .segments
            .iter()
            .map(|&(offset, len)| SegmentMsg { offset, len })
            .collect(),
    }
}

pub(crate) fn run_from_msg(run: &RunMsg) -> RunFile {
    RunFile {
        path: PathBuf::from(&run.path),
        segments: run.segments.iter().map(|s| (s.offset, s.len)).collect(),
    }
}

pub(crate) fn counters_to_msg(c: &Counters) -> Vec<CounterMsg> {
    c.iter()
        .map(|(name, value)| CounterMsg {
            name: name.to_string(),
            value,
        })
        .collect()
}

pub(crate) fn counters_from_msg(c: &[CounterMsg]) -> Counters {
    let mut counters = Counters::default();
    for m in c {
        counters.add_named(m.name.clone(), m.value);
    }
    counters
}

fn net_err(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Net(e.to_string())
}
