//! The state machine: [`Scheduler`] and the transitions between the states of `state.rs`.
//!
//! Every `handle` call runs three steps in this order:
//!
//! 1. *Expire*: declare lost every live worker silent for longer than `heartbeat_timeout`;
//!    after a resume, re-execute the unattached maps once `resume_grace` has run out.
//! 2. *Apply* the event. Reports are checked against the attempt's state first: only a
//!    `Running` attempt can commit, fail or report a fetch failure.
//! 3. *Schedule*: fill free slots with idle maps (preempting a reducer for an idle map that
//!    finds no slot), backups of straggling maps, idle reduces, backups of straggling
//!    reduces.
//!
//! Commands are queued as the transitions happen, so `poll` returns them in causal order:
//! for example a `Cancel` of a superseded attempt follows the commit that superseded it, and
//! every `Cancel` of a job's still-running attempts precedes its `JobDone`/`JobFailed`.
//! Journal entries go to their own queue (`poll_journal`), which the driver drains first.
//!
//! Every transition of an attempt out of `Running` goes through [`Scheduler::end_attempt`],
//! which keeps the three views of a running attempt — the attempt's state, its worker's
//! `running` set and its task's `Running { attempts }` set — in agreement.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::mem;
use std::time::Duration;

use crate::journal::JournalEvent;
use crate::state::{
    Attempt, AttemptState, CancelReason, JobState, MapState, ReduceState, Stats, TaskState, Worker,
    WorkerState,
};
use crate::{AttemptId, Command, Config, Event, Phase, TaskId, WorkerId};

/// The scheduler of one job: feed it [`Event`]s with [`Scheduler::handle`], carry out the
/// [`Command`]s [`Scheduler::poll`] returns. See the crate docs for the rules.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// With `max_attempts` and `fetch_failures_to_reexecute` at least 1.
    config: Config,
    maps: Vec<MapTask>,
    reduces: Vec<ReduceTask>,
    /// Invariant: exactly the indices of the maps in `MapState::Idle`. Kept so placement does
    /// not scan every task on every event.
    idle_maps: BTreeSet<u32>,
    /// Invariant: exactly the indices of the reduces in `ReduceState::Idle`.
    idle_reduces: BTreeSet<u32>,
    /// Maps whose `last_commit` is set; only grows.
    maps_ever_committed: u32,
    attempts: AttemptTable,
    next_attempt: u64,
    workers: BTreeMap<WorkerId, Worker>,
    commands: VecDeque<Command>,
    /// Transitions to journal, drained by `poll_journal` before `commands`.
    journal: VecDeque<JournalEvent>,
    job: JobState,
    stats: Stats,
    /// The first attempt id of this incarnation; lower ids were journaled before a restart.
    first_attempt: u64,
    /// Ids below this are reserved in the journal (`JournalEvent::AttemptsReserved`).
    reserved_below: u64,
    /// Invariant: exactly the maps in `MapState::Unattached`, by their journaled attempt.
    unattached: BTreeMap<AttemptId, u32>,
    /// After `resume`: when unattached maps are re-executed. Set by the first `handle`.
    grace_until: Option<Duration>,
    /// The latest `now` handled: timers at or before it have fired.
    handled: Duration,
    /// Per phase (`Phase as usize`): the last [`RECENT_COMMITS`] attempts that committed in
    /// this incarnation, oldest first, each with its duration from assignment (their mean
    /// is what a new attempt is expected to take) and its progress rate once it made
    /// progress (`None` if it made none in a measurable time).
    recent_commits: [VecDeque<(Duration, Option<f64>)>; 2],
    /// Since when every map output has been available (`None` while one is missing): a
    /// reduce cannot progress before, so its age for speculation counts from here.
    outputs_since: Option<Duration>,
    /// Per phase (`Phase as usize`): when speculation last scanned it, whether a slot freed
    /// since, and whether a scan was held back since (see `speculate`).
    speculated: [ScanClock; 2],
    /// The slow workers as found at `at`, kept for `speculation_interval` (see `schedule`).
    slow_cache: Option<SlowCache>,
    /// Per worker: sum and number of the progress rates (1 / time from `progress_since` to
    /// commit) of its committed attempts, for the slow-worker test.
    worker_rates: BTreeMap<WorkerId, (f64, u32)>,
    /// Invariant: exactly the workers with a free slot (so alive), keyed by (most free slots
    /// first, lowest id): the order `pick_worker` chooses in, without a walk of every worker.
    /// Kept by `update_worker`, the only place a worker's `running` or `state` changes.
    free_workers: BTreeSet<(Reverse<u32>, WorkerId)>,
    /// Invariant: exactly the live workers, by (`last_seen`, id): heartbeat expiry looks at
    /// the front only.
    by_last_seen: BTreeSet<(Duration, WorkerId)>,
    /// Invariant: exactly the running attempts, per phase (`Phase as usize`), in id order
    /// (for preemption the newest reduce is last; speculation walks only its phase's).
    running_by_phase: [BTreeSet<AttemptId>; 2],
    /// Invariant: the number of tasks in a `Running` state; the running attempts beyond
    /// these are backups.
    running_tasks: usize,
}

#[derive(Debug, Clone)]
struct MapTask {
    state: MapState,
    /// Failures reported by its running attempts.
    failures: u32,
    /// Times its output was declared lost because of fetch failures.
    fetch_reexecutions: u32,
    /// Its latest committed attempt, kept when the output is lost: every reduce that committed
    /// before the loss consumed that output.
    last_commit: Option<AttemptId>,
}

#[derive(Debug, Clone)]
struct ReduceTask {
    state: ReduceState,
    /// Failures reported by its running attempts.
    failures: u32,
}

impl Scheduler {
    /// A scheduler for a job of `config.maps` maps and `config.reduces` reduces, with no
    /// workers yet. A job with no tasks at all is done at once: `poll` returns `JobDone`.
    pub fn new(config: Config) -> Scheduler {
        let mut scheduler = Scheduler::blank(config);
        scheduler.finish_if_done();
        scheduler
    }

    /// A scheduler for a job that a previous coordinator had started: the tasks in
    /// `committed` (from the journal, see [`crate::journal::commits`]) are already committed.
    ///
    /// * A committed reduce is final: it is never run again.
    /// * A committed map is [`MapState::Unattached`]: its output may still sit on a worker,
    ///   which says so with [`Event::OutputFound`] once it re-registered; that re-attaches
    ///   the map (`MapOutputReady`). While some reduce has not committed, the maps not
    ///   re-attached `resume_grace` after the first [`Scheduler::handle`] are re-executed. In
    ///   a map-only job (or once every reduce committed) committed maps are final.
    /// * New attempt ids start above every id in `committed`.
    ///
    /// A task listed more than once takes its highest attempt id (the latest commit); tasks
    /// the job does not have are ignored, and so is a map whose attempt id a lower map
    /// already claimed. If everything is committed, `poll` returns
    /// `JobDone` at once.
    ///
    /// Ids of attempts that ran but never committed are not in `committed`: a driver with a
    /// journal should use [`Scheduler::resume_from_journal`], which also skips every
    /// reserved id.
    pub fn resume(
        config: Config,
        committed: impl IntoIterator<Item = (TaskId, AttemptId)>,
    ) -> Scheduler {
        Scheduler::resume_at(config, committed, AttemptId(0))
    }

    /// [`Scheduler::resume`] from the decoded journal `records` of job `job`: its
    /// [`journal::commits`](crate::journal::commits), with new attempt ids starting at
    /// [`journal::first_free_attempt`](crate::journal::first_free_attempt), above every id
    /// the previous coordinator may have used.
    pub fn resume_from_journal(
        config: Config,
        records: &[crate::journal::Record],
        job: u64,
    ) -> Scheduler {
        let first = crate::journal::first_free_attempt(records, job);
        Scheduler::resume_at(config, crate::journal::commits(records, job), first)
    }

    /// `resume`, with new attempt ids starting at `first` or above.
    fn resume_at(
        config: Config,
        committed: impl IntoIterator<Item = (TaskId, AttemptId)>,
        first: AttemptId,
    ) -> Scheduler {
        let mut s = Scheduler::blank(config);
        let mut latest: BTreeMap<TaskId, AttemptId> = BTreeMap::new();
        let mut max = None;
        for (task, attempt) in committed {
            max = max.max(Some(attempt.0));
            let entry = latest.entry(task).or_insert(attempt);
            *entry = (*entry).max(attempt);
        }
        for (task, attempt) in latest {
            let index = task.index;
            match task.phase {
                Phase::Map => {
                    // One attempt cannot have committed two maps: keep the first.
                    if s.unattached.contains_key(&attempt) {
                        continue;
                    }
                    let Some(m) = s.maps.get_mut(index as usize) else {
                        continue;
                    };
                    m.state = MapState::Unattached { attempt };
                    m.last_commit = Some(attempt);
                    s.idle_maps.remove(&index);
                    s.unattached.insert(attempt, index);
                    s.maps_ever_committed += 1;
                    s.stats.maps_committed += 1;
                }
                Phase::Reduce => {
                    let Some(r) = s.reduces.get_mut(index as usize) else {
                        continue;
                    };
                    r.state = ReduceState::Committed { attempt };
                    s.idle_reduces.remove(&index);
                    s.stats.reduces_committed += 1;
                }
            }
        }
        s.next_attempt = max.map_or(0, |m: u64| m.saturating_add(1)).max(first.0);
        s.first_attempt = s.next_attempt;
        s.reserved_below = s.next_attempt;
        s.finish_if_done();
        s
    }

    /// Every task idle, no workers, nothing queued.
    fn blank(mut config: Config) -> Scheduler {
        config.max_attempts = config.max_attempts.max(1);
        config.fetch_failures_to_reexecute = config.fetch_failures_to_reexecute.max(1);
        let maps = (0..config.maps)
            .map(|_| MapTask {
                state: MapState::Idle,
                failures: 0,
                fetch_reexecutions: 0,
                last_commit: None,
            })
            .collect();
        let reduces = (0..config.reduces)
            .map(|_| ReduceTask {
                state: ReduceState::Idle,
                failures: 0,
            })
            .collect();
        Scheduler {
            idle_maps: (0..config.maps).collect(),
            idle_reduces: (0..config.reduces).collect(),
            config,
            maps,
            reduces,
            maps_ever_committed: 0,
            attempts: AttemptTable::default(),
            next_attempt: 0,
            workers: BTreeMap::new(),
            commands: VecDeque::new(),
            journal: VecDeque::new(),
            job: JobState::Running,
            stats: Stats::default(),
            first_attempt: 0,
            reserved_below: 0,
            unattached: BTreeMap::new(),
            grace_until: None,
            handled: Duration::ZERO,
            recent_commits: [VecDeque::new(), VecDeque::new()],
            outputs_since: None,
            speculated: [ScanClock::default(); 2],
            slow_cache: None,
            worker_rates: BTreeMap::new(),
            free_workers: BTreeSet::new(),
            by_last_seen: BTreeSet::new(),
            running_by_phase: [BTreeSet::new(), BTreeSet::new()],
            running_tasks: 0,
        }
    }

    /// Applies `event`, which happened at `now` (time since job start; it should not go
    /// backwards, and a smaller value is treated as no time passing). Queues the resulting
    /// commands for [`Scheduler::poll`]. After the job ended, events are ignored.
    pub fn handle(&mut self, now: Duration, event: Event) {
        if self.is_finished() {
            return;
        }
        self.handled = self.handled.max(now);
        self.expire_workers(now);
        self.expire_unattached(now);
        match event {
            Event::WorkerJoined { worker, slots } => self.worker_joined(now, worker, slots),
            Event::WorkerLost { worker } => self.lose_worker(now, worker),
            Event::Heartbeat { worker, progress } => self.heartbeat(now, worker, progress),
            Event::AttemptSucceeded { attempt } => {
                if self.report_from_running(now, attempt).is_some() {
                    self.commit(now, attempt);
                }
            }
            Event::AttemptFailed { attempt, error } => {
                if self.report_from_running(now, attempt).is_some() {
                    self.fail_attempt(attempt, error);
                }
            }
            Event::WorkDirFailed { attempt, error } => {
                if self.report_from_running(now, attempt).is_some() {
                    self.work_dir_failed(attempt, error);
                }
            }
            Event::WorkDirRecovered { worker } => {
                if self.touch(now, worker) {
                    if let Some(w) = self.workers.get_mut(&worker) {
                        w.work_dir_fault = None;
                    }
                }
            }
            Event::FetchFailed { attempt, map } => {
                if self.report_from_running(now, attempt) == Some(Phase::Reduce) {
                    self.fetch_failed(map);
                }
            }
            Event::OutputFound { worker, attempt } => self.output_found(now, worker, attempt),
            Event::Tick => {}
        }
        if !self.is_finished() {
            self.schedule(now);
        }
    }

    /// The next command, in the order they were produced; `None` when there are none left.
    ///
    /// Within one `handle`, the commands of a lost worker (timeout) come first, then those of
    /// the event, then the placements (`Assign`s). A `Cancel` of a superseded attempt follows the commit that superseded
    /// it; the `Cancel`s of still-running attempts precede `JobDone`/`JobFailed`, which is
    /// always the last command ever.
    pub fn poll(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// The next transition to journal; `None` when there are none left. Drain it after every
    /// `handle` (and after `new`/`resume`) **before** [`Scheduler::poll`], append the records
    /// and fsync, then carry out the commands: each entry is queued before the commands that
    /// follow from it (see [`crate::journal`]). A driver that keeps no journal may ignore it
    /// (it grows by one entry per commit).
    pub fn poll_journal(&mut self) -> Option<JournalEvent> {
        self.journal.pop_front()
    }

    /// When the scheduler next needs to be called without any event (with
    /// [`Event::Tick`]), as quinn-proto's `poll_timeout`: the earliest of a live worker's
    /// heartbeat expiry, the end of the resume grace, a running attempt becoming old
    /// enough to be backed up, and a speculation scan held back or the kept slow-worker
    /// set expiring (`Config::speculation_interval`). Nothing that only time changes happens before it, so a driver
    /// may sleep until then; `None` means never (finished, or nothing pending on time).
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.is_finished() {
            return None;
        }
        let after =
            |t: Duration, d: Duration| t.checked_add(d).map(|t| t + Duration::from_nanos(1));
        // The live worker heard from longest ago expires first; lost once silent for *more*
        // than the timeout.
        let heartbeats = self
            .by_last_seen
            .first()
            .and_then(|(last_seen, _)| after(*last_seen, self.config.heartbeat_timeout));
        let grace = self
            .grace_until
            .filter(|_| !self.unattached.is_empty())
            .and_then(|until| until.checked_add(Duration::from_nanos(1)));
        let min_runtime = self.config.min_runtime;
        let backups = self
            .config
            .speculation
            .then(|| {
                self.running_by_phase
                    .iter()
                    .flatten()
                    .filter_map(|id| self.attempts.get(id))
                    .filter_map(move |a| {
                        let origin = match a.task.phase {
                            Phase::Map => a.started,
                            Phase::Reduce => a.started.max(self.outputs_since?),
                        };
                        origin.checked_add(min_runtime)
                    })
            })
            .into_iter()
            .flatten();
        // A speculation scan held back until its interval has passed.
        let interval = self.config.speculation_interval;
        let held = self
            .speculated
            .iter()
            .filter(|c| c.held)
            .filter_map(move |c| c.last.map(|t| t.saturating_add(interval)));
        // The kept slow-worker set expires (a task held off a far slower worker may go).
        let slow_set = self
            .slow_cache
            .as_ref()
            .map(|c| c.at.saturating_add(interval));
        heartbeats
            .into_iter()
            .chain(grace)
            .chain(backups)
            .chain(held)
            .chain(slow_set)
            .filter(|&t| t > self.handled)
            .min()
    }

    /// Whether `JobDone` or `JobFailed` was produced.
    pub fn is_finished(&self) -> bool {
        self.job != JobState::Running
    }

    /// Running, done, or failed with a reason.
    pub fn job_state(&self) -> &JobState {
        &self.job
    }

    /// The configuration in force (`max_attempts` and `fetch_failures_to_reexecute` raised to
    /// at least 1).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A summary of `task`'s state; `None` for a task the job does not have.
    pub fn task_state(&self, task: TaskId) -> Option<TaskState> {
        Some(match task.phase {
            Phase::Map => match &self.maps.get(task.index as usize)?.state {
                MapState::Idle => TaskState::Idle,
                MapState::Running { attempts } => TaskState::Running {
                    attempts: attempts.len(),
                },
                MapState::Committed { attempt, .. } | MapState::Unattached { attempt } => {
                    TaskState::Committed { attempt: *attempt }
                }
            },
            Phase::Reduce => match &self.reduces.get(task.index as usize)?.state {
                ReduceState::Idle => TaskState::Idle,
                ReduceState::Running { attempts } => TaskState::Running {
                    attempts: attempts.len(),
                },
                ReduceState::Committed { attempt } => TaskState::Committed { attempt: *attempt },
            },
        })
    }

    /// Map `index`'s state.
    pub fn map_state(&self, index: u32) -> Option<&MapState> {
        Some(&self.maps.get(index as usize)?.state)
    }

    /// Reduce `index`'s state.
    pub fn reduce_state(&self, index: u32) -> Option<&ReduceState> {
        Some(&self.reduces.get(index as usize)?.state)
    }

    /// The attempt whose result counts for `task`: a reduce's committed attempt, or a map's
    /// latest committed attempt — kept after its output was lost, since the reduces that
    /// committed before the loss consumed it.
    pub fn committed_attempt(&self, task: TaskId) -> Option<AttemptId> {
        match task.phase {
            Phase::Map => self.maps.get(task.index as usize)?.last_commit,
            Phase::Reduce => match self.reduces.get(task.index as usize)?.state {
                ReduceState::Committed { attempt } => Some(attempt),
                _ => None,
            },
        }
    }

    /// Failures reported by `task`'s running attempts so far.
    pub fn failures(&self, task: TaskId) -> Option<u32> {
        match task.phase {
            Phase::Map => Some(self.maps.get(task.index as usize)?.failures),
            Phase::Reduce => Some(self.reduces.get(task.index as usize)?.failures),
        }
    }

    /// Times map `index` was re-executed because reducers could not fetch its output.
    pub fn fetch_reexecutions(&self, index: u32) -> Option<u32> {
        Some(self.maps.get(index as usize)?.fetch_reexecutions)
    }

    /// One attempt.
    pub fn attempt(&self, attempt: AttemptId) -> Option<&Attempt> {
        self.attempts.get(&attempt)
    }

    /// Every attempt ever assigned, in id (= assignment) order.
    pub fn attempts(&self) -> impl Iterator<Item = (AttemptId, &Attempt)> + '_ {
        self.attempts.iter().map(|(id, a)| (*id, a))
    }

    /// One worker, alive or lost.
    pub fn worker(&self, worker: WorkerId) -> Option<&Worker> {
        self.workers.get(&worker)
    }

    /// Every worker that ever joined, in id order.
    pub fn workers(&self) -> impl Iterator<Item = (WorkerId, &Worker)> + '_ {
        self.workers.iter().map(|(id, w)| (*id, w))
    }

    /// Checks the invariants written on the fields and states (O(tasks + attempts +
    /// workers)); the simulation calls it after every step. Returns the first violation.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (id, w) in &self.workers {
            if w.running.len() > w.slots as usize {
                return Err(format!(
                    "{id} runs {} attempts in {} slots",
                    w.running.len(),
                    w.slots
                ));
            }
            if !w.is_alive() && !w.running.is_empty() {
                return Err(format!("lost {id} still runs attempts"));
            }
            for a in &w.running {
                match self.attempts.get(a) {
                    Some(att) if att.state == AttemptState::Running && att.worker == *id => {}
                    _ => return Err(format!("{id} lists {a}, which is not running there")),
                }
            }
        }
        let free: BTreeSet<(Reverse<u32>, WorkerId)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.free_slots() > 0)
            .map(|(id, w)| (Reverse(w.free_slots()), *id))
            .collect();
        if free != self.free_workers {
            return Err("free-slot index disagrees with the workers".to_string());
        }
        let seen: BTreeSet<(Duration, WorkerId)> = self
            .workers
            .iter()
            .filter_map(|(id, w)| Some((alive_since(w)?, *id)))
            .collect();
        if seen != self.by_last_seen {
            return Err("last-seen index disagrees with the workers".to_string());
        }
        let running: Vec<&Attempt> = self
            .attempts
            .values()
            .filter(|a| a.state == AttemptState::Running)
            .collect();
        let of_phase = |phase: Phase| -> BTreeSet<AttemptId> {
            self.attempts
                .iter()
                .filter(|(_, a)| a.state == AttemptState::Running && a.task.phase == phase)
                .map(|(id, _)| *id)
                .collect()
        };
        let by_phase = [of_phase(Phase::Map), of_phase(Phase::Reduce)];
        if by_phase != self.running_by_phase
            || running.len() != by_phase[0].len() + by_phase[1].len()
        {
            return Err("running-attempt index disagrees with the attempts".to_string());
        }
        let tasks = (0..self.config.maps)
            .map(TaskId::map)
            .chain((0..self.config.reduces).map(TaskId::reduce))
            .filter(|t| self.running_attempts(*t).is_some())
            .count();
        if tasks != self.running_tasks {
            return Err("running-task count disagrees with the task states".to_string());
        }
        let mut committed: BTreeMap<TaskId, AttemptId> = BTreeMap::new();
        for (id, a) in self.attempts.iter() {
            match a.state {
                AttemptState::Running => {
                    let on_worker = self
                        .workers
                        .get(&a.worker)
                        .is_some_and(|w| w.is_alive() && w.running.contains(id));
                    if !on_worker {
                        return Err(format!("running {id} is not on live {}", a.worker));
                    }
                    if !self
                        .running_attempts(a.task)
                        .is_some_and(|s| s.contains(id))
                    {
                        return Err(format!("running {id} is not in {}'s attempts", a.task));
                    }
                }
                AttemptState::Committed => {
                    if let Some(other) = committed.insert(a.task, *id) {
                        return Err(format!("{} committed twice: {other} and {id}", a.task));
                    }
                    if self.task_state(a.task) != Some(TaskState::Committed { attempt: *id }) {
                        return Err(format!("{id} committed but {} does not say so", a.task));
                    }
                }
                _ => {}
            }
        }
        let outputs_needed = self.map_outputs_needed();
        for (index, m) in (0u32..).zip(&self.maps) {
            let task = TaskId::map(index);
            if (m.state == MapState::Idle) != self.idle_maps.contains(&index) {
                return Err(format!("idle set disagrees about {task}"));
            }
            match &m.state {
                MapState::Idle => {}
                MapState::Running { attempts } => self.check_running(task, attempts)?,
                MapState::Committed {
                    attempt, worker, ..
                } => {
                    // Journaled before a restart (re-attached), or committed in this run.
                    let journaled = attempt.0 < self.first_attempt;
                    if !journaled && committed.get(&task) != Some(attempt) {
                        return Err(format!("{task} committed by {attempt}, not in Committed"));
                    }
                    let alive = self.workers.get(worker).is_some_and(Worker::is_alive);
                    if outputs_needed && !alive {
                        return Err(format!("{task}'s needed output is on lost {worker}"));
                    }
                }
                MapState::Unattached { attempt } => {
                    if attempt.0 >= self.first_attempt || committed.contains_key(&task) {
                        return Err(format!("{task} unattached but committed in this run"));
                    }
                    if self.unattached.get(attempt) != Some(&index) {
                        return Err(format!("unattached set disagrees about {task}"));
                    }
                }
            }
        }
        let unattached = self
            .maps
            .iter()
            .filter(|m| matches!(m.state, MapState::Unattached { .. }))
            .count();
        if unattached != self.unattached.len() {
            return Err("unattached set lists maps that are not unattached".to_string());
        }

        for (index, r) in (0u32..).zip(&self.reduces) {
            let task = TaskId::reduce(index);
            if (r.state == ReduceState::Idle) != self.idle_reduces.contains(&index) {
                return Err(format!("idle set disagrees about {task}"));
            }
            if let ReduceState::Running { attempts } = &r.state {
                self.check_running(task, attempts)?;
            }
        }
        let maps_committed = self
            .maps
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    MapState::Committed { .. } | MapState::Unattached { .. }
                )
            })
            .count();
        let reduces_committed = self
            .reduces
            .iter()
            .filter(|r| matches!(r.state, ReduceState::Committed { .. }))
            .count();
        if maps_committed != self.stats.maps_committed as usize
            || reduces_committed != self.stats.reduces_committed as usize
        {
            return Err("commit counters disagree with task states".to_string());
        }
        if self.is_finished()
            && self
                .attempts
                .values()
                .any(|a| a.state == AttemptState::Running)
        {
            return Err("attempts still running after the job ended".to_string());
        }
        Ok(())
    }

    /// The running attempts of `task`, if it is running.
    fn running_attempts(&self, task: TaskId) -> Option<&BTreeSet<AttemptId>> {
        match task.phase {
            Phase::Map => match &self.maps.get(task.index as usize)?.state {
                MapState::Running { attempts } => Some(attempts),
                _ => None,
            },
            Phase::Reduce => match &self.reduces.get(task.index as usize)?.state {
                ReduceState::Running { attempts } => Some(attempts),
                _ => None,
            },
        }
    }

    fn check_running(&self, task: TaskId, attempts: &BTreeSet<AttemptId>) -> Result<(), String> {
        if attempts.is_empty() {
            return Err(format!("{task} is running without attempts"));
        }
        for a in attempts {
            match self.attempts.get(a) {
                Some(att) if att.state == AttemptState::Running && att.task == task => {}
                _ => return Err(format!("{task} lists {a}, which is not running it")),
            }
        }
        Ok(())
    }

    // --- events ---------------------------------------------------------------------------

    /// Declares lost every live worker not heard from for longer than the timeout.
    fn expire_workers(&mut self, now: Duration) {
        let timeout = self.config.heartbeat_timeout;
        let mut expired: Vec<WorkerId> = self
            .by_last_seen
            .iter()
            .take_while(|(last_seen, _)| now.saturating_sub(*last_seen) > timeout)
            .map(|(_, id)| *id)
            .collect();
        // In id order, as a walk of every worker would find them.
        expired.sort_unstable();
        for worker in expired {
            self.lose_worker(now, worker);
        }
    }

    /// After `resume`: starts the grace period on the first call; once it has run out, and
    /// while some reduce still needs map output, every map no worker reported goes back to
    /// `Idle` to be re-executed.
    fn expire_unattached(&mut self, now: Duration) {
        if self.unattached.is_empty() {
            return;
        }
        let grace = self.config.resume_grace;
        let until = *self
            .grace_until
            .get_or_insert_with(|| now.checked_add(grace).unwrap_or(Duration::MAX));
        if now <= until || !self.map_outputs_needed() {
            return;
        }
        for (_, index) in mem::take(&mut self.unattached) {
            let Some(m) = self.maps.get_mut(index as usize) else {
                continue;
            };
            m.state = MapState::Idle;
            self.idle_maps.insert(index);
            self.stats.maps_committed = self.stats.maps_committed.saturating_sub(1);
            self.stats.map_outputs_lost += 1;
        }
    }

    /// A worker still holds the output of journaled map attempt `attempt`: `Unattached` →
    /// `Committed` on that worker.
    fn output_found(&mut self, now: Duration, worker: WorkerId, attempt: AttemptId) {
        if !self.touch(now, worker) {
            return;
        }
        let Some(index) = self.unattached.remove(&attempt) else {
            return;
        };
        let Some(m) = self.maps.get_mut(index as usize) else {
            return;
        };
        m.state = MapState::Committed {
            attempt,
            worker,
            fetch_failures: 0,
        };
        self.stats.outputs_found += 1;
        if self.config.reduces > 0 {
            self.commands
                .push_back(Command::MapOutputReady { map: index, worker });
        }
    }

    fn worker_joined(&mut self, now: Duration, worker: WorkerId, slots: u32) {
        // Ids are never reused: a duplicate join, or a lost worker coming back, is ignored.
        if self.workers.contains_key(&worker) {
            return;
        }
        let w = Worker {
            slots,
            state: WorkerState::Alive { last_seen: now },
            running: BTreeSet::new(),
            work_dir_fault: None,
        };
        if w.free_slots() > 0 {
            self.free_workers.insert((Reverse(w.free_slots()), worker));
            self.slot_freed();
        }
        self.by_last_seen.insert((now, worker));
        self.workers.insert(worker, w);
        self.stats.workers_joined += 1;
    }

    /// Records that `worker` was heard from; false if it is unknown or lost.
    fn touch(&mut self, now: Duration, worker: WorkerId) -> bool {
        self.update_worker(worker, |w| match &mut w.state {
            WorkerState::Alive { last_seen } => {
                *last_seen = (*last_seen).max(now);
                true
            }
            WorkerState::Lost { .. } => false,
        })
        .unwrap_or(false)
    }

    fn heartbeat(&mut self, now: Duration, worker: WorkerId, progress: Vec<(AttemptId, f64)>) {
        if !self.touch(now, worker) {
            return;
        }
        for (id, p) in progress {
            let Some(a) = self.attempts.get_mut(&id) else {
                continue;
            };
            if a.worker != worker || a.state != AttemptState::Running || p.is_nan() {
                continue;
            }
            a.progress = p.clamp(0.0, 1.0);
            a.progress_at = a.progress_at.max(now);
            if a.progress == 0.0 {
                a.progress_since = a.progress_at;
                a.window_start = (a.progress_at, 0.0);
                a.recent_rate = None;
                continue;
            }
            let (from, from_progress) = a.window_start;
            let span = a.progress_at.saturating_sub(from);
            if span >= self.config.rate_window && !span.is_zero() {
                a.recent_rate = Some((a.progress - from_progress).max(0.0) / span.as_secs_f64());
                a.window_start = (a.progress_at, a.progress);
            }
        }
    }

    /// For a report about `attempt`: records that its worker was heard from and returns its
    /// task's phase if the attempt is running — the only case in which the report counts.
    fn report_from_running(&mut self, now: Duration, attempt: AttemptId) -> Option<Phase> {
        let a = self.attempts.get(&attempt)?;
        let (worker, phase, running) = (a.worker, a.task.phase, a.state == AttemptState::Running);
        self.touch(now, worker);
        // Invariant: a running attempt's worker is alive and its task is not committed, so a
        // report from it is current.
        running.then_some(phase)
    }

    /// A reduce attempt could not fetch map `index`'s output.
    fn fetch_failed(&mut self, index: u32) {
        let threshold = self.config.fetch_failures_to_reexecute;
        let max_attempts = self.config.max_attempts;
        let Some(m) = self.maps.get_mut(index as usize) else {
            return;
        };
        // Only the current output is blamed: if the map is idle or running again, its output
        // was already declared lost and these reports are stale.
        let MapState::Committed { fetch_failures, .. } = &mut m.state else {
            return;
        };
        *fetch_failures += 1;
        if *fetch_failures < threshold {
            return;
        }
        m.fetch_reexecutions += 1;
        let n = m.fetch_reexecutions;
        if n > max_attempts {
            let task = TaskId::map(index);
            self.fail_job(format!(
                "{task} failed {n} times: reducers could not fetch its output"
            ));
            return;
        }
        self.lose_map_output(index);
    }

    // --- transitions ----------------------------------------------------------------------

    /// Worker `worker` is gone: `Alive` → `Lost`. Its running attempts are lost, and so is the
    /// output of the maps committed on it if some reduce still needs it.
    fn lose_worker(&mut self, now: Duration, worker: WorkerId) {
        let Some(running) = self
            .update_worker(worker, |w| {
                if !w.is_alive() {
                    return None;
                }
                w.state = WorkerState::Lost { at: now };
                Some(mem::take(&mut w.running))
            })
            .flatten()
        else {
            return;
        };
        self.stats.workers_lost += 1;
        for attempt in running {
            if self.end_attempt(attempt, AttemptState::Lost).is_some() {
                self.stats.attempts_lost += 1;
            }
        }
        // Map-only jobs: map output is final. Once every reduce committed, nobody needs it.
        if !self.map_outputs_needed() {
            return;
        }
        let lost: Vec<u32> = (0u32..)
            .zip(&self.maps)
            .filter(
                |(_, m)| matches!(m.state, MapState::Committed { worker: w, .. } if w == worker),
            )
            .map(|(index, _)| index)
            .collect();
        for index in lost {
            self.lose_map_output(index);
        }
    }

    /// Applies `f` to `worker` (if known), keeping `free_workers` and `by_last_seen` in
    /// step with its free slots and state. Every change of a worker's `running` or `state`
    /// goes through here.
    fn update_worker<R>(
        &mut self,
        worker: WorkerId,
        f: impl FnOnce(&mut Worker) -> R,
    ) -> Option<R> {
        let w = self.workers.get_mut(&worker)?;
        let (free, seen) = (w.free_slots(), alive_since(w));
        let out = f(w);
        let (free_now, seen_now) = (w.free_slots(), alive_since(w));
        if free_now > free {
            self.slot_freed();
        }
        if free != free_now {
            if free > 0 {
                self.free_workers.remove(&(Reverse(free), worker));
            }
            if free_now > 0 {
                self.free_workers.insert((Reverse(free_now), worker));
            }
        }
        if seen != seen_now {
            if let Some(t) = seen {
                self.by_last_seen.remove(&(t, worker));
            }
            if let Some(t) = seen_now {
                self.by_last_seen.insert((t, worker));
            }
        }
        Some(out)
    }

    /// A worker's free slots grew (or a worker joined): the next speculation scan of each
    /// phase is due at once.
    fn slot_freed(&mut self) {
        for clock in &mut self.speculated {
            clock.freed = true;
        }
    }

    /// Running attempt `attempt` of `phase` stops running: the running counts and sets.
    fn leave_running(&mut self, phase: Phase, attempt: AttemptId) {
        self.running_by_phase[phase as usize].remove(&attempt);
    }

    /// Whether committed map outputs are still needed: some reduce has not committed.
    fn map_outputs_needed(&self) -> bool {
        self.stats.reduces_committed < self.config.reduces
    }

    /// Map `index`: `Committed` → `Idle`, its attempt `Committed` → `OutputLost`.
    /// Journal: a committed transition.
    fn lose_map_output(&mut self, index: u32) {
        let Some(m) = self.maps.get_mut(index as usize) else {
            return;
        };
        let MapState::Committed { attempt, .. } = m.state else {
            return;
        };
        m.state = MapState::Idle;
        self.idle_maps.insert(index);
        self.stats.maps_committed = self.stats.maps_committed.saturating_sub(1);
        self.stats.map_outputs_lost += 1;
        if let Some(a) = self.attempts.get_mut(&attempt) {
            a.state = AttemptState::OutputLost;
        }
        self.commands
            .push_back(Command::MapOutputLost { map: index });
    }

    /// Running attempt `attempt` commits its task: attempt → `Committed`, task → `Committed`,
    /// the task's other running attempts → `Cancelled(Superseded)`.
    /// Journal: a committed transition.
    fn commit(&mut self, now: Duration, attempt: AttemptId) {
        let Some(a) = self.attempts.get_mut(&attempt) else {
            return;
        };
        a.state = AttemptState::Committed;
        let (task, worker) = (a.task, a.worker);
        // What a new attempt is expected to take (from its start), and how fast this one
        // went once it made progress (for the slow-worker test).
        let took = now.saturating_sub(a.started);
        let worked = now.saturating_sub(a.progress_since);
        if a.backup {
            self.stats.backups_won += 1;
        }
        self.update_worker(worker, |w| w.running.remove(&attempt));
        self.leave_running(task.phase, attempt);
        self.stats.attempts_committed += 1;
        let rate = (!worked.is_zero()).then(|| 1.0 / worked.as_secs_f64());
        let recent = &mut self.recent_commits[task.phase as usize];
        if recent.len() == RECENT_COMMITS {
            recent.pop_front();
        }
        recent.push_back((took, rate));
        if !worked.is_zero() {
            let (sum, n) = self.worker_rates.entry(worker).or_insert((0.0, 0));
            *sum += 1.0 / worked.as_secs_f64();
            *n += 1;
        }
        self.journal.push_back(JournalEvent::TaskCommitted {
            task,
            attempt,
            worker,
        });
        let index = task.index;
        let previous = match task.phase {
            Phase::Map => {
                let Some(m) = self.maps.get_mut(index as usize) else {
                    return;
                };
                let committed = MapState::Committed {
                    attempt,
                    worker,
                    fetch_failures: 0,
                };
                if m.last_commit.is_none() {
                    self.maps_ever_committed += 1;
                }
                m.last_commit = Some(attempt);
                self.stats.maps_committed += 1;
                if self.config.reduces > 0 {
                    self.commands
                        .push_back(Command::MapOutputReady { map: index, worker });
                }
                match mem::replace(&mut m.state, committed) {
                    MapState::Running { attempts } => attempts,
                    _ => BTreeSet::new(),
                }
            }
            Phase::Reduce => {
                let Some(r) = self.reduces.get_mut(index as usize) else {
                    return;
                };
                self.stats.reduces_committed += 1;
                match mem::replace(&mut r.state, ReduceState::Committed { attempt }) {
                    ReduceState::Running { attempts } => attempts,
                    _ => BTreeSet::new(),
                }
            }
        };
        if !previous.is_empty() {
            self.running_tasks -= 1;
        }
        // The task is committed now, so ending the losers leaves its state alone.
        for loser in previous {
            if loser != attempt {
                self.note_loser_rate(now, loser);
                self.cancel_attempt(loser, CancelReason::Superseded);
            }
        }
        self.finish_if_done();
    }

    /// Keeps what a superseded attempt showed of its worker's speed: without this, a
    /// straggler whose only attempt lost to a backup has no rate data, is not slow, and is
    /// handed the next task. Attempts younger than `min_runtime` (fresh backups) say nothing.
    fn note_loser_rate(&mut self, now: Duration, loser: AttemptId) {
        let Some(a) = self.attempts.get(&loser) else {
            return;
        };
        if now.saturating_sub(a.started) < self.config.min_runtime {
            return;
        }
        if let Some((rate, _)) = estimate(a, now) {
            let (sum, n) = self.worker_rates.entry(a.worker).or_insert((0.0, 0));
            *sum += rate;
            *n += 1;
        }
    }

    /// Running attempt `attempt` failed: attempt → `Failed`, task → `Idle` if it was its last
    /// running attempt; the `max_attempts`-th failure of a task fails the job.
    fn fail_attempt(&mut self, attempt: AttemptId, error: String) {
        let Some((task, _)) = self.end_failed(attempt, &error) else {
            return;
        };
        let failures = match task.phase {
            Phase::Map => self
                .maps
                .get_mut(task.index as usize)
                .map(|m| &mut m.failures),
            Phase::Reduce => self
                .reduces
                .get_mut(task.index as usize)
                .map(|r| &mut r.failures),
        };
        let Some(failures) = failures else {
            return;
        };
        *failures += 1;
        let n = *failures;
        if n >= self.config.max_attempts {
            self.fail_job(format!("{task} failed {n} times: {error}"));
        }
    }

    /// Running attempt `attempt` failed on its worker's work dir: attempt → `Failed`, task →
    /// `Idle` (not counted against it), and the worker takes no maps until it recovers.
    fn work_dir_failed(&mut self, attempt: AttemptId, error: String) {
        let Some((_, worker)) = self.end_failed(attempt, &error) else {
            return;
        };
        self.stats.work_dir_failures += 1;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.work_dir_fault = Some(error);
        }
    }

    /// With a map idle and no live worker whose work dir can take map output, nothing can
    /// run it: the job fails, quoting a work dir's error.
    fn fail_if_no_work_dir(&mut self) {
        if self.idle_maps.is_empty() {
            return;
        }
        let mut live = self.workers.values().filter(|w| w.is_alive()).peekable();
        if live.peek().is_none() {
            return; // no workers yet (or all lost): wait for some to join
        }
        let mut fault = None;
        for w in live {
            match &w.work_dir_fault {
                None => return,
                Some(e) => fault = Some(e.clone()),
            }
        }
        if let Some(e) = fault {
            self.fail_job(format!(
                "no worker can take map output: every live worker's work dir failed (last: {e})"
            ));
        }
    }

    /// Running attempt `attempt` → `Failed { error }`, counted in the stats; its task and
    /// worker, or `None` if it was not running.
    fn end_failed(&mut self, attempt: AttemptId, error: &str) -> Option<(TaskId, WorkerId)> {
        let next = AttemptState::Failed {
            error: error.to_string(),
        };
        let ended = self.end_attempt(attempt, next)?;
        self.stats.attempts_failed += 1;
        Some(ended)
    }

    /// Running attempt `attempt` → `Cancelled(reason)`, and tells its worker.
    fn cancel_attempt(&mut self, attempt: AttemptId, reason: CancelReason) {
        let Some((_, worker)) = self.end_attempt(attempt, AttemptState::Cancelled { reason })
        else {
            return;
        };
        self.stats.attempts_cancelled += 1;
        if reason == CancelReason::Preempted {
            self.stats.preemptions += 1;
        }
        self.commands.push_back(Command::Cancel { attempt, worker });
    }

    /// Moves running attempt `attempt` to `next`, frees its slot and removes it from its task;
    /// a `Running` task left without attempts goes back to `Idle`. Returns its task and
    /// worker, or `None` (changing nothing) if it was not running.
    fn end_attempt(
        &mut self,
        attempt: AttemptId,
        next: AttemptState,
    ) -> Option<(TaskId, WorkerId)> {
        let a = self.attempts.get_mut(&attempt)?;
        if a.state != AttemptState::Running {
            return None;
        }
        a.state = next;
        let (task, worker) = (a.task, a.worker);
        self.update_worker(worker, |w| w.running.remove(&attempt));
        self.leave_running(task.phase, attempt);
        let index = task.index;
        match task.phase {
            Phase::Map => {
                if let Some(m) = self.maps.get_mut(index as usize) {
                    if let MapState::Running { attempts } = &mut m.state {
                        attempts.remove(&attempt);
                        if attempts.is_empty() {
                            m.state = MapState::Idle;
                            self.idle_maps.insert(index);
                            self.running_tasks -= 1;
                        }
                    }
                }
            }
            Phase::Reduce => {
                if let Some(r) = self.reduces.get_mut(index as usize) {
                    if let ReduceState::Running { attempts } = &mut r.state {
                        attempts.remove(&attempt);
                        if attempts.is_empty() {
                            r.state = ReduceState::Idle;
                            self.idle_reduces.insert(index);
                            self.running_tasks -= 1;
                        }
                    }
                }
            }
        }
        Some((task, worker))
    }

    /// The job is done once every reduce committed and every map committed at least once
    /// (the reduces consumed those outputs, even ones lost since). Journal: the final
    /// committed transition.
    fn finish_if_done(&mut self) {
        if self.is_finished()
            || self.stats.reduces_committed < self.config.reduces
            || self.maps_ever_committed < self.config.maps
        {
            return;
        }
        self.journal.push_back(JournalEvent::JobDone);
        // Only map re-executions that nobody needs any more can still be running.
        self.cancel_all();
        self.job = JobState::Done;
        self.commands.push_back(Command::JobDone);
    }

    /// The job fails: every running attempt is cancelled, then `JobFailed`.
    /// Journal: the final committed transition.
    fn fail_job(&mut self, reason: String) {
        if self.is_finished() {
            return;
        }
        self.journal.push_back(JournalEvent::JobFailed {
            reason: reason.clone(),
        });
        self.cancel_all();
        self.job = JobState::Failed {
            reason: reason.clone(),
        };
        self.commands.push_back(Command::JobFailed { reason });
    }

    fn cancel_all(&mut self) {
        let running: Vec<AttemptId> = self
            .workers
            .values()
            .flat_map(|w| w.running.iter().copied())
            .collect();
        for attempt in running {
            self.cancel_attempt(attempt, CancelReason::JobEnded);
        }
    }

    // --- placement ------------------------------------------------------------------------

    /// Fills free slots: idle maps, then backups of straggling maps, then — only while no
    /// map is idle — idle reduces, then backups of straggling reduces. Each idle task goes,
    /// lowest index first, to the live worker with the most free slots.
    fn schedule(&mut self, now: Duration) {
        // With speculation on, idle tasks avoid slow workers (see `place`). Finding them
        // walks every worker, so the set is kept across events for `speculation_interval`:
        // otherwise every commit (and every heartbeat while a task is held off a far slower
        // worker) would cost O(workers). A set that old is a heuristic's input like any
        // other: a worker that joined since has no data (so is not slow), and a lost one
        // has no free slot to be placed on.
        let interval = self.config.speculation_interval;
        let cached = self
            .slow_cache
            .take()
            .filter(|c| now < c.at.saturating_add(interval));
        let at = cached.as_ref().map_or(now, |c| c.at);
        let mut slow = cached.map(|c| c.workers);
        self.fill_slots(now, &mut slow);
        self.slow_cache = slow.map(|workers| SlowCache { at, workers });
    }

    fn fill_slots(&mut self, now: Duration, slow: &mut Option<BTreeMap<WorkerId, f64>>) {
        self.fail_if_no_work_dir();
        if self.is_finished() {
            return;
        }
        while let Some(&m) = self.idle_maps.first() {
            if self.config.speculation && self.config.backup_every_task {
                // Backups first: every task is to run twice.
                self.back_up_everything(now, Phase::Map);
            }
            if let Some(worker) = self.place(now, Phase::Map, slow) {
                self.launch(now, TaskId::map(m), worker, None);
                self.forced_backup(now, TaskId::map(m), worker);
                continue;
            }
            // No free slot (but perhaps on far slower workers, see `place`). Reducers may
            // hold them all while waiting for a map whose output was lost; free one for the
            // map. Terminates: each preemption frees a slot that
            // the next iteration gives to an idle map, and preempted reduces stay idle while
            // any map is idle.
            if let Some(victim) = self.preemption_victim() {
                self.cancel_attempt(victim, CancelReason::Preempted);
                *slow = None; // the victim's rate no longer counts for its worker
                continue;
            }
            break;
        }
        // Invariant: reduces (and backups) are placed only when no map is idle, so they never
        // take a slot a map waits for. A map left idle here means every slot is taken, but
        // perhaps on far slower workers.
        if !self.idle_maps.is_empty() {
            return;
        }
        // Map backups go before idle reduces: no reduce can finish before every map has
        // committed, so a straggling map is on every reduce's critical path.
        self.speculate(now, Phase::Map);
        while let Some(&r) = self.idle_reduces.first() {
            let Some(worker) = self.place(now, Phase::Reduce, slow) else {
                break;
            };
            self.launch(now, TaskId::reduce(r), worker, None);
            self.forced_backup(now, TaskId::reduce(r), worker);
        }
        // A reduce cannot finish while a map output is missing: no reduce is a straggler
        // until every map output is available.
        let available = self.stats.maps_committed == self.config.maps && self.unattached.is_empty();
        self.outputs_since = available.then(|| self.outputs_since.unwrap_or(now));
        if self.idle_reduces.is_empty() && available {
            self.speculate(now, Phase::Reduce);
        }
    }

    /// Where an idle task of `phase` goes: `pick_worker`, but with speculation on, a slow
    /// worker only if no other worker has a free slot, and a *far slower* one (below
    /// [`FAR_SLOWER`] of the median worker's speed) not at all while a worker that is not
    /// slow could take the task instead: that one frees its slot within about one task's
    /// time, so waiting for it costs at most two, and the far slower worker takes more. A
    /// held task stays idle and is placed when a slot frees. `slow` caches the slow workers
    /// for one pass.
    fn place(
        &self,
        now: Duration,
        phase: Phase,
        slow: &mut Option<BTreeMap<WorkerId, f64>>,
    ) -> Option<WorkerId> {
        let any = self.pick_worker_where(|w| self.takes(w, phase))?;
        if !self.config.speculation {
            return Some(any);
        }
        let slow = slow.get_or_insert_with(|| self.slow_workers(now));
        if !slow.contains_key(&any) {
            return Some(any);
        }
        if let Some(w) = self.pick_worker_where(|w| self.takes(w, phase) && !slow.contains_key(&w))
        {
            return Some(w);
        }
        let far_slower = |w: &WorkerId| slow.get(w).is_some_and(|speed| *speed < FAR_SLOWER);
        if let Some(w) = self.pick_worker_where(|w| self.takes(w, phase) && !far_slower(&w)) {
            return Some(w);
        }
        let peer_busy = self
            .workers
            .iter()
            .any(|(id, w)| w.is_alive() && !slow.contains_key(id) && self.takes(*id, phase));
        (!peer_busy).then_some(any)
    }

    /// Whether `worker` may run attempts of `phase`: maps need a work dir that has not
    /// failed, for their output.
    fn takes(&self, worker: WorkerId, phase: Phase) -> bool {
        phase == Phase::Reduce
            || self
                .workers
                .get(&worker)
                .is_some_and(|w| w.work_dir_fault.is_none())
    }

    /// The live worker with the most free slots, ties to the lowest id.
    fn pick_worker(&self) -> Option<WorkerId> {
        self.pick_worker_where(|_| true)
    }

    /// Like `pick_worker`, among the workers `allowed` accepts.
    fn pick_worker_where(&self, allowed: impl Fn(WorkerId) -> bool) -> Option<WorkerId> {
        // `free_workers` is in exactly this order: most free slots, then lowest id.
        self.free_workers
            .iter()
            .map(|(_, id)| *id)
            .find(|id| allowed(*id))
    }

    /// The newest running reduce attempt on a worker that takes maps: it has likely made the
    /// least progress, and its slot can run the map.
    fn preemption_victim(&self) -> Option<AttemptId> {
        self.reduce_to_preempt(|w| self.takes(w, Phase::Map))
            .map(|(attempt, _)| attempt)
    }

    /// The newest running reduce attempt on a worker `allowed` accepts, and that worker.
    fn reduce_to_preempt(
        &self,
        allowed: impl Fn(WorkerId) -> bool,
    ) -> Option<(AttemptId, WorkerId)> {
        // The newest allowed attempt of each running reduce, newest of those: the newest
        // allowed running reduce attempt.
        self.running_by_phase[Phase::Reduce as usize]
            .iter()
            .rev()
            .find_map(|id| {
                let worker = self.attempts.get(id)?.worker;
                allowed(worker).then_some((*id, worker))
            })
    }

    // --- speculation ----------------------------------------------------------------------

    /// Launches backups of `phase`'s stragglers (LATE, plus end-of-phase backups) into free
    /// slots; called only when no task of `phase` is idle. See "Speculation" in the crate
    /// docs for the rules.
    fn speculate(&mut self, now: Duration, phase: Phase) {
        // A map backup may take a reduce's slot (below), so it needs no free slot.
        let room = self.pick_worker().is_some()
            || (phase == Phase::Map && self.preemption_victim().is_some());
        if !self.config.speculation || !room {
            return;
        }
        if self.config.backup_every_task {
            self.back_up_everything(now, phase);
            return;
        }
        // A scan when a slot has freed since the last one (commits, failures and joins are
        // O(M + R) events); otherwise — progress reports only — at most once per interval.
        let clock = &mut self.speculated[phase as usize];
        let recent = clock
            .last
            .is_some_and(|t| now < t.saturating_add(self.config.speculation_interval));
        if recent && !clock.freed {
            clock.held = true;
            return;
        }
        *clock = ScanClock {
            last: Some(now),
            ..ScanClock::default()
        };
        // Nothing of this phase runs: no candidate (and no rate to compare one with).
        if self.running_by_phase[phase as usize].is_empty() {
            return;
        }
        // What a new attempt is expected to take: the mean duration of the attempts of this
        // phase that committed last. Recent ones, not all: a phase's first waves run while
        // the cluster is crowded (a reduce's shuffle shared with every other), and a backup
        // launched near its end does not. Without one there is nothing to compare with.
        let recent = &self.recent_commits[phase as usize];
        if recent.is_empty() {
            return;
        }
        let expected = recent
            .iter()
            .map(|(took, _)| took.as_secs_f64())
            .sum::<f64>()
            / recent.len() as f64;
        let total_slots: u64 = self
            .workers
            .values()
            .filter(|w| w.is_alive())
            .map(|w| u64::from(w.slots))
            .sum();
        let cap = ((self.config.speculative_cap * total_slots as f64).floor() as u64).max(1);
        // A task's running attempts beyond its first are backups: all but one per task.
        let attempts = self.running_by_phase[0].len() + self.running_by_phase[1].len();
        let mut backups = attempts.saturating_sub(self.running_tasks) as u64;
        if backups >= cap {
            return;
        }
        let mine = &self.running_by_phase[phase as usize];
        // Slow is judged against the running attempts and those that just committed: near a
        // phase's end, the few still running are not a fair reference for each other.
        let mut rates: Vec<f64> = mine
            .iter()
            .filter_map(|id| Some(estimate(self.attempts.get(id)?, now)?.0))
            .chain(recent.iter().filter_map(|(_, rate)| *rate))
            .collect();
        let Some(slow_rate) = percentile_of_unsorted(&mut rates, self.config.slow_task_percentile)
        else {
            return;
        };
        let margin = self.config.speculation_margin;
        let mut candidates: Vec<Straggler> = Vec::new();
        for &id in mine {
            let Some(a) = self.attempts.get(&id) else {
                continue;
            };
            let task = &a.task;
            if self.running_attempts(a.task).map(BTreeSet::len) != Some(1) {
                continue; // already backed up
            }
            // A reduce's age counts from when it could first progress.
            let origin = match phase {
                Phase::Map => a.started,
                Phase::Reduce => a.started.max(self.outputs_since.unwrap_or(a.started)),
            };
            let age = now.saturating_sub(origin);
            if age < self.config.min_runtime {
                continue;
            }
            let Some((rate, left)) = estimate(a, now) else {
                continue;
            };
            let slow = rate < slow_rate;
            if (slow && left > expected) || left > margin * expected {
                candidates.push(Straggler {
                    task: *task,
                    attempt: id,
                    worker: a.worker,
                    rate,
                    left,
                    slow,
                    age,
                });
            }
        }
        if candidates.is_empty() {
            return;
        }
        // Longest time left first; ties to the lowest task.
        candidates.sort_by(|a, b| b.left.total_cmp(&a.left).then(a.task.cmp(&b.task)));
        let slow_workers = self.slow_workers(now);
        for c in candidates {
            if backups >= cap {
                break;
            }
            let allowed = |w: WorkerId| {
                w != c.worker && !slow_workers.contains_key(&w) && self.takes(w, phase)
            };
            let worker = match self.pick_worker_where(allowed) {
                Some(worker) => worker,
                // Reducers may hold every slot while they wait for this very map: no reduce
                // can finish before it, so one of them gives its slot to the backup (it goes
                // back to idle and is placed again when a slot frees).
                None if phase == Phase::Map => {
                    let Some((victim, worker)) = self.reduce_to_preempt(allowed) else {
                        continue;
                    };
                    self.cancel_attempt(victim, CancelReason::Preempted);
                    worker
                }
                None => continue,
            };
            let reason = c.reason(phase, slow_rate, expected, self.config.slow_task_percentile);
            self.launch(now, c.task, worker, Some(reason));
            backups += 1;
        }
    }

    /// `backup_every_task`: a backup of `task`, just launched on `on`, on another worker
    /// with a free slot.
    fn forced_backup(&mut self, now: Duration, task: TaskId, on: WorkerId) {
        if !(self.config.speculation && self.config.backup_every_task) {
            return;
        }
        if let Some(worker) = self.pick_worker_where(|w| w != on && self.takes(w, task.phase)) {
            let reason = format!("backup of {task} (on {on}): every task is backed up");
            self.launch(now, task, worker, Some(reason));
        }
    }

    /// `backup_every_task`: a backup of each running task of `phase` that has none, on
    /// another worker with a free slot.
    fn back_up_everything(&mut self, now: Duration, phase: Phase) {
        let mut running: BTreeMap<TaskId, Vec<(AttemptId, WorkerId)>> = BTreeMap::new();
        for w in self.workers.values() {
            for id in &w.running {
                if let Some(a) = self.attempts.get(id) {
                    running.entry(a.task).or_default().push((*id, a.worker));
                }
            }
        }
        for (task, ids) in running {
            let (true, &[(id, on)]) = (task.phase == phase, ids.as_slice()) else {
                continue;
            };
            let Some(worker) = self.pick_worker_where(|w| w != on && self.takes(w, phase)) else {
                continue;
            };
            let reason = format!("backup of {task} ({id} on {on}): every task is backed up");
            self.launch(now, task, worker, Some(reason));
        }
    }

    /// The live workers whose mean progress rate — over their committed attempts (1 /
    /// duration) and their running attempts that made progress — is below the
    /// `slow_worker_percentile` of those means, each with its mean over the median of the
    /// means (its speed relative to a typical worker). Workers without data are not slow.
    fn slow_workers(&self, now: Duration) -> BTreeMap<WorkerId, f64> {
        let rate_of = |a: &Attempt| estimate(a, now).map(|(rate, _)| rate).filter(|r| *r > 0.0);
        // Both maps are in id order: walk them together instead of looking each worker up.
        let mut committed = self.worker_rates.iter().peekable();
        let means: Vec<(WorkerId, f64)> = self
            .workers
            .iter()
            .filter_map(|(id, w)| {
                while committed.next_if(|(c, _)| *c < id).is_some() {}
                let own = committed.next_if(|(c, _)| *c == id).map(|(_, r)| *r);
                if !w.is_alive() {
                    return None;
                }
                let (mut sum, mut n) = own.unwrap_or((0.0, 0));
                for rate in w
                    .running
                    .iter()
                    .filter_map(|a| rate_of(self.attempts.get(a)?))
                {
                    sum += rate;
                    n += 1;
                }
                (n > 0).then(|| (*id, sum / f64::from(n)))
            })
            .collect();
        let mut values: Vec<f64> = means.iter().map(|(_, m)| *m).collect();
        let (Some(threshold), Some(median)) = (
            percentile_of_unsorted(&mut values, self.config.slow_worker_percentile),
            percentile_of_unsorted(&mut values, 0.5),
        ) else {
            return BTreeMap::new();
        };
        means
            .into_iter()
            .filter(|(_, m)| *m < threshold)
            .map(|(id, m)| (id, m / median))
            .collect()
    }

    /// Starts a new attempt of `task` (idle, or running when backing it up, with the reason
    /// in `backup`) on `worker`, which must be alive with a free slot. A reduce attempt is
    /// told every committed map's output.
    fn launch(&mut self, now: Duration, task: TaskId, worker: WorkerId, backup: Option<String>) {
        let attempt = AttemptId(self.next_attempt);
        let index = task.index;
        match task.phase {
            Phase::Map => {
                let Some(m) = self.maps.get_mut(index as usize) else {
                    return;
                };
                let was_idle = m.state == MapState::Idle;
                if !add_attempt_map(&mut m.state, attempt) {
                    return;
                }
                self.idle_maps.remove(&index);
                self.running_tasks += usize::from(was_idle);
            }
            Phase::Reduce => {
                let Some(r) = self.reduces.get_mut(index as usize) else {
                    return;
                };
                let was_idle = r.state == ReduceState::Idle;
                if !add_attempt_reduce(&mut r.state, attempt) {
                    return;
                }
                self.idle_reduces.remove(&index);
                self.running_tasks += usize::from(was_idle);
            }
        }
        self.next_attempt += 1;
        if attempt.0 >= self.reserved_below {
            self.reserved_below = attempt.0.saturating_add(crate::journal::ATTEMPT_BLOCK);
            let below = AttemptId(self.reserved_below);
            self.journal
                .push_back(JournalEvent::AttemptsReserved { below });
        }
        self.update_worker(worker, |w| w.running.insert(attempt));
        self.running_by_phase[task.phase as usize].insert(attempt);
        self.attempts.insert(
            attempt,
            Attempt {
                task,
                worker,
                state: AttemptState::Running,
                started: now,
                progress: 0.0,
                progress_at: now,
                progress_since: now,
                window_start: (now, 0.0),
                recent_rate: None,
                backup: backup.is_some(),
            },
        );
        self.stats.attempts_started += 1;
        if backup.is_some() {
            self.stats.backups_launched += 1;
        }
        self.commands.push_back(Command::Assign {
            attempt,
            task,
            worker,
            backup,
        });
    }
}

/// The slow-worker set of `Scheduler::slow_workers`, kept across events.
#[derive(Debug, Clone)]
struct SlowCache {
    at: Duration,
    workers: BTreeMap<WorkerId, f64>,
}

/// When speculation last scanned a phase's running attempts, and what happened since.
#[derive(Debug, Clone, Copy, Default)]
struct ScanClock {
    last: Option<Duration>,
    /// A worker's free slots grew (or a worker joined) since `last`: the next scan is due
    /// at once.
    freed: bool,
    /// A scan was held back since `last`: one is due at `last + speculation_interval`.
    held: bool,
}

/// When a live worker was last heard from; `None` once lost.
fn alive_since(w: &Worker) -> Option<Duration> {
    match w.state {
        WorkerState::Alive { last_seen } => Some(last_seen),
        WorkerState::Lost { .. } => None,
    }
}

/// An idle task waits for a slot rather than go to a slow worker whose speed is below this
/// fraction of the median worker's (see `Scheduler::place`): there it would take more than
/// twice as long as on a typical worker, which frees a slot within about one task's time.
const FAR_SLOWER: f64 = 0.5;

/// Commits per phase that speculation's expectations are taken from (see `recent_commits`).
const RECENT_COMMITS: usize = 32;

/// A running task that qualifies for a backup.
#[derive(Debug)]
struct Straggler {
    task: TaskId,
    attempt: AttemptId,
    worker: WorkerId,
    /// Progress per second since it started.
    rate: f64,
    /// Estimated seconds left: `(1 - progress) / rate`.
    left: f64,
    /// Whether `rate` is below the slow-task percentile.
    slow: bool,
    age: Duration,
}

impl Straggler {
    /// Why it gets a backup, for `Command::Assign::backup`.
    fn reason(&self, phase: Phase, slow_rate: f64, expected: f64, percentile: f64) -> String {
        let who = format!(
            "backup of {} ({} on {})",
            self.task, self.attempt, self.worker
        );
        let left = if self.left.is_finite() {
            format!("{:.1} s left", self.left)
        } else {
            format!("no progress in {:.1} s", self.age.as_secs_f64())
        };
        if self.slow {
            let p = (percentile * 100.0).round();
            format!(
                "{who}: rate {:.3}/s below p{p} {slow_rate:.3}/s, {left}",
                self.rate
            )
        } else {
            let phase = match phase {
                Phase::Map => "map",
                Phase::Reduce => "reduce",
            };
            format!("{who}: end of {phase} phase, {left}, a new attempt takes ~{expected:.1} s")
        }
    }
}

/// An attempt's progress rate (per second) and estimated seconds left, LATE-style:
/// `rate = progress / elapsed`, `left = (1 - progress) / rate`, where `elapsed` runs from
/// when it began to make progress (`progress_since`) to its last report, and the time since
/// that report is deducted from `left`. If its last full rate window went slower than that
/// mean, the window's rate counts: an attempt whose machine was taken by other work partway
/// is judged by what it does now (LATE's mean would hide the slowdown until late). A window
/// without progress says nothing new (a phase that reports none, such as a map's final
/// sort), so the mean stands. `None` until a heartbeat reported its progress; a rate of 0
/// (no progress) leaves infinite time.
fn estimate(a: &Attempt, now: Duration) -> Option<(f64, f64)> {
    if a.progress_at <= a.started {
        return None;
    }
    if a.progress == 0.0 {
        return Some((0.0, f64::INFINITY));
    }
    let elapsed = a.progress_at.saturating_sub(a.progress_since);
    if elapsed.is_zero() {
        return None;
    }
    let mean = a.progress / elapsed.as_secs_f64();
    let rate = match a.recent_rate {
        Some(recent) if recent > 0.0 => mean.min(recent),
        _ => mean,
    };
    let since_report = now.saturating_sub(a.progress_at).as_secs_f64();
    let left = ((1.0 - a.progress) / rate - since_report).max(0.0);
    Some((rate, left))
}

#[cfg(test)]
/// The `p`-th percentile (`0.0..=1.0`, clamped) of ascending `sorted`, interpolating
/// linearly between neighbours; `None` if empty. A NaN `p` yields NaN (nothing is below it).
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let pos = p.clamp(0.0, 1.0) * last as f64;
    // Casts saturate (NaN → 0), and `pos` is at most `last`.
    let lo = (pos.floor() as usize).min(last);
    let hi = (pos.ceil() as usize).min(last);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64))
}

/// [`percentile`] of `values` in any order (reordered): the same value, found by selection
/// in O(n) instead of a sort.
fn percentile_of_unsorted(values: &mut [f64], p: f64) -> Option<f64> {
    let last = values.len().checked_sub(1)?;
    let pos = p.clamp(0.0, 1.0) * last as f64;
    let lo = (pos.floor() as usize).min(last);
    let hi = (pos.ceil() as usize).min(last);
    let (_, lo_value, above) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let lo_value = *lo_value;
    // The next value in sorted order is the least of those above position `lo`.
    let hi_value = if hi == lo {
        lo_value
    } else {
        above
            .iter()
            .copied()
            .min_by(f64::total_cmp)
            .unwrap_or(lo_value)
    };
    Some(lo_value + (hi_value - lo_value) * (pos - lo as f64))
}

/// Every attempt of this incarnation, by id. Ids are handed out consecutively, so the
/// table is a vector indexed by `id - first`: O(1) where a map would be O(log attempts) on
/// every heartbeat's progress and every estimate. Iterates in id order.
#[derive(Debug, Clone, Default)]
struct AttemptTable {
    rows: Vec<(AttemptId, Attempt)>,
}

impl AttemptTable {
    fn position(&self, id: &AttemptId) -> Option<usize> {
        let first = self.rows.first()?.0;
        let guess = usize::try_from(id.0.checked_sub(first.0)?).ok()?;
        match self.rows.get(guess) {
            Some((at, _)) if at == id => Some(guess),
            // Not consecutive after all (never, as ids are allocated): search.
            _ => self.rows.binary_search_by_key(id, |(at, _)| *at).ok(),
        }
    }

    fn get(&self, id: &AttemptId) -> Option<&Attempt> {
        let i = self.position(id)?;
        Some(&self.rows[i].1)
    }

    fn get_mut(&mut self, id: &AttemptId) -> Option<&mut Attempt> {
        let i = self.position(id)?;
        Some(&mut self.rows[i].1)
    }

    /// Adds (or replaces) attempt `id`.
    fn insert(&mut self, id: AttemptId, attempt: Attempt) {
        match self.rows.binary_search_by_key(&id, |(at, _)| *at) {
            Ok(i) => self.rows[i].1 = attempt,
            Err(i) => self.rows.insert(i, (id, attempt)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&AttemptId, &Attempt)> + '_ {
        self.rows.iter().map(|(id, a)| (id, a))
    }

    fn values(&self) -> impl Iterator<Item = &Attempt> + '_ {
        self.rows.iter().map(|(_, a)| a)
    }
}

/// `Idle` → `Running {attempt}`, or adds a backup to `Running`; false if committed.
fn add_attempt_map(state: &mut MapState, attempt: AttemptId) -> bool {
    match state {
        MapState::Idle => {
            *state = MapState::Running {
                attempts: BTreeSet::from([attempt]),
            }
        }
        MapState::Running { attempts } => {
            attempts.insert(attempt);
        }
        MapState::Committed { .. } | MapState::Unattached { .. } => return false,
    }
    true
}

/// `Idle` → `Running {attempt}`, or adds a backup to `Running`; false if committed.
fn add_attempt_reduce(state: &mut ReduceState, attempt: AttemptId) -> bool {
    match state {
        ReduceState::Idle => {
            *state = ReduceState::Running {
                attempts: BTreeSet::from([attempt]),
            }
        }
        ReduceState::Running { attempts } => {
            attempts.insert(attempt);
        }
        ReduceState::Committed { .. } => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    //! Several running attempts per task, launched through the private `launch` directly
    //! (`tests/speculation.rs` drives the speculation policy that does it for real).

    use super::*;

    fn drain(s: &mut Scheduler) -> Vec<Command> {
        std::iter::from_fn(|| s.poll()).collect()
    }

    fn two_workers_one_map() -> Scheduler {
        let mut s = Scheduler::new(Config::new(1, 0));
        for worker in [WorkerId(0), WorkerId(1)] {
            s.handle(Duration::ZERO, Event::WorkerJoined { worker, slots: 1 });
        }
        // Map 0 runs as attempt 0 on worker 0; back it up on worker 1.
        s.launch(
            Duration::ZERO,
            TaskId::map(0),
            WorkerId(1),
            Some("test".to_string()),
        );
        drain(&mut s);
        s.check_invariants().unwrap();
        s
    }

    #[test]
    fn selection_finds_the_percentile_a_sort_finds() {
        let mut rng = 7u64;
        for n in 1..40usize {
            let values: Vec<f64> = (0..n)
                .map(|_| {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((rng >> 40) % 17) as f64 / 4.0
                })
                .collect();
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for p in [0.0, 0.1, 0.25, 0.5, 0.9, 1.0] {
                let mut v = values.clone();
                assert_eq!(percentile_of_unsorted(&mut v, p), percentile(&sorted, p));
            }
        }
        assert_eq!(percentile_of_unsorted(&mut [], 0.5), None);
    }

    #[test]
    fn first_success_commits_and_cancels_the_backup() {
        let mut s = two_workers_one_map();
        assert_eq!(
            s.task_state(TaskId::map(0)),
            Some(TaskState::Running { attempts: 2 })
        );
        s.handle(
            Duration::ZERO,
            Event::AttemptSucceeded {
                attempt: AttemptId(1),
            },
        );
        assert_eq!(
            drain(&mut s),
            vec![
                Command::Cancel {
                    attempt: AttemptId(0),
                    worker: WorkerId(0)
                },
                Command::JobDone
            ]
        );
        assert_eq!(
            s.attempt(AttemptId(0)).map(|a| &a.state),
            Some(&AttemptState::Cancelled {
                reason: CancelReason::Superseded
            })
        );
        s.check_invariants().unwrap();
    }

    #[test]
    fn losing_one_attempt_leaves_the_task_running_on_the_other() {
        let mut s = two_workers_one_map();
        s.handle(
            Duration::ZERO,
            Event::WorkerLost {
                worker: WorkerId(0),
            },
        );
        assert_eq!(drain(&mut s), vec![]);
        assert_eq!(
            s.task_state(TaskId::map(0)),
            Some(TaskState::Running { attempts: 1 })
        );
        s.handle(
            Duration::ZERO,
            Event::AttemptFailed {
                attempt: AttemptId(1),
                error: "boom".to_string(),
            },
        );
        // Back to idle, and worker 1's slot is free again: a new attempt goes there.
        assert_eq!(
            drain(&mut s),
            vec![Command::Assign {
                attempt: AttemptId(2),
                task: TaskId::map(0),
                worker: WorkerId(1),
                backup: None
            }]
        );
        s.check_invariants().unwrap();
    }
}
