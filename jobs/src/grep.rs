//! `grep`: lines matching a regular expression, in input order, as GNU grep prints them.
//!
//! Without `-c` it is a map-only job: each map task writes its split's matching lines in
//! order, so the part files concatenated in name order are grep's output. With `-c` each
//! map counts its split's matches and one reducer sums them per file (in input order).

use quern_runtime::{InputFormat, Job, MapContext, Record, ReduceContext, SplitInfo};
use regex::bytes::Regex;

/// Counter: lines that matched.
pub const MATCHES: &str = "grep.matches";

/// Searches lines for a pattern.
#[derive(Debug, Clone)]
pub struct Grep {
    /// The compiled pattern (Rust `regex` syntax, matched against raw bytes).
    pub regex: Regex,
    /// Print a count per file instead of the lines.
    pub count: bool,
    /// Prefix output with the file name (several files searched, as grep does).
    pub with_names: bool,
    /// Display names of the input files, by index.
    pub names: Vec<String>,
}

impl Grep {
    /// Compiles `pattern`, with a one-line error message on failure.
    pub fn new(pattern: &str, count: bool, names: Vec<String>) -> Result<Grep, String> {
        let regex = Regex::new(pattern).map_err(|e| {
            let detail = e
                .to_string()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            format!("invalid regex {pattern:?}: {detail}")
        })?;
        Ok(Grep {
            regex,
            count,
            with_names: names.len() > 1,
            names,
        })
    }
}

impl Job for Grep {
    fn name(&self) -> &str {
        "grep"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Lines
    }

    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
        let info = SplitInfo {
            input: record.input,
            start: record.offset,
            len: record.data.len() as u64,
        };
        self.map_split(&info, &mut std::iter::once(*record), ctx);
    }

    fn map_split(
        &self,
        split: &SplitInfo<'_>,
        records: &mut dyn Iterator<Item = Record<'_>>,
        ctx: &mut MapContext<'_>,
    ) {
        let mut matches = 0u64;
        let mut line = Vec::new();
        for r in records {
            if !self.regex.is_match(r.data) {
                continue;
            }
            matches += 1;
            if !self.count {
                line.clear();
                if self.with_names {
                    line.extend_from_slice(r.input.name.as_bytes());
                    line.push(b':');
                }
                line.extend_from_slice(r.data);
                line.push(b'\n');
                ctx.emit(b"", &line);
            }
        }
        if self.count {
            // One pair per split, even for zero matches: every file gets a count line.
            ctx.emit(&split.input.index.to_be_bytes(), &matches.to_be_bytes());
        }
        ctx.count(MATCHES, u128::from(matches));
    }

    fn partition(&self, _key: &[u8], _reducers: u32) -> u32 {
        0
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        let total: u64 = values
            .map(|v| u64::from_be_bytes(v.try_into().unwrap_or_default()))
            .sum();
        let file = key.try_into().map(u32::from_be_bytes).unwrap_or(u32::MAX) as usize;
        if self.with_names {
            ctx.write(self.names.get(file).map_or("?", String::as_str).as_bytes());
            ctx.write(b":");
        }
        ctx.write(total.to_string().as_bytes());
        ctx.write(b"\n");
    }
}
