//! The one task executor: what a map or reduce attempt does, whoever drives it.
//!
//! `--sequential`, `--in-process` (the thread pool in [`crate::local`]) and the cluster
//! worker ([`crate::cluster::worker`]) are drivers: they decide *when* and *where* an
//! attempt runs and where its reduce input comes from; everything an attempt does between
//! its input and its committed output is here, written once:
//!
//! - [`map_task`]: read the split's chunks in place, then either write and commit the part
//!   file (map-only jobs) or partition, sort, combine and spill runs ([`crate::map`]).
//! - [`ReduceInput`] ([`merge`]): the reduce's input, gathered from local runs, fetched
//!   buffers or spilled fetches, merged with a bounded fan-in.
//! - [`reduce_task`]: the last merge passes, the final k-way merge feeding `reduce`
//!   ([`crate::reduce`]), and the commit of the part file.

pub mod merge;

use std::path::Path;

pub use merge::{MergeConfig, ReduceInput, Source, DEFAULT_MERGE_FACTOR};

use crate::input::Split;
use crate::io::IoService;
use crate::job::{Counters, InputFile, Job, TaskControl};
use crate::map::{run_map, run_map_only, MapEnv, RunFile, BLOCK_BYTES, CHUNK};
use crate::output::OutputDir;
use crate::reduce::reduce_to_file;
use crate::Result;

/// Memory a reduce task keeps for its own buffers besides fetched segments: the output
/// buffer, a merge pass's output buffer and a block being built.
pub const REDUCE_BUFFERS: u64 = (2 * CHUNK + 2 * BLOCK_BYTES) as u64;

/// Where an attempt runs: its I/O backend, scratch directory and memory share.
#[derive(Debug, Clone, Copy)]
pub struct TaskEnv<'a> {
    /// The I/O backend for runs and part files.
    pub io: &'a IoService,
    /// Local directory for map runs and reduce scratch files.
    pub work_dir: &'a Path,
    /// Reduce partitions (0: map-only job).
    pub reducers: u32,
    /// This task's share of the worker's memory budget, bytes.
    pub memory: u64,
    /// Segments merged at once by a reduce.
    pub merge_factor: usize,
}

impl TaskEnv<'_> {
    /// An empty reduce input for `part`, attempt `attempt`: fetched segments may take the
    /// task's memory share less [`REDUCE_BUFFERS`].
    pub fn reduce_input(&self, part: u32, attempt: u64) -> ReduceInput {
        ReduceInput::new(
            self.io,
            self.work_dir,
            &format!("reduce-{part:05}-a{attempt}"),
            MergeConfig {
                factor: self.merge_factor,
                memory: self.memory.saturating_sub(REDUCE_BUFFERS),
            },
        )
    }
}

/// Runs map task `index`, attempt `attempt`, over `split`. A map-only job writes its part
/// file and commits it (first attempt wins) and returns no runs; otherwise the sorted runs
/// are left in `env.work_dir` for the reducers.
#[allow(clippy::too_many_arguments)]
pub fn map_task(
    job: &dyn Job,
    inputs: &[InputFile],
    split: &Split,
    index: u32,
    attempt: u64,
    out: &OutputDir,
    env: &TaskEnv<'_>,
    control: &TaskControl,
) -> Result<(Vec<RunFile>, Counters)> {
    if env.reducers == 0 {
        let tmp = out.attempt_file(index as usize, attempt);
        let counters = run_map_only(job, inputs, split, &tmp, env.io, control)
            .inspect_err(|_| remove_quietly(&tmp))?;
        out.finish_attempt(index as usize, attempt)?;
        return Ok((Vec::new(), counters));
    }
    let map_env = MapEnv {
        io: env.io,
        work_dir: env.work_dir,
        reducers: env.reducers,
        memory: usize::try_from(env.memory).unwrap_or(usize::MAX),
    };
    let name = format!("map-{index:05}-a{attempt}");
    let (output, counters) = run_map(job, inputs, split, &name, &map_env, control)?;
    Ok((output.runs, counters))
}

/// Runs reduce partition `part`, attempt `attempt`, over `input` (complete: every map's
/// output added): the remaining merge passes, the final merge through `job.reduce`, and
/// the commit of the part file. The input's scratch files are removed either way.
pub fn reduce_task(
    job: &dyn Job,
    input: ReduceInput,
    part: u32,
    attempt: u64,
    out: &OutputDir,
    io: &IoService,
    control: &TaskControl,
) -> Result<Counters> {
    let ready = input.finish(control)?;
    let tmp = out.attempt_file(part as usize, attempt);
    let mut counters = reduce_to_file(job, part, &ready.segments, &tmp, io, control)
        .inspect_err(|_| remove_quietly(&tmp))?;
    counters.merge(&ready.counters);
    drop(ready);
    out.finish_attempt(part as usize, attempt)?;
    Ok(counters)
}

fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}
