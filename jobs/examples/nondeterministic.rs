//! A job whose output depends on which process ran each task: for checking that the output,
//! the journal, the counters and the report always describe the same (winning) attempt.
//!
//! Each map task emits one pair per chunk of its split: key `FILE:OFFSET` (zero-padded, so
//! keys sort in split order), value the map process's pid, and counts `nondet.map.pid.PID`.
//! The reducer writes `KEY<TAB>MAP_PID<TAB>REDUCE_PID` per key and counts
//! `nondet.reduce.pid.PID` per line. Run it like any job:
//! `nondeterministic INPUT... --output DIR [common flags]`.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use quern_jobs::registry::{JobCommand, Registry};
use quern_runtime::{InputFormat, Job, MapContext, Record, ReduceContext, SplitInfo};

#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Nondeterministic;

/// `nondet.{phase}.pid.{pid}`, made once per process (counter names are `&'static str`).
fn counter(phase: &'static str) -> &'static str {
    static MAP: OnceLock<&'static str> = OnceLock::new();
    static REDUCE: OnceLock<&'static str> = OnceLock::new();
    let cell = if phase == "map" { &MAP } else { &REDUCE };
    cell.get_or_init(|| {
        Box::leak(format!("nondet.{phase}.pid.{}", std::process::id()).into_boxed_str())
    })
}

impl Job for Nondeterministic {
    fn name(&self) -> &str {
        "nondeterministic"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Lines
    }

    fn map(&self, _record: &Record<'_>, _ctx: &mut MapContext<'_>) {}

    fn map_split(
        &self,
        split: &SplitInfo<'_>,
        records: &mut dyn Iterator<Item = Record<'_>>,
        ctx: &mut MapContext<'_>,
    ) {
        // Work on every record, as a real job would (and as a slowed worker is paced).
        let mut h = 0u64;
        for r in records {
            h = r
                .data
                .iter()
                .fold(h, |h, &b| h.rotate_left(5) ^ u64::from(b));
        }
        std::hint::black_box(h);
        let key = format!("{:05}:{:015}", split.input.index, split.start);
        ctx.emit(key.as_bytes(), std::process::id().to_string().as_bytes());
        ctx.count(counter("map"), 1);
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        for v in values {
            ctx.write(key);
            ctx.write(b"\t");
            ctx.write(v);
            ctx.write(format!("\t{}\n", std::process::id()).as_bytes());
            ctx.count(counter("reduce"), 1);
        }
    }
}

fn main() -> ExitCode {
    let mut registry = Registry::builtin();
    registry.register_command(
        "nondeterministic",
        JobCommand::new(
            "Which process ran each task (a test of commit agreement)",
            InputFormat::Lines,
        ),
        |_inputs| Nondeterministic,
        |job: Nondeterministic| Ok(Arc::new(job) as Arc<dyn Job>),
    );
    quern_jobs::cli::main_with_default(registry, "nondeterministic")
}
