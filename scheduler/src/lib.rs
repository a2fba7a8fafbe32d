//! quern's scheduler: the task and attempt state machine of one job — no I/O, no threads,
//! no clock, no randomness.
//!
//! This is the quinn-proto pattern. The coordinator (an async driver elsewhere) owns the
//! sockets and timers; it feeds what happened into [`Scheduler::handle`] together with the
//! current time, `now`, measured from job start, and then drains [`Scheduler::poll`] until it
//! returns `None`, carrying out each [`Command`] in order. Because the state machine sees the
//! world only through [`Event`]s and `now`, the same sequence of calls always yields the same
//! commands, which is what lets `tests/sim.rs` replay thousands of randomly faulty clusters
//! per second.
//!
//! # Model
//!
//! A job has `maps` map tasks and `reduces` reduce tasks ([`Config`]); `reduces == 0` is a
//! map-only job, whose map output is final. A task ([`TaskId`]) is run by *attempts*
//! ([`AttemptId`]), each placed on one worker ([`WorkerId`]) in one of its slots. A worker runs
//! at most `slots` attempts at once. A map's committed output lives on its worker's disk until
//! every reducer has fetched it; a reduce's committed output is final.
//!
//! # Rules
//!
//! * **Placement.** After every event, idle tasks fill free slots: maps before reduces, lowest
//!   task index first, each on the live worker with the most free slots (ties: lowest id).
//!   Reduces are placed only while no map is idle, so reducers never starve maps of slots. A
//!   map can become idle again after reducers filled every slot (its output was lost); then
//!   the newest reduce attempt is *preempted* (cancelled, not counted as a failure) to make
//!   room for it — otherwise reducers waiting for that map's output would wait forever.
//! * **Map outputs.** [`Command::MapOutputReady`] is emitted when a map commits and, for each
//!   committed map, right after a reduce attempt is assigned, so every reducer learns every
//!   location. Map-only jobs have no reducers and get no `MapOutputReady`.
//! * **Exactly once.** The first `AttemptSucceeded` of a task commits it and every other
//!   running attempt of the task is cancelled. Reports from attempts that are not running
//!   (cancelled, failed, lost, already committed) and about unknown attempts or workers are
//!   ignored.
//! * **Lost workers.** A worker is lost on [`Event::WorkerLost`] or when nothing was heard
//!   from it for longer than `heartbeat_timeout` (checked at the start of every `handle`,
//!   before the event itself is applied, so the outcome does not depend on how often the
//!   driver ticks). Its running attempts are lost (not counted as failures); while some
//!   reduce is uncommitted, the maps committed on it go back to idle
//!   ([`Command::MapOutputLost`]). A lost worker never gets work again and its later events
//!   are ignored; it must re-join under a new id.
//! * **Failures.** A failed attempt sends its task back to idle; the `max_attempts`-th failure
//!   of a task fails the job. `fetch_failures_to_reexecute` fetch-failure reports against one
//!   committed map output re-execute that map; a map re-executed this way more than
//!   `max_attempts` times fails the job.
//! * **Ending.** [`Command::JobDone`] is emitted once, when every reduce has committed and every
//!   map has committed at least once (map-only: every map has committed).
//!   [`Command::JobFailed`] is emitted once, on the failure limits above. Before either, every
//!   still-running attempt is cancelled; after either, `handle` ignores all events and nothing
//!   more is emitted. (A map whose output was lost after the reducers had fetched it may be
//!   re-running when the last reduce commits: that re-run is cancelled and the map stays
//!   idle; [`Scheduler::committed_attempt`] still names the attempt whose output counted.)
//!
//! # Task states
//!
//! [`MapState`] — a map's output can be lost after commit, so it can go round again:
//!
//! ```text
//!    new     launch              first AttemptSucceeded
//!   ---> +------+ -------> +---------+ ------------------> +-----------+
//!        | Idle |          | Running |                     | Committed |
//!        +------+ <------- +---------+                     +-----------+
//!           ^    its last running attempt                        |
//!           |    failed, was lost or was cancelled               |
//!           +----------------------------------------------------+
//!             output lost while some reduce is uncommitted: its worker
//!             was lost, or `fetch_failures_to_reexecute` FetchFailed
//! ```
//!
//! [`ReduceState`] — a reduce's output is final once committed:
//!
//! ```text
//!    new     launch              first AttemptSucceeded
//!   ---> +------+ -------> +---------+ ------------------> +-----------+
//!        | Idle |          | Running |                     | Committed |  (final)
//!        +------+ <------- +---------+                     +-----------+
//!                its last running attempt failed,
//!                was lost or was cancelled (preempted)
//! ```
//!
//! `Running` holds the set of running attempts. Today it has one member; a speculative
//! backup (below) adds more, and the task stays `Running` until the last one leaves.
//!
//! # Attempt states
//!
//! [`AttemptState`] — every state but `Running` and `Committed` is terminal:
//!
//! ```text
//!                 AttemptSucceeded, task not yet committed
//!   +---------+ ---------------------------------------> +-----------+
//!   | Running |                                          | Committed |
//!   +---------+                                          +-----------+
//!     |  |  |                                                  |
//!     |  |  +-- AttemptFailed --> Failed                       | map output lost
//!     |  +----- worker lost ----> Lost                         v
//!     +-------- Cancel ---------> Cancelled             +------------+
//!               (superseded,                            | OutputLost |
//!                preempted,                             +------------+
//!                job ended)
//! ```
//!
//! [`WorkerState`]: `Alive` → `Lost` (terminal) on `WorkerLost` or heartbeat timeout.
//! The job: running → done | failed (both terminal).
//!
//! # Extension points
//!
//! * **Speculation (LATE).** A task may already hold several running attempts: commit cancels
//!   the losers, and losing one attempt leaves the task running on the others. Each
//!   [`Attempt`] records its start time and last reported progress, which is what LATE's
//!   progress rate needs. A speculation pass would run at the end of placement (marked in
//!   `Scheduler::schedule`), after idle tasks had their chance at free slots, and launch
//!   backups through the same `launch` path.
//! * **Journal.** The committed transitions — a task commits, a map's output is lost, the job
//!   ends — each happen in exactly one private method (`commit`, `lose_map_output`,
//!   `fail_job`, `finish_if_done`); a journal record would be appended there, and replay would
//!   drive the same methods.

mod scheduler;
mod state;

pub use scheduler::Scheduler;
pub use state::{Attempt, AttemptState, CancelReason, MapState, ReduceState, Stats, TaskState};
pub use state::{JobState, Worker, WorkerState};

use std::fmt;
use std::time::Duration;

/// Which phase a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// Map tasks: one per input split.
    Map,
    /// Reduce tasks: one per partition.
    Reduce,
}

/// A task: a phase and an index within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// The phase.
    pub phase: Phase,
    /// Split index (map) or partition (reduce).
    pub index: u32,
}

impl TaskId {
    /// Map task `index`.
    pub fn map(index: u32) -> TaskId {
        TaskId {
            phase: Phase::Map,
            index,
        }
    }

    /// Reduce task `index`.
    pub fn reduce(index: u32) -> TaskId {
        TaskId {
            phase: Phase::Reduce,
            index,
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Map => "map",
            Phase::Reduce => "reduce",
        };
        write!(f, "{phase} {}", self.index)
    }
}

/// A worker process, as registered with the coordinator. Ids are never reused: a worker that
/// was declared lost must re-join under a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {}", self.0)
    }
}

/// One attempt at running a task, allocated by the scheduler in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u64);

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt {}", self.0)
    }
}

/// The shape of a job and the scheduler's knobs.
///
/// `Config { maps: 8, reduces: 2, ..Config::default() }` takes the default knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Number of map tasks.
    pub maps: u32,
    /// Number of reduce tasks; 0 makes a map-only job.
    pub reduces: u32,
    /// Failures of one task that fail the job (default 4). Values below 1 count as 1.
    pub max_attempts: u32,
    /// Fetch-failure reports against one committed map output that make the map re-execute
    /// (default 3). Values below 1 count as 1.
    pub fetch_failures_to_reexecute: u32,
    /// A worker not heard from for longer than this is lost (default 2 s).
    pub heartbeat_timeout: Duration,
}

impl Config {
    /// A job of `maps` map tasks and `reduces` reduce tasks with the default knobs.
    pub fn new(maps: u32, reduces: u32) -> Config {
        Config {
            maps,
            reduces,
            ..Config::default()
        }
    }
}

impl Default for Config {
    /// An empty job with the default knobs.
    fn default() -> Config {
        Config {
            maps: 0,
            reduces: 0,
            max_attempts: 4,
            fetch_failures_to_reexecute: 3,
            heartbeat_timeout: Duration::from_secs(2),
        }
    }
}

/// Something that happened, fed to [`Scheduler::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A worker registered with `slots` attempt slots. A known id (alive or lost) is ignored.
    WorkerJoined {
        /// The new worker.
        worker: WorkerId,
        /// How many attempts it runs at once.
        slots: u32,
    },
    /// The worker's connection closed.
    WorkerLost {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker is alive; `progress` reports its running attempts (each in `0.0..=1.0`).
    Heartbeat {
        /// The worker.
        worker: WorkerId,
        /// Progress of its running attempts; entries for other attempts are ignored.
        progress: Vec<(AttemptId, f64)>,
    },
    /// The attempt finished its work. For a map, its output now lives on the attempt's worker.
    AttemptSucceeded {
        /// The attempt.
        attempt: AttemptId,
    },
    /// The attempt failed.
    AttemptFailed {
        /// The attempt.
        attempt: AttemptId,
        /// Why; quoted in `JobFailed` if this was the last allowed failure.
        error: String,
    },
    /// A running reduce attempt could not fetch map `map`'s output from its worker.
    FetchFailed {
        /// The reduce attempt reporting.
        attempt: AttemptId,
        /// The map whose output could not be fetched.
        map: u32,
    },
    /// Nothing happened, but time passed: lets the heartbeat timeout fire.
    Tick,
}

/// Something the driver must do, drained from [`Scheduler::poll`] in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start `attempt` of `task` on `worker`.
    Assign {
        /// The new attempt.
        attempt: AttemptId,
        /// The task it runs.
        task: TaskId,
        /// Where it runs.
        worker: WorkerId,
    },
    /// Stop `attempt` on `worker` and discard its output; its reports will be ignored.
    Cancel {
        /// The attempt to stop.
        attempt: AttemptId,
        /// The worker it runs on.
        worker: WorkerId,
    },
    /// Map `map`'s output can be fetched from `worker`: tell the running reducers.
    MapOutputReady {
        /// The map task's index.
        map: u32,
        /// The worker holding its output.
        worker: WorkerId,
    },
    /// Map `map`'s output is gone and the map will be re-run; reducers that still need it
    /// must wait for a new `MapOutputReady`.
    MapOutputLost {
        /// The map task's index.
        map: u32,
    },
    /// Every task has committed. Emitted once; nothing follows.
    JobDone,
    /// The job cannot finish. Emitted once; nothing follows.
    JobFailed {
        /// Which limit was hit, e.g. `"map 3 failed 4 times: disk full"`.
        reason: String,
    },
}
