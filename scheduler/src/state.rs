//! The state enums and records the scheduler keeps, read-only outside the crate. The
//! transition diagrams are in the crate docs; the code that moves between states is in
//! `scheduler.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::{AttemptId, TaskId, WorkerId};

/// A map task's state (diagram in the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapState {
    /// Waiting for a slot.
    Idle,
    /// Being run by these attempts (never empty).
    Running {
        /// The running attempts; more than one only with speculative backups.
        attempts: BTreeSet<AttemptId>,
    },
    /// `attempt` committed and its output lives on `worker`.
    Committed {
        /// The attempt whose output counts.
        attempt: AttemptId,
        /// Where that output lives (the worker may since have been lost, if no reduce
        /// needed the output any more or the job is map-only).
        worker: WorkerId,
        /// Fetch-failure reports against this output so far; reset by each new commit.
        fetch_failures: u32,
    },
    /// `attempt` committed before a coordinator restart ([`crate::Scheduler::resume`]) and
    /// where its output lives is not known yet: an [`crate::Event::OutputFound`] re-attaches
    /// it (→ `Committed`); if some reduce still needs it when `resume_grace` runs out, the map
    /// is re-executed (→ `Idle`). Final when no reduce needs map output any more (map-only
    /// jobs, or every reduce committed).
    Unattached {
        /// The journaled attempt whose output counts.
        attempt: AttemptId,
    },
}

/// A reduce task's state (diagram in the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReduceState {
    /// Waiting for a slot (and for no map to be idle).
    Idle,
    /// Being run by these attempts (never empty).
    Running {
        /// The running attempts; more than one only with speculative backups.
        attempts: BTreeSet<AttemptId>,
    },
    /// `attempt` committed; final.
    Committed {
        /// The attempt whose output counts.
        attempt: AttemptId,
    },
}

/// A phase-neutral summary of a task's state, from [`crate::Scheduler::task_state`]
/// (`MapState::Unattached` counts as committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for a slot.
    Idle,
    /// Being run by `attempts` attempts.
    Running {
        /// How many attempts are running.
        attempts: usize,
    },
    /// Committed by `attempt`.
    Committed {
        /// The attempt whose output counts.
        attempt: AttemptId,
    },
}

/// Why the scheduler cancelled an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// Another attempt of the same task committed first.
    Superseded,
    /// A reduce attempt gave its slot to an idle map.
    Preempted,
    /// The job finished or failed while the attempt ran.
    JobEnded,
}

/// An attempt's state (diagram in the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptState {
    /// Assigned and not yet finished.
    Running,
    /// Its success committed the task.
    Committed,
    /// It was a map's committed attempt, and its output was lost.
    OutputLost,
    /// It reported failure.
    Failed {
        /// The reported error.
        error: String,
    },
    /// Its worker was lost while it ran.
    Lost,
    /// The scheduler cancelled it.
    Cancelled {
        /// Why.
        reason: CancelReason,
    },
}

/// One attempt, as the scheduler knows it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Attempt {
    /// The task it runs.
    pub task: TaskId,
    /// The worker it was assigned to.
    pub worker: WorkerId,
    /// Its state.
    pub state: AttemptState,
    /// When it was assigned.
    pub started: Duration,
    /// Last progress reported by a heartbeat, in `0.0..=1.0`.
    pub progress: f64,
    /// When that progress was reported (`started` until the first report).
    pub progress_at: Duration,
    /// When it began to make progress: the last heartbeat that reported zero progress
    /// (`started` until one did). Progress rates are measured from here, so a reduce that
    /// waited for map outputs is not mistaken for a slow one.
    pub progress_since: Duration,
    /// Start of the current rate window: a report's time and progress, moved to the latest
    /// report once [`Config::rate_window`](crate::Config::rate_window) has passed.
    pub window_start: (Duration, f64),
    /// Progress per second over the last full rate window (`None` before one passed): what
    /// the attempt does now, where the mean since `progress_since` is what it did.
    pub recent_rate: Option<f64>,
    /// Whether it was launched as a speculative backup of a running attempt.
    pub backup: bool,
}

/// A worker's state: `Alive` → `Lost`, never back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Registered and heard from recently.
    Alive {
        /// When the scheduler last heard from it.
        last_seen: Duration,
    },
    /// Gone: connection closed or heartbeat timeout. Never gets work again.
    Lost {
        /// When it was declared lost.
        at: Duration,
    },
}

/// One worker, as the scheduler knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub(crate) slots: u32,
    pub(crate) state: WorkerState,
    /// Invariant: exactly the attempts in state `Running` whose `worker` is this one, so its
    /// size never exceeds `slots`; empty once the worker is lost.
    pub(crate) running: BTreeSet<AttemptId>,
    /// Why its work dir cannot take map output (full or failing), from
    /// [`crate::Event::WorkDirFailed`] until [`crate::Event::WorkDirRecovered`].
    pub(crate) work_dir_fault: Option<String>,
}

impl Worker {
    /// How many attempts it runs at once.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Alive or lost.
    pub fn state(&self) -> WorkerState {
        self.state
    }

    /// Whether it is alive.
    pub fn is_alive(&self) -> bool {
        matches!(self.state, WorkerState::Alive { .. })
    }

    /// The attempts running on it.
    pub fn running(&self) -> impl Iterator<Item = AttemptId> + '_ {
        self.running.iter().copied()
    }

    /// Why its work dir cannot take map output now, if it cannot: it gets no map attempts.
    pub fn work_dir_fault(&self) -> Option<&str> {
        self.work_dir_fault.as_deref()
    }

    /// Slots not taken by a running attempt (0 once lost).
    pub fn free_slots(&self) -> u32 {
        if !self.is_alive() {
            return 0;
        }
        let running = u32::try_from(self.running.len()).unwrap_or(u32::MAX);
        self.slots.saturating_sub(running)
    }
}

/// The job's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Tasks remain.
    Running,
    /// `JobDone` was emitted.
    Done,
    /// `JobFailed` was emitted with this reason.
    Failed {
        /// The reason given.
        reason: String,
    },
}

/// Counters for the status page and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Attempts assigned.
    pub attempts_started: u64,
    /// Attempts that committed their task.
    pub attempts_committed: u64,
    /// Attempts that reported failure while running.
    pub attempts_failed: u64,
    /// Attempts lost with their worker.
    pub attempts_lost: u64,
    /// Attempts cancelled (for any [`CancelReason`]).
    pub attempts_cancelled: u64,
    /// Reduce attempts preempted for an idle map (included in `attempts_cancelled`).
    pub preemptions: u64,
    /// Committed map outputs lost (worker lost, fetch failures, or not re-attached within
    /// `resume_grace` after a restart), each re-running the map.
    pub map_outputs_lost: u64,
    /// Workers that joined.
    pub workers_joined: u64,
    /// Workers lost.
    pub workers_lost: u64,
    /// Map tasks currently committed (including unattached ones).
    pub maps_committed: u32,
    /// Reduce tasks committed.
    pub reduces_committed: u32,
    /// Speculative backup attempts launched.
    pub backups_launched: u64,
    /// Backup attempts whose success committed their task (their original was cancelled).
    pub backups_won: u64,
    /// Committed map outputs re-attached after a restart by [`crate::Event::OutputFound`].
    pub outputs_found: u64,
    /// Attempts that failed on their worker's work dir ([`crate::Event::WorkDirFailed`]);
    /// included in `attempts_failed`, but not counted against their tasks.
    pub work_dir_failures: u64,
}
