//! The coordinator: an async driver around the pure [`Scheduler`].
//!
//! One task owns all state (`Coordinator`); connection tasks only translate frames into
//! [`Input`]s and [`ToWorker`]/[`ToClient`] messages back into frames. The owner loop feeds
//! inputs to the scheduler as events (with the time since the job started), then drains the
//! scheduler's commands and carries them out. Jobs run one at a time, in submission order.
//!
//! The coordinator claims each job's output directory before scheduling it and commits it
//! (renames parts, writes `_SUCCESS`) when the scheduler says the job is done; a failed or
//! abandoned job (its client went away) is aborted and leaves no output.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quern_scheduler::{
    AttemptId, AttemptState, Command, Config, Event, Phase, Scheduler, TaskId, WorkerId,
};
use quern_shuffle::net;
use quern_shuffle::wire::{
    decode_msg, encode_msg, CounterMsg, Hello, JobSpec, MapLocation, RunMsg, TaskMsg, ToClient,
    ToCoordinator, ToWorker,
};
use tokio::sync::mpsc;

use super::{counters_from_msg, counters_to_msg, net_err, MAX_FRAME};
use crate::job::Counters;
use crate::output::OutputDir;
use crate::Result;

/// Knobs of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// A worker silent for this long is lost.
    pub heartbeat_timeout: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            heartbeat_timeout: Duration::from_secs(2),
        }
    }
}

/// What connection tasks tell the owner loop.
#[derive(Debug)]
enum Input {
    WorkerJoined {
        worker: WorkerId,
        slots: u32,
        data_addr: SocketAddr,
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
}

struct WorkerConn {
    tx: mpsc::UnboundedSender<ToWorker>,
    data_addr: SocketAddr,
    slots: u32,
}

struct Finished {
    counters: Vec<CounterMsg>,
    runs: Vec<RunMsg>,
}

struct RunningJob {
    id: u64,
    client: u64,
    spec: Arc<JobSpec>,
    sched: Scheduler,
    started: Instant,
    output: OutputDir,
    tx: mpsc::UnboundedSender<ToClient>,
    finished: HashMap<AttemptId, Finished>,
    /// Map locations announced to workers: map → attempt.
    announced: HashMap<u32, MapLocation>,
    /// Per map: failures blamed on each record offset.
    bad_records: HashMap<u32, HashMap<u64, u32>>,
    /// Record offsets each map attempt was told to skip.
    skipped: HashMap<AttemptId, Vec<u64>>,
}

/// A record that crashed this many attempts of its map is skipped (with --skip-bad-records).
const SKIP_AFTER_FAILURES: u32 = 2;

struct Coordinator {
    config: CoordinatorConfig,
    workers: HashMap<WorkerId, WorkerConn>,
    job: Option<RunningJob>,
    queue: VecDeque<(u64, JobSpec, mpsc::UnboundedSender<ToClient>)>,
    next_job: u64,
}

/// Serves a cluster on `endpoint` until the endpoint closes.
pub async fn serve(endpoint: quinn::Endpoint, config: CoordinatorConfig) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    let accept = tokio::spawn(accept_loop(endpoint.clone(), tx));
    let mut coord = Coordinator {
        config,
        workers: HashMap::new(),
        job: None,
        queue: VecDeque::new(),
        next_job: 1,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            input = rx.recv() => match input {
                Some(input) => coord.handle_input(input),
                None => break,
            },
            _ = tick.tick() => coord.with_job(|_, now| Some((now, Event::Tick))),
        }
    }
    accept.abort();
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
                data_addr,
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
                data_addr,
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
                    },
                );
                if let Some(job) = &self.job {
                    self.introduce(
                        worker,
                        job.id,
                        &job.spec.clone(),
                        &job.announced.values().cloned().collect::<Vec<_>>(),
                    );
                }
                self.with_job(|_, now| Some((now, Event::WorkerJoined { worker, slots })));
            }
            Input::WorkerGone { worker } => {
                self.workers.remove(&worker);
                self.with_job(|_, now| Some((now, Event::WorkerLost { worker })));
            }
            Input::FromWorker { worker, msg } => self.worker_message(worker, msg),
            Input::Submit { client, spec, tx } => {
                let _ = tx.send(ToClient::Accepted { job: self.next_job });
                self.queue.push_back((client, spec, tx));
                self.next_job += 1;
                self.start_next();
            }
            Input::ClientGone { client } => {
                self.queue.retain(|(c, _, _)| *c != client);
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
            ToCoordinator::Finished { attempt, .. }
            | ToCoordinator::Failed { attempt, .. }
            | ToCoordinator::FetchFailed { attempt, .. } => Some(AttemptId(*attempt)),
        };
        if let (Some(attempt), Some(job)) = (attempt, &self.job) {
            if job
                .sched
                .attempt(attempt)
                .is_some_and(|a| a.worker != worker)
            {
                tracing::warn!("{worker} reported on {attempt}, which is not its own: ignored");
                return;
            }
        }
        match msg {
            ToCoordinator::Heartbeat { progress } => self.with_job(|_, now| {
                let progress = progress
                    .iter()
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
            }),
            ToCoordinator::Finished {
                attempt,
                counters,
                runs,
            } => self.with_job(|job, now| {
                job.finished
                    .insert(AttemptId(attempt), Finished { counters, runs });
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
                bad_record,
            } => self.with_job(|job, now| {
                tracing::info!("attempt {attempt} on {worker} failed: {error}");
                let task = job.sched.attempt(AttemptId(attempt)).map(|a| a.task);
                if let (Some(offset), Some(task)) = (bad_record, task) {
                    if task.phase == Phase::Map {
                        let n = job.bad_records.entry(task.index).or_default().entry(offset).or_default();
                        *n += 1;
                        if job.spec.skip_bad_records && *n == SKIP_AFTER_FAILURES {
                            tracing::warn!("{task}: skipping the record at byte {offset}: it crashed {n} attempts");
                        }
                    }
                }
                let error = match (bad_record, task) {
                    (Some(offset), Some(task)) => {
                        let split = &job.spec.splits[task.index as usize];
                        let file = job.spec.inputs.get(split.file as usize).map_or("?", |f| f.name.as_str());
                        let hint = if job.spec.skip_bad_records { "" } else { "; --skip-bad-records skips it" };
                        format!("{error} (on the record at byte {offset} of {file}{hint})")
                    }
                    _ => error,
                };
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

    fn drain(&mut self) {
        loop {
            let Some(job) = self.job.as_mut() else {
                return;
            };
            let Some(cmd) = job.sched.poll() else {
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
                        Phase::Map => {
                            let skip: Vec<u64> = if job.spec.skip_bad_records {
                                job.bad_records
                                    .get(&task.index)
                                    .into_iter()
                                    .flatten()
                                    .filter(|(_, n)| **n >= SKIP_AFTER_FAILURES)
                                    .map(|(offset, _)| *offset)
                                    .collect()
                            } else {
                                Vec::new()
                            };
                            if !skip.is_empty() {
                                job.skipped.insert(attempt, skip.clone());
                            }
                            TaskMsg::Map {
                                index: task.index,
                                split: job.spec.splits[task.index as usize],
                                skip,
                            }
                        }
                        Phase::Reduce => TaskMsg::Reduce {
                            partition: task.index,
                        },
                    };
                    tracing::debug!("assign {task} as {attempt} to {worker}");
                    let id = job.id;
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
                    self.send(worker, ToWorker::Cancel { attempt: attempt.0 })
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
                        (job.finished.get(&attempt), self.workers.get(&worker))
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
                    let id = job.id;
                    self.broadcast(ToWorker::MapOutputReady { job: id, location });
                }
                Command::MapOutputLost { map } => {
                    job.announced.remove(&map);
                    let id = job.id;
                    self.broadcast(ToWorker::MapOutputLost { job: id, map });
                }
                Command::JobDone => self.end_job(Ok(())),
                Command::JobFailed { reason } => self.end_job(Err((reason, false))),
            }
        }
        // Workers the scheduler gave up on (missed heartbeats) are disconnected: if they
        // come back they must register again, under a new id.
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
                    let _ = conn.tx.send(ToWorker::Shutdown);
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

    fn start_next(&mut self) {
        while self.job.is_none() {
            let Some((client, spec, tx)) = self.queue.pop_front() else {
                return;
            };
            let id = self.next_job - self.queue.len() as u64 - 1;
            let output = match OutputDir::create(Path::new(&spec.output)) {
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
            let mut config = Config::new(spec.splits.len() as u32, spec.reducers);
            config.heartbeat_timeout = self.config.heartbeat_timeout;
            config.speculation = spec.speculation;
            let spec = Arc::new(spec);
            self.job = Some(RunningJob {
                id,
                client,
                spec: spec.clone(),
                sched: Scheduler::new(config),
                started: Instant::now(),
                output,
                tx,
                finished: HashMap::new(),
                announced: HashMap::new(),
                bad_records: HashMap::new(),
                skipped: HashMap::new(),
            });
            let workers: Vec<(WorkerId, u32)> =
                self.workers.iter().map(|(w, c)| (*w, c.slots)).collect();
            for (worker, slots) in workers {
                self.introduce(worker, id, &spec, &[]);
                self.with_job(|_, now| Some((now, Event::WorkerJoined { worker, slots })));
            }
            // A job with no tasks at all is done at once.
            self.with_job(|_, now| Some((now, Event::Tick)));
        }
    }

    fn end_job(&mut self, result: std::result::Result<(), (String, bool)>) {
        let Some(job) = self.job.take() else {
            return;
        };
        // Stop whatever still runs (the scheduler already cancelled its own on JobDone).
        for (id, attempt) in job.sched.attempts() {
            if matches!(attempt.state, AttemptState::Running) {
                self.send(attempt.worker, ToWorker::Cancel { attempt: id.0 });
            }
        }
        let reply = match result {
            Ok(()) => {
                let parts = if job.spec.reducers == 0 {
                    job.spec.splits.len()
                } else {
                    job.spec.reducers as usize
                };
                match job.output.commit_job(parts) {
                    Ok(paths) => {
                        let mut counters = Counters::default();
                        let mut skipped = Vec::new();
                        let tasks = (0..job.spec.splits.len() as u32)
                            .map(TaskId::map)
                            .chain((0..job.spec.reducers).map(TaskId::reduce));
                        for task in tasks {
                            let Some(attempt) = job.sched.committed_attempt(task) else {
                                continue;
                            };
                            if let Some(fin) = job.finished.get(&attempt) {
                                counters.merge(&counters_from_msg(&fin.counters));
                            }
                            for &offset in job.skipped.get(&attempt).into_iter().flatten() {
                                let split = &job.spec.splits[task.index as usize];
                                let name = job
                                    .spec
                                    .inputs
                                    .get(split.file as usize)
                                    .map_or("?", |f| f.name.as_str());
                                skipped.push((name.to_string(), offset));
                            }
                        }
                        tracing::info!("job {} done in {:?}", job.id, job.started.elapsed());
                        ToClient::Done {
                            counters: counters_to_msg(&counters),
                            parts: paths.iter().map(|p| p.display().to_string()).collect(),
                            map_tasks: job.spec.splits.len() as u32,
                            reduce_tasks: job.spec.reducers,
                            skipped,
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
                tracing::warn!("job {} failed: {reason}", job.id);
                job.output.abort();
                ToClient::Failed { reason, user_error }
            }
        };
        let _ = job.tx.send(reply);
        self.broadcast(ToWorker::EndJob { job: job.id });
        self.start_next();
    }
}

/// Runs a coordinator process: binds `listen`, calls `ready` with the bound address, and
/// serves until the process is killed.
pub fn run(
    listen: SocketAddr,
    secret: &quern_shuffle::Secret,
    config: CoordinatorConfig,
    ready: impl FnOnce(SocketAddr),
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
        ready(addr);
        serve(endpoint, config).await
    })
}
