//! What the coordinator knows about one job beyond the scheduler's task states: the results
//! of finished attempts, the records that crashed maps and the skip lists they led to, and
//! the job's final counters. Pure, like the scheduler: no I/O, no clock, so each policy is
//! unit-tested here; `coordinator.rs` only moves messages in and out.

use std::collections::HashMap;
use std::sync::Arc;

use quern_scheduler::journal::Record;
use quern_scheduler::{AttemptId, Phase, Scheduler, TaskId};
use quern_shuffle::wire::{decode_msg, CommittedOutput, CounterMsg, HistogramMsg, JobSpec, RunMsg};

use super::{counters_from_msg, locate_record, net_err};
use crate::job::Counters;
use crate::Result;

/// A record that crashed this many attempts of its map is skipped (with
/// `--skip-bad-records`), as in the paper's §3.3 "skipping bad records".
pub(super) const SKIP_AFTER_FAILURES: u32 = 2;

/// What a finished attempt reported.
#[derive(Debug, Clone, Default)]
pub(super) struct Finished {
    pub(super) counters: Vec<CounterMsg>,
    pub(super) runs: Vec<RunMsg>,
    pub(super) histograms: Vec<HistogramMsg>,
}

/// One job's policy state (see the module docs).
#[derive(Debug)]
pub(super) struct JobRun {
    pub(super) id: u64,
    pub(super) spec: Arc<JobSpec>,
    finished: HashMap<AttemptId, Finished>,
    /// Per map: failures blamed on each record, by split position.
    bad_records: HashMap<u32, HashMap<u64, u32>>,
    /// Record positions each map attempt was told to skip.
    skipped: HashMap<AttemptId, Vec<u64>>,
}

impl JobRun {
    /// A job just accepted.
    pub(super) fn new(id: u64, spec: Arc<JobSpec>) -> JobRun {
        JobRun {
            id,
            spec,
            finished: HashMap::new(),
            bad_records: HashMap::new(),
            skipped: HashMap::new(),
        }
    }

    /// Job `id` as its journal `records` left it: the outputs and counters of its committed
    /// attempts come back from their `TaskCommitted` records.
    pub(super) fn from_journal(id: u64, spec: Arc<JobSpec>, records: &[Record]) -> Result<JobRun> {
        let mut run = JobRun::new(id, spec);
        for r in records {
            let Record::TaskCommitted {
                job,
                attempt,
                output,
                ..
            } = r
            else {
                continue;
            };
            if *job != id {
                continue;
            }
            let mut bytes = rkyv::util::AlignedVec::<16>::new();
            bytes.extend_from_slice(output);
            let out: CommittedOutput = decode_msg(&bytes).map_err(net_err)?;
            run.finished.insert(
                *attempt,
                Finished {
                    counters: out.counters,
                    runs: out.runs,
                    histograms: Vec::new(),
                },
            );
        }
        Ok(run)
    }

    /// `attempt` finished with `result` (it commits if the scheduler says so).
    pub(super) fn finished(&mut self, attempt: AttemptId, result: Finished) {
        self.finished.insert(attempt, result);
    }

    /// What `attempt` reported when it finished.
    pub(super) fn result(&self, attempt: AttemptId) -> Option<&Finished> {
        self.finished.get(&attempt)
    }

    /// What the journal keeps of committed `attempt`: its map output and counters.
    pub(super) fn committed_output(&self, attempt: AttemptId) -> CommittedOutput {
        let fin = self.finished.get(&attempt);
        CommittedOutput {
            runs: fin.map(|f| f.runs.clone()).unwrap_or_default(),
            counters: fin.map(|f| f.counters.clone()).unwrap_or_default(),
        }
    }

    /// An attempt of `task` failed with `error`; `bad_record` is the split position of the
    /// record a map was processing when its user code crashed. Counts the record against
    /// the map and returns the error as the job should report it: naming the record's file
    /// and byte offset, and how to skip it.
    pub(super) fn attempt_failed(
        &mut self,
        task: Option<TaskId>,
        error: String,
        bad_record: Option<u64>,
    ) -> String {
        let (Some(pos), Some(task)) = (bad_record, task) else {
            return error;
        };
        if task.phase == Phase::Map {
            let n = self
                .bad_records
                .entry(task.index)
                .or_default()
                .entry(pos)
                .or_default();
            *n += 1;
            if self.spec.skip_bad_records && *n == SKIP_AFTER_FAILURES {
                tracing::warn!(
                    "{task}: skipping the record at split position {pos}: it crashed {n} attempts"
                );
            }
        }
        let (file, offset) = locate_record(&self.spec, task.index, pos);
        let hint = if self.spec.skip_bad_records {
            ""
        } else {
            "; --skip-bad-records skips it"
        };
        format!("{error} (on the record at byte {offset} of {file}{hint})")
    }

    /// The records map attempt `attempt` of map `map` must skip: with
    /// `--skip-bad-records`, those that crashed [`SKIP_AFTER_FAILURES`] attempts. Kept for
    /// the job's report.
    pub(super) fn skip_list(&mut self, attempt: AttemptId, map: u32) -> Vec<u64> {
        if !self.spec.skip_bad_records {
            return Vec::new();
        }
        let mut skip: Vec<u64> = self
            .bad_records
            .get(&map)
            .into_iter()
            .flatten()
            .filter(|(_, n)| **n >= SKIP_AFTER_FAILURES)
            .map(|(pos, _)| *pos)
            .collect();
        skip.sort_unstable();
        if !skip.is_empty() {
            self.skipped.insert(attempt, skip.clone());
        }
        skip
    }

    /// The job's counters — the committed attempts' own, plus what the scheduler did
    /// (`attempts.*`, `backups.*`, ...) — and the records the committed maps skipped, as
    /// `(input name, byte offset)`.
    pub(super) fn totals(&self, sched: &Scheduler) -> (Counters, Vec<(String, u64)>) {
        let mut counters = Counters::default();
        let mut skipped = Vec::new();
        let tasks = (0..self.spec.splits.len() as u32)
            .map(TaskId::map)
            .chain((0..self.spec.reducers).map(TaskId::reduce));
        for task in tasks {
            let Some(attempt) = sched.committed_attempt(task) else {
                continue;
            };
            if let Some(fin) = self.finished.get(&attempt) {
                counters.merge(&counters_from_msg(&fin.counters));
            }
            for &pos in self.skipped.get(&attempt).into_iter().flatten() {
                skipped.push(locate_record(&self.spec, task.index, pos));
            }
        }
        let stats = sched.stats();
        let count_phase = |phase: Phase| {
            sched
                .attempts()
                .filter(|(_, a)| a.task.phase == phase)
                .count() as u128
        };
        counters.add("attempts.map", count_phase(Phase::Map));
        counters.add("attempts.reduce", count_phase(Phase::Reduce));
        counters.add("attempts.failed", u128::from(stats.attempts_failed));
        counters.add("attempts.lost", u128::from(stats.attempts_lost));
        counters.add(
            "attempts.work_dir_failed",
            u128::from(stats.work_dir_failures),
        );
        counters.add("backups.launched", u128::from(stats.backups_launched));
        counters.add("backups.won", u128::from(stats.backups_won));
        counters.add("map.outputs.lost", u128::from(stats.map_outputs_lost));
        counters.add("workers.lost", u128::from(stats.workers_lost));
        (counters, skipped)
    }
}

#[cfg(test)]
mod tests {
    use quern_scheduler::{Command, Config, Event, WorkerId};
    use quern_shuffle::wire::{encode_msg, ChunkMsg, InputFileMsg, SplitMsg};

    use super::*;

    /// Two maps: map 0 reads all of `a.txt` (100 bytes), map 1 all of `b.txt` (50 bytes).
    fn spec(skip_bad_records: bool) -> Arc<JobSpec> {
        let file = |name: &str, size| InputFileMsg {
            name: name.into(),
            path: format!("/in/{name}"),
            size,
        };
        let chunk = |file, start, len| ChunkMsg { file, start, len };
        Arc::new(JobSpec {
            job: Vec::new(),
            name: "test".into(),
            inputs: vec![file("a.txt", 100), file("b.txt", 50)],
            splits: vec![
                SplitMsg {
                    chunks: vec![chunk(0, 0, 100)],
                },
                SplitMsg {
                    chunks: vec![chunk(1, 0, 50)],
                },
            ],
            reducers: 1,
            output: "/out".into(),
            worker_memory: 0,
            merge_factor: 0,
            speculation: true,
            backup_every_task: false,
            skip_bad_records,
            resume: false,
            direct_io: false,
        })
    }

    fn counter(name: &str, value: u128) -> CounterMsg {
        CounterMsg {
            name: name.into(),
            value,
        }
    }

    #[test]
    fn a_crashing_record_is_named_and_skipped_after_two_crashes() {
        let mut run = JobRun::new(1, spec(true));
        let map1 = Some(TaskId::map(1));
        let error = run.attempt_failed(map1, "panicked: boom".into(), Some(20));
        assert_eq!(error, "panicked: boom (on the record at byte 20 of b.txt)");
        assert_eq!(
            run.skip_list(AttemptId(5), 1),
            Vec::<u64>::new(),
            "one crash"
        );
        run.attempt_failed(map1, "panicked: boom".into(), Some(20));
        assert_eq!(run.skip_list(AttemptId(6), 1), vec![20], "two crashes");
        assert_eq!(
            run.skip_list(AttemptId(7), 0),
            Vec::<u64>::new(),
            "other map"
        );
        // A failure without a record, or of a reduce, is passed on as it is.
        assert_eq!(run.attempt_failed(map1, "disk".into(), None), "disk");
    }

    #[test]
    fn without_the_flag_nothing_is_skipped_and_the_message_says_how() {
        let mut run = JobRun::new(1, spec(false));
        for _ in 0..3 {
            let e = run.attempt_failed(Some(TaskId::map(0)), "panicked: x".into(), Some(7));
            assert_eq!(
                e,
                "panicked: x (on the record at byte 7 of a.txt; --skip-bad-records skips it)"
            );
        }
        assert!(run.skip_list(AttemptId(1), 0).is_empty());
    }

    /// Counters come from committed attempts only (not from a loser), with the scheduler's
    /// next to them; skipped records are listed for the committed attempt that skipped them.
    #[test]
    fn totals_count_committed_attempts_only() {
        let mut run = JobRun::new(1, spec(true));
        let mut sched = Scheduler::new(Config::new(2, 1));
        sched.handle(
            std::time::Duration::ZERO,
            Event::WorkerJoined {
                worker: WorkerId(0),
                slots: 3,
            },
        );
        let assigned: Vec<(AttemptId, TaskId)> = std::iter::from_fn(|| sched.poll())
            .filter_map(|c| match c {
                Command::Assign { attempt, task, .. } => Some((attempt, task)),
                _ => None,
            })
            .collect();
        assert_eq!(assigned.len(), 3);
        run.attempt_failed(Some(TaskId::map(1)), "x".into(), Some(3));
        run.attempt_failed(Some(TaskId::map(1)), "x".into(), Some(3));
        for (attempt, task) in &assigned {
            if *task == TaskId::map(1) {
                assert_eq!(run.skip_list(*attempt, 1), vec![3]);
            }
            run.finished(
                *attempt,
                Finished {
                    counters: vec![counter("records", 10)],
                    ..Finished::default()
                },
            );
            sched.handle(
                std::time::Duration::ZERO,
                Event::AttemptSucceeded { attempt: *attempt },
            );
        }
        // A finished attempt that never committed counts for nothing.
        run.finished(
            AttemptId(99),
            Finished {
                counters: vec![counter("records", 1000)],
                ..Finished::default()
            },
        );
        let (counters, skipped) = run.totals(&sched);
        assert_eq!(counters.get("records"), 30);
        assert_eq!(counters.get("attempts.map"), 2);
        assert_eq!(counters.get("attempts.reduce"), 1);
        assert_eq!(skipped, vec![("b.txt".to_string(), 3)]);
    }

    #[test]
    fn committed_outputs_come_back_from_the_journal() {
        let out = CommittedOutput {
            runs: vec![RunMsg {
                path: "/w/run".into(),
                segments: Vec::new(),
            }],
            counters: vec![counter("records", 4)],
        };
        let records = vec![
            Record::TaskCommitted {
                job: 1,
                task: TaskId::map(0),
                attempt: AttemptId(3),
                worker_addr: "127.0.0.1:1".into(),
                output: encode_msg(&out).expect("encode").to_vec(),
            },
            // Another job's commit is not this one's.
            Record::TaskCommitted {
                job: 2,
                task: TaskId::map(0),
                attempt: AttemptId(4),
                worker_addr: String::new(),
                output: encode_msg(&out).expect("encode").to_vec(),
            },
        ];
        let run = JobRun::from_journal(1, spec(false), &records).expect("decode");
        assert_eq!(run.committed_output(AttemptId(3)), out);
        assert!(run.result(AttemptId(4)).is_none());
    }
}
