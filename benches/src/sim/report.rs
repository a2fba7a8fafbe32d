//! A simulated job as the `Report` a real run writes (`report.json`, `report.html`).

use std::collections::BTreeMap;

use quern_runtime::report::{
    hist, new_histogram, AttemptRecord, NamedHistogram, Outcome as AttemptOutcome, PhaseName,
    PhaseRecord, Report, WorkerRecord, COUNTER_INPUT_BYTES, COUNTER_OUTPUT_BYTES, REPORT_VERSION,
};
use quern_scheduler::AttemptState;

use super::engine::Outcome;

/// The report of `outcome`, as the coordinator builds it at a real job's commit: attempts
/// with the scheduler's final states (a committed map whose output was lost shows as lost),
/// the rates of Figure 3, the phase ends, the scheduler's counters and the histograms of
/// the committed attempts' durations.
pub fn build(outcome: &Outcome) -> Report {
    let us = |s: f64| (s.max(0.0) * 1e6).round() as u64;
    let wall_us = us(outcome.total_s);
    let attempts: Vec<AttemptRecord> = outcome
        .attempts
        .iter()
        .map(|rec| {
            let state = outcome
                .scheduler
                .attempt(quern_scheduler::AttemptId(rec.attempt))
                .map(|a| a.state.clone());
            let outcome = match state {
                Some(AttemptState::Committed) => AttemptOutcome::Committed,
                Some(AttemptState::OutputLost | AttemptState::Lost) => AttemptOutcome::Lost,
                Some(AttemptState::Failed { .. }) => AttemptOutcome::Failed,
                Some(AttemptState::Cancelled { .. }) => AttemptOutcome::Cancelled,
                Some(AttemptState::Running) | None => rec.outcome,
            };
            let end_us = if rec.outcome == AttemptOutcome::Running {
                wall_us
            } else {
                rec.end_us
            };
            AttemptRecord {
                outcome,
                end_us: end_us.max(rec.start_us),
                ..rec.clone()
            }
        })
        .collect();
    let mut map_h = new_histogram();
    let mut reduce_h = new_histogram();
    for a in &attempts {
        if a.outcome == AttemptOutcome::Committed {
            let h = match a.phase {
                PhaseName::Map => &mut map_h,
                PhaseName::Reduce => &mut reduce_h,
            };
            // Saturating: a histogram that cannot take a value drops it.
            let _ = h.record((a.end_us - a.start_us).max(1));
        }
    }
    let mut map_end_h = new_histogram();
    let _ = map_end_h.record(us(outcome.map_phase_end_s).max(1));
    let mut job_end_h = new_histogram();
    let _ = job_end_h.record(wall_us.max(1));
    let histograms = vec![
        NamedHistogram::new(hist::MAP_ATTEMPT, "us", &map_h),
        NamedHistogram::new(hist::REDUCE_ATTEMPT, "us", &reduce_h),
        NamedHistogram::new(hist::MAP_PHASE_END, "us", &map_end_h),
        NamedHistogram::new(hist::JOB_END, "us", &job_end_h),
    ];
    let p = &outcome.params;
    let stats = outcome.stats;
    let mut counters: BTreeMap<String, u128> = BTreeMap::new();
    let output = p.job.input_bytes * p.job.intermediate_ratio * p.job.output_ratio;
    counters.insert(COUNTER_INPUT_BYTES.to_string(), p.job.input_bytes as u128);
    counters.insert(
        "map.input.records".to_string(),
        (p.job.input_bytes / 100.0) as u128,
    );
    counters.insert(COUNTER_OUTPUT_BYTES.to_string(), output as u128);
    for (name, value) in [
        ("attempts.started", stats.attempts_started),
        ("attempts.committed", stats.attempts_committed),
        ("attempts.lost", stats.attempts_lost),
        ("attempts.cancelled", stats.attempts_cancelled),
        ("attempts.preempted", stats.preemptions),
        ("attempts.map_outputs_lost", stats.map_outputs_lost),
        ("backups.launched", stats.backups_launched),
        ("backups.won", stats.backups_won),
        ("workers.lost", stats.workers_lost),
    ] {
        counters.insert(name.to_string(), u128::from(value));
    }
    let workers = outcome
        .workers
        .iter()
        .map(|&(id, slots)| WorkerRecord {
            id,
            addr: format!("sim-{id}"),
            pid: 0,
            slots,
            work_dir_fault: None,
        })
        .collect();
    let mut phases = vec![PhaseRecord {
        phase: PhaseName::Map,
        end_us: us(outcome.map_phase_end_s),
    }];
    if p.job.reduces > 0 {
        phases.push(PhaseRecord {
            phase: PhaseName::Reduce,
            end_us: wall_us,
        });
    }
    Report {
        version: REPORT_VERSION,
        job: format!("{} [{}]", p.job.name, outcome.run.name()),
        started_unix_ms: 0,
        wall_us,
        map_tasks: p.job.maps,
        reduce_tasks: p.job.reduces,
        workers,
        counters,
        phases,
        attempts,
        rates: outcome.rates.clone(),
        histograms,
    }
}
