//! The coordinator: an async driver around the pure [`Scheduler`].
//!
//! One task owns all state (`Coordinator`); connection tasks only translate frames into
//! `Input`s and [`ToWorker`]/[`ToClient`] messages back into frames. The owner loop feeds
//! inputs to the scheduler as events (with the time since the job started), then drains the
//! scheduler's commands and carries them out. Jobs run one at a time, in submission order.
//!
//! The coordinator claims each job's output directory before scheduling it and commits it
//! (renames parts, writes `_SUCCESS`) when the scheduler says the job is done; a failed or
//! abandoned job (its client went away) is aborted and leaves no output.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quern_scheduler::journal::{JournalEvent, Record};
use quern_scheduler::{
    AttemptId, AttemptState, Command, Config, Event, MapState, Phase, ReduceState, Scheduler,
    TaskId, TaskState, WorkerId,
};
use quern_shuffle::net;
use quern_shuffle::wire::{
    decode_msg, encode_msg, Hello, JobIoMsg, JobSpec, MapLocation, ProgressMsg, TaskMsg, ToClient,
    ToCoordinator, ToWorker,
};
use tokio::sync::{mpsc, watch};

use super::job_run::{Finished, JobRun};
use super::journal::{JournalFile, OnSynced, JOURNAL};
use super::metrics::JobMetrics;
use super::status::{
    self, AttemptStatus, FinishedJob, JobStatus, PercentileRow, PhaseCounts, Status, WorkerStatus,
};
use super::{counters_to_msg, net_err, MAX_FRAME};
use crate::output::OutputDir;
use crate::report::WorkerRecord;
use crate::Result;

/// Knobs of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// A worker silent for this long is lost.
    pub heartbeat_timeout: Duration,
    /// Address of the HTTP status page (port 0: any free port).
    pub status: SocketAddr,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            heartbeat_timeout: Duration::from_secs(2),
            status: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// How often the status page and the client's progress are refreshed.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Finished jobs the status page lists.
const FINISHED_SHOWN: usize = 20;

/// What connection tasks tell the owner loop.
#[derive(Debug)]
enum Input {
    WorkerJoined {
        worker: WorkerId,
        slots: u32,
        pid: u32,
        data_addr: SocketAddr,
        held: Vec<(u64, u64)>,
        tx: mpsc::UnboundedSender<ToWorker>,
    },
    FromWorker {
        worker: WorkerId,
        msg: ToCoordinator,
    },
    WorkerGone {
        worker: WorkerId,
    },
    Submit {
        client: u64,
        spec: JobSpec,
        tx: mpsc::UnboundedSender<ToClient>,
    },
    ClientGone {
        client: u64,
    },
    /// The journal writer made job `job`'s batches up to `seq` durable (or failed).
    JournalSynced {
        job: u64,
        seq: u64,
        result: std::result::Result<(), String>,
    },
}

struct WorkerConn {
    tx: mpsc::UnboundedSender<ToWorker>,
    data_addr: SocketAddr,
    slots: u32,
    pid: u32,
    /// When it joined, and when its last heartbeat arrived (none yet: `None`).
    joined: Instant,
    last_heartbeat: Option<Instant>,
    /// Map outputs `(job, attempt)` it served before joining (after a coordinator restart).
    held: Vec<(u64, u64)>,
}

impl WorkerConn {
    /// When it was last heard from: its last heartbeat, or its registration.
    fn heard(&self) -> Instant {
        self.last_heartbeat.unwrap_or(self.joined)
    }
}

struct RunningJob {
    /// The job's policy state: attempt results, bad records, counters.
    run: JobRun,
    client: u64,
    sched: Scheduler,
    started: Instant,
    output: OutputDir,
    tx: mpsc::UnboundedSender<ToClient>,
    /// Map locations announced to workers: map → attempt.
    announced: HashMap<u32, MapLocation>,
    /// The job's journal (`OUTPUT/_journal`).
    journal: JournalFile,
    /// Commands waiting for the journal: each with the batch it follows from, in order.
    pending: VecDeque<(u64, Command)>,
    /// The last journal batch known durable.
    synced: u64,
    /// Timeline, rates and latencies, for the report and the status page.
    metrics: JobMetrics,
    /// Committed tasks last told to the client: (maps, reduces).
    progress_sent: (u32, u32),
    /// The latest status message of each attempt that set one.
    statuses: BTreeMap<AttemptId, String>,
}

impl RunningJob {
    /// Takes a worker's byte counts (of every job it knows) for the rate plots.
    fn note_io(&mut self, worker: WorkerId, now: Duration, io: &[JobIoMsg]) {
        if let Some(io) = io.iter().find(|io| io.job == self.run.id) {
            self.metrics.io(worker, now, io);
        }
    }
}

struct Coordinator {
    config: CoordinatorConfig,
    /// The owner loop's own input, for the journal writer's reports.
    input: mpsc::UnboundedSender<Input>,
    workers: HashMap<WorkerId, WorkerConn>,
    job: Option<RunningJob>,
    queue: VecDeque<Queued>,
    next_job: u64,
    /// The status page's view, and what it needs beyond the state above.
    status: StatusBoard,
}

/// What the status page shows that the coordinator would not otherwise keep.
struct StatusBoard {
    tx: watch::Sender<Status>,
    /// `http://...` of the page, or empty.
    url: String,
    listen: String,
    started: Instant,
    /// Workers that left, newest last (bounded).
    lost: VecDeque<WorkerStatus>,
    finished: VecDeque<FinishedJob>,
}

/// A submitted job waiting for its turn.
struct Queued {
    id: u64,
    client: u64,
    spec: JobSpec,
    tx: mpsc::UnboundedSender<ToClient>,
}

/// Serves a cluster on `endpoint` until the endpoint closes. With `resume`, first continues
/// the job recorded in that journal (its client is gone; the job commits on its own).
/// With `status`, serves the HTTP status page on it.
pub async fn serve(
    endpoint: quinn::Endpoint,
    config: CoordinatorConfig,
    resume: Option<std::path::PathBuf>,
    status: Option<tokio::net::TcpListener>,
) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    let input = tx.clone();
    let accept = tokio::spawn(accept_loop(endpoint.clone(), tx));
    let (status_tx, status_rx) = watch::channel(Status::default());
    let url = status
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or_else(String::new, |a| format!("http://{a}/"));
    let page = status.map(|listener| tokio::spawn(status::serve(listener, status_rx)));
    let mut coord = Coordinator {
        config,
        input,
        workers: HashMap::new(),
        job: None,
        queue: VecDeque::new(),
        next_job: 1,
        status: StatusBoard {
            tx: status_tx,
            url,
            listen: endpoint
                .local_addr()
                .map_or_else(|_| String::new(), |a| a.to_string()),
            started: Instant::now(),
            lost: VecDeque::new(),
            finished: VecDeque::new(),
        },
    };
    if let Some(journal) = resume {
        let (tx, _) = mpsc::unbounded_channel();
        coord.resume(&journal, 0, tx)?;
    }
    // The status page refreshes on its own clock; the scheduler is woken when it asks.
    let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = coord.wake_at();
        tokio::select! {
            input = rx.recv() => match input {
                Some(input) => coord.handle_input(input),
                None => break,
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                coord.with_job(|_, now| Some((now, Event::Tick)));
            }
            _ = publish.tick() => coord.publish(),
        }
    }
    accept.abort();
    if let Some(page) = page {
        page.abort();
    }
    Ok(())
}

async fn accept_loop(endpoint: quinn::Endpoint, tx: mpsc::UnboundedSender<Input>) {
    let ids = Arc::new(AtomicU32::new(1));
    let clients = Arc::new(std::sync::atomic::AtomicU64::new(1));
    while let Some(incoming) = endpoint.accept().await {
        // A handshake completes only while someone awaits it: one task per connection.
        let (tx, ids, clients) = (tx.clone(), ids.clone(), clients.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(incoming, tx, ids, clients).await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

async fn connection(
    incoming: quinn::Incoming,
    tx: mpsc::UnboundedSender<Input>,
    ids: Arc<AtomicU32>,
    clients: Arc<std::sync::atomic::AtomicU64>,
) -> Result<()> {
    let conn = net::accept(incoming).await.map_err(|e| {
        tracing::warn!("refused a connection: {e}");
        net_err(e)
    })?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(net_err)?;
    let Some(frame) = net::read_frame(&mut recv, MAX_FRAME)
        .await
        .map_err(net_err)?
    else {
        return Ok(());
    };
    match decode_msg::<Hello>(&frame).map_err(net_err)? {
        Hello::Worker(reg) => {
            let worker = WorkerId(ids.fetch_add(1, Ordering::Relaxed));
            let (wtx, mut wrx) = mpsc::unbounded_channel::<ToWorker>();
            let data_addr = SocketAddr::new(conn.remote_address().ip(), reg.port);
            tracing::info!(
                "{worker} joined from {data_addr} (pid {}, {} slots)",
                reg.pid,
                reg.slots
            );
            let _ = tx.send(Input::WorkerJoined {
                worker,
                slots: reg.slots,
                pid: reg.pid,
                data_addr,
                held: reg.held,
                tx: wtx,
            });
            let writer = tokio::spawn(async move {
                while let Some(msg) = wrx.recv().await {
                    let bytes = encode_msg(&msg).map_err(net_err)?;
                    net::write_frame(&mut send, &bytes).await.map_err(net_err)?;
                    if msg == ToWorker::Shutdown {
                        break;
                    }
                }
                let _ = send.finish();
                Ok::<(), crate::Error>(())
            });
            loop {
                match net::read_frame(&mut recv, MAX_FRAME).await {
                    Ok(Some(frame)) => match decode_msg::<ToCoordinator>(&frame) {
                        Ok(msg) => {
                            let _ = tx.send(Input::FromWorker { worker, msg });
                        }
                        Err(e) => {
                            tracing::warn!("{worker} sent a bad message: {e}");
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!("{worker} connection lost: {e}");
                        break;
                    }
                }
            }
            let _ = tx.send(Input::WorkerGone { worker });
            writer.abort();
            conn.close(0u32.into(), b"bye");
        }
        Hello::Client(spec) => {
            let client = clients.fetch_add(1, Ordering::Relaxed);
            let (ctx, mut crx) = mpsc::unbounded_channel::<ToClient>();
            let _ = tx.send(Input::Submit {
                client,
                spec,
                tx: ctx,
            });
            let mut done = false;
            loop {
                tokio::select! {
                    msg = crx.recv() => {
                        let Some(msg) = msg else { break };
                        let last = matches!(msg, ToClient::Done { .. } | ToClient::Failed { .. });
                        let bytes = encode_msg(&msg).map_err(net_err)?;
                        if net::write_frame(&mut send, &bytes).await.is_err() {
                            break;
                        }
                        if last {
                            done = true;
                            let _ = send.finish();
                            // Keep the connection until the client has read the result.
                            let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
                            break;
                        }
                    }
                    _ = conn.closed() => break,
                }
            }
            if !done {
                let _ = tx.send(Input::ClientGone { client });
            }
        }
    }
    Ok(())
}

impl Coordinator {
    fn handle_input(&mut self, input: Input) {
        match input {
            Input::WorkerJoined {
                worker,
                slots,
                pid,
                data_addr,
                held,
                tx,
            } => {
                let _ = tx.send(ToWorker::Welcome {
                    worker: worker.0,
                    ip: data_addr.ip().to_string(),
                });
                self.workers.insert(
                    worker,
                    WorkerConn {
                        tx,
                        data_addr,
                        slots,
                        pid,
                        joined: Instant::now(),
                        last_heartbeat: None,
                        held,
                    },
                );
                if let Some(job) = &self.job {
                    self.introduce(
                        worker,
                        job.run.id,
                        &job.run.spec.clone(),
                        &job.announced.values().cloned().collect::<Vec<_>>(),
                    );
                }
                self.join_worker(worker, slots);
            }
            Input::WorkerGone { worker } => {
                if let Some(conn) = self.workers.remove(&worker) {
                    self.status.lost_worker(worker, &conn);
                }
                self.with_job(|_, now| Some((now, Event::WorkerLost { worker })));
            }
            Input::FromWorker { worker, msg } => self.worker_message(worker, msg),
            Input::Submit { client, spec, tx } => {
                let id = self.next_job;
                self.next_job += 1;
                let _ = tx.send(ToClient::Accepted {
                    job: id,
                    status: self.status.url.clone(),
                });
                self.queue.push_back(Queued {
                    id,
                    client,
                    spec,
                    tx,
                });
                self.start_next();
            }
            Input::JournalSynced { job, seq, result } => self.journal_synced(job, seq, result),
            Input::ClientGone { client } => {
                self.queue.retain(|q| q.client != client);
                if self.job.as_ref().is_some_and(|j| j.client == client) {
                    tracing::warn!("client went away: abandoning its job");
                    self.end_job(Err(("client disconnected".into(), false)));
                }
            }
        }
    }

    fn worker_message(&mut self, worker: WorkerId, msg: ToCoordinator) {
        let attempt = match &msg {
            ToCoordinator::Heartbeat { .. } => None,
            ToCoordinator::Finished { job, attempt, .. }
            | ToCoordinator::Failed { job, attempt, .. }
            | ToCoordinator::FetchFailed { job, attempt, .. } => Some((*job, AttemptId(*attempt))),
        };
        if let (Some((id, attempt)), Some(job)) = (attempt, &self.job) {
            // Attempt ids are per job: a report about an earlier job's attempt is stale.
            if id != job.run.id {
                tracing::debug!(
                    "{worker} reported on {attempt} of job {id}, which is over: ignored"
                );
                return;
            }
            if job
                .sched
                .attempt(attempt)
                .is_some_and(|a| a.worker != worker)
            {
                tracing::warn!("{worker} reported on {attempt}, which is not its own: ignored");
                return;
            }
        }
        if matches!(msg, ToCoordinator::Heartbeat { .. }) {
            if let Some(conn) = self.workers.get_mut(&worker) {
                // The first heartbeat follows registration at once: it measures no gap.
                let previous = conn.last_heartbeat.replace(Instant::now());
                if let (Some(previous), Some(job)) = (previous, self.job.as_mut()) {
                    job.metrics.heartbeat_lag(previous.elapsed());
                }
            }
        }
        match msg {
            ToCoordinator::Heartbeat {
                progress,
                io,
                work_dir_ok,
            } => {
                let recovered = work_dir_ok
                    && self.job.as_ref().is_some_and(|j| {
                        j.sched
                            .worker(worker)
                            .is_some_and(|w| w.work_dir_fault().is_some())
                    });
                if recovered {
                    tracing::info!(
                        "{worker}: its work dir has room again; it takes map tasks again"
                    );
                    self.with_job(|_, now| Some((now, Event::WorkDirRecovered { worker })));
                }
                self.heartbeat(worker, progress, io);
            }
            ToCoordinator::Finished {
                attempt,
                counters,
                runs,
                histograms,
                io,
                ..
            } => self.with_job(|job, now| {
                job.note_io(worker, now, &io);
                job.run.finished(
                    AttemptId(attempt),
                    Finished {
                        counters,
                        runs,
                        histograms,
                    },
                );
                Some((
                    now,
                    Event::AttemptSucceeded {
                        attempt: AttemptId(attempt),
                    },
                ))
            }),
            ToCoordinator::Failed {
                attempt,
                error,
                work_dir: true,
                ..
            } => self.with_job(|job, now| {
                tracing::warn!(
                    "{worker}: attempt {attempt} failed on its work dir: {error}; \
                     no map tasks go there until it has room"
                );
                job.metrics.work_dir_fault(worker, &error);
                Some((
                    now,
                    Event::WorkDirFailed {
                        attempt: AttemptId(attempt),
                        error,
                    },
                ))
            }),
            ToCoordinator::Failed {
                attempt,
                error,
                bad_record,
                ..
            } => self.with_job(|job, now| {
                tracing::info!("attempt {attempt} on {worker} failed: {error}");
                let task = job.sched.attempt(AttemptId(attempt)).map(|a| a.task);
                let error = job.run.attempt_failed(task, error, bad_record);
                Some((
                    now,
                    Event::AttemptFailed {
                        attempt: AttemptId(attempt),
                        error,
                    },
                ))
            }),
            ToCoordinator::FetchFailed {
                attempt,
                map,
                error,
                ..
            } => self.with_job(|_, now| {
                tracing::info!("attempt {attempt} on {worker} could not fetch map {map}: {error}");
                Some((
                    now,
                    Event::FetchFailed {
                        attempt: AttemptId(attempt),
                        map,
                    },
                ))
            }),
        }
    }

    /// Feeds one event to the running job's scheduler (if any) and carries out its commands.
    /// A worker's heartbeat: its byte counts and the progress of its attempts of this job.
    fn heartbeat(&mut self, worker: WorkerId, progress: Vec<ProgressMsg>, io: Vec<JobIoMsg>) {
        self.with_job(|job, now| {
            let id = job.run.id;
            job.note_io(worker, now, &io);
            for p in progress.iter().filter(|p| p.job == id) {
                if let Some(status) = &p.status {
                    job.statuses.insert(AttemptId(p.attempt), status.clone());
                }
            }
            let progress = progress
                .iter()
                .filter(|p| p.job == id)
                .map(|p| {
                    let f = if p.total == 0 {
                        0.0
                    } else {
                        p.done as f64 / p.total as f64
                    };
                    (AttemptId(p.attempt), f.clamp(0.0, 1.0))
                })
                .collect();
            Some((now, Event::Heartbeat { worker, progress }))
        })
    }

    fn with_job(
        &mut self,
        event: impl FnOnce(&mut RunningJob, Duration) -> Option<(Duration, Event)>,
    ) {
        let Some(job) = self.job.as_mut() else {
            return;
        };
        let now = job.started.elapsed();
        if let Some((now, ev)) = event(job, now) {
            job.sched.handle(now, ev);
        }
        self.drain();
    }

    /// Queues the scheduler's journal records for the writer and its commands behind them;
    /// then carries out every command whose records are durable.
    fn drain(&mut self) {
        let seq = match self.flush_journal() {
            Ok(seq) => seq,
            Err(e) => {
                // Without a durable journal a commit could be lost on a crash: stop the job.
                tracing::error!("journal write failed: {e}");
                self.end_job(Err((format!("journal write failed: {e}"), false)));
                return;
            }
        };
        if let Some(job) = self.job.as_mut() {
            while let Some(cmd) = job.sched.poll() {
                job.pending.push_back((seq, cmd));
            }
        }
        self.run_pending();
    }

    /// When the running job's scheduler next needs a tick ([`Scheduler::poll_timeout`]).
    fn wake_at(&self) -> Option<tokio::time::Instant> {
        let job = self.job.as_ref()?;
        let at = job.sched.poll_timeout()?;
        Some(tokio::time::Instant::from_std(job.started.checked_add(at)?))
    }

    /// The journal writer reports.
    fn journal_synced(&mut self, id: u64, seq: u64, result: std::result::Result<(), String>) {
        let Some(job) = self.job.as_mut().filter(|j| j.run.id == id) else {
            return;
        };
        match result {
            Ok(()) => {
                job.synced = job.synced.max(seq);
                self.run_pending();
            }
            Err(e) => {
                tracing::error!("journal write failed: {e}");
                self.end_job(Err((format!("journal write failed: {e}"), false)));
            }
        }
    }

    /// Carries out the pending commands whose journal records are durable, in order.
    fn run_pending(&mut self) {
        loop {
            let Some(job) = self.job.as_mut() else {
                return;
            };
            if job.pending.front().is_none_or(|(seq, _)| *seq > job.synced) {
                break;
            }
            let Some((_, cmd)) = job.pending.pop_front() else {
                break;
            };
            match cmd {
                Command::Assign {
                    attempt,
                    task,
                    worker,
                    backup,
                } => {
                    if let Some(reason) = &backup {
                        tracing::info!("speculating: {attempt} on {worker}: {reason}");
                    }
                    let msg = match task.phase {
                        Phase::Map => TaskMsg::Map {
                            index: task.index,
                            split: job.run.spec.splits[task.index as usize].clone(),
                            skip: job.run.skip_list(attempt, task.index),
                        },
                        Phase::Reduce => TaskMsg::Reduce {
                            partition: task.index,
                        },
                    };
                    tracing::debug!("assign {task} as {attempt} to {worker}");
                    job.metrics.assigned(attempt);
                    let id = job.run.id;
                    self.send(
                        worker,
                        ToWorker::Assign {
                            job: id,
                            attempt: attempt.0,
                            task: msg,
                        },
                    );
                }
                Command::Cancel { attempt, worker } => {
                    let id = job.run.id;
                    self.send(
                        worker,
                        ToWorker::Cancel {
                            job: id,
                            attempt: attempt.0,
                        },
                    )
                }
                Command::MapOutputReady { map, worker } => {
                    let Some(attempt) = job.sched.committed_attempt(TaskId::map(map)) else {
                        continue;
                    };
                    if job
                        .announced
                        .get(&map)
                        .is_some_and(|l| l.attempt == attempt.0)
                    {
                        continue;
                    }
                    let (Some(fin), Some(conn)) =
                        (job.run.result(attempt), self.workers.get(&worker))
                    else {
                        continue;
                    };
                    let location = MapLocation {
                        map,
                        attempt: attempt.0,
                        addr: conn.data_addr.to_string(),
                        runs: fin.runs.clone(),
                    };
                    job.announced.insert(map, location.clone());
                    let id = job.run.id;
                    self.broadcast(ToWorker::MapOutputReady { job: id, location });
                }
                Command::MapOutputLost { map } => {
                    job.announced.remove(&map);
                    let id = job.run.id;
                    self.broadcast(ToWorker::MapOutputLost { job: id, map });
                }
                Command::JobDone => self.end_job(Ok(())),
                Command::JobFailed { reason } => self.end_job(Err((reason, false))),
            }
        }
        if let Some(job) = self.job.as_mut() {
            let now = job.started.elapsed();
            job.metrics.sweep(now, &job.sched);
        }
        // Workers the scheduler gave up on (missed heartbeats) are disconnected: the control
        // stream ends (no `Shutdown`), so a worker that is still there — stopped, starved of
        // CPU, cut off for a while — registers again, under a new id (Hadoop's "reinit").
        if let Some(job) = &self.job {
            let dead: Vec<WorkerId> = self
                .workers
                .keys()
                .filter(|w| job.sched.worker(**w).is_some_and(|s| !s.is_alive()))
                .copied()
                .collect();
            for w in dead {
                tracing::warn!("{w} missed its heartbeats: disconnecting it");
                if let Some(conn) = self.workers.remove(&w) {
                    self.status.lost_worker(w, &conn);
                }
            }
        }
    }

    fn send(&self, worker: WorkerId, msg: ToWorker) {
        if let Some(conn) = self.workers.get(&worker) {
            let _ = conn.tx.send(msg);
        }
    }

    fn broadcast(&self, msg: ToWorker) {
        for conn in self.workers.values() {
            let _ = conn.tx.send(msg.clone());
        }
    }

    /// Tells a worker about the running job and every map output announced so far.
    fn introduce(&self, worker: WorkerId, job: u64, spec: &JobSpec, locations: &[MapLocation]) {
        self.send(
            worker,
            ToWorker::StartJob {
                job,
                spec: spec.clone(),
            },
        );
        for location in locations {
            self.send(
                worker,
                ToWorker::MapOutputReady {
                    job,
                    location: location.clone(),
                },
            );
        }
    }

    /// Feeds a joining worker to the running job, and the map outputs it still holds.
    fn join_worker(&mut self, worker: WorkerId, slots: u32) {
        let Some(job) = self.job.as_ref() else {
            return;
        };
        let id = job.run.id;
        if let (Some(conn), Some(job)) = (self.workers.get(&worker), self.job.as_mut()) {
            job.metrics.worker(
                worker,
                WorkerRecord {
                    id: worker.0,
                    addr: conn.data_addr.to_string(),
                    pid: conn.pid,
                    slots,
                    work_dir_fault: None,
                },
            );
        }
        let held: Vec<u64> = self
            .workers
            .get(&worker)
            .map(|w| {
                w.held
                    .iter()
                    .filter(|(j, _)| *j == id)
                    .map(|(_, a)| *a)
                    .collect()
            })
            .unwrap_or_default();
        self.with_job(|_, now| Some((now, Event::WorkerJoined { worker, slots })));
        for attempt in held {
            self.with_job(|_, now| {
                Some((
                    now,
                    Event::OutputFound {
                        worker,
                        attempt: AttemptId(attempt),
                    },
                ))
            });
        }
    }

    /// Queues the scheduler's journal events for the writer thread; returns the sequence
    /// number of the batch that holds them (the commands polled next follow from it).
    fn flush_journal(&mut self) -> Result<u64> {
        let Some(job) = self.job.as_mut() else {
            return Ok(0);
        };
        while let Some(event) = job.sched.poll_journal() {
            let record = match event {
                JournalEvent::TaskCommitted {
                    task,
                    attempt,
                    worker,
                } => {
                    if let Some(fin) = job.run.result(attempt) {
                        job.metrics.merge(&fin.histograms);
                    }
                    let output = job.run.committed_output(attempt);
                    Record::TaskCommitted {
                        job: job.run.id,
                        task,
                        attempt,
                        worker_addr: self
                            .workers
                            .get(&worker)
                            .map(|w| w.data_addr.to_string())
                            .unwrap_or_default(),
                        output: encode_msg(&output).map_err(net_err)?.to_vec(),
                    }
                }
                JournalEvent::JobDone => Record::JobDone { job: job.run.id },
                JournalEvent::JobFailed { reason } => Record::JobFailed {
                    job: job.run.id,
                    reason,
                },
                JournalEvent::AttemptsReserved { below } => Record::AttemptsReserved {
                    job: job.run.id,
                    below,
                },
            };
            job.journal.push(&record);
        }
        job.journal.sync_later()
    }

    fn start_next(&mut self) {
        while self.job.is_none() {
            let Some(Queued {
                id,
                client,
                spec,
                tx,
            }) = self.queue.pop_front()
            else {
                return;
            };
            let journal_path = Path::new(&spec.output).join(JOURNAL);
            if spec.resume && journal_path.exists() {
                if let Err(e) = self.resume(&journal_path, client, tx.clone()) {
                    let _ = tx.send(ToClient::Failed {
                        reason: e.to_string(),
                        user_error: e.is_user_error(),
                    });
                }
                continue;
            }
            let started = OutputDir::create(Path::new(&spec.output)).and_then(|output| {
                let mut journal =
                    JournalFile::create(&journal_path).inspect_err(|_| output.abort())?;
                let bytes = encode_msg(&spec).map_err(net_err)?.to_vec();
                journal.push(&Record::JobAccepted {
                    job: id,
                    spec: bytes,
                });
                journal.sync().inspect_err(|_| output.abort())?;
                Ok((output, journal))
            });
            let (output, journal) = match started {
                Ok(o) => o,
                Err(e) => {
                    let _ = tx.send(ToClient::Failed {
                        reason: e.to_string(),
                        user_error: e.is_user_error(),
                    });
                    continue;
                }
            };
            tracing::info!(
                "job {id} ({}) starts: {} maps, {} reduces",
                spec.name,
                spec.splits.len(),
                spec.reducers
            );
            let sched = Scheduler::new(self.scheduler_config(&spec));
            self.begin(RunningJob {
                run: JobRun::new(id, Arc::new(spec)),
                client,
                sched,
                started: Instant::now(),
                output,
                tx,
                announced: HashMap::new(),
                journal,
                pending: VecDeque::new(),
                synced: 0,
                metrics: JobMetrics::new(),
                progress_sent: (0, 0),
                statuses: BTreeMap::new(),
            });
        }
    }

    fn scheduler_config(&self, spec: &JobSpec) -> Config {
        let mut config = Config::new(spec.splits.len() as u32, spec.reducers);
        config.heartbeat_timeout = self.config.heartbeat_timeout;
        config.speculation = spec.speculation;
        config.backup_every_task = spec.backup_every_task;
        config
    }

    /// Makes `job` the running job and tells every worker about it.
    fn begin(&mut self, mut job: RunningJob) {
        let (id, spec) = (job.run.id, job.run.spec.clone());
        let input = self.input.clone();
        let synced: OnSynced = Box::new(move |seq, result| {
            let result = result.map_err(|e| e.to_string());
            let _ = input.send(Input::JournalSynced {
                job: id,
                seq,
                result,
            });
        });
        if let Err(e) = job.journal.start_writer(synced) {
            // Without a writer thread, the journal is written (and waited for) inline.
            tracing::warn!("cannot start the journal writer: {e}");
        }
        self.job = Some(job);
        let workers: Vec<(WorkerId, u32)> =
            self.workers.iter().map(|(w, c)| (*w, c.slots)).collect();
        for (worker, slots) in workers {
            self.introduce(worker, id, &spec, &[]);
            self.join_worker(worker, slots);
        }
        // A job with no tasks at all is done at once.
        self.with_job(|_, now| Some((now, Event::Tick)));
    }

    /// Continues the job recorded in `journal` (whose coordinator died).
    fn resume(
        &mut self,
        path: &Path,
        client: u64,
        tx: mpsc::UnboundedSender<ToClient>,
    ) -> Result<()> {
        let (journal, records) = JournalFile::open(path)?;
        let Some((id, spec_bytes)) = records.iter().rev().find_map(|r| match r {
            Record::JobAccepted { job, spec } => Some((*job, spec.clone())),
            _ => None,
        }) else {
            return Err(crate::Error::Usage(format!(
                "{}: no job in this journal",
                path.display()
            )));
        };
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&spec_bytes);
        let spec: JobSpec = decode_msg(&aligned).map_err(net_err)?;
        self.next_job = self.next_job.max(id + 1);
        let output = OutputDir::open(Path::new(&spec.output));
        let ended = records.iter().find_map(|r| match r {
            Record::JobDone { job } if *job == id => Some(Ok(())),
            Record::JobFailed { job, reason } if *job == id => Some(Err(reason.clone())),
            _ => None,
        });
        let commits = quern_scheduler::journal::commits(&records, id).len();
        tracing::info!(
            "resuming job {id} ({}) from {}: {commits} tasks already committed",
            spec.name,
            path.display()
        );
        let sched = Scheduler::resume_from_journal(self.scheduler_config(&spec), &records, id);
        let job = RunningJob {
            run: JobRun::from_journal(id, Arc::new(spec), &records)?,
            client,
            sched,
            started: Instant::now(),
            output,
            tx,
            announced: HashMap::new(),
            journal,
            pending: VecDeque::new(),
            synced: 0,
            metrics: JobMetrics::new(),
            progress_sent: (0, 0),
            statuses: BTreeMap::new(),
        };
        match ended {
            // The job had ended: finish what the crash interrupted (commit, or clean up).
            Some(result) => {
                self.job = Some(job);
                self.end_job(result.map_err(|reason| (reason, false)));
            }
            None => self.begin(job),
        }
        Ok(())
    }

    fn end_job(&mut self, result: std::result::Result<(), (String, bool)>) {
        let Some(job) = self.job.take() else {
            return;
        };
        let wall = job.started.elapsed();
        let outcome = match &result {
            Ok(()) => "done".to_string(),
            Err((reason, _)) => format!("failed: {reason}"),
        };
        self.status.finished(FinishedJob {
            id: job.run.id,
            name: job.run.spec.name.clone(),
            outcome,
            wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
        });
        // Stop whatever still runs (the scheduler already cancelled its own on JobDone).
        for (id, attempt) in job.sched.attempts() {
            if matches!(attempt.state, AttemptState::Running) {
                self.send(
                    attempt.worker,
                    ToWorker::Cancel {
                        job: job.run.id,
                        attempt: id.0,
                    },
                );
            }
        }
        let reply = match result {
            Ok(()) => {
                // The scheduler's choice of attempt for each part, as journaled.
                let winners: Option<Vec<u64>> = if job.run.spec.reducers == 0 {
                    (0..job.run.spec.splits.len() as u32)
                        .map(|m| job.sched.committed_attempt(TaskId::map(m)).map(|a| a.0))
                        .collect()
                } else {
                    (0..job.run.spec.reducers)
                        .map(|r| job.sched.committed_attempt(TaskId::reduce(r)).map(|a| a.0))
                        .collect()
                };
                let committed = winners
                    .ok_or_else(|| {
                        crate::Error::JobFailed("a part has no committed attempt".to_string())
                    })
                    .and_then(|w| job.output.commit_job(&w));
                match committed {
                    Ok(paths) => {
                        let (counters, skipped) = job.run.totals(&job.sched);
                        tracing::info!("job {} done in {wall:?}", job.run.id);
                        let report =
                            job.metrics
                                .report(&job.run.spec.name, wall, &job.sched, &counters);
                        ToClient::Done {
                            counters: counters_to_msg(&counters),
                            parts: paths.iter().map(|p| p.display().to_string()).collect(),
                            map_tasks: job.run.spec.splits.len() as u32,
                            reduce_tasks: job.run.spec.reducers,
                            skipped,
                            report: serde_json::to_string(&report).unwrap_or_default(),
                        }
                    }
                    Err(e) => {
                        job.output.abort();
                        ToClient::Failed {
                            reason: format!("job commit failed: {e}"),
                            user_error: false,
                        }
                    }
                }
            }
            Err((reason, user_error)) => {
                tracing::warn!("job {} failed: {reason}", job.run.id);
                job.output.abort();
                ToClient::Failed { reason, user_error }
            }
        };
        let _ = job.tx.send(reply);
        self.broadcast(ToWorker::EndJob { job: job.run.id });
        self.start_next();
    }
}

impl Coordinator {
    /// Refreshes the status page, and tells the client how far its job is.
    fn publish(&mut self) {
        let now = Instant::now();
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .iter()
            .map(|(id, conn)| WorkerStatus {
                id: id.0,
                addr: conn.data_addr.to_string(),
                pid: conn.pid,
                slots: conn.slots,
                state: "alive".into(),
                running: self
                    .job
                    .as_ref()
                    .and_then(|j| j.sched.worker(*id))
                    .map_or(0, |w| w.running().count() as u32),
                last_heartbeat_ms: millis(now.saturating_duration_since(conn.heard())),
            })
            .chain(self.status.lost.iter().cloned())
            .collect();
        workers.sort_by_key(|w| w.id);
        let job = self.job.as_mut().map(|job| {
            let elapsed = job.started.elapsed();
            let count = |states: &mut dyn Iterator<Item = TaskState>| {
                let mut c = PhaseCounts::default();
                for state in states {
                    c.total += 1;
                    match state {
                        TaskState::Idle => c.idle += 1,
                        TaskState::Running { .. } => c.running += 1,
                        TaskState::Committed { .. } => c.done += 1,
                    }
                }
                c
            };
            let (maps, reduces) = (job.sched.config().maps, job.sched.config().reduces);
            let map = count(&mut (0..maps).filter_map(|i| job.sched.task_state(TaskId::map(i))));
            let reduce =
                count(&mut (0..reduces).filter_map(|i| job.sched.task_state(TaskId::reduce(i))));
            if (map.done, reduce.done) != job.progress_sent {
                job.progress_sent = (map.done, reduce.done);
                let _ = job.tx.send(ToClient::Progress {
                    maps_done: map.done,
                    maps,
                    reduces_done: reduce.done,
                    reduces,
                });
            }
            let phase = if map.done < map.total {
                "map"
            } else if reduce.done < reduce.total {
                "reduce"
            } else {
                "committing"
            };
            let [input, shuffle, output] = job.metrics.current_rates(elapsed);
            JobStatus {
                id: job.run.id,
                name: job.run.spec.name.clone(),
                elapsed_ms: millis(elapsed),
                phase: phase.into(),
                progress: job_progress(&job.sched),
                map,
                reduce,
                input_bytes_per_s: input,
                shuffle_bytes_per_s: shuffle,
                output_bytes_per_s: output,
                backups_launched: job.sched.stats().backups_launched,
                statuses: job
                    .statuses
                    .iter()
                    .filter_map(|(id, message)| {
                        let a = job.sched.attempt(*id)?;
                        (a.state == AttemptState::Running).then(|| AttemptStatus {
                            attempt: id.0,
                            task: a.task.to_string(),
                            message: message.clone(),
                        })
                    })
                    .collect(),
                percentiles: job
                    .metrics
                    .percentiles()
                    .into_iter()
                    .map(|(name, unit, percentiles)| PercentileRow {
                        name: name.into(),
                        unit: unit.into(),
                        percentiles,
                    })
                    .collect(),
            }
        });
        let status = Status {
            coordinator: self.status.listen.clone(),
            uptime_ms: millis(self.status.started.elapsed()),
            workers,
            job,
            finished: self.status.finished.iter().cloned().collect(),
        };
        self.status.tx.send_replace(status);
    }
}

impl StatusBoard {
    /// Keeps a departed worker on the page (the last few).
    fn lost_worker(&mut self, id: WorkerId, conn: &WorkerConn) {
        self.lost.push_back(WorkerStatus {
            id: id.0,
            addr: conn.data_addr.to_string(),
            pid: conn.pid,
            slots: conn.slots,
            state: "lost".into(),
            running: 0,
            last_heartbeat_ms: millis(conn.heard().elapsed()),
        });
        while self.lost.len() > FINISHED_SHOWN {
            self.lost.pop_front();
        }
    }

    fn finished(&mut self, job: FinishedJob) {
        self.finished.push_back(job);
        while self.finished.len() > FINISHED_SHOWN {
            self.finished.pop_front();
        }
    }
}

/// Fraction of the job's tasks done: a committed task counts 1, a running one its most
/// advanced attempt's progress.
fn job_progress(sched: &Scheduler) -> f64 {
    let config = sched.config();
    let best = |attempts: &std::collections::BTreeSet<AttemptId>| {
        attempts
            .iter()
            .filter_map(|a| sched.attempt(*a))
            .map(|a| a.progress)
            .fold(0.0, f64::max)
    };
    let maps: f64 = (0..config.maps)
        .filter_map(|i| sched.map_state(i))
        .map(|m| match m {
            MapState::Committed { .. } => 1.0,
            MapState::Running { attempts } => best(attempts),
            _ => 0.0,
        })
        .sum();
    let reduces: f64 = (0..config.reduces)
        .filter_map(|i| sched.reduce_state(i))
        .map(|r| match r {
            ReduceState::Committed { .. } => 1.0,
            ReduceState::Running { attempts } => best(attempts),
            ReduceState::Idle => 0.0,
        })
        .sum();
    (maps + reduces) / f64::from((config.maps + config.reduces).max(1))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs a coordinator process: binds `listen` and the status page, calls `ready` with the
/// bound address and the page's URL, and serves until the process is killed.
pub fn run(
    listen: SocketAddr,
    secret: &quern_shuffle::Secret,
    config: CoordinatorConfig,
    resume: Option<std::path::PathBuf>,
    ready: impl FnOnce(SocketAddr, &str),
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("quern-coord")
        .build()
        .map_err(|e| crate::Error::io("tokio runtime", e))?;
    rt.block_on(async {
        let endpoint = net::endpoint(listen, secret).map_err(net_err)?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| crate::Error::io("endpoint", e))?;
        let page = status::bind(config.status).await?;
        let url = page
            .local_addr()
            .map_err(|e| crate::Error::io("status page", e))?;
        ready(addr, &format!("http://{url}/"));
        serve(endpoint, config, resume, Some(page)).await
    })
}
