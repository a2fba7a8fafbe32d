//! quern's scheduler: the task and attempt state machine of one job — no I/O, no threads,
//! no clock, no randomness.
//!
//! This is the quinn-proto pattern. The coordinator (an async driver elsewhere) owns the
//! sockets and timers; it feeds what happened into [`Scheduler::handle`] together with the
//! current time, `now`, measured from job start, then drains [`Scheduler::poll_journal`]
//! (appending each entry to the job's journal and fsyncing — see [`journal`]) and then
//! [`Scheduler::poll`] until it returns `None`, carrying out each [`Command`] in order.
//! Between events it sleeps until [`Scheduler::poll_timeout`] and then hands in
//! [`Event::Tick`]: nothing that time alone changes (a heartbeat expiry, the end of the
//! resume grace, an attempt old enough to be backed up) happens before it.
//! Because the state machine sees the
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
//! * **Placement.** After every event, free slots are filled in this order: idle maps, backups
//!   of straggling maps, idle reduces, backups of straggling reduces (see *Speculation*).
//!   Idle tasks go lowest task index first, each on the live worker with the most free slots
//!   (ties: lowest id) — with speculation on, a *slow* worker only if no other worker has a
//!   free slot. Reduces are placed only while no map is idle, so reducers never starve maps
//!   of slots. A
//!   map can become idle again after reducers filled every slot (its output was lost); then
//!   the newest reduce attempt is *preempted* (cancelled, not counted as a failure) to make
//!   room for it — otherwise reducers waiting for that map's output would wait forever.
//! * **Map outputs.** [`Command::MapOutputReady`] is emitted once each time a map's output
//!   becomes available (its commit, or its re-attachment after a resume): O(M) commands in
//!   all, not one per (map, reduce attempt). The driver keeps the announced locations (and
//!   drops them on `MapOutputLost`) and gives a newly assigned reducer all of them, as the
//!   coordinator introduces every worker to the job's announcements. Map-only jobs have no
//!   reducers and get no `MapOutputReady`.
//! * **Exactly once.** The first `AttemptSucceeded` of a task commits it and every other
//!   running attempt of the task (a backup, or the original a backup beat) is cancelled. Reports from attempts that are not running
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
//!   of a task fails the job.
//! * **Work dirs.** An attempt that failed on its worker's work dir ([`Event::WorkDirFailed`]:
//!   full or failing disk) goes back to idle without counting against its task, and the
//!   worker runs no map attempts (map output lives on its disk) until
//!   [`Event::WorkDirRecovered`]; it still runs reduces. If a map is idle and every live
//!   worker's work dir has failed, the job fails, quoting the last error. `fetch_failures_to_reexecute` fetch-failure reports against one
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
//! # Speculation
//!
//! LATE (Zaharia et al., OSDI'08), plus the MapReduce paper's end-of-phase backups (§3.6).
//! On by default; `Config::speculation = false` turns it off, and then placement is exactly
//! as without it.
//!
//! * **Estimates.** For a running attempt with at least one progress report: progress rate
//!   = progress / elapsed, estimated time left = (1 − progress) / rate, less the time since
//!   the report. *Elapsed* runs from its last report of zero progress (its start if none)
//!   to its last report, so an attempt that waited before progressing — a reduce waiting for
//!   map outputs — is judged on how fast it goes once it goes. An attempt reporting zero
//!   progress has rate 0 and infinite time left.
//! * **Expected duration** of a new attempt of a phase: the mean duration (assignment to
//!   commit) of the attempts of that phase that committed. No backups of a phase before one
//!   of its attempts committed.
//! * **Candidates.** A running task with exactly one running attempt (at most one backup per
//!   task) that is at least `min_runtime` old, when no task of its phase is idle and a slot
//!   is free. A reduce's age counts from when every map output was available, and no reduce
//!   is backed up while one is missing (it could not finish anyway). A candidate is backed
//!   up if it is *slow* — its rate is below the `slow_task_percentile` (linear
//!   interpolation) of the rates of its phase's running attempts — and its time left exceeds
//!   the expected duration, or (end of phase) if its time left exceeds `speculation_margin`
//!   (1.5) × the expected duration. On a healthy cluster no estimate comes near either bar,
//!   so nothing is re-executed.
//! * **Choice.** Longest time left first, while fewer than `max(1, ⌊speculative_cap ×
//!   live slots⌋)` backups run (a task's running attempts beyond its first), each on the
//!   live worker with the most free slots that is neither the original's nor *slow*: its
//!   mean progress rate (committed attempts: 1 / time from their last zero-progress report
//!   to commit; running ones that made progress: their rate) is below the
//!   `slow_worker_percentile` of the workers' means. Workers without data are not slow.
//! * **Placement.** An idle task goes to a slow worker only if no other worker has a free
//!   slot, and not at all to one whose mean rate is below half the median worker's (it would
//!   take more than twice as long there) while a worker that is not slow could take it: it
//!   stays idle until a slot frees, within about one task's time.
//! * **Order.** Map backups go before idle reduces: no reduce can finish before every map
//!   committed, so a straggling map holds up the whole job.
//! * The backup's [`Command::Assign`] carries the reason in `backup`; [`Stats`] counts
//!   `backups_launched` and `backups_won` (backups whose success committed the task).
//!
//! # Journal and resume
//!
//! The scheduler queues a [`JournalEvent`] for every commit of a task, for the end of the job,
//! and for each block of attempt ids before it is used; [`journal`] has the contract and the
//! byte format. A restarted coordinator decodes the journal and calls
//! [`Scheduler::resume_from_journal`] (or [`Scheduler::resume`] with the committed tasks):
//!
//! * committed reduces are final and never run again;
//! * committed maps are [`MapState::Unattached`]: a re-registered worker that still holds
//!   the committed attempt's output says so with [`Event::OutputFound`], which re-attaches
//!   the map (`MapOutputReady`). While some reduce has not committed, maps not re-attached
//!   within `resume_grace` of the first event are re-executed. In a map-only job (or once
//!   every reduce committed) committed maps are final;
//! * new attempt ids start above every journaled one (committed or reserved).
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
//!         ^  ^   its last running attempt                     |     ^
//!         |  |   failed, was lost or was cancelled            |     | OutputFound
//!         |  +------------------------------------------------+     |
//!         |    output lost while some reduce is uncommitted:  +------------+
//!         |    its worker was lost, or                        | Unattached | <--- resume
//!         |    `fetch_failures_to_reexecute` FetchFailed      +------------+   (journaled
//!         |                                                         |           commit)
//!         +---------------------------------------------------------+
//!           not re-attached within `resume_grace` while some reduce is uncommitted
//! ```
//!
//! A `Running` map may be backed up (a second running attempt); it stays `Running` until its
//! last attempt leaves, and the first success commits it.
//!
//! [`ReduceState`] — a reduce's output is final once committed:
//!
//! ```text
//!    new     launch              first AttemptSucceeded
//!   ---> +------+ -------> +---------+ ------------------> +-----------+
//!        | Idle |          | Running |                     | Committed |  (final)
//!        +------+ <------- +---------+                     +-----------+
//!                its last running attempt failed,                ^
//!                was lost or was cancelled (preempted)           | resume (journaled
//!                                                                  commit)
//! ```
//!
//! `Running` holds the set of running attempts: one, or two once a speculative backup was
//! launched; the task stays `Running` until the last one leaves.
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
//!               (superseded — the                       | OutputLost |
//!                original or its backup —               +------------+
//!                preempted, job ended)
//! ```
//!
//! [`WorkerState`]: `Alive` → `Lost` (terminal) on `WorkerLost` or heartbeat timeout.
//! The job: running → done | failed (both terminal).
//!

pub mod journal;
mod scheduler;
mod state;

pub use journal::JournalEvent;
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
#[derive(Debug, Clone, PartialEq)]
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
    /// Whether to launch speculative backups of straggling attempts (default true). See
    /// "Speculation" in the crate docs.
    pub speculation: bool,
    /// Back up every running attempt, as soon as another worker has a free slot (a test and
    /// benchmark mode: `--speculation always`; needs `speculation`). One backup per task,
    /// no cap, no straggler test.
    pub backup_every_task: bool,
    /// A running task is *slow* if its progress rate is below this percentile (`0.0..=1.0`)
    /// of the progress rates of its phase's running attempts (default 0.25).
    pub slow_task_percentile: f64,
    /// At most this fraction of the live workers' slots runs backups at once, and never less
    /// than one backup (default 0.1).
    pub speculative_cap: f64,
    /// An attempt younger than this is never backed up (default 1 s).
    pub min_runtime: Duration,
    /// A worker is *slow* — gets no backups — if its mean progress rate is below this
    /// percentile of the workers' mean rates (default 0.25). Workers without data are not
    /// slow.
    pub slow_worker_percentile: f64,
    /// End-of-phase backups need an estimated time left above this many times the expected
    /// duration of a new attempt (default 1.5); slow tasks need it above 1×.
    pub speculation_margin: f64,
    /// Speculation examines a phase's running attempts at most once per this interval
    /// (default 100 ms, Spark's `spark.speculation.interval`); a scan it holds back is due at
    /// [`Scheduler::poll_timeout`]. A scan walks every running attempt and worker, so on a
    /// cluster of thousands of workers, each heartbeating, scanning on every event would
    /// cost O(workers) per heartbeat. `Duration::ZERO` scans on every event.
    pub speculation_interval: Duration,
    /// An attempt's progress rate for speculation is measured over windows at least this
    /// long (default 2 s): a task that slows down (its machine taken by other work) is
    /// judged by what it does now, not by its mean since it started.
    pub rate_window: Duration,
    /// After [`Scheduler::resume`], maps whose output no worker reported
    /// ([`Event::OutputFound`]) within this time are re-executed (default 3 s).
    pub resume_grace: Duration,
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
            speculation: true,
            backup_every_task: false,
            slow_task_percentile: 0.25,
            speculative_cap: 0.1,
            min_runtime: Duration::from_secs(1),
            slow_worker_percentile: 0.25,
            speculation_margin: 1.5,
            speculation_interval: Duration::from_millis(100),
            resume_grace: Duration::from_secs(3),
            rate_window: Duration::from_secs(2),
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
    /// The attempt failed on its worker's own work dir (full: ENOSPC, EDQUOT; failing: EIO,
    /// EROFS), not on its task: the failure is not counted against the task, and the worker
    /// gets no map attempts until [`Event::WorkDirRecovered`].
    WorkDirFailed {
        /// The attempt.
        attempt: AttemptId,
        /// What went wrong, naming the path.
        error: String,
    },
    /// The worker's work dir has room again: it may run map attempts again.
    WorkDirRecovered {
        /// The worker.
        worker: WorkerId,
    },
    /// A running reduce attempt could not fetch map `map`'s output from its worker.
    FetchFailed {
        /// The reduce attempt reporting.
        attempt: AttemptId,
        /// The map whose output could not be fetched.
        map: u32,
    },
    /// After [`Scheduler::resume`]: a re-registered worker (send its `WorkerJoined` first)
    /// still holds the output of map attempt `attempt`. Re-attaches the map whose journaled commit is `attempt` (it must
    /// still be [`MapState::Unattached`]); anything else is ignored.
    OutputFound {
        /// The worker holding the output.
        worker: WorkerId,
        /// The map attempt that wrote it.
        attempt: AttemptId,
    },
    /// Nothing happened, but time passed: lets the heartbeat and resume timeouts fire.
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
        /// `Some(why)` for a speculative backup of a running attempt, e.g. `"backup of map 7
        /// (attempt 12 on worker 3): rate 0.021/s below p25 0.180/s, 47.6 s left"`; `None`
        /// for a normal assignment.
        backup: Option<String>,
    },
    /// Stop `attempt` on `worker` and discard its output; its reports will be ignored.
    Cancel {
        /// The attempt to stop.
        attempt: AttemptId,
        /// The worker it runs on.
        worker: WorkerId,
    },
    /// Map `map`'s output can be fetched from `worker`: tell every reducer, running and
    /// future (the driver keeps the announcement until `MapOutputLost`).
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
