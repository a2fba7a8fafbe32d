//! One focused test per scheduling rule, each a short scripted event sequence.

use std::time::Duration;

use quern_scheduler::{
    AttemptId, AttemptState, CancelReason, Command, Config, Event, JobState, MapState, Scheduler,
    TaskId, TaskState, WorkerId,
};

const W0: WorkerId = WorkerId(0);
const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);
const W3: WorkerId = WorkerId(3);
const W4: WorkerId = WorkerId(4);

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A scheduler and the clock, with shorthands for events; each returns the commands.
struct Harness {
    s: Scheduler,
    now: Duration,
}

impl Harness {
    fn new(config: Config) -> Harness {
        Harness {
            s: Scheduler::new(config),
            now: Duration::ZERO,
        }
    }

    fn job(maps: u32, reduces: u32) -> Harness {
        Harness::new(Config::new(maps, reduces))
    }

    fn at(&mut self, now: Duration) -> &mut Harness {
        self.now = now;
        self
    }

    fn event(&mut self, event: Event) -> Vec<Command> {
        self.s.handle(self.now, event);
        let commands: Vec<Command> = std::iter::from_fn(|| self.s.poll()).collect();
        if let Err(e) = self.s.check_invariants() {
            panic!("invariant broken: {e}");
        }
        commands
    }

    fn join(&mut self, worker: WorkerId, slots: u32) -> Vec<Command> {
        self.event(Event::WorkerJoined { worker, slots })
    }

    fn ok(&mut self, attempt: AttemptId) -> Vec<Command> {
        self.event(Event::AttemptSucceeded { attempt })
    }

    fn fail(&mut self, attempt: AttemptId, error: &str) -> Vec<Command> {
        let error = error.to_string();
        self.event(Event::AttemptFailed { attempt, error })
    }

    fn disk_failed(&mut self, attempt: AttemptId) -> Vec<Command> {
        let error = "/work/job-1/map-0.run: No space left on device (os error 28)".to_string();
        self.event(Event::WorkDirFailed { attempt, error })
    }

    fn fetch_failed(&mut self, attempt: AttemptId, map: u32) -> Vec<Command> {
        self.event(Event::FetchFailed { attempt, map })
    }

    fn lost(&mut self, worker: WorkerId) -> Vec<Command> {
        self.event(Event::WorkerLost { worker })
    }

    fn heartbeat(&mut self, worker: WorkerId) -> Vec<Command> {
        self.event(Event::Heartbeat {
            worker,
            progress: Vec::new(),
        })
    }

    fn tick(&mut self) -> Vec<Command> {
        self.event(Event::Tick)
    }

    /// The running attempt of `task` (exactly one expected).
    fn running(&self, task: TaskId) -> AttemptId {
        let running: Vec<AttemptId> = self
            .s
            .attempts()
            .filter(|(_, a)| a.task == task && a.state == AttemptState::Running)
            .map(|(id, _)| id)
            .collect();
        assert_eq!(running.len(), 1, "{task}: {running:?}");
        running[0]
    }
}

fn assign(attempt: u64, task: TaskId, worker: WorkerId) -> Command {
    Command::Assign {
        attempt: AttemptId(attempt),
        task,
        worker,
        backup: None,
    }
}

fn ready(map: u32, worker: WorkerId) -> Command {
    Command::MapOutputReady { map, worker }
}

fn map(index: u32) -> TaskId {
    TaskId::map(index)
}

fn reduce(index: u32) -> TaskId {
    TaskId::reduce(index)
}

fn a(id: u64) -> AttemptId {
    AttemptId(id)
}

#[test]
fn ids_display() {
    assert_eq!(map(3).to_string(), "map 3");
    assert_eq!(reduce(0).to_string(), "reduce 0");
    assert_eq!(W2.to_string(), "worker 2");
    assert_eq!(a(7).to_string(), "attempt 7");
}

#[test]
fn empty_job_is_done_at_once() {
    let mut h = Harness::job(0, 0);
    assert_eq!(h.s.poll(), Some(Command::JobDone));
    assert_eq!(h.join(W0, 4), vec![]);
    assert!(h.s.is_finished());
}

#[test]
fn maps_first_lowest_index_first_then_reduces() {
    let mut h = Harness::job(3, 2);
    assert_eq!(
        h.join(W0, 10),
        vec![
            assign(0, map(0), W0),
            assign(1, map(1), W0),
            assign(2, map(2), W0),
            assign(3, reduce(0), W0),
            assign(4, reduce(1), W0),
        ]
    );
}

#[test]
fn placement_prefers_most_free_slots_then_lowest_id() {
    let mut h = Harness::job(4, 0);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, map(1), W1)]);
    assert_eq!(
        h.join(W2, 2),
        vec![assign(2, map(2), W2), assign(3, map(3), W2)]
    );
    assert_eq!(h.join(W3, 1), vec![]);
    // W1 and W3 have one free slot each: the tie goes to the lower id.
    assert_eq!(h.fail(a(1), "oops"), vec![assign(4, map(1), W1)]);
    // W4 has three free slots, W0 one: most free wins over lowest id.
    assert_eq!(h.join(W4, 3), vec![]);
    assert_eq!(h.fail(a(0), "oops"), vec![assign(5, map(0), W4)]);
}

#[test]
fn slots_are_never_exceeded() {
    let mut h = Harness::job(5, 0);
    assert_eq!(
        h.join(W0, 2),
        vec![assign(0, map(0), W0), assign(1, map(1), W0)]
    );
    assert_eq!(h.join(W1, 0), vec![]);
    assert_eq!(h.ok(a(0)), vec![assign(2, map(2), W0)]);
    assert_eq!(h.s.worker(W0).map(|w| w.free_slots()), Some(0));
}

#[test]
fn reduces_wait_until_no_map_is_idle_and_each_output_is_announced_once() {
    let mut h = Harness::job(3, 1);
    assert_eq!(
        h.join(W0, 2),
        vec![assign(0, map(0), W0), assign(1, map(1), W0)]
    );
    // Map 2 is idle, so the freed slot goes to it, not to the reduce.
    assert_eq!(h.ok(a(0)), vec![ready(0, W0), assign(2, map(2), W0)]);
    // Now no map is idle: the reduce starts. The outputs announced before it are not
    // announced again (the driver keeps them for it): O(M) announcements, not O(M·R).
    assert_eq!(h.ok(a(1)), vec![ready(1, W0), assign(3, reduce(0), W0)]);
    // Later commits are announced as they happen.
    assert_eq!(h.ok(a(2)), vec![ready(2, W0)]);
    assert_eq!(h.ok(a(3)), vec![Command::JobDone]);
    assert_eq!(h.s.job_state(), &JobState::Done);
}

#[test]
fn lost_worker_running_attempts_go_back_to_idle() {
    let mut h = Harness::job(2, 0);
    assert_eq!(
        h.join(W0, 2),
        vec![assign(0, map(0), W0), assign(1, map(1), W0)]
    );
    assert_eq!(h.lost(W0), vec![]);
    assert_eq!(h.s.task_state(map(0)), Some(TaskState::Idle));
    assert_eq!(
        h.s.attempt(a(0)).map(|x| &x.state),
        Some(&AttemptState::Lost)
    );
    assert_eq!(
        h.join(W1, 2),
        vec![assign(2, map(0), W1), assign(3, map(1), W1)]
    );
    // Not a failure.
    assert_eq!(h.s.failures(map(0)), Some(0));
}

#[test]
fn lost_worker_completed_maps_are_rerun() {
    let mut h = Harness::job(2, 1);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(
        h.join(W1, 3),
        vec![assign(1, map(1), W1), assign(2, reduce(0), W1)]
    );
    assert_eq!(h.ok(a(0)), vec![ready(0, W0)]);
    assert_eq!(
        h.lost(W0),
        vec![Command::MapOutputLost { map: 0 }, assign(3, map(0), W1)]
    );
    assert_eq!(
        h.s.attempt(a(0)).map(|x| &x.state),
        Some(&AttemptState::OutputLost)
    );
    assert_eq!(h.ok(a(3)), vec![ready(0, W1)]);
    assert_eq!(h.s.committed_attempt(map(0)), Some(a(3)));
}

#[test]
fn map_only_job_never_reruns_maps() {
    let mut h = Harness::job(2, 0);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, map(1), W1)]);
    // No reducers to tell.
    assert_eq!(h.ok(a(0)), vec![]);
    assert_eq!(h.lost(W0), vec![]);
    assert!(matches!(
        h.s.map_state(0),
        Some(MapState::Committed { attempt, worker: W0, .. }) if *attempt == a(0)
    ));
    assert_eq!(h.ok(a(1)), vec![Command::JobDone]);
}

#[test]
fn outputs_are_not_rerun_once_every_reduce_committed() {
    let mut h = Harness::job(2, 1);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(
        h.join(W1, 2),
        vec![assign(1, map(1), W1), assign(2, reduce(0), W1)]
    );
    h.ok(a(0));
    h.ok(a(1));
    // The reduce fetched map 0 but has not committed: map 0 is re-run...
    assert_eq!(
        h.lost(W0),
        vec![Command::MapOutputLost { map: 0 }, assign(3, map(0), W1)]
    );
    // ...until the reduce commits; the re-run is no longer needed.
    assert_eq!(
        h.ok(a(2)),
        vec![
            Command::Cancel {
                attempt: a(3),
                worker: W1
            },
            Command::JobDone
        ]
    );
    assert_eq!(h.s.committed_attempt(map(0)), Some(a(0)));
    assert_eq!(h.s.committed_attempt(reduce(0)), Some(a(2)));
}

#[test]
fn heartbeat_timeout_loses_silent_workers() {
    let mut h = Harness::job(2, 0);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, map(1), W1)]);
    h.at(ms(1500)).heartbeat(W0);
    h.at(ms(1900)).heartbeat(W1);
    // Exactly the timeout since W0 was last heard from: still alive.
    assert_eq!(h.at(ms(3500)).tick(), vec![]);
    assert!(h.s.worker(W0).is_some_and(|w| w.is_alive()));
    // Past it: lost, and its attempt goes back to idle (no free slot yet).
    assert_eq!(h.at(ms(3501)).tick(), vec![]);
    assert!(!h.s.worker(W0).is_some_and(|w| w.is_alive()));
    assert_eq!(h.s.task_state(map(0)), Some(TaskState::Idle));
    // W1 reports and frees its slot: map 0 goes there, never to W0.
    assert_eq!(h.at(ms(3600)).ok(a(1)), vec![assign(2, map(0), W1)]);
    // W0 comes back: its heartbeat, its late success and a re-join are all ignored.
    assert_eq!(h.heartbeat(W0), vec![]);
    assert_eq!(h.ok(a(0)), vec![]);
    assert_eq!(h.join(W0, 8), vec![]);
    assert_eq!(
        h.s.task_state(map(0)),
        Some(TaskState::Running { attempts: 1 })
    );
    // Any event counts as a sign of life, including attempt reports.
    assert_eq!(h.at(ms(5000)).ok(a(2)), vec![Command::JobDone]);
}

/// `poll_timeout` names the next moment only time changes something: a heartbeat expiry,
/// or a running attempt old enough to be backed up; never a moment already handled.
#[test]
fn poll_timeout_is_the_next_time_driven_change() {
    let mut h = Harness::new(Config {
        speculation: false,
        ..Config::new(2, 0)
    });
    assert_eq!(h.s.poll_timeout(), None, "no workers, nothing to time");
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    h.at(ms(500)).heartbeat(W0);
    let expiry = ms(2500) + Duration::from_nanos(1);
    assert_eq!(h.s.poll_timeout(), Some(expiry));
    assert!(h.s.worker(W0).is_some_and(|w| w.is_alive()));
    assert_eq!(h.at(expiry).tick(), vec![]);
    assert!(
        !h.s.worker(W0).is_some_and(|w| w.is_alive()),
        "lost at its timeout"
    );
    assert_eq!(h.s.poll_timeout(), None, "nobody left to expire");

    // With speculation on, a running attempt's `min_runtime` is a timer too.
    let mut h = Harness::job(2, 0);
    h.at(ms(100)).join(W0, 1);
    h.at(ms(900)).heartbeat(W0);
    let old_enough = ms(100) + h.s.config().min_runtime;
    assert_eq!(h.s.poll_timeout(), Some(old_enough));
    h.at(old_enough).tick();
    assert_eq!(h.s.poll_timeout(), Some(ms(2900) + Duration::from_nanos(1)));
}

#[test]
fn expiry_runs_before_the_event() {
    let mut h = Harness::job(1, 0);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    // Silent for 2.5 s: the success arrives too late, whatever the tick rate.
    assert_eq!(h.at(ms(2500)).ok(a(0)), vec![]);
    assert_eq!(
        h.s.attempt(a(0)).map(|x| &x.state),
        Some(&AttemptState::Lost)
    );
    assert_eq!(h.join(W1, 1), vec![assign(1, map(0), W1)]);
}

#[test]
fn max_attempts_failures_fail_the_job() {
    let mut h = Harness::new(Config {
        max_attempts: 3,
        ..Config::new(2, 1)
    });
    assert_eq!(
        h.join(W0, 2),
        vec![assign(0, map(0), W0), assign(1, map(1), W0)]
    );
    assert_eq!(h.fail(a(0), "disk full"), vec![assign(2, map(0), W0)]);
    assert_eq!(h.fail(a(2), "disk full"), vec![assign(3, map(0), W0)]);
    assert_eq!(
        h.fail(a(3), "disk on fire"),
        vec![
            Command::Cancel {
                attempt: a(1),
                worker: W0
            },
            Command::JobFailed {
                reason: "map 0 failed 3 times: disk on fire".to_string()
            },
        ]
    );
    assert!(h.s.is_finished());
    // Nothing more, whatever happens.
    assert_eq!(h.join(W1, 4), vec![]);
    assert_eq!(h.ok(a(1)), vec![]);
    assert_eq!(h.tick(), vec![]);
}

#[test]
fn a_full_work_dir_moves_maps_elsewhere_without_counting_failures() {
    let mut h = Harness::new(Config {
        max_attempts: 2,
        ..Config::new(3, 1)
    });
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, map(1), W1)]);
    // W0's disk is full: map 0 goes back to idle, to the healthy W1 once it has a slot.
    assert_eq!(h.disk_failed(a(0)), vec![]);
    assert_eq!(h.s.failures(map(0)), Some(0), "not the task's fault");
    assert!(h.s.worker(W0).and_then(|w| w.work_dir_fault()).is_some());
    assert_eq!(h.ok(a(1)), vec![ready(1, W1), assign(2, map(0), W1)]);
    // W0 reports room again: it takes maps again.
    assert_eq!(
        h.event(Event::WorkDirRecovered { worker: W0 }),
        vec![assign(3, map(2), W0)]
    );
    assert_eq!(h.s.stats().work_dir_failures, 1);
    assert_eq!(h.s.stats().attempts_failed, 1);
}

#[test]
fn a_full_work_dir_still_runs_reduces_and_no_room_anywhere_fails_the_job() {
    let mut h = Harness::job(1, 1);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, reduce(0), W1)]);
    // The map's slot on W0 cannot run it again: the reduce on W1 gives way (not one on W0),
    // and the reduce goes to the full W0, which needs no map-output space for it.
    assert_eq!(
        h.disk_failed(a(0)),
        vec![
            Command::Cancel {
                attempt: a(1),
                worker: W1
            },
            assign(2, map(0), W1),
            assign(3, reduce(0), W0),
        ]
    );
    // Now W1's disk fills too: no worker can take the map's output.
    let commands = h.disk_failed(a(2));
    assert_eq!(
        commands[0],
        Command::Cancel {
            attempt: a(3),
            worker: W0
        }
    );
    let Some(Command::JobFailed { reason }) = commands.get(1) else {
        panic!("expected JobFailed: {commands:?}");
    };
    assert!(
        reason.contains("every live worker's work dir failed")
            && reason.contains("No space left on device"),
        "{reason}"
    );
}

#[test]
fn fetch_failures_reexecute_the_map() {
    let mut h = Harness::job(1, 1);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, reduce(0), W1)]);
    assert_eq!(h.ok(a(0)), vec![ready(0, W0)]);
    assert_eq!(h.fetch_failed(a(1), 0), vec![]);
    // Reports from map attempts, about unknown maps, or from unknown attempts do not count.
    assert_eq!(h.fetch_failed(a(0), 0), vec![]);
    assert_eq!(h.fetch_failed(a(1), 7), vec![]);
    assert_eq!(h.fetch_failed(a(99), 0), vec![]);
    assert_eq!(h.fetch_failed(a(1), 0), vec![]);
    assert_eq!(
        h.fetch_failed(a(1), 0),
        vec![Command::MapOutputLost { map: 0 }, assign(2, map(0), W0)]
    );
    assert_eq!(h.s.fetch_reexecutions(0), Some(1));
    // More reports about the lost output are stale.
    assert_eq!(h.fetch_failed(a(1), 0), vec![]);
    assert_eq!(h.ok(a(2)), vec![ready(0, W0)]);
    // The count starts again for the new output.
    assert_eq!(h.fetch_failed(a(1), 0), vec![]);
    assert_eq!(h.fetch_failed(a(1), 0), vec![]);
    assert!(matches!(
        h.s.map_state(0),
        Some(MapState::Committed {
            fetch_failures: 2,
            ..
        })
    ));
    assert_eq!(h.ok(a(1)), vec![Command::JobDone]);
}

#[test]
fn fetch_reexecutions_are_bounded() {
    let mut h = Harness::new(Config {
        max_attempts: 2,
        fetch_failures_to_reexecute: 1,
        ..Config::new(1, 1)
    });
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, reduce(0), W1)]);
    let mut map_attempt = a(0);
    for round in 1..=2u64 {
        assert_eq!(h.ok(map_attempt), vec![ready(0, W0)]);
        map_attempt = a(1 + round);
        assert_eq!(
            h.fetch_failed(a(1), 0),
            vec![
                Command::MapOutputLost { map: 0 },
                assign(1 + round, map(0), W0)
            ]
        );
    }
    assert_eq!(h.ok(map_attempt), vec![ready(0, W0)]);
    assert_eq!(
        h.fetch_failed(a(1), 0),
        vec![
            Command::Cancel {
                attempt: a(1),
                worker: W1
            },
            Command::JobFailed {
                reason: "map 0 failed 3 times: reducers could not fetch its output".to_string()
            },
        ]
    );
}

#[test]
fn reducers_are_preempted_for_a_map_that_finds_no_slot() {
    let mut h = Harness::job(1, 1);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, reduce(0), W1)]);
    assert_eq!(h.ok(a(0)), vec![ready(0, W0)]);
    // Map 0's output is lost and the reducer holds the only slot: it gives it up.
    assert_eq!(
        h.lost(W0),
        vec![
            Command::MapOutputLost { map: 0 },
            Command::Cancel {
                attempt: a(1),
                worker: W1
            },
            assign(2, map(0), W1),
        ]
    );
    assert_eq!(
        h.s.attempt(a(1)).map(|x| &x.state),
        Some(&AttemptState::Cancelled {
            reason: CancelReason::Preempted
        })
    );
    assert_eq!(h.s.failures(reduce(0)), Some(0));
    // A late report from the preempted reducer is ignored.
    assert_eq!(h.ok(a(1)), vec![]);
    assert_eq!(h.s.task_state(reduce(0)), Some(TaskState::Idle));
    assert_eq!(h.ok(a(2)), vec![ready(0, W1), assign(3, reduce(0), W1)]);
    assert_eq!(h.s.stats().preemptions, 1);
}

#[test]
fn reports_from_finished_attempts_are_ignored() {
    let mut h = Harness::job(2, 0);
    assert_eq!(
        h.join(W0, 2),
        vec![assign(0, map(0), W0), assign(1, map(1), W0)]
    );
    assert_eq!(h.fail(a(0), "x"), vec![assign(2, map(0), W0)]);
    // The failed attempt cannot succeed afterwards, nor fail twice.
    assert_eq!(h.ok(a(0)), vec![]);
    assert_eq!(h.fail(a(0), "x"), vec![]);
    assert_eq!(h.s.failures(map(0)), Some(1));
    assert_eq!(h.ok(a(2)), vec![]);
    // Nor can a committed one report again.
    assert_eq!(h.ok(a(2)), vec![]);
    assert_eq!(h.fail(a(2), "x"), vec![]);
    assert_eq!(
        h.s.task_state(map(0)),
        Some(TaskState::Committed { attempt: a(2) })
    );
    assert_eq!(h.ok(a(1)), vec![Command::JobDone]);
}

#[test]
fn unknown_attempts_and_workers_are_ignored() {
    let mut h = Harness::job(1, 1);
    let w9 = WorkerId(9);
    assert_eq!(h.ok(a(5)), vec![]);
    assert_eq!(h.fail(a(5), "?"), vec![]);
    assert_eq!(h.lost(w9), vec![]);
    assert_eq!(h.heartbeat(w9), vec![]);
    assert_eq!(
        h.event(Event::Heartbeat {
            worker: w9,
            progress: vec![(a(0), f64::NAN)]
        }),
        vec![]
    );
    assert_eq!(h.tick(), vec![]);
    assert_eq!(h.s.task_state(map(5)), None);
    assert_eq!(h.s.stats().attempts_started, 0);
}

#[test]
fn heartbeat_progress_is_recorded_for_own_running_attempts() {
    let mut h = Harness::job(2, 0);
    assert_eq!(h.join(W0, 1), vec![assign(0, map(0), W0)]);
    assert_eq!(h.join(W1, 1), vec![assign(1, map(1), W1)]);
    h.at(ms(500)).event(Event::Heartbeat {
        worker: W0,
        progress: vec![(a(0), 1.7), (a(1), 0.5)],
    });
    let progress = |h: &Harness, id| h.s.attempt(a(id)).map(|x| (x.progress, x.progress_at));
    assert_eq!(progress(&h, 0), Some((1.0, ms(500))));
    // Not W0's attempt.
    assert_eq!(progress(&h, 1), Some((0.0, Duration::ZERO)));
    h.at(ms(600)).event(Event::Heartbeat {
        worker: W0,
        progress: vec![(a(0), f64::NAN)],
    });
    assert_eq!(progress(&h, 0), Some((1.0, ms(500))));
    assert_eq!(h.running(map(0)), a(0));
}

#[test]
fn knobs_below_one_count_as_one() {
    let mut h = Harness::new(Config {
        max_attempts: 0,
        fetch_failures_to_reexecute: 0,
        ..Config::new(1, 0)
    });
    assert_eq!(h.s.config().max_attempts, 1);
    assert_eq!(h.s.config().fetch_failures_to_reexecute, 1);
    h.join(W0, 1);
    assert_eq!(
        h.fail(a(0), "boom"),
        vec![Command::JobFailed {
            reason: "map 0 failed 1 times: boom".to_string()
        }]
    );
}

#[test]
fn stats_count_what_happened() {
    let mut h = Harness::job(2, 1);
    h.join(W0, 1);
    h.join(W1, 3);
    h.ok(a(0));
    h.lost(W0);
    let stats = h.s.stats();
    assert_eq!(stats.workers_joined, 2);
    assert_eq!(stats.workers_lost, 1);
    assert_eq!(stats.attempts_started, 4);
    assert_eq!(stats.attempts_committed, 1);
    assert_eq!(stats.map_outputs_lost, 1);
    assert_eq!(stats.maps_committed, 0);
}
