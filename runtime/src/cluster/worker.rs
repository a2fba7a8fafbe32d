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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use crate::job::{AttemptInfo, Counters, InputFile, Job, TaskControl};
use crate::local::guarded;
use crate::map::RunFile;
use crate::output::OutputDir;
use crate::reduce::{FETCH_WEIGHT, MERGE_WEIGHT};
use crate::report;
use crate::task::{self, ReduceInput, TaskEnv};
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
    /// What the coordinator said about map outputs, in order (see [`LocationNews`]).
    locations: watch::Sender<Vec<LocationNews>>,
    /// Bytes moved by this worker's ended attempts (and, for shuffle, every fetch so far).
    io: JobIo,
    /// The worker's file output, with direct I/O if the job asked for it.
    files: IoService,
}

/// News about one map's output. Reducers read the log from their own position, so each
/// piece of news costs them O(1) however many maps the job has.
#[derive(Clone)]
enum LocationNews {
    /// The map's output can be fetched there.
    Ready(MapLocation),
    /// The map's output is gone; a re-run will announce a new location.
    Lost(u32),
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
    peers: Peers,
    /// Set when an attempt failed on the work dir (full, failing); cleared by the heartbeat
    /// loop once the work dir has [`WORK_DIR_ROOM`] free again.
    work_dir_fault: AtomicBool,
}

/// Free bytes a work dir needs, after a failure on it, before it takes map output again.
pub const WORK_DIR_ROOM: u64 = 256 << 20;

/// Whether `e` is a failure of the work dir `work_dir` itself — full (ENOSPC, EDQUOT) or
/// failing (EIO, EROFS) — rather than of the attempt's task.
fn is_work_dir_fault(e: &Error, work_dir: &Path) -> bool {
    const FAULTS: [i32; 4] = [28, 122, 5, 30]; // ENOSPC, EDQUOT, EIO, EROFS
    match e {
        Error::Io { path, source } => {
            path.starts_with(work_dir) && source.raw_os_error().is_some_and(|n| FAULTS.contains(&n))
        }
        _ => false,
    }
}

/// Whether `dir`'s file system has [`WORK_DIR_ROOM`] free for unprivileged writers.
fn has_room(dir: &Path) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= WORK_DIR_ROOM)
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

    /// Where `entry`'s attempts run on this worker. The job's memory budget is per
    /// worker: each slot gets an equal share.
    fn task_env<'a>(&'a self, entry: &'a JobEntry) -> TaskEnv<'a> {
        let spec = &entry.spec;
        TaskEnv {
            io: &entry.files,
            work_dir: &entry.dir,
            reducers: spec.reducers,
            memory: (spec.worker_memory / u64::from(self.config.slots.max(1))).max(1 << 20),
            merge_factor: spec.merge_factor as usize,
        }
    }

    /// A cached connection to a peer worker, (re)connecting when needed.
    async fn peer(&self, addr: SocketAddr) -> std::result::Result<quinn::Connection, NetError> {
        self.peers.get(&self.endpoint, addr).await
    }
}

/// Connections to peer workers, one per address, made when first needed and again once
/// closed. Each address has its own lock, held while connecting: fetches from one peer
/// share one handshake, and a peer that does not answer (partitioned away, its handshake
/// lasting up to the idle timeout) holds up only the fetches from it, never those from
/// the other peers.
#[derive(Default)]
struct Peers {
    /// Never held across an `.await`; the per-address locks are.
    slots: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
}

impl Peers {
    async fn get(
        &self,
        endpoint: &quinn::Endpoint,
        addr: SocketAddr,
    ) -> std::result::Result<quinn::Connection, NetError> {
        let slot = {
            // Every critical section is one map operation: a poisoned lock is consistent.
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(addr).or_default().clone()
        };
        let mut conn = slot.lock().await;
        if let Some(open) = conn.as_ref().filter(|c| c.close_reason().is_none()) {
            return Ok(open.clone());
        }
        let fresh = net::connect(endpoint, addr).await?;
        *conn = Some(fresh.clone());
        Ok(fresh)
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

/// On SIGINT or SIGTERM: kills the attempts' child processes, then exits as the signal
/// would have (the default action would leave those children behind).
async fn exit_on_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let code = tokio::select! {
        _ = int.recv() => 130,
        _ = term.recv() => 143,
    };
    crate::child::kill_all();
    std::process::exit(code);
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
    tokio::spawn(exit_on_signal());
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
        peers: Peers::default(),
        work_dir_fault: AtomicBool::new(false),
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
                // What a coordinator does to a worker it gave up on (missed heartbeats).
                Ok(None) => {
                    break Err("the coordinator closed the connection (it may have given this worker up after missed heartbeats)".to_string())
                }
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
            let files = shared.io.with_direct_io(spec.direct_io);
            let entry = JobEntry {
                id: job,
                inputs: inputs_from_msg(&spec.inputs),
                job: built,
                spec,
                dir,
                locations: watch::Sender::new(Vec::new()),
                io: JobIo::default(),
                files,
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
                    work_dir: false,
                });
                return;
            };
            let skip = match &task {
                TaskMsg::Map { skip, .. } => skip.clone(),
                TaskMsg::Reduce { .. } => Vec::new(),
            };
            let (is_map, index) = match &task {
                TaskMsg::Map { index, .. } => (true, *index),
                TaskMsg::Reduce { partition } => (false, *partition),
            };
            let control = Arc::new(TaskControl::new(skip, shared.faults.clone()).with_attempt(
                AttemptInfo {
                    job,
                    is_map,
                    index,
                    attempt,
                    work_dir: entry.dir.clone(),
                },
            ));
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
                entry
                    .locations
                    .send_modify(|log| log.push(LocationNews::Ready(location)));
            }
        }
        ToWorker::MapOutputLost { job, map } => {
            if let Some(entry) = shared.state().jobs.get(&job) {
                entry
                    .locations
                    .send_modify(|log| log.push(LocationNews::Lost(map)));
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
                        status: a.control.status(),
                    }
                })
                .collect();
            (progress, job_io(&state, None))
        };
        let fault = &shared.work_dir_fault;
        if fault.load(Ordering::Relaxed) && has_room(&shared.config.work_dir) {
            tracing::info!("the work dir has room again");
            fault.store(false, Ordering::Relaxed);
        }
        shared.report(ToCoordinator::Heartbeat {
            progress,
            io,
            work_dir_ok: !fault.load(Ordering::Relaxed),
        });
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
                    input += a.control.input_done();
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
                .fetch_add(control.input_done(), Ordering::Relaxed);
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
            let work_dir = is_work_dir_fault(&e, &shared.config.work_dir);
            if work_dir {
                tracing::warn!(
                    "the work dir failed: {error}; asking for no map tasks until it has room"
                );
                shared.work_dir_fault.store(true, Ordering::Relaxed);
            }
            shared.report(ToCoordinator::Failed {
                job: entry.id,
                attempt,
                error,
                bad_record,
                work_dir,
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
    std::fs::create_dir_all(&entry.dir).map_err(|e| Error::io(&entry.dir, e))?;
    let out = OutputDir::open(Path::new(&entry.spec.output));
    let (runs, counters) = task::map_task(
        job,
        &entry.inputs,
        &split,
        index,
        attempt,
        &out,
        &shared.task_env(entry),
        control,
    )?;
    Ok(Outcome {
        counters,
        runs,
        fetches: None,
    })
}

/// Fetches from different maps under way at once, per reduce attempt.
const FETCHES_IN_FLIGHT: usize = 8;
/// Pause before a failed fetch is tried again (each failure is reported, so a map that
/// stays unreachable is eventually re-executed).
const FETCH_RETRY: Duration = Duration::from_millis(500);

/// What one fetch brought.
struct Fetched {
    bytes: u64,
    took: Duration,
    remote: bool,
}

async fn reduce_attempt(
    shared: &Arc<Shared>,
    entry: &Arc<JobEntry>,
    job: Arc<dyn Job>,
    attempt: u64,
    partition: u32,
    control: &Arc<TaskControl>,
) -> Result<Outcome> {
    std::fs::create_dir_all(&entry.dir).map_err(|e| Error::io(&entry.dir, e))?;
    let maps = entry.spec.splits.len();
    let input = Arc::new(Mutex::new(
        shared.task_env(entry).reduce_input(partition, attempt),
    ));
    let mut locations = entry.locations.subscribe();
    let mut read = 0usize;
    let mut latest: HashMap<u32, MapLocation> = HashMap::new();
    let mut fetched = vec![false; maps];
    // This partition's bytes in each map's output, once its location is known: with all
    // known, the fetch phase reports progress (see `reduce::FETCH_WEIGHT`).
    // Kept with their sum and count as they change: O(1) per location, not O(M) per wake-up.
    let mut sizes: Vec<Option<u64>> = vec![None; maps];
    let (mut sized, mut total_bytes) = (0usize, 0u64);
    let mut fetched_bytes = 0u64;
    let mut remaining = maps;
    let mut queue: std::collections::VecDeque<u32> = std::collections::VecDeque::new();
    let mut in_flight: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let mut retries: Vec<(tokio::time::Instant, u32)> = Vec::new();
    let mut fetches = tokio::task::JoinSet::new();
    let mut merging: Option<tokio::task::JoinHandle<Result<task::merge::Merged>>> = None;
    let mut stats = FetchStats::new();
    // Bytes gathered, and bytes that crossed the network (refetches included).
    let (mut shuffled, mut fetched_remotely) = (0u128, 0u128);
    loop {
        if control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        {
            let log = locations.borrow_and_update();
            for news in &log[read..] {
                match news {
                    LocationNews::Ready(l)
                        if (l.map as usize) < maps && !fetched[l.map as usize] =>
                    {
                        let size = partition_bytes(l, partition);
                        match sizes[l.map as usize].replace(size) {
                            Some(old) => total_bytes -= old,
                            None => sized += 1,
                        }
                        total_bytes += size;
                        latest.insert(l.map, l.clone());
                        queue.push_back(l.map);
                    }
                    LocationNews::Ready(_) => {}
                    LocationNews::Lost(map) => {
                        latest.remove(map);
                    }
                }
            }
            read = log.len();
        }
        let now = tokio::time::Instant::now();
        retries.retain(|&(at, map)| {
            let due = at <= now;
            if due {
                queue.push_back(map);
            }
            !due
        });
        while fetches.len() < FETCHES_IN_FLIGHT {
            let Some(map) = queue.pop_front() else { break };
            if fetched[map as usize] || in_flight.contains(&map) {
                continue;
            }
            let Some(location) = latest.get(&map).cloned() else {
                continue;
            };
            in_flight.insert(map);
            let (shared, input, job_id) = (shared.clone(), input.clone(), entry.id);
            let files = entry.files.clone();
            fetches.spawn(async move {
                let asked = Instant::now();
                let result = fetch(&shared, &files, job_id, &location, partition, &input).await;
                (
                    location,
                    result.map(|(bytes, remote)| Fetched {
                        bytes,
                        took: asked.elapsed(),
                        remote,
                    }),
                )
            });
        }
        if merging.is_none() {
            if let Some(batch) = lock(&input).background_merge() {
                let control = control.clone();
                merging = Some(tokio::task::spawn_blocking(move || {
                    guarded("merge pass", || batch.run(&control))
                }));
            }
        }
        if sized == maps {
            control.set_progress(
                FETCH_WEIGHT * fetched_bytes.min(total_bytes),
                (FETCH_WEIGHT + MERGE_WEIGHT) * total_bytes,
            );
        }
        if remaining == 0 && fetches.is_empty() && merging.is_none() {
            break;
        }
        let wake = retries
            .iter()
            .map(|r| r.0)
            .min()
            .unwrap_or(now + Duration::from_millis(250));
        tokio::select! {
            Some(done) = fetches.join_next(), if !fetches.is_empty() => {
                let (location, result) = done.map_err(|e| Error::TaskPanicked {
                    task: "fetch".into(),
                    message: e.to_string(),
                })?;
                in_flight.remove(&location.map);
                match result {
                    Ok(f) => {
                        stats.record(f.bytes, f.took, f.remote);
                        shuffled += u128::from(f.bytes);
                        if f.remote {
                            fetched_remotely += u128::from(f.bytes);
                        }
                        entry.io.shuffle.fetch_add(f.bytes, Ordering::Relaxed);
                        fetched_bytes += f.bytes;
                        fetched[location.map as usize] = true;
                        remaining -= 1;
                    }
                    Err(e) => {
                        if let Error::BadMapOutput { .. } | Error::Net(_) = e {
                            tracing::info!("fetch of map {} from {} failed: {e}", location.map, location.addr);
                            shared.report(ToCoordinator::FetchFailed {
                                job: entry.id,
                                attempt,
                                map: location.map,
                                error: e.to_string(),
                            });
                            retries.push((tokio::time::Instant::now() + FETCH_RETRY, location.map));
                        } else {
                            // A local failure (disk): this attempt cannot go on.
                            return Err(e);
                        }
                    }
                }
            }
            merged = wait_merge(&mut merging), if merging.is_some() => {
                merging = None;
                let merged = merged.inspect_err(|e| report_bad_map_output(shared, entry, attempt, e))?;
                lock(&input).put(merged);
            }
            changed = locations.changed() => if changed.is_err() { return Err(Error::Cancelled) },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    let input = match Arc::try_unwrap(input) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(_) => {
            return Err(Error::Usage(
                "reduce input still shared after every fetch ended".into(),
            ))
        }
    };
    let out = OutputDir::open(Path::new(&entry.spec.output));
    let (files, control2) = (entry.files.clone(), control.clone());
    blocking(move || {
        let mut counters =
            task::reduce_task(&*job, input, partition, attempt, &out, &files, &control2)?;
        counters.add("shuffle.bytes", shuffled);
        counters.add("shuffle.remote.bytes", fetched_remotely);
        Ok(Outcome {
            counters,
            runs: Vec::new(),
            fetches: Some(stats),
        })
    })
    .await
    .inspect_err(|e| report_bad_map_output(shared, entry, attempt, e))
}

/// Bytes of `partition` in the map output at `location`.
fn partition_bytes(location: &MapLocation, partition: u32) -> u64 {
    location
        .runs
        .iter()
        .filter_map(|r| r.segments.get(partition as usize))
        .map(|s| s.len)
        .sum()
}

fn lock(input: &Mutex<ReduceInput>) -> MutexGuard<'_, ReduceInput> {
    // Every critical section is a few field updates: a poisoned lock is still consistent.
    input.lock().unwrap_or_else(|p| p.into_inner())
}

async fn wait_merge(
    merging: &mut Option<tokio::task::JoinHandle<Result<task::merge::Merged>>>,
) -> Result<task::merge::Merged> {
    match merging {
        Some(handle) => handle.await.map_err(|e| Error::TaskPanicked {
            task: "merge pass".into(),
            message: e.to_string(),
        })?,
        None => std::future::pending().await,
    }
}

/// A corrupt map output found while merging: tell the coordinator which map, so it can
/// be re-run.
fn report_bad_map_output(shared: &Shared, entry: &JobEntry, attempt: u64, e: &Error) {
    if let Error::BadMapOutput { map, .. } = e {
        shared.report(ToCoordinator::FetchFailed {
            job: entry.id,
            attempt,
            map: *map,
            error: e.to_string(),
        });
    }
}

/// Adds partition `partition` of a map attempt's output to `input`: straight from disk
/// when it lives on this host, else over QUIC from the worker that holds it — into memory
/// if the reduce's fetch budget has room, streamed to a local file if not. Returns the
/// bytes gathered and whether they crossed the network. Spills are written through `files`.
async fn fetch(
    shared: &Arc<Shared>,
    files: &IoService,
    job: u64,
    location: &MapLocation,
    partition: u32,
    input: &Mutex<ReduceInput>,
) -> Result<(u64, bool)> {
    let addr: SocketAddr = location
        .addr
        .parse()
        .map_err(|e| Error::Net(format!("bad map location {:?}: {e}", location.addr)))?;
    let runs: Vec<RunFile> = location.runs.iter().map(run_from_msg).collect();
    let part = partition as usize;
    let map = location.map;
    if shared.config.local_reads && addr.ip() == shared.my_ip {
        // Nothing is opened yet: the merge maps each segment when it reaches it.
        let sources = runs
            .iter()
            .map(|run| task::Source::of_run(run, part, Some(map)))
            .collect::<Result<Vec<_>>>()?;
        let bytes = sources.iter().map(task::Source::len).sum();
        let mut input = lock(input);
        for s in sources {
            input.add(s);
        }
        return Ok((bytes, false));
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
    let offsets: Vec<u64> = runs
        .iter()
        .map(|r| r.segments.get(part).map_or(0, |s| s.0))
        .collect();
    let want: u64 = runs
        .iter()
        .map(|r| r.segments.get(part).map_or(0, |s| s.1))
        .sum();
    let check_count = |n: usize| {
        if n == runs.len() {
            Ok(())
        } else {
            Err(Error::Net(format!(
                "{addr} sent {n} segments for map {map}, expected {}",
                runs.len()
            )))
        }
    };
    if lock(input).reserve(want) {
        let buffers = match net::recv_segments(&mut recv, want).await {
            Ok(b) => b,
            Err(e) => {
                lock(input).release(want);
                return Err(net_err(e));
            }
        };
        if let Err(e) = check_count(buffers.len()) {
            lock(input).release(want);
            return Err(e);
        }
        let sources = buffers
            .into_iter()
            .zip(runs.iter().zip(&offsets))
            .map(|(bytes, (run, &offset))| task::Source::Memory {
                origin: PathBuf::from(format!("{addr}:{}", run.path.display())),
                offset,
                bytes,
                map: Some(map),
            })
            .collect();
        lock(input).add_fetched(sources, want);
        return Ok((want, true));
    }
    // Over budget: stream the segments to a local file as they arrive.
    let path = lock(input).spill_file();
    let mut spill = SpillWriter::new(files, &path)?;
    let received = net::recv_segments_streaming(&mut recv, want, |segment, bytes| {
        spill
            .push(segment, bytes)
            .map_err(|e| NetError::Frame(e.to_string()))
    })
    .await;
    let starts = spill.finish()?;
    let lens = received.map_err(net_err)?;
    check_count(lens.len())?;
    let total: u64 = lens.iter().sum();
    let mut input = lock(input);
    input.note_spilled(total);
    for (start, len) in starts.into_iter().zip(lens) {
        input.add(task::Source::File {
            path: path.clone(),
            offset: start,
            len,
            map: Some(map),
        });
    }
    Ok((total, true))
}

/// Writes fetched segments to a spill file as they stream in, each starting 16-byte
/// aligned (blocks are validated in place, and rkyv needs aligned bytes).
struct SpillWriter {
    file: crate::io::FileWriter,
    buf: Vec<u8>,
    /// Where each segment starts in the file.
    starts: Vec<u64>,
    written: u64,
}

impl SpillWriter {
    const FLUSH: usize = 1 << 20;

    fn new(io: &IoService, path: &Path) -> Result<SpillWriter> {
        Ok(SpillWriter {
            file: io.create(path)?,
            buf: Vec::with_capacity(Self::FLUSH + (64 << 10)),
            starts: Vec::new(),
            written: 0,
        })
    }

    fn push(&mut self, segment: usize, bytes: &[u8]) -> Result<()> {
        if segment == self.starts.len() {
            let pad = (16 - (self.written + self.buf.len() as u64) % 16) % 16;
            self.buf.resize(self.buf.len() + pad as usize, 0);
            self.starts.push(self.written + self.buf.len() as u64);
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= Self::FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::FLUSH + (64 << 10)));
        self.written += buf.len() as u64;
        // The write queues on the I/O thread and waits only when several are in flight.
        tokio::task::block_in_place(|| self.file.write(buf))
    }

    fn finish(mut self) -> Result<Vec<u64>> {
        self.flush()?;
        let file = self.file;
        tokio::task::block_in_place(|| file.finish(false))?;
        Ok(self.starts)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connect to a peer that never answers must not hold up connecting to another
    /// (formerly one lock over every peer was held while connecting).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_peer_holds_up_no_other() {
        let secret = Secret::generate().expect("secret");
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        let endpoint = net::endpoint(local, &secret).expect("endpoint");
        let answering = net::endpoint(local, &secret).expect("answering endpoint");
        let answering_addr = answering.local_addr().expect("answering address");
        let server = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Some(incoming) = answering.accept().await {
                if let Ok(conn) = net::accept(incoming).await {
                    open.push(conn);
                }
            }
        });
        // A bound UDP socket that reads the handshake and never replies.
        let silent = tokio::net::UdpSocket::bind(local)
            .await
            .expect("silent socket");
        let silent_addr = silent.local_addr().expect("silent address");

        let peers = Arc::new(Peers::default());
        let mut stuck = tokio::spawn({
            let (peers, endpoint) = (peers.clone(), endpoint.clone());
            async move { peers.get(&endpoint, silent_addr).await.map(|_| ()) }
        });
        // Once its first packet arrives, that connect holds its lock.
        let mut buf = [0u8; 2048];
        silent.recv_from(&mut buf).await.expect("handshake packet");
        tokio::select! {
            biased;
            conn = peers.get(&endpoint, answering_addr) => {
                conn.expect("connecting to the answering peer");
            }
            _ = &mut stuck => panic!("the silent peer's connect ended before the other could connect"),
        }
        assert!(!stuck.is_finished(), "the silent peer cannot have answered");
        stuck.abort();
        server.abort();
    }
}
