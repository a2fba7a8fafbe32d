//! The reverse web-link graph (MapReduce paper, §2.3): for every link target, the distinct
//! pages that link to it.
//!
//! Input: text lines `SOURCE TARGET` (two whitespace-separated fields); any other line is
//! counted in the `bad.lines` counter and skipped. Output: one line per target,
//! `TARGET<TAB>S1,S2,...`, with the distinct sources in bytewise order.
//!
//! ```text
//! cargo build --release -p quern-jobs --example reverse_links
//! target/release/examples/reverse_links LINKS... --output DIR [common flags]
//! ```
//!
//! The binary is a whole `quern` (`reverse_links worker ...`, `reverse_links coordinator
//! ...`), so the job runs on the embedded local cluster by default, on a cluster of
//! `reverse_links` processes with `--coordinator`, or with `--sequential` / `--in-process`.

use std::process::ExitCode;
use std::sync::Arc;

use quern_jobs::registry::{JobCommand, Registry};
use quern_runtime::{for_each_distinct, InputFormat, Job, MapContext, Record, ReduceContext};

/// The job. It has no parameters, so it is its own (empty) parameter type.
#[derive(Debug, Clone, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ReverseLinks;

/// Counts input lines that are not `SOURCE TARGET`.
const BAD_LINES: &str = "bad.lines";

impl Job for ReverseLinks {
    fn name(&self) -> &str {
        "reverse_links"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Lines
    }

    /// `SOURCE TARGET` → (TARGET, SOURCE).
    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
        let mut fields = record
            .data
            .split(u8::is_ascii_whitespace)
            .filter(|f| !f.is_empty());
        match (fields.next(), fields.next(), fields.next()) {
            (Some(source), Some(target), None) => ctx.emit(target, source),
            _ => ctx.count(BAD_LINES, 1),
        }
    }

    fn has_combiner(&self) -> bool {
        true
    }

    /// Drops repeated sources: a map task's values for a key arrive sorted, so repeats are
    /// adjacent.
    fn combine(
        &self,
        _key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        for_each_distinct(values, emit);
    }

    /// `TARGET<TAB>S1,S2,...`: the values arrive in bytewise order, so the distinct ones
    /// come in order too.
    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        ctx.write(key);
        let mut sep: &[u8] = b"\t";
        for_each_distinct(values, |v| {
            ctx.write(sep);
            ctx.write(v);
            sep = b",";
        });
        ctx.write(b"\n");
    }
}

fn main() -> ExitCode {
    let mut registry = Registry::builtin();
    registry.register_command(
        "reverse_links",
        JobCommand::new(
            "For every link target, the distinct sources linking to it (lines `SOURCE TARGET`)",
            InputFormat::Lines,
        ),
        |_inputs| ReverseLinks,
        |job: ReverseLinks| Ok(Arc::new(job) as Arc<dyn Job>),
    );
    quern_jobs::cli::main_with_default(registry, "reverse_links")
}
