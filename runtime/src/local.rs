//! Runs a whole job on this machine: a pool of task threads (one per core), or — with
//! `sequential` — every task in order on the calling thread (the paper's §4.7 debugging
//! mode, and the reference the other modes are compared against byte for byte).
//!
//! Phases: plan (expand inputs, cut splits — errors here leave nothing on disk) → claim the
//! output directory → map tasks → reduce tasks (or, for map-only jobs, one part per map) →
//! job commit. Any failure aborts the job and removes everything it wrote.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quern_scheduler::TaskId;

use crate::input::{plan_splits, rows_input, Split};
use crate::io::IoService;
use crate::job::{AttemptInfo, Counters, InputFile, InputFormat, Job, TaskControl};
use crate::map::RunFile;
use crate::output::OutputDir;
use crate::task::{self, Source, TaskEnv};
use crate::{Error, Result};

/// How to run a job locally.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Task threads (ignored when `sequential`).
    pub threads: usize,
    /// Run everything on the calling thread, with synchronous std I/O.
    pub sequential: bool,
    /// Reduce partitions; 0 makes a map-only job.
    pub reducers: u32,
    /// Split size in bytes (rows for [`InputFormat::Rows`]).
    pub split_size: u64,
    /// Memory for all concurrently running tasks together, bytes: each task's share
    /// bounds its sort buffer (map) or its fetched segments and merge buffers (reduce).
    pub memory: u64,
    /// Segments a reduce merges at once (see [`crate::task::merge`]).
    pub merge_factor: usize,
    /// Write run files and part files with direct I/O (see [`crate::io`]).
    pub direct_io: bool,
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct JobReport {
    /// Counters summed over the committed attempts.
    pub counters: Counters,
    /// Number of map tasks.
    pub map_tasks: usize,
    /// Number of reduce tasks.
    pub reduce_tasks: usize,
    /// The committed part files, in partition order.
    pub parts: Vec<PathBuf>,
    /// Wall time from planning to commit.
    pub elapsed: Duration,
    /// Records skipped as bad (`--skip-bad-records`): input name and byte offset.
    pub skipped: Vec<(String, u64)>,
    /// What the job measured (attempt timeline, rates, latency histograms).
    pub report: Option<crate::report::Report>,
}

/// The splits of a job, ready to run.
#[derive(Debug)]
pub struct Plan {
    /// Inputs, in order (one synthetic entry for row-range jobs).
    pub inputs: Vec<InputFile>,
    /// One split per map task.
    pub splits: Vec<Split>,
}

/// Plans a job reading `format` over `inputs` (already expanded, see
/// [`crate::input::expand_inputs`]). Fails on bad input before anything is written.
pub fn plan(format: InputFormat, inputs: Vec<InputFile>, split_size: u64) -> Result<Plan> {
    let inputs = if matches!(format, InputFormat::Rows(_)) {
        vec![rows_input()]
    } else {
        inputs
    };
    let splits = plan_splits(&inputs, format, split_size)?;
    Ok(Plan { inputs, splits })
}

/// Plans and runs `job` to completion, writing its output under `output`.
pub fn run_job(
    job: &dyn Job,
    inputs: Vec<InputFile>,
    output: &Path,
    cfg: &LocalConfig,
) -> Result<JobReport> {
    let plan = plan(job.input_format(), inputs, cfg.split_size)?;
    run_planned(job, &plan, output, cfg)
}

/// Runs an already planned job (see [`plan`]).
pub fn run_planned(
    job: &dyn Job,
    plan: &Plan,
    output: &Path,
    cfg: &LocalConfig,
) -> Result<JobReport> {
    let started = Instant::now();
    let out = OutputDir::create(output)?;
    match execute(job, plan, &out, cfg) {
        Ok((counters, reduce_tasks)) => {
            let parts = out
                // One attempt (0) per task here.
                .commit_job(&vec![
                    0;
                    if cfg.reducers == 0 {
                        plan.splits.len()
                    } else {
                        reduce_tasks
                    }
                ])
                .inspect_err(|_| out.abort())?;
            Ok(JobReport {
                counters,
                map_tasks: plan.splits.len(),
                reduce_tasks,
                parts,
                elapsed: started.elapsed(),
                skipped: Vec::new(),
                report: None,
            })
        }
        Err(e) => {
            out.abort();
            Err(e)
        }
    }
}

fn execute(
    job: &dyn Job,
    plan: &Plan,
    out: &OutputDir,
    cfg: &LocalConfig,
) -> Result<(Counters, usize)> {
    let (io, threads) = if cfg.sequential {
        (IoService::std(), 1)
    } else {
        (IoService::auto(), cfg.threads.max(1))
    };
    let io = io.with_direct_io(cfg.direct_io);
    let work_dir = out.work_dir();
    // `memory` is this machine's budget, shared by the tasks that run at once.
    let slots = threads.min(plan.splits.len().max(1));
    let env = TaskEnv {
        io: &io,
        work_dir: &work_dir,
        reducers: cfg.reducers,
        memory: (cfg.memory / slots as u64).max(1 << 20),
        merge_factor: cfg.merge_factor,
    };
    let mut counters = Counters::default();
    let map_task = |i: usize| -> Result<(Vec<RunFile>, Counters)> {
        let split = &plan.splits[i];
        let task = TaskId::map(i as u32);
        let first = split.chunks.first().map_or(("?", 0), |c| {
            let name = plan
                .inputs
                .get(c.file as usize)
                .map_or("?", |f| f.name.as_str());
            (name, c.start)
        });
        guarded(&format!("{task} ({} byte {})", first.0, first.1), || {
            let control = TaskControl::default().with_attempt(local_attempt(true, i, &work_dir));
            task::map_task(job, &plan.inputs, split, i as u32, 0, out, &env, &control)
        })
    };
    let maps = run_pool(threads, plan.splits.len(), map_task)?;
    let mut runs: Vec<(u32, RunFile)> = Vec::new();
    for (m, (map_runs, c)) in maps.into_iter().enumerate() {
        counters.merge(&c);
        runs.extend(map_runs.into_iter().map(|r| (m as u32, r)));
    }
    if cfg.reducers == 0 {
        return Ok((counters, 0));
    }
    let reduce_task = |part: usize| -> Result<Counters> {
        let task = TaskId::reduce(part as u32);
        guarded(&task.to_string(), || {
            let mut input = env.reduce_input(part as u32, 0);
            for (map, run) in &runs {
                input.add(Source::of_run(run, part, Some(*map))?);
            }
            task::reduce_task(
                job,
                input,
                part as u32,
                0,
                out,
                &io,
                &TaskControl::default().with_attempt(local_attempt(false, part, &work_dir)),
            )
        })
    };
    for c in run_pool(threads, cfg.reducers as usize, reduce_task)? {
        counters.merge(&c);
    }
    Ok((counters, cfg.reducers as usize))
}

/// The attempt a local run's task runs as: the only attempt of job 1.
fn local_attempt(is_map: bool, index: usize, work_dir: &std::path::Path) -> AttemptInfo {
    AttemptInfo {
        job: 1,
        is_map,
        index: index as u32,
        attempt: 0,
        work_dir: work_dir.to_path_buf(),
    }
}

/// Physical memory in bytes (`MemTotal` of /proc/meminfo), if it can be read.
pub fn total_memory() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
}

/// The default sort-buffer budget: a quarter of physical memory (1 GiB if unknown).
pub fn default_memory() -> u64 {
    total_memory().map_or(1 << 30, |bytes| bytes / 4)
}

/// Task threads by default: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f`, turning a panic in user code into a task error.
pub(crate) fn guarded<T>(task: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(Error::TaskPanicked {
                task: task.to_string(),
                message,
            })
        }
    }
}

/// Runs tasks `0..n` on `threads` threads; results come back in task order. The first
/// error stops the pool from starting new tasks and is returned.
fn run_pool<T: Send>(
    threads: usize,
    n: usize,
    task: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    if threads <= 1 || n <= 1 {
        return (0..n).map(&task).collect();
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let (tx, rx) = crossbeam::channel::unbounded();
    std::thread::scope(|scope| {
        for t in 0..threads.min(n) {
            let (tx, next, failed, task) = (tx.clone(), &next, &failed, &task);
            std::thread::Builder::new()
                .name(format!("quern-task-{t}"))
                .spawn_scoped(scope, move || loop {
                    if failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = task(i);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                })
                .map_err(|e| Error::io("task thread", e))?;
        }
        Ok::<(), Error>(())
    })?;
    drop(tx);
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut first_err: Option<(usize, Error)> = None;
    for (i, r) in rx.iter() {
        match r {
            Ok(v) => results[i] = Some(v),
            Err(e) => {
                if first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                    first_err = Some((i, e));
                }
            }
        }
    }
    if let Some((_, e)) = first_err {
        return Err(e);
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.ok_or_else(|| Error::Usage(format!("task {i} did not run"))))
        .collect()
}
