//! The journal and resuming after a coordinator restart: scripted rules, then a simulation
//! that crashes the coordinator at random points and rebuilds it from the journal bytes.

mod common;

use std::time::Duration;

use quern_scheduler::journal::{self, Record};
use quern_scheduler::{
    AttemptId, Command, Config, Event, JournalEvent, MapState, Phase, Scheduler, TaskId, TaskState,
    WorkerId,
};

const W0: WorkerId = WorkerId(0);
const W1: WorkerId = WorkerId(1);

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn a(id: u64) -> AttemptId {
    AttemptId(id)
}

fn map(index: u32) -> TaskId {
    TaskId::map(index)
}

fn reduce(index: u32) -> TaskId {
    TaskId::reduce(index)
}

fn assign(attempt: u64, task: TaskId, worker: WorkerId) -> Command {
    Command::Assign {
        attempt: a(attempt),
        task,
        worker,
        backup: None,
    }
}

fn ready(map: u32, worker: WorkerId) -> Command {
    Command::MapOutputReady { map, worker }
}

fn handle(s: &mut Scheduler, now: Duration, event: Event) -> Vec<Command> {
    s.handle(now, event);
    let commands: Vec<Command> = std::iter::from_fn(|| s.poll()).collect();
    if let Err(e) = s.check_invariants() {
        panic!("invariant broken: {e}");
    }
    commands
}

fn journal(s: &mut Scheduler) -> Vec<JournalEvent> {
    std::iter::from_fn(|| s.poll_journal()).collect()
}

/// A job whose workers are never timed out: these tests send no heartbeats.
fn job(maps: u32, reduces: u32) -> Config {
    Config {
        heartbeat_timeout: Duration::from_secs(3600),
        ..Config::new(maps, reduces)
    }
}

fn found(worker: WorkerId, attempt: u64) -> Event {
    Event::OutputFound {
        worker,
        attempt: a(attempt),
    }
}

#[test]
fn committed_tasks_are_not_rerun_and_unattached_maps_wait_out_the_grace() {
    // Maps 0 and 1 and reduce 0 committed before the restart.
    let committed = vec![(map(0), a(3)), (map(1), a(5)), (reduce(0), a(7))];
    let mut s = Scheduler::resume(job(4, 2), committed);
    assert_eq!(s.poll(), None);
    assert_eq!(
        s.task_state(reduce(0)),
        Some(TaskState::Committed { attempt: a(7) })
    );
    assert_eq!(
        s.map_state(0),
        Some(&MapState::Unattached { attempt: a(3) })
    );
    assert_eq!(s.committed_attempt(map(1)), Some(a(5)));
    // Ids continue above the journaled ones; reduce 0 is not run again; reduce 1 starts (no
    // map is idle) and hears of no output yet.
    assert_eq!(
        handle(
            &mut s,
            ms(0),
            Event::WorkerJoined {
                worker: W0,
                slots: 4
            }
        ),
        vec![
            assign(8, map(2), W0),
            assign(9, map(3), W0),
            assign(10, reduce(1), W0)
        ]
    );
    // W0 still holds map 0's output (attempt 3): re-attached and announced. Reports about
    // other attempts, or from unknown workers, change nothing.
    assert_eq!(handle(&mut s, ms(100), found(W0, 3)), vec![ready(0, W0)]);
    assert_eq!(handle(&mut s, ms(100), found(W0, 3)), vec![]);
    assert_eq!(handle(&mut s, ms(100), found(W0, 4)), vec![]);
    assert_eq!(handle(&mut s, ms(100), found(W1, 5)), vec![]);
    assert_eq!(s.stats().outputs_found, 1);
    // Map 1's output was not found: re-executed once the 3 s grace (from the first event)
    // has run out.
    assert_eq!(handle(&mut s, ms(3000), Event::Tick), vec![]);
    assert_eq!(
        handle(&mut s, ms(3001), Event::Tick),
        vec![assign(11, map(1), W0)]
    );
    // A late report of the old output is ignored now.
    assert_eq!(handle(&mut s, ms(3100), found(W0, 5)), vec![]);
    // Ids 8.. were reserved (journaled) before the first of them was assigned.
    assert_eq!(
        journal(&mut s),
        vec![JournalEvent::AttemptsReserved { below: a(8 + 1024) }]
    );
    assert_eq!(
        handle(&mut s, ms(3200), Event::AttemptSucceeded { attempt: a(8) }),
        vec![ready(2, W0)]
    );
    handle(&mut s, ms(3300), Event::AttemptSucceeded { attempt: a(9) });
    handle(&mut s, ms(3400), Event::AttemptSucceeded { attempt: a(11) });
    assert_eq!(
        handle(&mut s, ms(3500), Event::AttemptSucceeded { attempt: a(10) }),
        vec![Command::JobDone]
    );
    let commits: Vec<TaskId> = journal(&mut s)
        .into_iter()
        .filter_map(|j| match j {
            JournalEvent::TaskCommitted { task, .. } => Some(task),
            _ => None,
        })
        .collect();
    assert_eq!(commits, vec![map(2), map(3), map(1), reduce(1)]);
    // Map 0 kept its journaled attempt; reduce 0 never ran in this incarnation.
    assert_eq!(s.committed_attempt(map(0)), Some(a(3)));
    assert!(s.attempts().all(|(_, x)| x.task != reduce(0)));
}

#[test]
fn map_only_jobs_keep_committed_maps_for_good() {
    let mut s = Scheduler::resume(job(3, 0), vec![(map(0), a(0)), (map(2), a(9))]);
    assert_eq!(
        handle(
            &mut s,
            ms(0),
            Event::WorkerJoined {
                worker: W0,
                slots: 2
            }
        ),
        vec![assign(10, map(1), W0)]
    );
    assert_eq!(handle(&mut s, ms(10_000), Event::Tick), vec![]);
    assert_eq!(
        handle(
            &mut s,
            ms(10_100),
            Event::AttemptSucceeded { attempt: a(10) }
        ),
        vec![Command::JobDone]
    );
    assert_eq!(
        journal(&mut s),
        vec![
            JournalEvent::AttemptsReserved {
                below: a(10 + 1024)
            },
            JournalEvent::TaskCommitted {
                task: map(1),
                attempt: a(10),
                worker: W0
            },
            JournalEvent::JobDone
        ]
    );
}

#[test]
fn a_fully_committed_job_is_done_at_once() {
    // Every reduce committed: the map outputs are not needed any more.
    let mut s = Scheduler::resume(
        job(2, 1),
        vec![(map(0), a(0)), (reduce(0), a(2)), (map(1), a(1))],
    );
    assert_eq!(s.poll_journal(), Some(JournalEvent::JobDone));
    assert_eq!(s.poll(), Some(Command::JobDone));
    assert!(s.is_finished());
}

#[test]
fn the_latest_commit_of_a_task_counts_and_unknown_tasks_are_ignored() {
    let committed = vec![
        (map(0), a(4)),
        (map(0), a(1)),
        (map(7), a(30)),
        (reduce(3), a(2)),
    ];
    let mut s = Scheduler::resume(job(1, 1), committed);
    assert_eq!(
        s.map_state(0),
        Some(&MapState::Unattached { attempt: a(4) })
    );
    // Ids start above every journaled id, including the ignored ones.
    assert_eq!(
        handle(
            &mut s,
            ms(0),
            Event::WorkerJoined {
                worker: W0,
                slots: 1
            }
        ),
        vec![assign(31, reduce(0), W0)]
    );
    // The grace runs out, the map becomes idle, and the reducer gives up its slot for it.
    assert_eq!(
        handle(&mut s, ms(3001), Event::Tick),
        vec![
            Command::Cancel {
                attempt: a(31),
                worker: W0
            },
            assign(32, map(0), W0)
        ]
    );
}

#[test]
fn a_reattached_output_is_lost_with_its_worker() {
    let mut s = Scheduler::resume(job(1, 1), vec![(map(0), a(0))]);
    handle(
        &mut s,
        ms(0),
        Event::WorkerJoined {
            worker: W0,
            slots: 1,
        },
    );
    handle(
        &mut s,
        ms(0),
        Event::WorkerJoined {
            worker: W1,
            slots: 1,
        },
    );
    assert_eq!(handle(&mut s, ms(10), found(W1, 0)), vec![ready(0, W1)]);
    // Lost again with W1 while the reduce needs it: re-run, and the reducer holding the
    // only other slot gives it up.
    assert_eq!(
        handle(&mut s, ms(20), Event::WorkerLost { worker: W1 }),
        vec![
            Command::MapOutputLost { map: 0 },
            Command::Cancel {
                attempt: a(1),
                worker: W0
            },
            assign(2, map(0), W0)
        ]
    );
}

// --- crash simulation ------------------------------------------------------------------------

/// A coordinator that crashes: a fake cluster of physical workers that outlive coordinator
/// incarnations, a journal kept as bytes exactly as the driver would write it, and after
/// each crash a scheduler rebuilt with [`Scheduler::resume`] from the decoded journal (with,
/// sometimes, a torn entry at its end). The live workers re-register under new ids and
/// report the map outputs they hold. Workers also crash for good (their connection closes),
/// taking their map outputs with them.
mod crash {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const STEP: Duration = Duration::from_millis(100);
    const JOB: u64 = 7;

    use crate::common::Rng;

    #[derive(Debug)]
    struct Run {
        task: TaskId,
        started: Duration,
        work: Duration,
        fetched: BTreeSet<u32>,
        done_at: Option<Duration>,
    }

    /// A worker process; it keeps its disk (map outputs) across coordinator restarts.
    #[derive(Debug)]
    struct Host {
        slots: u32,
        up: bool,
        /// Its id with the current coordinator incarnation.
        id: WorkerId,
        next_heartbeat: Duration,
        running: BTreeMap<AttemptId, Run>,
        /// Map attempts whose output sits on its disk.
        outputs: BTreeSet<AttemptId>,
    }

    #[derive(Debug, Default)]
    struct Tally {
        crashes: u64,
        torn: u64,
        reattached: u64,
        reexecuted_lost: u64,
    }

    struct Sim {
        rng: Rng,
        now: Duration,
        /// When the current incarnation started: its scheduler's clock runs from there.
        epoch: Duration,
        config: Config,
        sched: Scheduler,
        hosts: Vec<Host>,
        next_id: u32,
        journal: Vec<u8>,
        /// Current incarnation: announced map output locations, and per map whether a
        /// committed output exists in this incarnation.
        locations: BTreeMap<u32, WorkerId>,
        output_live: BTreeMap<u32, bool>,
        /// Every attempt assigned, in any incarnation.
        assigned: BTreeMap<AttemptId, TaskId>,
        /// Latest commit of each task, over all incarnations.
        latest: BTreeMap<TaskId, AttemptId>,
        reduce_commits: BTreeSet<u32>,
        /// Attempt ids below this were reserved in the journal (by any incarnation).
        reserved_below: u64,
        crash_at: Vec<u32>,
        host_crashes: u32,
        done: bool,
        tally: Tally,
    }

    impl Sim {
        fn new(seed: u64) -> Sim {
            let mut rng = Rng(seed);
            let config = Config::new(rng.range(1, 12) as u32, rng.range(0, 5) as u32);
            let hosts = rng.range(1, 5);
            let mut crash_at = vec![rng.range(1, 40) as u32];
            if rng.chance(0.5) {
                crash_at.push(crash_at[0] + rng.range(1, 30) as u32);
            }
            let mut sim = Sim {
                now: Duration::ZERO,
                epoch: Duration::ZERO,
                sched: Scheduler::new(config.clone()),
                config,
                hosts: Vec::new(),
                next_id: 0,
                journal: Vec::new(),
                locations: BTreeMap::new(),
                output_live: BTreeMap::new(),
                assigned: BTreeMap::new(),
                latest: BTreeMap::new(),
                reduce_commits: BTreeSet::new(),
                reserved_below: 0,
                crash_at,
                host_crashes: rng.range(0, 2) as u32,
                done: false,
                tally: Tally::default(),
                rng,
            };
            let spec = b"a job".to_vec();
            journal::encode(&Record::JobAccepted { job: JOB, spec }, &mut sim.journal);
            for _ in 0..hosts {
                let slots = sim.rng.range(1, 3) as u32;
                sim.hosts.push(Host {
                    slots,
                    up: true,
                    id: WorkerId(u32::MAX),
                    next_heartbeat: Duration::ZERO,
                    running: BTreeMap::new(),
                    outputs: BTreeSet::new(),
                });
            }
            for h in 0..sim.hosts.len() {
                sim.register(h);
            }
            sim
        }

        fn register(&mut self, h: usize) {
            let id = WorkerId(self.next_id);
            self.next_id += 1;
            self.hosts[h].id = id;
            let slots = self.hosts[h].slots;
            self.deliver(Event::WorkerJoined { worker: id, slots });
        }

        fn host_of(&self, id: WorkerId) -> Option<usize> {
            self.hosts.iter().position(|h| h.id == id)
        }

        fn run(mut self) -> Tally {
            let mut step = 0u32;
            while !self.done {
                assert!(step < 20_000, "job never ended");
                step += 1;
                if self.crash_at.first() == Some(&step) {
                    self.crash_at.remove(0);
                    self.crash();
                }
                self.step();
            }
            let d = journal::decode_all(&self.journal);
            assert!(!d.torn);
            assert_eq!(d.records.last(), Some(&Record::JobDone { job: JOB }));
            self.tally
        }

        /// The coordinator dies between two steps and a new one starts from the journal.
        fn crash(&mut self) {
            if self.done {
                return;
            }
            self.tally.crashes += 1;
            let good = self.journal.len();
            // Sometimes the crash tore the entry being appended (its commands were never
            // carried out, so losing it is fine).
            if self.rng.chance(0.5) {
                self.tally.torn += 1;
                let mut extra = Vec::new();
                let record = Record::TaskCommitted {
                    job: JOB,
                    task: TaskId::reduce(0),
                    attempt: AttemptId(u64::MAX),
                    worker_addr: "torn".to_string(),
                    output: vec![7; 20],
                };
                journal::encode(&record, &mut extra);
                let keep = self.rng.range(1, extra.len() as u64 - 1) as usize;
                self.journal.extend_from_slice(&extra[..keep]);
            }
            let decoded = journal::decode_all(&self.journal);
            assert_eq!(decoded.valid_len, good);
            assert_eq!(decoded.torn, self.journal.len() > good);
            self.journal.truncate(decoded.valid_len);
            self.sched = Scheduler::resume_from_journal(self.config.clone(), &decoded.records, JOB);
            self.epoch = self.now;
            self.locations.clear();
            self.output_live.clear();
            // The workers drop the old incarnation's attempts, re-register, and report what
            // their disks hold.
            for h in 0..self.hosts.len() {
                if !self.hosts[h].up {
                    continue;
                }
                self.hosts[h].running.clear();
                self.register(h);
                let id = self.hosts[h].id;
                let outputs: Vec<AttemptId> = self.hosts[h].outputs.iter().copied().collect();
                for attempt in outputs {
                    self.deliver(Event::OutputFound {
                        worker: id,
                        attempt,
                    });
                }
            }
            self.tally.reattached += self.sched.stats().outputs_found;
        }

        fn step(&mut self) {
            self.now += STEP;
            let now = self.now;
            let mut events = Vec::new();
            if self.host_crashes > 0 && self.rng.chance(0.02) {
                let up: Vec<usize> = (0..self.hosts.len())
                    .filter(|h| self.hosts[*h].up)
                    .collect();
                if up.len() > 1 {
                    let h = up[self.rng.range(0, up.len() as u64 - 1) as usize];
                    self.host_crashes -= 1;
                    let host = &mut self.hosts[h];
                    host.up = false;
                    host.running.clear();
                    host.outputs.clear();
                    events.push(Event::WorkerLost { worker: host.id });
                }
            }
            let maps = self.config.maps;
            let up_ids: BTreeSet<WorkerId> =
                self.hosts.iter().filter(|h| h.up).map(|h| h.id).collect();
            for h in 0..self.hosts.len() {
                let host = &mut self.hosts[h];
                if !host.up {
                    continue;
                }
                let mut finished = Vec::new();
                for (attempt, run) in &mut host.running {
                    match run.task.phase {
                        Phase::Map => {
                            if now >= run.started + run.work {
                                finished.push(*attempt);
                            }
                        }
                        Phase::Reduce => {
                            if run.done_at.is_none() {
                                for (m, loc) in &self.locations {
                                    if up_ids.contains(loc) {
                                        run.fetched.insert(*m);
                                    }
                                }
                                if run.fetched.len() == maps as usize {
                                    run.done_at = Some(now + run.work);
                                }
                            }
                            if run.done_at.is_some_and(|t| now >= t) {
                                finished.push(*attempt);
                            }
                        }
                    }
                }
                for attempt in finished {
                    if let Some(run) = host.running.remove(&attempt) {
                        if run.task.phase == Phase::Map {
                            host.outputs.insert(attempt);
                        }
                        events.push(Event::AttemptSucceeded { attempt });
                    }
                }
                if now >= host.next_heartbeat {
                    host.next_heartbeat = now + Duration::from_millis(300);
                    let progress = host
                        .running
                        .iter()
                        .map(|(a, r)| {
                            let elapsed = now.saturating_sub(r.started).as_secs_f64();
                            (*a, (elapsed / r.work.as_secs_f64()).min(0.99))
                        })
                        .collect();
                    events.push(Event::Heartbeat {
                        worker: host.id,
                        progress,
                    });
                }
            }
            for event in events {
                self.deliver(event);
            }
            self.deliver(Event::Tick);
        }

        fn deliver(&mut self, event: Event) {
            if self.done {
                return;
            }
            let text = format!("{event:?}");
            self.sched.handle(self.now - self.epoch, event);
            if let Err(e) = self.check() {
                panic!("t={:?}, after {text}: {e}", self.now);
            }
        }

        /// Journals, then carries out the commands, checking the promises.
        fn check(&mut self) -> Result<(), String> {
            while let Some(entry) = self.sched.poll_journal() {
                let record = match entry {
                    JournalEvent::TaskCommitted {
                        task,
                        attempt,
                        worker,
                    } => {
                        self.committed(task, attempt)?;
                        Record::TaskCommitted {
                            job: JOB,
                            task,
                            attempt,
                            worker_addr: format!("{worker}"),
                            output: attempt.0.to_le_bytes().to_vec(),
                        }
                    }
                    JournalEvent::JobDone => Record::JobDone { job: JOB },
                    JournalEvent::AttemptsReserved { below } => {
                        self.reserved_below = below.0;
                        Record::AttemptsReserved { job: JOB, below }
                    }
                    JournalEvent::JobFailed { reason } => return Err(format!("failed: {reason}")),
                };
                journal::encode(&record, &mut self.journal);
            }
            while let Some(command) = self.sched.poll() {
                match command {
                    Command::Assign {
                        attempt,
                        task,
                        worker,
                        ..
                    } => {
                        if attempt.0 >= self.reserved_below {
                            return Err(format!("{attempt} assigned before it was reserved"));
                        }
                        if self.assigned.insert(attempt, task).is_some() {
                            return Err(format!("{attempt} reused"));
                        }
                        self.check_not_rerun(task)?;
                        let h = self.host_of(worker).ok_or("unknown worker")?;
                        let work = Duration::from_millis(self.rng.range(100, 2000));
                        let now = self.now;
                        let host = &mut self.hosts[h];
                        if !host.up {
                            return Err(format!("{attempt} assigned to dead {worker}"));
                        }
                        host.running.insert(
                            attempt,
                            Run {
                                task,
                                started: now,
                                work,
                                fetched: BTreeSet::new(),
                                done_at: None,
                            },
                        );
                    }
                    Command::Cancel { attempt, worker } => {
                        if let Some(h) = self.host_of(worker) {
                            self.hosts[h].running.remove(&attempt);
                        }
                    }
                    Command::MapOutputReady { map, worker } => {
                        self.locations.insert(map, worker);
                        self.output_live.insert(map, true);
                    }
                    Command::MapOutputLost { map } => {
                        self.locations.remove(&map);
                        self.output_live.insert(map, false);
                    }
                    Command::JobDone => {
                        self.done = true;
                        if self.reduce_commits.len() != self.config.reduces as usize {
                            return Err("JobDone before every reduce committed".to_string());
                        }
                    }
                    Command::JobFailed { reason } => return Err(format!("failed: {reason}")),
                }
            }
            self.sched.check_invariants()
        }

        /// Exactly once per incarnation: a reduce commits once ever, a map again only after
        /// its output was lost in this incarnation.
        fn committed(&mut self, task: TaskId, attempt: AttemptId) -> Result<(), String> {
            if self.assigned.get(&attempt) != Some(&task) {
                return Err(format!("{attempt} committed {task}, which it did not run"));
            }
            match task.phase {
                Phase::Reduce => {
                    if !self.reduce_commits.insert(task.index) {
                        return Err(format!("{task} committed twice"));
                    }
                }
                Phase::Map => {
                    if self.output_live.get(&task.index) == Some(&true) {
                        return Err(format!("{task} committed again, its output still live"));
                    }
                }
            }
            self.latest.insert(task, attempt);
            Ok(())
        }

        /// A task committed before (in any incarnation) runs again only if it is a map whose
        /// latest output is gone with its worker.
        fn check_not_rerun(&mut self, task: TaskId) -> Result<(), String> {
            let Some(latest) = self.latest.get(&task) else {
                return Ok(());
            };
            if task.phase == Phase::Reduce {
                return Err(format!("committed {task} re-executed"));
            }
            if self
                .hosts
                .iter()
                .any(|h| h.up && h.outputs.contains(latest))
            {
                return Err(format!(
                    "{task} re-executed while its output ({latest}) is live"
                ));
            }
            self.tally.reexecuted_lost += 1;
            Ok(())
        }
    }

    #[test]
    fn a_restarted_coordinator_resumes_from_its_journal() {
        let mut total = Tally::default();
        let seeds: u64 = std::env::var("QUERN_SIM_SEEDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(600);
        for seed in 0..seeds {
            let t = std::panic::catch_unwind(|| Sim::new(seed).run())
                .unwrap_or_else(|_| panic!("seed {seed} failed"));
            total.crashes += t.crashes;
            total.torn += t.torn;
            total.reattached += t.reattached;
            total.reexecuted_lost += t.reexecuted_lost;
        }
        eprintln!("{seeds} seeds: {total:?}");
        assert!(total.crashes >= seeds / 2, "{total:?}");
        assert!(total.torn > 0 && total.reattached > 0 && total.reexecuted_lost > 0);
    }
}

// --- journal format --------------------------------------------------------------------------

mod format {
    use super::*;
    use proptest::prelude::*;

    fn task() -> impl Strategy<Value = TaskId> {
        (any::<bool>(), any::<u32>()).prop_map(|(m, index)| TaskId {
            phase: if m { Phase::Map } else { Phase::Reduce },
            index,
        })
    }

    fn record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(job, spec)| Record::JobAccepted { job, spec }),
            (
                any::<u64>(),
                task(),
                any::<u64>(),
                ".{0,20}",
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(job, task, attempt, worker_addr, output)| {
                    Record::TaskCommitted {
                        job,
                        task,
                        attempt: AttemptId(attempt),
                        worker_addr,
                        output,
                    }
                }),
            any::<u64>().prop_map(|job| Record::JobDone { job }),
            (any::<u64>(), ".{0,40}").prop_map(|(job, reason)| Record::JobFailed { job, reason }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let d = journal::decode_all(&bytes);
            prop_assert!(d.valid_len <= bytes.len());
            prop_assert_eq!(d.torn, d.valid_len < bytes.len());
        }

        #[test]
        fn truncations_keep_the_whole_entries(
            records in proptest::collection::vec(record(), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            let mut ends = vec![0];
            for r in &records {
                journal::encode(r, &mut bytes);
                ends.push(bytes.len());
            }
            let full = journal::decode_all(&bytes);
            prop_assert_eq!(&full.records, &records);
            prop_assert!(!full.torn);
            let cut = cut.index(bytes.len() + 1);
            let d = journal::decode_all(&bytes[..cut]);
            let whole = ends.iter().filter(|e| **e <= cut).count() - 1;
            prop_assert_eq!(&d.records[..], &records[..whole]);
            prop_assert_eq!(d.valid_len, ends[whole]);
            prop_assert_eq!(d.torn, cut != ends[whole]);
        }

        #[test]
        fn a_flipped_bit_stops_decoding_at_its_entry(
            records in proptest::collection::vec(record(), 1..6),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            let mut ends = vec![0];
            for r in &records {
                journal::encode(r, &mut bytes);
                ends.push(bytes.len());
            }
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            let d = journal::decode_all(&bytes);
            let hit = ends.iter().filter(|e| **e <= bit / 8).count() - 1;
            prop_assert_eq!(&d.records[..], &records[..hit]);
            prop_assert_eq!(d.valid_len, ends[hit]);
            prop_assert!(d.torn);
        }
    }
}
