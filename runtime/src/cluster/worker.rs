//! A worker: registers with the coordinator, runs the attempts it is assigned, and serves
//! its map outputs to reducers.
//!
//! Tasks on one worker:
//! - the **control loop** reads [`ToWorker`] messages and starts/cancels attempts;
//! - a **writer** sends [`ToCoordinator`] messages (results, failures) in order;
//! - a **heartbeat** every 250 ms reports the progress of every running attempt;
//! - the **fetch server** answers [`FetchRequest`]s with the requested partition of a map
//!   attempt's runs, sent as the bytes on disk (an mmap handed to quinn, no copy);
//! - one task per **attempt**: the CPU part runs on tokio's blocking pool; a reduce first
//!   gathers one segment list per map as map outputs become ready (local disk when the map
//!   ran on this host, QUIC otherwise) and reports each fetch that fails.
//!
//! Shared state lives in one `std::sync::Mutex` that is never held across an `.await`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use quern_shuffle::net::{self, NetError};
use quern_shuffle::wire::{
    decode_msg, encode_msg, FetchRequest, Hello, HistogramMsg, JobIoMsg, JobSpec, MapLocation,
    ProgressMsg, Register, TaskMsg, ToCoordinator, ToWorker,
};
use quern_shuffle::Secret;
use tokio::sync::{mpsc, watch};

use super::{
    counters_to_msg, inputs_from_msg, net_err, run_from_msg, run_to_msg, split_from_msg,
    JobFactory, MAX_FRAME,
};
use crate::input::map_file;
use crate::io::IoService;
use crate::job::{Counters, InputFile, Job, TaskControl};
use crate::local::guarded;
use crate::map::{run_map, run_map_only, MapEnv, RunFile};
use crate::output::OutputDir;
use crate::reduce::{reduce_to_file, Segment};
use crate::report;
use crate::{Error, Result};

/// How a worker runs.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The coordinator to join.
    pub coordinator: SocketAddr,
    /// Attempts run at once.
    pub slots: u32,
    /// Where map runs are written (local disk).
    pub work_dir: PathBuf,
    /// Address of this worker's endpoint (port 0: any).
    pub bind: SocketAddr,
    /// Read map output of this host from disk rather than over QUIC.
    pub local_reads: bool,
    /// How long to keep trying to reach the coordinator at start.
    pub join_timeout: Duration,
    /// Builds jobs from descriptors.
    pub factory: JobFactory,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("coordinator", &self.coordinator)
            .field("slots", &self.slots)
            .field("work_dir", &self.work_dir)
            .field("bind", &self.bind)
            .field("local_reads", &self.local_reads)
            .finish_non_exhaustive()
    }
}

struct JobEntry {
    id: u64,
    spec: JobSpec,
    job: std::result::Result<Arc<dyn Job>, String>,
    inputs: Vec<InputFile>,
    dir: PathBuf,
    locations: watch::Sender<HashMap<u32, MapLocation>>,
    /// Bytes moved by this worker's ended attempts (and, for shuffle, every fetch so far).
    io: JobIo,
}

/// Cumulative byte counts of one job on this worker, for the coordinator's rate plots.
#[derive(Default)]
struct JobIo {
    input: AtomicU64,
    shuffle: AtomicU64,
    output: AtomicU64,
}

struct RunningAttempt {
    job: u64,
    is_map: bool,
    control: Arc<TaskControl>,
}

#[derive(Default)]
struct State {
    jobs: HashMap<u64, Arc<JobEntry>>,
    /// Running attempts by `(job, attempt)`: attempt ids are only unique within a job.
    attempts: HashMap<(u64, u64), RunningAttempt>,
    /// Committed-or-not map outputs this worker serves: (job, attempt) → runs.
    served: HashMap<(u64, u64), Vec<RunFile>>,
}

struct Shared {
    config: WorkerConfig,
    faults: crate::job::Faults,
    io: IoService,
    endpoint: quinn::Endpoint,
    my_ip: IpAddr,
    out: mpsc::UnboundedSender<ToCoordinator>,
    state: Mutex<State>,
    peers: tokio::sync::Mutex<HashMap<SocketAddr, quinn::Connection>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock poisons it; the state is still consistent (every
        // critical section is a single map operation), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, msg: ToCoordinator) {
        let _ = self.out.send(msg);
    }

    /// A cached connection to a peer worker, (re)connecting when needed.
    async fn peer(&self, addr: SocketAddr) -> std::result::Result<quinn::Connection, NetError> {
        let mut peers = self.peers.lock().await;
        if let Some(conn) = peers.get(&addr) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let conn = net::connect(&self.endpoint, addr).await?;
        peers.insert(addr, conn.clone());
        Ok(conn)
    }
}

/// Runs a worker process until the coordinator tells it to stop or goes away.
pub fn run(config: WorkerConfig, secret: &Secret) -> Result<()> {
    // Panics in user code are caught and reported to the coordinator with the record that
    // caused them; log them as one line instead of a backtrace per attempt.
    std::panic::set_hook(Box::new(|info| {
        tracing::warn!("task panicked: {info}");
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(config.slots.max(1) as usize + 4)
        .enable_all()
        .thread_name("quern-worker")
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    rt.block_on(serve(config, secret))
}

async fn join(config: &WorkerConfig, endpoint: &quinn::Endpoint) -> Result<quinn::Connection> {
    let deadline = tokio::time::Instant::now() + config.join_timeout;
    let mut backoff = Duration::from_millis(50);
    loop {
        match net::connect(endpoint, config.coordinator).await {
            Ok(conn) => return Ok(conn),
            // A wrong secret will not get better by retrying.
            Err(e @ NetError::Auth(_)) => return Err(Error::Usage(e.to_string())),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(Error::Net(format!(
                    "cannot reach coordinator {}: {e}",
                    config.coordinator
                )))
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn serve(config: WorkerConfig, secret: &Secret) -> Result<()> {
    std::fs::create_dir_all(&config.work_dir).map_err(|e| Error::io(&config.work_dir, e))?;
    let endpoint = net::endpoint(config.bind, secret).map_err(net_err)?;
    let faults = match std::env::var("QUERN_FAULT") {
        Ok(spec) => crate::job::Faults::parse(&spec).map_err(Error::Usage)?,
        Err(_) => crate::job::Faults::default(),
    };
    if faults != crate::job::Faults::default() {
        tracing::warn!("fault injection is on: {faults:?}");
    }
    let (out, mut out_rx) = mpsc::unbounded_channel::<ToCoordinator>();
    let mut session = Session::join(&config, &endpoint, Vec::new()).await?;
    let shared = Arc::new(Shared {
        faults,
        io: IoService::auto(),
        endpoint: endpoint.clone(),
        my_ip: session.my_ip,
        out,
        state: Mutex::new(State::default()),
        peers: tokio::sync::Mutex::new(HashMap::new()),
        config,
    });
    let heartbeat = tokio::spawn(heartbeats(shared.clone()));
    let server = tokio::spawn(fetch_server(shared.clone(), endpoint.clone()));
    let result = loop {
        let (lost, rx) = session.run(&shared, out_rx).await;
        out_rx = rx;
        let Err(reason) = lost else {
            break Ok(());
        };
        // The coordinator went away: stop what runs (its results could not be reported),
        // keep the map outputs, and re-join with backoff — a restarted coordinator resumes
        // its job and re-attaches the outputs this worker still holds.
        tracing::warn!("{reason}; re-joining {}", shared.config.coordinator);
        for a in shared.state().attempts.values() {
            a.control.cancel();
        }
        while out_rx.try_recv().is_ok() {}
        let held: Vec<(u64, u64)> = shared.state().served.keys().copied().collect();
        match Session::join(&shared.config, &endpoint, held).await {
            Ok(s) => session = s,
            Err(e) => break Err(e),
        }
    };
    heartbeat.abort();
    server.abort();
    // Stop every attempt and drop every job's intermediate files.
    let jobs: Vec<u64> = shared.state().jobs.keys().copied().collect();
    for job in jobs {
        end_job(&shared, job);
    }
    endpoint.close(0u32.into(), b"worker exiting");
    result
}

/// One registration with the coordinator: its control stream.
struct Session {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    my_ip: IpAddr,
}

impl Session {
    /// Connects (retrying with backoff up to the join timeout) and registers.
    async fn join(
        config: &WorkerConfig,
        endpoint: &quinn::Endpoint,
        held: Vec<(u64, u64)>,
    ) -> Result<Session> {
        let port = endpoint
            .local_addr()
            .map_err(|e| Error::io("endpoint", e))?
            .port();
        let conn = join(config, endpoint).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(net_err)?;
        let hello = Hello::Worker(Register {
            slots: config.slots,
            port,
            pid: std::process::id(),
            held,
        });
        net::write_frame(&mut send, &encode_msg(&hello).map_err(net_err)?)
            .await
            .map_err(net_err)?;
        let welcome = net::read_frame(&mut recv, MAX_FRAME)
            .await
            .map_err(net_err)?;
        let Some(ToWorker::Welcome { worker, ip }) = welcome
            .as_deref()
            .map(decode_msg::<ToWorker>)
            .transpose()
            .map_err(net_err)?
        else {
            return Err(Error::Net("coordinator did not welcome this worker".into()));
        };
        let my_ip: IpAddr = ip
            .parse()
            .map_err(|e| Error::Net(format!("coordinator sent a bad address {ip:?}: {e}")))?;
        tracing::info!(
            "joined {} as worker {worker} ({my_ip}:{port})",
            config.coordinator
        );
        Ok(Session { send, recv, my_ip })
    }

    /// Serves the session until `Shutdown` (`Ok`) or the connection is lost (`Err`); hands
    /// the outgoing queue back either way.
    async fn run(
        self,
        shared: &Arc<Shared>,
        mut out_rx: mpsc::UnboundedReceiver<ToCoordinator>,
    ) -> (
        std::result::Result<(), String>,
        mpsc::UnboundedReceiver<ToCoordinator>,
    ) {
        let Session {
            mut send, mut recv, ..
        } = self;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = out_rx.recv() => {
                        let Some(msg) = msg else { break };
                        let Ok(bytes) = encode_msg(&msg) else { continue };
                        if net::write_frame(&mut send, &bytes).await.is_err() {
                            break;
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            out_rx
        });
        let result = loop {
            let frame = match net::read_frame(&mut recv, MAX_FRAME).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break Err("the coordinator closed the connection".to_string()),
                Err(e) => break Err(format!("lost the coordinator: {e}")),
            };
            match decode_msg::<ToWorker>(&frame) {
                Ok(ToWorker::Shutdown) => break Ok(()),
                Ok(msg) => handle(shared, msg),
                Err(e) => break Err(format!("bad message from the coordinator: {e}")),
            }
        };
        let _ = stop.send(());
        let out_rx = match writer.await {
            Ok(rx) => rx,
            // The writer cannot panic; if it somehow did, start a fresh queue.
            Err(_) => {
                let (_, rx) = mpsc::unbounded_channel();
                rx
            }
        };
        (result, out_rx)
    }
}

fn handle(shared: &Arc<Shared>, msg: ToWorker) {
    match msg {
        ToWorker::Welcome { .. } | ToWorker::Shutdown => {}
        ToWorker::StartJob { job, spec } => {
            let built = (shared.config.factory)(&spec.job);
            let dir = shared.config.work_dir.join(format!("job-{job}"));
            let entry = JobEntry {
                id: job,
                inputs: inputs_from_msg(&spec.inputs),
                job: built,
                spec,
                dir,
                locations: watch::Sender::new(HashMap::new()),
                io: JobIo::default(),
            };
            shared.state().jobs.insert(job, Arc::new(entry));
        }
        ToWorker::Assign { job, attempt, task } => {
            let Some(entry) = shared.state().jobs.get(&job).cloned() else {
                shared.report(ToCoordinator::Failed {
                    job,
                    attempt,
                    error: format!("job {job} is unknown to this worker"),
                    bad_record: None,
                });
                return;
            };
            let skip = match &task {
                TaskMsg::Map { skip, .. } => skip.clone(),
                TaskMsg::Reduce { .. } => Vec::new(),
            };
            let control = Arc::new(TaskControl::new(skip, shared.faults.clone()));
            shared.state().attempts.insert(
                (job, attempt),
                RunningAttempt {
                    job,
                    is_map: matches!(task, TaskMsg::Map { .. }),
                    control: control.clone(),
                },
            );
            tokio::spawn(run_attempt(shared.clone(), entry, attempt, task, control));
        }
        ToWorker::MapOutputReady { job, location } => {
            if let Some(entry) = shared.state().jobs.get(&job) {
                entry.locations.send_modify(|m| {
                    m.insert(location.map, location);
                });
            }
        }
        ToWorker::MapOutputLost { job, map } => {
            if let Some(entry) = shared.state().jobs.get(&job) {
                entry.locations.send_modify(|m| {
                    m.remove(&map);
                });
            }
        }
        ToWorker::Cancel { job, attempt } => {
            if let Some(a) = shared.state().attempts.get(&(job, attempt)) {
                a.control.cancel();
            }
        }
        ToWorker::EndJob { job } => end_job(shared, job),
    }
}

fn end_job(shared: &Shared, job: u64) {
    let (entry, runs) = {
        let mut state = shared.state();
        for a in state.attempts.values().filter(|a| a.job == job) {
            a.control.cancel();
        }
        let served: Vec<(u64, u64)> = state
            .served
            .keys()
            .filter(|(j, _)| *j == job)
            .copied()
            .collect();
        let runs: Vec<RunFile> = served
            .iter()
            .filter_map(|k| state.served.remove(k))
            .flatten()
            .collect();
        (state.jobs.remove(&job), runs)
    };
    for run in runs {
        let _ = std::fs::remove_file(&run.path);
    }
    if let Some(entry) = entry {
        // Attempts still running write into this directory; they fail harmlessly.
        let _ = std::fs::remove_dir_all(&entry.dir);
    }
}

async fn heartbeats(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let (progress, io) = {
            let state = shared.state();
            let progress = state
                .attempts
                .iter()
                .map(|(&(job, attempt), a)| {
                    let (done, total) = a.control.progress();
                    ProgressMsg {
                        job,
                        attempt,
                        done,
                        total,
                    }
                })
                .collect();
            (progress, job_io(&state, None))
        };
        shared.report(ToCoordinator::Heartbeat { progress, io });
    }
}

/// Bytes moved so far for every job (or only for `only`).
fn job_io(state: &State, only: Option<u64>) -> Vec<JobIoMsg> {
    // Ended attempts are in `entry.io`, running ones are added here; an attempt moves
    // from one to the other under the state lock, so the sums never go back.
    state
        .jobs
        .values()
        .filter(|entry| only.is_none_or(|j| j == entry.id))
        .map(|entry| {
            let (mut input, mut output) = (
                entry.io.input.load(Ordering::Relaxed),
                entry.io.output.load(Ordering::Relaxed),
            );
            for a in state.attempts.values().filter(|a| a.job == entry.id) {
                if a.is_map {
                    input += a.control.progress().0;
                }
                output += a.control.written();
            }
            JobIoMsg {
                job: entry.id,
                input,
                shuffle: entry.io.shuffle.load(Ordering::Relaxed),
                output,
            }
        })
        .collect()
}

/// What a finished attempt hands back.
struct Outcome {
    counters: Counters,
    runs: Vec<RunFile>,
    /// Fetch latency and throughput (reduces).
    fetches: Option<FetchStats>,
}

/// Latencies of a reduce attempt's fetches.
struct FetchStats {
    latency: Histogram<u64>,
    throughput: Histogram<u64>,
}

impl FetchStats {
    fn new() -> FetchStats {
        FetchStats {
            latency: report::new_histogram(),
            throughput: report::new_histogram(),
        }
    }

    /// One fetch of `bytes` that took `took`, request to last byte. Throughput is recorded
    /// for fetches over the network only: a local one maps the file and moves no bytes yet.
    fn record(&mut self, bytes: u64, took: Duration, remote: bool) {
        let us = took.as_micros().max(1);
        let _ = self.latency.record(u64::try_from(us).unwrap_or(u64::MAX));
        if remote && bytes > 0 {
            // KiB/s = bytes / 1024 / (µs / 1e6)
            let kib_s = u128::from(bytes) * 1_000_000 / 1024 / us;
            let _ = self
                .throughput
                .record(u64::try_from(kib_s).unwrap_or(u64::MAX).max(1));
        }
    }
}

fn histogram_msg(name: &str, h: &Histogram<u64>) -> HistogramMsg {
    HistogramMsg {
        name: name.to_string(),
        v2: report::encode_v2(h),
    }
}

async fn run_attempt(
    shared: Arc<Shared>,
    entry: Arc<JobEntry>,
    attempt: u64,
    task: TaskMsg,
    control: Arc<TaskControl>,
) {
    let started = Instant::now();
    let result = match (&entry.job, task.clone()) {
        (Err(e), _) => Err(Error::Usage(format!("cannot build job: {e}"))),
        (Ok(job), TaskMsg::Map { index, split, .. }) => {
            let (shared2, entry2, job, control2) =
                (shared.clone(), entry.clone(), job.clone(), control.clone());
            blocking(move || {
                map_attempt(
                    &shared2,
                    &entry2,
                    &*job,
                    attempt,
                    index,
                    split_from_msg(&split),
                    &control2,
                )
            })
            .await
        }
        (Ok(job), TaskMsg::Reduce { partition }) => {
            reduce_attempt(&shared, &entry, job.clone(), attempt, partition, &control).await
        }
    };
    let took = started.elapsed();
    let cancelled = control.is_cancelled();
    {
        let mut state = shared.state();
        if matches!(task, TaskMsg::Map { .. }) {
            entry
                .io
                .input
                .fetch_add(control.progress().0, Ordering::Relaxed);
        }
        entry
            .io
            .output
            .fetch_add(control.written(), Ordering::Relaxed);
        state.attempts.remove(&(entry.id, attempt));
    }
    match result {
        Ok(outcome) if !cancelled => {
            let mut duration = report::new_histogram();
            let _ = duration.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
            let name = match task {
                TaskMsg::Map { .. } => report::hist::MAP_ATTEMPT,
                TaskMsg::Reduce { .. } => report::hist::REDUCE_ATTEMPT,
            };
            let mut histograms = vec![histogram_msg(name, &duration)];
            if let Some(f) = &outcome.fetches {
                histograms.push(histogram_msg(report::hist::FETCH_LATENCY, &f.latency));
                histograms.push(histogram_msg(report::hist::FETCH_THROUGHPUT, &f.throughput));
            }
            // The bytes of its last moments reach the rate plots with the result.
            let io = job_io(&shared.state(), Some(entry.id));
            let runs = outcome.runs.iter().map(run_to_msg).collect();
            if !outcome.runs.is_empty() {
                shared
                    .state()
                    .served
                    .insert((entry.id, attempt), outcome.runs);
            }
            shared.report(ToCoordinator::Finished {
                job: entry.id,
                attempt,
                counters: counters_to_msg(&outcome.counters),
                runs,
                histograms,
                io,
            });
        }
        Ok(outcome) => {
            for run in outcome.runs {
                let _ = std::fs::remove_file(&run.path);
            }
        }
        Err(Error::Cancelled) => {}
        Err(e) => {
            // A crash inside user code is blamed on the record being processed (paper §4.6).
            let (error, bad_record) = match (&e, &task) {
                (Error::TaskPanicked { message, .. }, TaskMsg::Map { .. }) => {
                    (format!("panicked: {message}"), control.current_record())
                }
                (Error::TaskPanicked { message, .. }, _) => (format!("panicked: {message}"), None),
                _ => (e.to_string(), None),
            };
            shared.report(ToCoordinator::Failed {
                job: entry.id,
                attempt,
                error,
                bad_record,
            })
        }
    }
}

/// Runs CPU work on the blocking pool, turning panics into errors.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(move || guarded("attempt", f))
        .await
        .map_err(|e| Error::TaskPanicked {
            task: "attempt".into(),
            message: e.to_string(),
        })?
}

fn map_attempt(
    shared: &Shared,
    entry: &JobEntry,
    job: &dyn Job,
    attempt: u64,
    index: u32,
    split: crate::Split,
    control: &TaskControl,
) -> Result<Outcome> {
    let input = entry.inputs.get(split.file as usize).ok_or_else(|| {
        Error::Usage(format!(
            "split names input {} of {}",
            split.file,
            entry.inputs.len()
        ))
    })?;
    if entry.spec.reducers == 0 {
        let out = OutputDir::open(Path::new(&entry.spec.output));
        let tmp = out.attempt_file(index as usize, attempt as u32);
        let counters = run_map_only(job, input, &split, &tmp, &shared.io, control)?;
        out.commit_task(&tmp, index as usize)?;
        return Ok(Outcome {
            counters,
            runs: Vec::new(),
            fetches: None,
        });
    }
    std::fs::create_dir_all(&entry.dir).map_err(|e| Error::io(&entry.dir, e))?;
    let env = MapEnv {
        io: &shared.io,
        work_dir: &entry.dir,
        reducers: entry.spec.reducers,
        memory: usize::try_from(entry.spec.task_memory).unwrap_or(usize::MAX),
    };
    let (output, counters) = run_map(
        job,
        input,
        &split,
        &format!("map-{index:05}-a{attempt}"),
        &env,
        control,
    )?;
    Ok(Outcome {
        counters,
        runs: output.runs,
        fetches: None,
    })
}

async fn reduce_attempt(
    shared: &Arc<Shared>,
    entry: &Arc<JobEntry>,
    job: Arc<dyn Job>,
    attempt: u64,
    partition: u32,
    control: &Arc<TaskControl>,
) -> Result<Outcome> {
    let maps = entry.spec.splits.len();
    let mut have: Vec<Option<(u64, Vec<Segment>)>> = (0..maps).map(|_| None).collect();
    let mut locations = entry.locations.subscribe();
    let mut stats = FetchStats::new();
    // Bytes that crossed the network (refetches of a re-run map included).
    let mut fetched_remotely = 0u128;
    loop {
        if control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let wanted: Vec<MapLocation> = locations
            .borrow_and_update()
            .values()
            .filter(|l| (l.map as usize) < maps)
            .filter(|l| {
                have[l.map as usize]
                    .as_ref()
                    .is_none_or(|(a, _)| *a != l.attempt)
            })
            .cloned()
            .collect();
        let mut failed = false;
        for location in wanted {
            let asked = Instant::now();
            match fetch(shared, entry.id, &location, partition).await {
                Ok((segments, remote)) => {
                    let bytes: u64 = segments.iter().map(|s| s.bytes().len() as u64).sum();
                    stats.record(bytes, asked.elapsed(), remote);
                    if remote {
                        fetched_remotely += u128::from(bytes);
                    }
                    entry.io.shuffle.fetch_add(bytes, Ordering::Relaxed);
                    have[location.map as usize] = Some((location.attempt, segments));
                }
                Err(e) => {
                    failed = true;
                    tracing::info!(
                        "fetch of map {} from {} failed: {e}",
                        location.map,
                        location.addr
                    );
                    shared.report(ToCoordinator::FetchFailed {
                        job: entry.id,
                        attempt,
                        map: location.map,
                        error: e.to_string(),
                    });
                }
            }
            if control.is_cancelled() {
                return Err(Error::Cancelled);
            }
        }
        if !failed && have.iter().all(Option::is_some) {
            break;
        }
        // Wait for news (a new or re-run map), or retry failed fetches after a pause: each
        // retry reports again, so a map that stays unreachable is eventually re-executed.
        tokio::select! {
            changed = locations.changed() => if changed.is_err() { return Err(Error::Cancelled) },
            _ = tokio::time::sleep(Duration::from_millis(if failed { 500 } else { 250 })) => {}
        }
    }
    let segments: Vec<Segment> = have.into_iter().flatten().flat_map(|(_, s)| s).collect();
    let shuffled: u128 = segments.iter().map(|s| s.bytes().len() as u128).sum();
    let out = OutputDir::open(Path::new(&entry.spec.output));
    let (shared2, control2) = (shared.clone(), control.clone());
    blocking(move || {
        let tmp = out.attempt_file(partition as usize, attempt as u32);
        let mut counters = reduce_to_file(&*job, &segments, &tmp, &shared2.io, &control2)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
        counters.add("shuffle.bytes", shuffled);
        counters.add("shuffle.remote.bytes", fetched_remotely);
        out.commit_task(&tmp, partition as usize)?;
        Ok(Outcome {
            counters,
            runs: Vec::new(),
            fetches: Some(stats),
        })
    })
    .await
    .inspect_err(|e| {
        // A corrupt map output: tell the coordinator which map, so it can be re-run.
        if let Error::BadMapOutput { map, .. } = e {
            shared.report(ToCoordinator::FetchFailed {
                job: entry.id,
                attempt,
                map: *map,
                error: e.to_string(),
            });
        }
    })
}

/// Gets partition `partition` of a map attempt's output: from disk when it lives on this
/// host, else over QUIC from the worker that holds it (then `.1` is true).
async fn fetch(
    shared: &Arc<Shared>,
    job: u64,
    location: &MapLocation,
    partition: u32,
) -> Result<(Vec<Segment>, bool)> {
    let addr: SocketAddr = location
        .addr
        .parse()
        .map_err(|e| Error::Net(format!("bad map location {:?}: {e}", location.addr)))?;
    let runs: Vec<RunFile> = location.runs.iter().map(run_from_msg).collect();
    if shared.config.local_reads && addr.ip() == shared.my_ip {
        let map = location.map;
        let segments = blocking(move || {
            runs.iter()
                .map(|run| Segment::open(run, partition as usize).map(|s| s.of_map(map)))
                .collect()
        })
        .await?;
        return Ok((segments, false));
    }
    let conn = shared.peer(addr).await.map_err(net_err)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(net_err)?;
    let request = FetchRequest {
        job,
        attempt: location.attempt,
        partition,
    };
    net::write_frame(&mut send, &encode_msg(&request).map_err(net_err)?)
        .await
        .map_err(net_err)?;
    let _ = send.finish();
    let want: u64 = runs
        .iter()
        .map(|r| r.segments.get(partition as usize).map_or(0, |s| s.1))
        .sum();
    let buffers = net::recv_segments(&mut recv, want).await.map_err(net_err)?;
    if buffers.len() != runs.len() {
        return Err(Error::Net(format!(
            "{addr} sent {} segments for map {}, expected {}",
            buffers.len(),
            location.map,
            runs.len()
        )));
    }
    let segments = buffers
        .into_iter()
        .zip(&runs)
        .map(|(buf, run)| {
            let offset = run.segments.get(partition as usize).map_or(0, |s| s.0);
            let origin = PathBuf::from(format!("{addr}:{}", run.path.display()));
            Segment::fetched(origin, offset, buf).of_map(location.map)
        })
        .collect();
    Ok((segments, true))
}

async fn fetch_server(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = match net::accept(incoming).await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("refused a shuffle connection: {e}");
                    return;
                }
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_fetch(shared.clone(), send, recv));
            }
        });
    }
}

async fn serve_fetch(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let request = match net::read_frame(&mut recv, MAX_FRAME).await {
        Ok(Some(frame)) => match decode_msg::<FetchRequest>(&frame) {
            Ok(r) => r,
            Err(_) => {
                let _ = send.reset(1u32.into());
                return;
            }
        },
        _ => return,
    };
    let runs = shared
        .state()
        .served
        .get(&(request.job, request.attempt))
        .cloned();
    let Some(runs) = runs else {
        let _ = send.reset(2u32.into());
        return;
    };
    let part = request.partition as usize;
    let segments: Result<Vec<Bytes>> = runs
        .iter()
        .map(|run| {
            let (offset, len) = run.segments.get(part).copied().unwrap_or((0, 0));
            if len == 0 {
                return Ok(Bytes::new());
            }
            let file = std::fs::File::open(&run.path).map_err(|e| Error::io(&run.path, e))?;
            Ok(Bytes::from_owner(map_file(&file, &run.path, offset, len)?))
        })
        .collect();
    match segments {
        Ok(segments) => {
            if let Err(e) = net::send_segments(&mut send, segments).await {
                tracing::debug!("shuffle send failed: {e}");
            }
            // Let the reducer read everything before the stream's state goes away.
            let _ = send.stopped().await;
        }
        Err(e) => {
            tracing::warn!("cannot serve map output: {e}");
            let _ = send.reset(3u32.into());
        }
    }
}
