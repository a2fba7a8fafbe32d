//! Speculation against a simulated cluster with a straggling worker.
//!
//! A deterministic, fault-free cluster: `workers` workers with 2 slots each, a job of `maps`
//! maps and `reduces` reduces, a fake clock advanced in 50 ms steps. A map attempt takes 1 s
//! ± 20 % (drawn per attempt) and reports linear progress in heartbeats every 250 ms. A
//! reduce attempt first fetches every map output as soon as it is announced (instantly; the
//! first third of its progress, as in Hadoop), then works 1 s ± 20 % (the other two
//! thirds). A *slow* worker takes 10× as long for everything it runs.
//!
//! The figures (makespans, backups) are printed with `--nocapture`; `QUERN_SIM_TRACE=1`
//! prints every command. Scripted tests of the individual rules follow the simulation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use quern_scheduler::{
    AttemptId, AttemptState, Command, Config, Event, MapState, Phase, Scheduler, TaskId, WorkerId,
};

const STEP: Duration = Duration::from_millis(50);
const HEARTBEAT: Duration = Duration::from_millis(250);
const SLOWDOWN: u32 = 10;

use common::Rng;

#[derive(Debug, Clone, Copy)]
struct Setup {
    workers: u32,
    maps: u32,
    reduces: u32,
    /// Worker 0 is 10× slower.
    slow: bool,
    speculation: bool,
}

#[derive(Debug)]
struct SimAttempt {
    task: TaskId,
    started: Duration,
    work: Duration,
    /// Reduce: maps fetched, and when the last one was.
    fetched: BTreeSet<u32>,
    shuffled_at: Option<Duration>,
}

#[derive(Debug)]
struct SimWorker {
    speed: u32,
    next_heartbeat: Duration,
    running: BTreeMap<AttemptId, SimAttempt>,
}

#[derive(Debug, Default)]
struct Outcome {
    makespan: Duration,
    backups: u64,
    backups_won: u64,
    map_attempts: u64,
    reasons: Vec<String>,
}

struct Sim {
    setup: Setup,
    rng: Rng,
    now: Duration,
    sched: Scheduler,
    workers: BTreeMap<WorkerId, SimWorker>,
    /// Announced map output locations.
    locations: BTreeMap<u32, WorkerId>,
    committed: BTreeSet<TaskId>,
    outcome: Outcome,
    done: bool,
}

impl Sim {
    fn new(setup: Setup, seed: u64) -> Sim {
        let config = Config {
            speculation: setup.speculation,
            ..Config::new(setup.maps, setup.reduces)
        };
        let mut sim = Sim {
            setup,
            rng: Rng(seed),
            now: Duration::ZERO,
            sched: Scheduler::new(config),
            workers: BTreeMap::new(),
            locations: BTreeMap::new(),
            committed: BTreeSet::new(),
            outcome: Outcome::default(),
            done: false,
        };
        for i in 0..setup.workers {
            let speed = if setup.slow && i == 0 { SLOWDOWN } else { 1 };
            let next_heartbeat = sim.rng.millis(0, 249);
            sim.workers.insert(
                WorkerId(i),
                SimWorker {
                    speed,
                    next_heartbeat,
                    running: BTreeMap::new(),
                },
            );
        }
        for i in 0..setup.workers {
            sim.deliver(Event::WorkerJoined {
                worker: WorkerId(i),
                slots: 2,
            });
        }
        sim
    }

    fn run(mut self) -> Outcome {
        while !self.done {
            assert!(self.now < Duration::from_secs(600), "job never ended");
            self.step();
        }
        let stats = self.sched.stats();
        assert_eq!(stats.backups_launched, self.outcome.backups);
        self.outcome.backups_won = stats.backups_won;
        self.outcome
    }

    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        let maps = self.setup.maps;
        let mut events = Vec::new();
        for (id, w) in &mut self.workers {
            for (attempt, a) in &mut w.running {
                if a.task.phase == Phase::Reduce && a.shuffled_at.is_none() {
                    a.fetched.extend(self.locations.keys().copied());
                    if a.fetched.len() == maps as usize {
                        a.shuffled_at = Some(now);
                    }
                }
                let done_at = match a.task.phase {
                    Phase::Map => Some(a.started + a.work),
                    Phase::Reduce => a.shuffled_at.map(|t| t + a.work),
                };
                if done_at.is_some_and(|t| t <= now) {
                    events.push(Event::AttemptSucceeded { attempt: *attempt });
                }
            }
            if now >= w.next_heartbeat {
                w.next_heartbeat += HEARTBEAT;
                let progress = w
                    .running
                    .iter()
                    .map(|(id, a)| (*id, progress(a, now)))
                    .collect();
                events.push(Event::Heartbeat {
                    worker: *id,
                    progress,
                });
            }
        }
        for event in events {
            if let Event::AttemptSucceeded { attempt } = event {
                for w in self.workers.values_mut() {
                    w.running.remove(&attempt);
                }
            }
            self.deliver(event);
        }
        self.deliver(Event::Tick);
    }

    fn deliver(&mut self, event: Event) {
        if self.done {
            return;
        }
        let success = match event {
            Event::AttemptSucceeded { attempt } => Some(attempt),
            _ => None,
        };
        self.sched.handle(self.now, event);
        if let Some(attempt) = success {
            let a = self.sched.attempt(attempt).expect("known attempt");
            if a.state == AttemptState::Committed {
                // Exactly once: no task commits twice in a fault-free run.
                assert!(self.committed.insert(a.task), "{} committed twice", a.task);
            }
        }
        while let Some(command) = self.sched.poll() {
            if std::env::var("QUERN_SIM_TRACE").is_ok() {
                eprintln!("t={:?} {command:?}", self.now);
            }
            match command {
                Command::Assign {
                    attempt,
                    task,
                    worker,
                    backup,
                } => {
                    if let Some(reason) = backup {
                        self.outcome.backups += 1;
                        self.outcome.reasons.push(reason);
                    }
                    self.outcome.map_attempts += u64::from(task.phase == Phase::Map);
                    let w = self.workers.get_mut(&worker).expect("known worker");
                    let work = self.rng.millis(800, 1200) * w.speed;
                    w.running.insert(
                        attempt,
                        SimAttempt {
                            task,
                            started: self.now,
                            work,
                            fetched: BTreeSet::new(),
                            shuffled_at: None,
                        },
                    );
                }
                Command::Cancel { attempt, worker } => {
                    let w = self.workers.get_mut(&worker).expect("known worker");
                    assert!(
                        w.running.remove(&attempt).is_some(),
                        "{attempt} not running"
                    );
                }
                Command::MapOutputReady { map, worker } => {
                    self.locations.insert(map, worker);
                }
                Command::MapOutputLost { map } => panic!("map {map} output lost"),
                Command::JobDone => {
                    self.done = true;
                    self.outcome.makespan = self.now;
                }
                Command::JobFailed { reason } => panic!("job failed: {reason}"),
            }
        }
        if let Err(e) = self.sched.check_invariants() {
            panic!("t={:?}: {e}", self.now);
        }
        if self.done {
            let tasks = self.setup.maps + self.setup.reduces;
            assert_eq!(self.committed.len(), tasks as usize);
            for m in 0..self.setup.maps {
                assert!(matches!(
                    self.sched.map_state(m),
                    Some(MapState::Committed { .. })
                ));
            }
        }
    }
}

fn progress(a: &SimAttempt, now: Duration) -> f64 {
    match a.task.phase {
        Phase::Map => now.saturating_sub(a.started).as_secs_f64() / a.work.as_secs_f64(),
        Phase::Reduce => match a.shuffled_at {
            None => 0.0,
            Some(t) => now.saturating_sub(t).as_secs_f64() / a.work.as_secs_f64(),
        },
    }
    .min(1.0)
}

fn run(setup: Setup, seed: u64) -> Outcome {
    Sim::new(setup, seed).run()
}

const HEALTHY: Setup = Setup {
    workers: 10,
    maps: 50,
    reduces: 10,
    slow: false,
    speculation: true,
};

/// The headline: one worker of ten is 10× slower. Without speculation the job waits for its
/// maps (and any reduce it picked up); with it the job takes about as long as on a healthy
/// cluster. Compared seed by seed (same jitter draws where the runs agree).
#[test]
fn backups_recover_a_slow_worker() {
    let (mut healthy, mut spec, mut nospec) = (0.0, 0.0, 0.0);
    let seeds = 0..20u64;
    let n = seeds.clone().count() as f64;
    for seed in seeds {
        let h = run(HEALTHY, seed);
        let s = run(
            Setup {
                slow: true,
                ..HEALTHY
            },
            seed,
        );
        let o = run(
            Setup {
                slow: true,
                speculation: false,
                ..HEALTHY
            },
            seed,
        );
        let (hs, ss, os) = (
            h.makespan.as_secs_f64(),
            s.makespan.as_secs_f64(),
            o.makespan.as_secs_f64(),
        );
        assert!(
            os >= 2.0 * hs,
            "seed {seed}: {os} s without backups, {hs} s healthy"
        );
        assert_eq!(h.backups, 0, "seed {seed}: {:?}", h.reasons);
        assert_eq!(o.backups, 0);
        assert!(s.backups > 0 && s.backups_won > 0, "seed {seed}: {s:?}");
        // A reduce may still land on the slow worker when it is the only free slot (normal
        // work is never delayed); its backup then costs about one task duration.
        assert!(
            ss <= 1.3 * hs,
            "seed {seed}: {ss} s with backups, {hs} s healthy: {s:#?}"
        );
        // Every backup was of an attempt on the slow worker, and none went there.
        for reason in &s.reasons {
            assert!(reason.contains(" on worker 0)"), "seed {seed}: {reason}");
        }
        healthy += hs;
        spec += ss;
        nospec += os;
    }
    eprintln!(
        "10 workers x 2 slots, 50 maps + 10 reduces, mean of {n} seeds: healthy {:.2} s, \
         slow worker with speculation {:.2} s ({:.2}x), without {:.2} s ({:.2}x)",
        healthy / n,
        spec / n,
        spec / healthy,
        nospec / n,
        nospec / healthy
    );
    assert!(spec <= 1.15 * healthy, "{spec} vs {healthy}");
    assert!(nospec >= 2.0 * healthy, "{nospec} vs {healthy}");
}

/// The brief's example cluster: 4 workers x 2 slots, 40 maps + 8 reduces. Losing 90 % of a
/// quarter of the slots bounds any schedule at about 1.29x the healthy makespan (48 task-s
/// of work on 6.2 slot-equivalents instead of 8), so only the gain is asserted here.
#[test]
fn small_cluster_figures() {
    let base = Setup {
        workers: 4,
        maps: 40,
        reduces: 8,
        ..HEALTHY
    };
    let (mut healthy, mut spec, mut nospec) = (0.0, 0.0, 0.0);
    for seed in 0..10u64 {
        let h = run(base, seed);
        assert_eq!(h.backups, 0, "seed {seed}: {:?}", h.reasons);
        healthy += h.makespan.as_secs_f64();
        spec += run(Setup { slow: true, ..base }, seed)
            .makespan
            .as_secs_f64();
        nospec += run(
            Setup {
                slow: true,
                speculation: false,
                ..base
            },
            seed,
        )
        .makespan
        .as_secs_f64();
    }
    eprintln!(
        "4 workers x 2 slots, 40 maps + 8 reduces, mean of 10 seeds: healthy {:.2} s, slow \
         worker with speculation {:.2} s ({:.2}x), without {:.2} s ({:.2}x)",
        healthy / 10.0,
        spec / 10.0,
        spec / healthy,
        nospec / 10.0,
        nospec / healthy
    );
    assert!(spec < 0.6 * nospec, "{spec} vs {nospec}");
}

/// The 6.824 check: on a healthy cluster nothing is ever re-executed.
#[test]
fn healthy_runs_launch_no_backups() {
    let mut rng = Rng(0x6824);
    let seeds: u64 = std::env::var("QUERN_SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    for seed in 0..seeds {
        let setup = Setup {
            workers: 1 + (rng.next_u64() % 10) as u32,
            maps: 1 + (rng.next_u64() % 60) as u32,
            reduces: (rng.next_u64() % 10) as u32,
            ..HEALTHY
        };
        let o = run(setup, seed);
        assert_eq!(o.backups, 0, "seed {seed} {setup:?}: {:?}", o.reasons);
        assert_eq!(
            o.map_attempts,
            u64::from(setup.maps),
            "seed {seed} {setup:?}"
        );
    }
}

#[test]
fn healthy_job_with_8_maps_runs_8_map_attempts() {
    for seed in 0..50u64 {
        let setup = Setup {
            workers: 4,
            maps: 8,
            reduces: 2,
            ..HEALTHY
        };
        let o = run(setup, seed);
        assert_eq!(o.map_attempts, 8, "seed {seed}: {:?}", o.reasons);
    }
}

// --- scripted rules ------------------------------------------------------------------------

const W0: WorkerId = WorkerId(0);
const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);
const W3: WorkerId = WorkerId(3);

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn a(id: u64) -> AttemptId {
    AttemptId(id)
}

struct Harness {
    s: Scheduler,
}

impl Harness {
    /// `maps` maps, `reduces` reduces; one 1-slot worker per entry of `workers`, joined at 0.
    fn new(config: Config, workers: &[WorkerId]) -> Harness {
        let mut h = Harness {
            s: Scheduler::new(config),
        };
        for &worker in workers {
            h.event(Duration::ZERO, Event::WorkerJoined { worker, slots: 1 });
        }
        h
    }

    fn event(&mut self, now: Duration, event: Event) -> Vec<Command> {
        self.s.handle(now, event);
        let commands: Vec<Command> = std::iter::from_fn(|| self.s.poll()).collect();
        if let Err(e) = self.s.check_invariants() {
            panic!("invariant broken: {e}");
        }
        commands
    }

    fn progress(&mut self, now: Duration, worker: WorkerId, attempt: u64, p: f64) -> Vec<Command> {
        let progress = vec![(a(attempt), p)];
        self.event(now, Event::Heartbeat { worker, progress })
    }

    fn ok(&mut self, now: Duration, attempt: u64) -> Vec<Command> {
        self.event(
            now,
            Event::AttemptSucceeded {
                attempt: a(attempt),
            },
        )
    }
}

fn backup(attempt: u64, task: TaskId, worker: WorkerId, reason: &str) -> Command {
    Command::Assign {
        attempt: a(attempt),
        task,
        worker,
        backup: Some(reason.to_string()),
    }
}

/// Map 0 crawls on W0, map 1 commits on W1 after 1 s, map 2 is half done on W2.
fn one_straggler(config: Config) -> Harness {
    let mut h = Harness::new(config, &[W0, W1, W2]);
    h.progress(ms(500), W0, 0, 0.05);
    h.progress(ms(500), W1, 1, 0.5);
    h.progress(ms(500), W2, 2, 0.5);
    h
}

#[test]
fn a_slow_task_is_backed_up_on_a_fast_worker_and_the_first_commit_wins() {
    let mut h = one_straggler(Config::new(3, 0));
    // Map 0: rate 0.05 / 0.5 s = 0.1/s, below p25 of the running {0.1, 1.0} and map 1's
    // 1.0/s (committed after 1 s) = 0.55/s; 9.5 s to go at its last report, 0.5 s ago. W0 is
    // the slow worker; W1 is free.
    assert_eq!(
        h.ok(ms(1000), 1),
        vec![backup(
            3,
            TaskId::map(0),
            W1,
            "backup of map 0 (attempt 0 on worker 0): rate 0.100/s below p25 0.550/s, 9.0 s left"
        )]
    );
    assert!(h.s.attempt(a(3)).is_some_and(|x| x.backup));
    // At most one backup per task, whatever happens next.
    assert_eq!(h.progress(ms(1500), W0, 0, 0.06), vec![]);
    assert_eq!(
        h.ok(ms(2000), 3),
        vec![Command::Cancel {
            attempt: a(0),
            worker: W0
        }]
    );
    assert_eq!(
        h.s.attempt(a(0)).map(|x| &x.state),
        Some(&AttemptState::Cancelled {
            reason: quern_scheduler::CancelReason::Superseded
        })
    );
    assert_eq!(h.ok(ms(2100), 2), vec![Command::JobDone]);
    let stats = h.s.stats();
    assert_eq!((stats.backups_launched, stats.backups_won), (1, 1));
    assert_eq!(stats.attempts_started, 4);
}

#[test]
fn nothing_younger_than_min_runtime_is_backed_up() {
    let mut h = one_straggler(Config::new(3, 0));
    assert_eq!(h.ok(ms(900), 1), vec![]);
    assert_eq!(h.event(ms(999), Event::Tick), vec![]);
    let commands = h.event(ms(1000), Event::Tick);
    assert!(
        matches!(&commands[..], [Command::Assign { task, worker: W1, backup: Some(_), .. }] if *task == TaskId::map(0)),
        "{commands:?}"
    );
}

#[test]
fn speculation_off_launches_nothing() {
    let config = Config {
        speculation: false,
        ..Config::new(3, 0)
    };
    let mut h = one_straggler(config);
    assert_eq!(h.ok(ms(1000), 1), vec![]);
    assert_eq!(h.event(ms(5000), Event::Tick), vec![]);
    assert_eq!(h.s.stats().backups_launched, 0);
}

#[test]
fn map_backups_go_before_idle_reduces() {
    let mut h = one_straggler(Config::new(3, 1));
    let commands = h.ok(ms(1000), 1);
    assert!(
        matches!(&commands[..], [Command::MapOutputReady { .. }, Command::Assign { task, backup: Some(_), .. }] if *task == TaskId::map(0)),
        "{commands:?}"
    );
    // The reduce takes the next free slot.
    let commands = h.ok(ms(1100), 2);
    assert!(
        matches!(&commands[1], Command::Assign { task, worker: W2, backup: None, .. } if *task == TaskId::reduce(0)),
        "{commands:?}"
    );
}

#[test]
fn backups_never_exceed_the_cap() {
    // Two stragglers (W0, W1), two free fast workers: one backup at a time at 10 % of 4
    // slots, two at 50 %.
    for (cap, expected) in [(0.1, 1), (0.5, 2)] {
        let config = Config {
            speculative_cap: cap,
            ..Config::new(4, 0)
        };
        let mut h = Harness::new(config, &[W0, W1, W2, W3]);
        h.progress(ms(500), W0, 0, 0.05);
        h.progress(ms(500), W1, 1, 0.06);
        let mut commands = h.ok(ms(1000), 2);
        commands.extend(h.ok(ms(1000), 3));
        let backups: Vec<&Command> = commands
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::Assign {
                        backup: Some(_),
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(backups.len(), expected, "cap {cap}: {commands:?}");
        // Longest time left first: map 0.
        assert!(
            matches!(backups[0], Command::Assign { task, .. } if *task == TaskId::map(0)),
            "{backups:?}"
        );
    }
}

#[test]
fn end_of_phase_backups_need_time_left_well_above_a_new_attempt() {
    // Map 2 committed in 0.2 s. No task counts as slow (percentile 0: nothing is below the
    // slowest), so only this rule applies: maps 0 and 1 have 1 s left each, more than
    // 1.5 x 0.2 s.
    let config = Config {
        slow_task_percentile: 0.0,
        ..Config::new(3, 0)
    };
    let mut h = Harness::new(config.clone(), &[W0, W1, W2]);
    assert_eq!(h.ok(ms(200), 2), vec![]);
    assert_eq!(
        h.progress(ms(1000), W0, 0, 0.5),
        vec![backup(
            3,
            TaskId::map(0),
            W2,
            "backup of map 0 (attempt 0 on worker 0): end of map phase, 1.0 s left, a new \
             attempt takes ~0.2 s"
        )]
    );
    // Cap reached (one backup for 3 slots).
    assert_eq!(h.progress(ms(1000), W1, 1, 0.5), vec![]);
    // A task whose time left does not exceed 1.5x a new attempt is left alone.
    let mut h = Harness::new(config, &[W0, W1, W2]);
    assert_eq!(h.ok(ms(900), 2), vec![]);
    assert_eq!(h.progress(ms(1000), W0, 0, 0.45), vec![]);
}

#[test]
fn a_task_that_slows_partway_is_judged_by_its_recent_rate() {
    // Map 0 runs at 0.1/s for 6 s, then its machine is taken by other work: 0.01 in each of
    // the next two 2 s windows. Its mean since the start, 0.062/s, leaves 6.1 s (less than the
    // 10 s a new attempt takes: no backup); its last window, 0.005/s, leaves 76 s.
    let paced = |reports: &[(u64, f64)]| {
        // Workers W1 and W2 stay silent for 10 s: not lost.
        let config = Config {
            heartbeat_timeout: Duration::from_secs(60),
            ..Config::new(3, 0)
        };
        let mut h = Harness::new(config, &[W0, W1, W2]);
        for &(at, p) in reports {
            h.progress(ms(at), W0, 0, p);
        }
        let mut commands = h.ok(ms(10_000), 1);
        commands.extend(h.ok(ms(10_000), 2));
        (h, commands)
    };
    let slowed = [
        (2000, 0.2),
        (4000, 0.4),
        (6000, 0.6),
        (8000, 0.61),
        (10_000, 0.62),
    ];
    let (h, commands) = paced(&slowed);
    let recent = h.s.attempt(a(0)).and_then(|x| x.recent_rate);
    assert!(
        recent.is_some_and(|r| (r - 0.005).abs() < 1e-9),
        "{recent:?}"
    );
    assert!(
        matches!(
            commands.as_slice(),
            [Command::Assign { task, worker: W1, backup: Some(reason), .. }]
                if *task == TaskId::map(0) && reason.contains("rate 0.005/s")
        ),
        "{commands:?}"
    );
    // The same progress at a steady 0.062/s: what the mean alone sees. Not backed up.
    let steady: Vec<(u64, f64)> = (1..=5).map(|i| (2000 * i, 0.124 * i as f64)).collect();
    assert_eq!(paced(&steady).1, vec![]);
}

#[test]
fn a_new_attempt_is_expected_to_take_what_the_last_commits_took() {
    // One worker runs 35 maps in turn: maps 0 and 1 take 10 s each (a crowded start), the
    // next 32 take 1 s each. A new attempt is expected to take the last 32 commits' mean,
    // 1.0 s, not the phase's mean of 1.5 s. Map 34 has 2 s left when W1 joins: more than
    // 1.5 x 1.0 s (but not more than 1.5 x 1.5 s), so it is backed up on W1. Percentile 0:
    // no task counts as slow, so only this rule applies.
    let config = Config {
        slow_task_percentile: 0.0,
        heartbeat_timeout: Duration::from_secs(60),
        ..Config::new(35, 0)
    };
    let mut h = Harness::new(config, &[W0]);
    let mut at = 0;
    for map in 0..34 {
        at += if map < 2 { 10_000 } else { 1000 };
        h.ok(ms(at), map);
    }
    assert_eq!(h.progress(ms(at + 2000), W0, 34, 0.5), vec![]);
    assert_eq!(
        h.event(
            ms(at + 2000),
            Event::WorkerJoined {
                worker: W1,
                slots: 1
            }
        ),
        vec![backup(
            35,
            TaskId::map(34),
            W1,
            "backup of map 34 (attempt 34 on worker 0): end of map phase, 2.0 s left, a new \
             attempt takes ~1.0 s"
        )]
    );
}

#[test]
fn a_reduce_that_waited_for_map_output_is_not_slow() {
    // Reduce 0 reports zero progress until the map commits at 1.5 s (it was waiting for its
    // output), then runs at full speed. Its rate is measured from its last zero report: 1/s,
    // 0.75 s left — not a straggler. (Measured from its start, 0.14/s and 5.25 s left would
    // exceed 1.5 x the 1.7 s reduce 1 took.)
    let mut h = Harness::new(Config::new(1, 2), &[W0, W1, W2]);
    h.progress(ms(1000), W1, 1, 0.0);
    h.progress(ms(1000), W2, 2, 0.0);
    h.ok(ms(1500), 0);
    assert_eq!(h.progress(ms(1500), W1, 1, 0.0), vec![]);
    assert_eq!(h.ok(ms(1700), 2), vec![]);
    assert_eq!(h.progress(ms(1750), W1, 1, 0.25), vec![]);
    assert_eq!(h.event(ms(2000), Event::Tick), vec![]);
    let at = h.s.attempt(a(1)).map(|x| (x.progress_since, x.progress_at));
    assert_eq!(at, Some((ms(1500), ms(1750))));
    // Stuck at zero with every map output available: backed up.
    let mut h = Harness::new(Config::new(1, 2), &[W0, W1, W2]);
    h.ok(ms(500), 0);
    h.ok(ms(1000), 2);
    // Its age counts from when the map output became available (0.5 s).
    assert_eq!(h.progress(ms(1400), W1, 1, 0.0), vec![]);
    let commands = h.progress(ms(1600), W1, 1, 0.0);
    assert!(
        matches!(&commands[..], [Command::Assign { task, backup: Some(r), .. }] if *task == TaskId::reduce(0) && r.contains("no progress in 1.1 s")),
        "{commands:?}"
    );
}

#[test]
fn a_straggling_map_takes_a_reducers_slot_for_its_backup_and_its_worker_stays_slow() {
    // Map 0 crawls on W0; maps 1 and 2 commit early and reduces 0 and 1 take their slots
    // (attempts 3 and 4). Every reduce waits for map 0, so at 1 s — map 0 old enough — the
    // newest reduce gives its slot to map 0's backup.
    let mut h = Harness::new(Config::new(3, 2), &[W0, W1, W2]);
    h.progress(ms(500), W0, 0, 0.05);
    h.progress(ms(500), W1, 1, 0.5);
    h.progress(ms(500), W2, 2, 0.5);
    h.ok(ms(600), 1);
    h.ok(ms(700), 2);
    let commands = h.event(ms(1000), Event::Tick);
    assert!(
        matches!(
            &commands[..],
            [
                Command::Cancel { attempt, worker: W2 },
                Command::Assign { task, worker: W2, backup: Some(_), .. },
            ] if *attempt == a(4) && *task == TaskId::map(0)
        ),
        "{commands:?}"
    );
    assert_eq!(
        h.s.attempt(a(4)).map(|x| &x.state),
        Some(&AttemptState::Cancelled {
            reason: quern_scheduler::CancelReason::Preempted
        })
    );
    // The backup wins. W0's lost attempt still shows W0 is slow: reduce 1 goes to W2, not to
    // the straggler that has just been freed (and has the lowest id).
    let commands = h.ok(ms(1200), 5);
    let reduce = commands.iter().find_map(|c| match c {
        Command::Assign { task, worker, .. } if *task == TaskId::reduce(1) => Some(*worker),
        _ => None,
    });
    assert_eq!(reduce, Some(W2), "{commands:?}");
    assert!(commands.contains(&Command::Cancel {
        attempt: a(0),
        worker: W0
    }));
}

/// Where each `Assign` in `commands` went: (task, worker).
fn assigned(commands: &[Command]) -> Vec<(TaskId, WorkerId)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Assign { task, worker, .. } => Some((*task, *worker)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_idle_task_waits_for_a_busy_peer_rather_than_go_to_a_far_slower_worker() {
    let run = |speculation: bool| {
        let mut config = Config::new(2, 3);
        config.speculation = speculation;
        // Map 0 on W0 (attempt 0), map 1 on W1 (1), reduce 0 on W2 (2).
        let mut h = Harness::new(config, &[W0, W1, W2]);
        h.progress(ms(500), W0, 0, 0.05);
        h.progress(ms(500), W1, 1, 0.5);
        h.ok(ms(1000), 1); // with speculation: map 0's backup goes to W1 (attempt 3)
        h
    };
    let mut h = run(true);
    // The backup wins at 1.5 s: W0 (rate 0.1/s against W1's ~1.5/s) is slow, and far
    // slower than the median. Reduce 1 goes to W1; reduce 2 would find a free slot only on
    // W0, and waits for W2's reduce instead.
    let commands = h.ok(ms(1500), 3);
    assert_eq!(
        assigned(&commands),
        vec![(TaskId::reduce(1), W1)],
        "{commands:?}"
    );
    assert_eq!(h.s.worker(W0).map(|w| w.running().count()), Some(0));
    let commands = h.ok(ms(2000), 2);
    assert_eq!(
        assigned(&commands),
        vec![(TaskId::reduce(2), W2)],
        "{commands:?}"
    );

    // Without speculation there are no slow workers: reduce 1 took W1's slot at 1 s, and
    // when map 0 commits, reduce 2 goes to W0.
    let mut h = run(false);
    let commands = h.ok(ms(1500), 0);
    assert_eq!(
        assigned(&commands),
        vec![(TaskId::reduce(2), W0)],
        "{commands:?}"
    );
}

#[test]
fn backup_every_task_runs_each_task_twice_on_two_workers() {
    let config = Config {
        backup_every_task: true,
        ..Config::new(2, 1)
    };
    let mut h = Harness::new(config, &[]);
    let mut commands = Vec::new();
    for i in 0..4 {
        let worker = WorkerId(i);
        commands.extend(h.event(ms(0), Event::WorkerJoined { worker, slots: 1 }));
    }
    // Commit the first attempt of each map; the reduce and its backup follow.
    let mut originals: Vec<u64> = Vec::new();
    for c in &commands {
        if let Command::Assign {
            attempt,
            backup: None,
            ..
        } = c
        {
            originals.push(attempt.0);
        }
    }
    assert_eq!(originals.len(), 2, "{commands:?}");
    for &attempt in &originals {
        commands.extend(h.ok(ms(100), attempt));
    }
    let mut on: BTreeMap<TaskId, Vec<WorkerId>> = BTreeMap::new();
    for (task, worker) in assigned(&commands) {
        on.entry(task).or_default().push(worker);
    }
    assert_eq!(on.len(), 3, "both maps and the reduce: {commands:?}");
    for (task, workers) in &on {
        assert_eq!(
            workers.len(),
            2,
            "{task}: one original and one backup: {commands:?}"
        );
        assert_ne!(workers[0], workers[1], "{task}: on two workers");
    }
    // Without the flag, the same cluster runs each task once (the reduce waits on W2).
    let mut plain = Harness::new(Config::new(2, 1), &[]);
    let mut once = Vec::new();
    for i in 0..4 {
        let worker = WorkerId(i);
        once.extend(plain.event(ms(0), Event::WorkerJoined { worker, slots: 1 }));
    }
    assert_eq!(assigned(&once).len(), 3, "{once:?}");
}

#[test]
fn progress_alone_rescans_once_per_interval_and_a_held_scan_is_due_at_poll_timeout() {
    // Map 0 crawls on W0. Map 1 commits at 0.6 s: a slot freed, so speculation scans at once
    // (map 0 is too young). At 1.05 s W0 reports again and map 0 is now a straggler, but
    // only progress changed since the scan at 0.6 s: the next scan waits for the interval
    // (0.5 s), is due at 1.1 s, and a Tick then backs map 0 up. Without an interval the
    // report itself would.
    let interval = |ms_: u64| Config {
        speculation_interval: ms(ms_),
        ..Config::new(3, 0)
    };
    let straggler = |h: &mut Harness| {
        h.progress(ms(500), W0, 0, 0.05);
        h.progress(ms(500), W1, 1, 0.5);
        h.progress(ms(500), W2, 2, 0.5);
        assert_eq!(h.ok(ms(600), 1), vec![]);
    };
    let backed_up = |commands: &[Command]| matches!(commands, [Command::Assign { task, worker: W1, backup: Some(_), .. }] if *task == TaskId::map(0));
    let mut h = Harness::new(interval(500), &[W0, W1, W2]);
    straggler(&mut h);
    assert_eq!(h.progress(ms(1050), W0, 0, 0.1), vec![]);
    assert_eq!(h.s.poll_timeout(), Some(ms(1100)));
    let commands = h.event(ms(1100), Event::Tick);
    assert!(backed_up(&commands), "{commands:?}");

    let mut h = Harness::new(interval(0), &[W0, W1, W2]);
    straggler(&mut h);
    let commands = h.progress(ms(1050), W0, 0, 0.1);
    assert!(backed_up(&commands), "{commands:?}");
}
