//! Deterministic simulation of the scheduler against a fake cluster.
//!
//! Each seed builds a job (1..=12 maps, 0..=5 reduces), 1..=6 fake workers with 1..=4 slots,
//! and a fake clock advanced in 100 ms steps. Attempts take random durations; reducers fetch
//! every map output from the locations announced by `MapOutputReady`. Faults, all drawn from
//! one seeded splitmix64 stream: attempt failures (a per-seed rate, high enough on some seeds
//! to exhaust `max_attempts`), worker crashes (connection closed, or silent), hangs (the
//! worker stops heartbeating, then comes back — possibly after it was declared lost), fetch
//! flakes, late reports from cancelled attempts, events about unknown attempts and workers,
//! duplicate joins, and new workers joining. Speculation is on (the default): hangs and long
//! attempts draw backups, which must keep every promise too.
//!
//! After every event the simulation checks, from outside, the properties the scheduler
//! promises, plus its own `check_invariants`. A failure prints the seed; set
//! `QUERN_SIM_SEED=<seed>` to replay just that one, `QUERN_SIM_SEEDS=<n>` to run more.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use quern_scheduler::{
    AttemptId, AttemptState, Command, Config, Event, JournalEvent, MapState, Phase, Scheduler,
    TaskId, WorkerId,
};

const STEP: Duration = Duration::from_millis(100);
/// 3000 simulated minutes' worth of steps; a healthy run needs a few hundred.
const MAX_STEPS: u32 = 30_000;
/// Steps simulated after the job ended, to check that the scheduler stays silent.
const TAIL_STEPS: u32 = 20;
const DEFAULT_SEEDS: u64 = 3000;

use common::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    Up,
    /// Silent until then: no heartbeats, no reports, no progress, cannot serve fetches.
    Hung {
        until: Duration,
    },
    /// Gone for good, whether or not the scheduler was told.
    Crashed,
}

#[derive(Debug)]
struct SimAttempt {
    task: TaskId,
    started: Duration,
    /// Map: run time. Reduce: run time after every output was fetched.
    work: Duration,
    /// Reduce: maps whose output this attempt holds.
    fetched: BTreeSet<u32>,
    /// Reduce: when the reduce itself finishes, once everything is fetched.
    done_at: Option<Duration>,
    /// Reduce: no new fetch-failure report before this.
    next_report: Duration,
}

#[derive(Debug)]
struct SimWorker {
    slots: u32,
    health: Health,
    next_heartbeat: Duration,
    running: BTreeMap<AttemptId, SimAttempt>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    done: u64,
    failed: u64,
    steps: u64,
    max_steps: u64,
    events: u64,
    preemptions: u64,
    map_outputs_lost: u64,
    cancelled: u64,
    workers_lost: u64,
    timeouts: u64,
    fetch_reexecutions: u64,
    late_reports: u64,
    ignored_successes: u64,
    backups: u64,
    backups_won: u64,
}

#[derive(Debug)]
struct Sim {
    rng: Rng,
    now: Duration,
    config: Config,
    sched: Scheduler,
    workers: BTreeMap<WorkerId, SimWorker>,
    next_worker: u32,
    /// Workers we sent `WorkerLost` for.
    reported_lost: BTreeSet<WorkerId>,
    /// Every attempt ever assigned.
    assigned: BTreeMap<AttemptId, (TaskId, WorkerId)>,
    /// Attempts the scheduler cancelled.
    cancelled: BTreeSet<AttemptId>,
    /// Map output locations, as announced to the reducers.
    locations: BTreeMap<u32, WorkerId>,
    /// Per map: whether a committed output currently exists (between a commit and its loss).
    output_live: Vec<bool>,
    reduce_commits: BTreeMap<u32, AttemptId>,
    /// When each joined worker was last heard from (only while we consider it alive).
    last_heard: BTreeMap<WorkerId, Duration>,
    /// Workers that must be lost by the rules: `WorkerLost` sent, or silent too long.
    sim_lost: BTreeSet<WorkerId>,
    /// Fetch failures that counted against each committed map attempt's output.
    fetch_reports: BTreeMap<AttemptId, u32>,
    /// Failures we reported for attempts the scheduler had running.
    injected_failures: BTreeMap<TaskId, u32>,
    /// Reports to deliver later: (when, event).
    late: Vec<(Duration, Event)>,
    /// Attempt ids below this were reserved in the journal.
    reserved_below: u64,
    terminal: Option<Command>,
    p_fail: f64,
    p_flake: f64,
    crash_budget: u32,
    hang_budget: u32,
    join_budget: u32,
    tally: Tally,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let maps = rng.range(1, 12) as u32;
        let reduces = if rng.chance(0.25) {
            0
        } else {
            rng.range(1, 5) as u32
        };
        let max_attempts = if rng.chance(0.25) { 2 } else { 4 };
        let config = Config {
            maps,
            reduces,
            max_attempts,
            ..Config::default()
        };
        let p_fail = [0.0, 0.02, 0.05, 0.1, 0.3][rng.range(0, 4) as usize];
        let mut sim = Sim {
            now: Duration::ZERO,
            sched: Scheduler::new(config.clone()),
            config,
            workers: BTreeMap::new(),
            next_worker: 0,
            reported_lost: BTreeSet::new(),
            assigned: BTreeMap::new(),
            cancelled: BTreeSet::new(),
            locations: BTreeMap::new(),
            output_live: vec![false; maps as usize],
            reduce_commits: BTreeMap::new(),
            last_heard: BTreeMap::new(),
            sim_lost: BTreeSet::new(),
            fetch_reports: BTreeMap::new(),
            injected_failures: BTreeMap::new(),
            late: Vec::new(),
            reserved_below: 0,
            terminal: None,
            p_fail,
            p_flake: if rng.chance(0.5) { 0.0 } else { 0.01 },
            crash_budget: rng.range(0, 3) as u32,
            hang_budget: rng.range(0, 3) as u32,
            join_budget: rng.range(0, 3) as u32,
            tally: Tally::default(),
            rng,
        };
        let n = sim.rng.range(1, 6);
        let joins: Vec<Event> = (0..n).map(|_| sim.new_worker()).collect();
        for event in joins {
            sim.deliver(event)
                .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        }
        sim
    }

    fn new_worker(&mut self) -> Event {
        let worker = WorkerId(self.next_worker);
        self.next_worker += 1;
        let slots = self.rng.range(1, 4) as u32;
        self.workers.insert(
            worker,
            SimWorker {
                slots,
                health: Health::Up,
                next_heartbeat: self.now,
                running: BTreeMap::new(),
            },
        );
        Event::WorkerJoined { worker, slots }
    }

    fn run(mut self) -> Result<Tally, String> {
        let mut steps = 0;
        while self.terminal.is_none() {
            if steps == MAX_STEPS {
                return Err(format!("job not finished after {MAX_STEPS} steps"));
            }
            self.step()?;
            steps += 1;
        }
        for _ in 0..TAIL_STEPS {
            self.step()?;
        }
        let stats = self.sched.stats();
        let t = &mut self.tally;
        t.steps = u64::from(steps);
        t.max_steps = u64::from(steps);
        t.preemptions = stats.preemptions;
        t.map_outputs_lost = stats.map_outputs_lost;
        t.cancelled = stats.attempts_cancelled;
        t.workers_lost = stats.workers_lost;
        t.backups_won = stats.backups_won;
        t.timeouts = self
            .sched
            .workers()
            .filter(|(id, w)| !w.is_alive() && !self.reported_lost.contains(id))
            .count() as u64;
        t.fetch_reexecutions = (0..self.config.maps)
            .map(|m| u64::from(self.sched.fetch_reexecutions(m).unwrap_or(0)))
            .sum();
        match self.terminal {
            Some(Command::JobDone) => t.done += 1,
            _ => t.failed += 1,
        }
        Ok(self.tally)
    }

    /// One clock step: faults, worker activity, late reports, then a `Tick`.
    fn step(&mut self) -> Result<(), String> {
        self.now += STEP;
        let now = self.now;
        let mut events = Vec::new();

        for w in self.workers.values_mut() {
            if let Health::Hung { until } = w.health {
                if until <= now {
                    w.health = Health::Up;
                    w.next_heartbeat = now;
                }
            }
        }
        let up: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.health == Health::Up)
            .map(|(id, _)| *id)
            .collect();
        if self.crash_budget > 0 && self.rng.chance(0.01) {
            if let Some(id) = self.rng.pick(&up) {
                self.crash_budget -= 1;
                if let Some(w) = self.workers.get_mut(&id) {
                    w.health = Health::Crashed;
                    w.running.clear();
                }
                // Half the crashes close the connection; the others just go silent.
                if self.rng.chance(0.5) {
                    events.push(Event::WorkerLost { worker: id });
                }
            }
        }
        if self.hang_budget > 0 && self.rng.chance(0.01) {
            if let Some(id) = self.rng.pick(&up) {
                self.hang_budget -= 1;
                let until = now + self.rng.millis(500, 6000);
                if let Some(w) = self.workers.get_mut(&id) {
                    if w.health == Health::Up {
                        w.health = Health::Hung { until };
                    }
                }
            }
        }
        let usable = self
            .sched
            .workers()
            .filter(|(_, w)| w.is_alive() && w.slots() > 0)
            .count();
        if usable == 0 || (self.join_budget > 0 && self.rng.chance(0.01)) {
            if usable > 0 {
                self.join_budget -= 1;
            }
            events.push(self.new_worker());
        }

        let health: BTreeMap<WorkerId, Health> =
            self.workers.iter().map(|(id, w)| (*id, w.health)).collect();
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            self.worker_activity(id, &health, &mut events);
        }

        let (due, later): (Vec<_>, Vec<_>) = self.late.drain(..).partition(|(at, _)| *at <= now);
        self.late = later;
        self.tally.late_reports += due.len() as u64;
        events.extend(due.into_iter().map(|(_, e)| e));

        if self.rng.chance(0.02) {
            events.push(self.garbage_event());
        }

        // Fisher-Yates: deliver in a random order.
        for i in (1..events.len()).rev() {
            let j = self.rng.range(0, i as u64) as usize;
            events.swap(i, j);
        }
        for event in events {
            self.deliver(event)?;
        }
        self.deliver(Event::Tick)
    }

    fn worker_activity(
        &mut self,
        id: WorkerId,
        health: &BTreeMap<WorkerId, Health>,
        events: &mut Vec<Event>,
    ) {
        let now = self.now;
        let maps = self.config.maps;
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.health != Health::Up {
            return;
        }
        if now >= w.next_heartbeat {
            let progress = w
                .running
                .iter()
                .map(|(a, s)| {
                    let elapsed = now.saturating_sub(s.started).as_secs_f64();
                    (*a, elapsed / (s.work.as_secs_f64() + 1.0))
                })
                .collect();
            events.push(Event::Heartbeat {
                worker: id,
                progress,
            });
            w.next_heartbeat = now + self.rng.millis(300, 700);
        }
        let mut finished = Vec::new();
        for (attempt, s) in w.running.iter_mut() {
            if s.task.phase == Phase::Map {
                if now >= s.started + s.work {
                    finished.push(*attempt);
                }
                continue;
            }
            if let Some(done_at) = s.done_at {
                if now >= done_at {
                    finished.push(*attempt);
                }
                continue;
            }
            for m in 0..maps {
                if s.fetched.contains(&m) {
                    continue;
                }
                let Some(loc) = self.locations.get(&m) else {
                    continue; // not (or no longer) committed: wait for MapOutputReady
                };
                let reachable = *loc == id || health.get(loc) == Some(&Health::Up);
                if reachable {
                    if self.rng.chance(self.p_flake) {
                        events.push(Event::FetchFailed {
                            attempt: *attempt,
                            map: m,
                        });
                    } else if self.rng.chance(0.7) {
                        s.fetched.insert(m);
                    }
                } else if now >= s.next_report {
                    events.push(Event::FetchFailed {
                        attempt: *attempt,
                        map: m,
                    });
                    s.next_report = now + Duration::from_millis(300);
                }
            }
            if s.fetched.len() == maps as usize {
                s.done_at = Some(now + s.work);
            }
        }
        for attempt in finished {
            let Some(s) = w.running.remove(&attempt) else {
                continue;
            };
            if self.rng.chance(self.p_fail) {
                let error = format!("{} crashed", s.task);
                events.push(Event::AttemptFailed { attempt, error });
            } else {
                events.push(Event::AttemptSucceeded { attempt });
            }
        }
    }

    /// A report the scheduler must ignore: unknown attempt or worker, fetch failure from a map
    /// attempt or about a map that does not exist, or a duplicate join.
    fn garbage_event(&mut self) -> Event {
        let bogus_attempt = AttemptId(u64::MAX - self.rng.range(0, 9));
        let bogus_worker = WorkerId(u32::MAX - self.rng.range(0, 9) as u32);
        let map_attempts: Vec<AttemptId> = self
            .assigned
            .iter()
            .filter(|(_, (t, _))| t.phase == Phase::Map)
            .map(|(a, _)| *a)
            .collect();
        let attempts: Vec<AttemptId> = self.assigned.keys().copied().collect();
        let workers: Vec<WorkerId> = self.sched.workers().map(|(id, _)| id).collect();
        match self.rng.range(0, 8) {
            0 => Event::AttemptSucceeded {
                attempt: bogus_attempt,
            },
            6 => Event::WorkDirFailed {
                attempt: bogus_attempt,
                error: "who?".to_string(),
            },
            7 => Event::WorkDirRecovered {
                worker: bogus_worker,
            },
            1 => Event::AttemptFailed {
                attempt: bogus_attempt,
                error: "who?".to_string(),
            },
            2 => Event::Heartbeat {
                worker: bogus_worker,
                progress: vec![(bogus_attempt, 0.5), (AttemptId(0), f64::NAN)],
            },
            3 => Event::WorkerLost {
                worker: bogus_worker,
            },
            4 => match self.rng.pick(&map_attempts) {
                Some(attempt) => Event::FetchFailed { attempt, map: 0 },
                None => Event::Tick,
            },
            5 => match self.rng.pick(&attempts) {
                Some(attempt) => Event::FetchFailed {
                    attempt,
                    map: self.config.maps + 3,
                },
                None => Event::Tick,
            },
            // A duplicate join must not change the worker's slots (checked in `check_state`).
            _ => match self.rng.pick(&workers) {
                Some(worker) => Event::WorkerJoined { worker, slots: 64 },
                None => Event::Tick,
            },
        }
    }

    /// Hands one event to the scheduler, carries out the commands and checks everything.
    fn deliver(&mut self, event: Event) -> Result<(), String> {
        self.tally.events += 1;
        if std::env::var("QUERN_SIM_TRACE").is_ok() {
            eprintln!("t={:?} {event:?}", self.now);
        }
        let text = format!("{event:?}");
        self.deliver_inner(event)
            .map_err(|e| format!("t={:?}, after {text}: {e}", self.now))
    }

    fn deliver_inner(&mut self, event: Event) -> Result<(), String> {
        let now = self.now;
        let mut success = None;
        // A fetch failure that must count: (the map, its committed attempt blamed, reporter).
        let mut fetch_report = None;
        let source = match &event {
            // A duplicate join is ignored, so it does not count as hearing from the worker.
            Event::WorkerJoined { worker, .. } => {
                Some(*worker).filter(|w| self.sched.worker(*w).is_none())
            }
            Event::Heartbeat { worker, .. } => Some(*worker),
            Event::AttemptSucceeded { attempt }
            | Event::AttemptFailed { attempt, .. }
            | Event::WorkDirFailed { attempt, .. }
            | Event::FetchFailed { attempt, .. } => self.assigned.get(attempt).map(|(_, w)| *w),
            Event::OutputFound { worker, .. } | Event::WorkDirRecovered { worker } => Some(*worker),
            Event::WorkerLost { .. } | Event::Tick => None,
        };
        match &event {
            Event::AttemptSucceeded { attempt } => success = Some(*attempt),
            Event::AttemptFailed { attempt, .. } => {
                let running = self
                    .sched
                    .attempt(*attempt)
                    .is_some_and(|a| a.state == AttemptState::Running);
                if let (true, Some((task, _))) = (running, self.assigned.get(attempt)) {
                    *self.injected_failures.entry(*task).or_default() += 1;
                }
            }
            Event::FetchFailed { attempt, map } => {
                let reporter = self
                    .sched
                    .attempt(*attempt)
                    .filter(|a| a.state == AttemptState::Running && a.task.phase == Phase::Reduce);
                if let (
                    Some(a),
                    Some(MapState::Committed {
                        attempt: blamed, ..
                    }),
                ) = (reporter, self.sched.map_state(*map))
                {
                    fetch_report = Some((*map, *blamed, a.worker));
                }
            }
            Event::WorkerLost { worker } if self.workers.contains_key(worker) => {
                self.reported_lost.insert(*worker);
            }
            _ => {}
        }
        let was_finished = self.sched.is_finished();
        let reduces_before = self.reduce_commits.len();
        // `poll_timeout` is exact: a tick before it changes nothing.
        let quiet = event == Event::Tick && self.sched.poll_timeout().is_none_or(|t| now < t);
        self.sched.handle(now, event);

        // Liveness, exactly as specified: lost iff `WorkerLost` was sent or it was silent for
        // longer than the timeout before some event (expiry runs before the event applies).
        if !was_finished {
            let timeout = self.config.heartbeat_timeout;
            for (worker, heard) in &self.last_heard {
                if self.reported_lost.contains(worker) || now.saturating_sub(*heard) > timeout {
                    self.sim_lost.insert(*worker);
                }
            }
            if let Some(worker) = source {
                let joined = self.sched.worker(worker).is_some();
                if joined && !self.sim_lost.contains(&worker) {
                    self.last_heard.insert(worker, now);
                }
            }
            for worker in self.last_heard.keys() {
                let alive = self.sched.worker(*worker).is_some_and(|w| w.is_alive());
                if alive == self.sim_lost.contains(worker) {
                    let expected = if alive { "lost" } else { "alive" };
                    return Err(format!("{worker} should be {expected}"));
                }
            }
        }
        if let Some((map, blamed, reporter)) = fetch_report {
            if !self.sim_lost.contains(&reporter) {
                let count = self.fetch_reports.entry(blamed).or_default();
                *count += 1;
                let still = matches!(
                    self.sched.map_state(map),
                    Some(MapState::Committed { attempt, .. }) if *attempt == blamed
                );
                let threshold = self.sched.config().fetch_failures_to_reexecute;
                if *count >= threshold && still && !self.sched.is_finished() {
                    return Err(format!(
                        "map {map} kept its output after {count} fetch failures"
                    ));
                }
            }
        }
        // The journal is drained before the commands: the commit (if any) and the job's end.
        let mut journaled = Vec::new();
        let mut journaled_end = false;
        while let Some(entry) = self.sched.poll_journal() {
            match entry {
                JournalEvent::TaskCommitted {
                    task,
                    attempt,
                    worker,
                } => {
                    if self.assigned.get(&attempt) != Some(&(task, worker)) {
                        return Err(format!("journaled {attempt} of {task} on {worker}?"));
                    }
                    journaled.push(attempt);
                }
                JournalEvent::AttemptsReserved { below } => {
                    if below.0 <= self.reserved_below {
                        return Err(format!("reservation {below:?} goes backwards"));
                    }
                    self.reserved_below = below.0;
                }
                JournalEvent::JobDone | JournalEvent::JobFailed { .. } => {
                    if journaled_end || was_finished {
                        return Err("job end journaled twice".to_string());
                    }
                    journaled_end = true;
                }
            }
        }
        let committed_now = success.filter(|a| {
            self.sched
                .attempt(*a)
                .is_some_and(|a| a.state == AttemptState::Committed)
        });
        if journaled != committed_now.into_iter().collect::<Vec<_>>() {
            return Err(format!(
                "journaled {journaled:?}, committed {committed_now:?}"
            ));
        }
        if journaled_end != (self.sched.is_finished() && !was_finished) {
            return Err("the job's end was not journaled exactly when it ended".to_string());
        }
        // Before the commands: `JobDone` is checked against the commits seen so far. (Within
        // one `handle`, a commit never follows a loss of the same map's output.)
        if let Some(attempt) = success {
            self.check_success(attempt)?;
        }
        let mut reduce_assigned = false;
        while let Some(command) = self.sched.poll() {
            if quiet {
                return Err(format!(
                    "{command:?} on a tick before poll_timeout {:?}",
                    self.sched.poll_timeout()
                ));
            }
            if was_finished || self.terminal.is_some() {
                return Err(format!("{command:?} after the job ended"));
            }
            self.apply(command, reduces_before, &mut reduce_assigned)?;
        }
        if reduce_assigned {
            for m in 0..self.config.maps {
                if self.sched.map_state(m) == Some(&MapState::Idle) {
                    return Err(format!("a reduce was assigned while map {m} is idle"));
                }
            }
        }
        self.check_state()
    }

    /// Carries out one command. `reduces_before`: reduces committed before this event (losses
    /// of map output, from the expiry step, come before this event's commit).
    fn apply(
        &mut self,
        command: Command,
        reduces_before: usize,
        reduce_assigned: &mut bool,
    ) -> Result<(), String> {
        match command {
            Command::Assign {
                attempt,
                task,
                worker,
                backup,
            } => {
                self.tally.backups += u64::from(backup.is_some());
                if attempt.0 >= self.reserved_below {
                    return Err(format!("{attempt} assigned before it was reserved"));
                }
                self.assign(attempt, task, worker, reduce_assigned)?
            }
            Command::Cancel { attempt, worker } => self.cancel(attempt, worker)?,
            Command::MapOutputReady { map, worker } => {
                let committed_here = matches!(
                    self.sched.map_state(map),
                    Some(MapState::Committed { worker: w, .. }) if *w == worker
                );
                if !committed_here {
                    return Err(format!(
                        "map {map} announced on {worker}, not committed there"
                    ));
                }
                if self.config.reduces == 0 {
                    return Err("MapOutputReady in a map-only job".to_string());
                }
                self.locations.insert(map, worker);
            }
            Command::MapOutputLost { map } => {
                if self.config.reduces == 0 {
                    return Err(format!("map {map} output lost in a map-only job"));
                }
                if reduces_before == self.config.reduces as usize {
                    return Err(format!("map {map} re-run after every reduce committed"));
                }
                match self.output_live.get_mut(map as usize) {
                    Some(live) if *live => *live = false,
                    _ => return Err(format!("map {map} lost without a live output")),
                }
                self.locations.remove(&map);
            }
            Command::JobDone => {
                self.check_done()?;
                self.terminal = Some(Command::JobDone);
            }
            Command::JobFailed { reason } => {
                self.check_failed(&reason)?;
                self.terminal = Some(Command::JobFailed { reason });
            }
        }
        Ok(())
    }

    fn assign(
        &mut self,
        attempt: AttemptId,
        task: TaskId,
        worker: WorkerId,
        reduce_assigned: &mut bool,
    ) -> Result<(), String> {
        let in_scheduler = self.sched.worker(worker);
        let alive = in_scheduler.is_some_and(|w| w.is_alive());
        if !self.workers.contains_key(&worker) || self.reported_lost.contains(&worker) || !alive {
            return Err(format!("{attempt} assigned to dead or unknown {worker}"));
        }
        let busy = in_scheduler.map_or(0, |w| w.running().count());
        if self.assigned.insert(attempt, (task, worker)).is_some() {
            return Err(format!("{attempt} assigned twice"));
        }
        let count = match task.phase {
            Phase::Map => self.config.maps,
            Phase::Reduce => self.config.reduces,
        };
        if task.index >= count {
            return Err(format!("{task} does not exist"));
        }
        *reduce_assigned |= task.phase == Phase::Reduce;
        let work = self.rng.millis(100, 3000);
        let now = self.now;
        let Some(w) = self.workers.get_mut(&worker) else {
            return Err(format!("{worker} vanished"));
        };
        if busy > w.slots as usize {
            return Err(format!(
                "scheduler runs {busy} on {worker} with {} slots",
                w.slots
            ));
        }
        // A silently crashed worker swallows its assignments.
        if w.health != Health::Crashed {
            let fresh = SimAttempt {
                task,
                started: now,
                work,
                fetched: BTreeSet::new(),
                done_at: None,
                next_report: now,
            };
            w.running.insert(attempt, fresh);
        }
        if w.running.len() > w.slots as usize {
            return Err(format!(
                "{worker} runs {} in {} slots",
                w.running.len(),
                w.slots
            ));
        }
        Ok(())
    }

    fn cancel(&mut self, attempt: AttemptId, worker: WorkerId) -> Result<(), String> {
        if self.assigned.get(&attempt).map(|(_, w)| *w) != Some(worker) {
            return Err(format!("cancel of {attempt} names the wrong {worker}"));
        }
        if !self.cancelled.insert(attempt) {
            return Err(format!("{attempt} cancelled twice"));
        }
        let up = match self.workers.get_mut(&worker) {
            Some(w) => {
                w.running.remove(&attempt);
                w.health == Health::Up
            }
            None => false,
        };
        // The worker may have finished just as the cancel crossed its report.
        if up && self.rng.chance(0.4) {
            let at = self.now + self.rng.millis(0, 1000);
            let late = match self.rng.range(0, 2) {
                0 => Event::AttemptSucceeded { attempt },
                1 => Event::AttemptFailed {
                    attempt,
                    error: "late".to_string(),
                },
                _ => Event::FetchFailed { attempt, map: 0 },
            };
            self.late.push((at, late));
        }
        Ok(())
    }

    /// Exactly once: only a live attempt commits, a reduce commits once ever, a map commits
    /// again only after its previous output was lost.
    fn check_success(&mut self, attempt: AttemptId) -> Result<(), String> {
        let committed = self
            .sched
            .attempt(attempt)
            .is_some_and(|a| a.state == AttemptState::Committed);
        if !committed {
            self.tally.ignored_successes += 1;
            return Ok(());
        }
        let Some(&(task, worker)) = self.assigned.get(&attempt) else {
            return Err(format!("unknown {attempt} committed"));
        };
        if self.cancelled.contains(&attempt) {
            return Err(format!("cancelled {attempt} committed {task}"));
        }
        if self.reported_lost.contains(&worker) {
            return Err(format!("{attempt} on lost {worker} committed {task}"));
        }
        match task.phase {
            Phase::Map => match self.output_live.get_mut(task.index as usize) {
                Some(live) if !*live => *live = true,
                _ => return Err(format!("{task} committed twice, the second by {attempt}")),
            },
            Phase::Reduce => {
                if let Some(first) = self.reduce_commits.insert(task.index, attempt) {
                    return Err(format!("{task} committed by {first} and {attempt}"));
                }
            }
        }
        Ok(())
    }

    fn check_state(&self) -> Result<(), String> {
        self.sched.check_invariants()?;
        let all_reduces = self.reduce_commits.len() == self.config.reduces as usize;
        for m in 0..self.config.maps {
            if let Some(MapState::Committed { worker, .. }) = self.sched.map_state(m) {
                let alive = self.sched.worker(*worker).is_some_and(|w| w.is_alive());
                if !alive && !all_reduces {
                    return Err(format!("map {m}'s needed output sits on lost {worker}"));
                }
            }
        }
        for (task, injected) in &self.injected_failures {
            if self.sched.failures(*task).unwrap_or(0) > *injected {
                return Err(format!("{task} failed more often than we made it fail"));
            }
        }
        for (id, w) in &self.workers {
            let Some(seen) = self.sched.worker(*id) else {
                continue; // joins later in this step
            };
            if seen.slots() != w.slots {
                return Err(format!("{id} has {} slots, not {}", seen.slots(), w.slots));
            }
            if seen.running().count() > w.slots as usize {
                return Err(format!("{id} over its {} slots", w.slots));
            }
            if seen.is_alive() && w.health != Health::Crashed {
                // What the worker runs, the scheduler knows it runs (reports still in flight
                // this step make the worker's set smaller, never larger).
                if let Some(a) = w.running.keys().find(|a| !seen.running().any(|s| s == **a)) {
                    return Err(format!("{id} runs {a}, which the scheduler forgot"));
                }
            }
        }
        if self.terminal.is_some() != self.sched.is_finished() {
            return Err("job state disagrees with the commands seen".to_string());
        }
        Ok(())
    }

    fn check_done(&self) -> Result<(), String> {
        if self.reduce_commits.len() != self.config.reduces as usize {
            return Err("JobDone before every reduce committed".to_string());
        }
        for index in 0..self.config.reduces {
            let task = TaskId::reduce(index);
            if self.sched.committed_attempt(task) != self.reduce_commits.get(&index).copied() {
                return Err(format!("{task}'s committed attempt is not the one we saw"));
            }
        }
        for index in 0..self.config.maps {
            let task = TaskId::map(index);
            let Some(attempt) = self.sched.committed_attempt(task) else {
                return Err(format!("JobDone but {task} never committed"));
            };
            match self.assigned.get(&attempt) {
                Some((t, _)) if *t == task => {}
                _ => {
                    return Err(format!(
                        "{task}'s committed {attempt} is not one of its own"
                    ))
                }
            }
        }
        Ok(())
    }

    /// `JobFailed` only when some task hit its limit, and the reason names it.
    fn check_failed(&self, reason: &str) -> Result<(), String> {
        let max = self.config.max_attempts;
        let maps = (0..self.config.maps).map(TaskId::map);
        let reduces = (0..self.config.reduces).map(TaskId::reduce);
        let culprit = maps.chain(reduces).find(|task| {
            let failures = self.sched.failures(*task).unwrap_or(0);
            let fetch = match task.phase {
                Phase::Map => self.sched.fetch_reexecutions(task.index).unwrap_or(0),
                Phase::Reduce => 0,
            };
            failures >= max || fetch > max
        });
        match culprit {
            Some(task) if reason.starts_with(&format!("{task} failed ")) => Ok(()),
            Some(task) => Err(format!("JobFailed({reason}) does not name {task}")),
            None => Err(format!("JobFailed({reason}) with no task over its limits")),
        }
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(seed) = std::env::var("QUERN_SIM_SEED") {
        return vec![seed.parse().expect("QUERN_SIM_SEED is a number")];
    }
    let n = std::env::var("QUERN_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    (0..n).collect()
}

#[test]
fn simulated_clusters_keep_every_promise() {
    let start = Instant::now();
    let seeds = seeds();
    let mut total = Tally::default();
    for &seed in &seeds {
        let t = Sim::new(seed)
            .run()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        total.done += t.done;
        total.failed += t.failed;
        total.steps += t.steps;
        total.max_steps = total.max_steps.max(t.max_steps);
        total.events += t.events;
        total.preemptions += t.preemptions;
        total.map_outputs_lost += t.map_outputs_lost;
        total.cancelled += t.cancelled;
        total.workers_lost += t.workers_lost;
        total.timeouts += t.timeouts;
        total.fetch_reexecutions += t.fetch_reexecutions;
        total.late_reports += t.late_reports;
        total.ignored_successes += t.ignored_successes;
        total.backups += t.backups;
        total.backups_won += t.backups_won;
    }
    eprintln!(
        "{} seeds in {:.2?}: {total:#?}",
        seeds.len(),
        start.elapsed()
    );
    if seeds.len() >= 1000 {
        // The faults must actually be exercised, and most jobs must still succeed.
        assert!(total.done > total.failed * 3, "{total:?}");
        assert!(total.failed > 0, "{total:?}");
        assert!(total.preemptions > 0, "{total:?}");
        assert!(total.map_outputs_lost > 0, "{total:?}");
        assert!(total.fetch_reexecutions > 0, "{total:?}");
        assert!(total.timeouts > 0, "{total:?}");
        assert!(total.late_reports > 0, "{total:?}");
        assert!(total.ignored_successes > 0, "{total:?}");
        // Speculation is on by default: stragglers (hung workers, long attempts) get backups.
        assert!(total.backups > 0 && total.backups_won > 0, "{total:?}");
    }
}

#[test]
fn simulation_is_deterministic() {
    let a = Sim::new(42).run().map(|t| format!("{t:?}"));
    let b = Sim::new(42).run().map(|t| format!("{t:?}"));
    assert_eq!(a, b);
}

/// Arbitrary event sequences — nonsense included: unknown ids, time going backwards,
/// reports in any order — never panic and never break the internal invariants.
#[test]
fn arbitrary_event_sequences_never_panic() {
    for seed in 0..2000 {
        let mut rng = Rng(seed ^ 0x5eed);
        let config = Config {
            maps: rng.range(0, 6) as u32,
            reduces: rng.range(0, 3) as u32,
            max_attempts: rng.range(0, 4) as u32,
            fetch_failures_to_reexecute: rng.range(0, 3) as u32,
            heartbeat_timeout: rng.millis(0, 3000),
            min_runtime: rng.millis(0, 1000),
            resume_grace: rng.millis(0, 3000),
            speculation_interval: rng.millis(0, 300),
            speculative_cap: [0.0, 0.1, 1.0, f64::NAN][rng.range(0, 3) as usize],
            slow_task_percentile: [0.25, -1.0, 2.0, f64::NAN][rng.range(0, 3) as usize],
            ..Config::default()
        };
        // Sometimes a restarted job, with journaled commits (valid or not).
        let mut sched = if rng.chance(0.3) {
            let committed: Vec<(TaskId, AttemptId)> = (0..rng.range(0, 6))
                .map(|_| {
                    let index = rng.range(0, 6) as u32;
                    let task = if rng.chance(0.6) {
                        TaskId::map(index)
                    } else {
                        TaskId::reduce(index)
                    };
                    (task, AttemptId(rng.range(0, 40)))
                })
                .collect();
            Scheduler::resume(config, committed)
        } else {
            Scheduler::new(config)
        };
        let mut now = Duration::ZERO;
        for _ in 0..300 {
            // Mostly forwards, sometimes backwards.
            now = if rng.chance(0.05) {
                now.saturating_sub(rng.millis(0, 1000))
            } else {
                now + rng.millis(0, 500)
            };
            let worker = WorkerId(rng.range(0, 7) as u32);
            let attempt = AttemptId(rng.range(0, 40));
            let event = match rng.range(0, 8) {
                0 => Event::WorkerJoined {
                    worker,
                    slots: rng.range(0, 3) as u32,
                },
                1 => Event::WorkerLost { worker },
                2 => Event::Heartbeat {
                    worker,
                    progress: vec![(attempt, rng.range(0, 3) as f64 - 1.0)],
                },
                3 | 4 => Event::AttemptSucceeded { attempt },
                5 => Event::AttemptFailed {
                    attempt,
                    error: "e".to_string(),
                },
                6 => Event::FetchFailed {
                    attempt,
                    map: rng.range(0, 7) as u32,
                },
                7 => Event::OutputFound { worker, attempt },
                _ => Event::Tick,
            };
            sched.handle(now, event);
            while sched.poll().is_some() {}
            if let Err(e) = sched.check_invariants() {
                panic!("seed {seed}: {e}");
            }
        }
    }
}
