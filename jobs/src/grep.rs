//! `grep`: lines matching a regular expression, in input order, as GNU grep prints them.
//!
//! Printing lines it is a map-only job: each map task writes its split's selected lines in
//! order, so the part files concatenated in name order are grep's output. With `-c` (and
//! `-l`) each map counts its split's selected lines and one reducer sums them per file, in
//! input order. With `-q` nothing is written and each split stops at its first selected line.

use quern_runtime::{InputFormat, Job, MapContext, Record, ReduceContext, SplitInfo};
use regex::bytes::{Regex, RegexBuilder};

/// Counter: lines selected (matching, or with `-v` not matching).
pub const MATCHES: &str = "grep.matches";

/// What grep prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum GrepMode {
    /// The selected lines (prefixed `NAME:` when several files are searched).
    Lines,
    /// `-c`: the number of selected lines of each file.
    Count,
    /// `-l`: the names of the files with a selected line.
    Files,
    /// `-q`: nothing; the exit status says whether a line was selected.
    Quiet,
}

/// How lines are selected.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct GrepOptions {
    /// `-i`: ignore case (Unicode simple case folding).
    pub ignore_case: bool,
    /// `-v`: select the lines that do not match.
    pub invert: bool,
    /// `-w`: match whole words only (word characters: ASCII letters, digits, `_`).
    pub word: bool,
    /// `-F`: the pattern is a literal string, not a regex.
    pub fixed: bool,
}

/// A grep job's parameters, as sent to the workers.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct GrepParams {
    /// Pattern (Rust regex syntax, or a literal with `fixed`).
    pub pattern: String,
    /// What to print.
    pub mode: GrepMode,
    /// How lines are selected.
    pub options: GrepOptions,
    /// Input names, by input index.
    pub names: Vec<String>,
}

/// Searches lines for a pattern.
#[derive(Debug, Clone)]
pub struct Grep {
    /// The compiled pattern (matched against raw bytes).
    pub regex: Regex,
    /// Select non-matching lines (`-v`).
    pub invert: bool,
    /// What to print.
    pub mode: GrepMode,
    /// Prefix output with the file name (several files searched, as grep does).
    pub with_names: bool,
    /// Display names of the input files, by index.
    pub names: Vec<String>,
}

impl Grep {
    /// Compiles the pattern, with a one-line error message on failure.
    pub fn new(p: GrepParams) -> Result<Grep, String> {
        let GrepParams {
            pattern,
            mode,
            options,
            names,
        } = p;
        let mut expr = if options.fixed {
            regex::escape(&pattern)
        } else {
            pattern.clone()
        };
        if options.word {
            // GNU grep's word constituents, whatever the pattern's own Unicode mode.
            expr = format!(r"(?-u:\b)(?:{expr})(?-u:\b)");
        }
        let regex = RegexBuilder::new(&expr)
            .case_insensitive(options.ignore_case)
            .build()
            .map_err(|e| {
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
            invert: options.invert,
            mode,
            with_names: names.len() > 1,
            names,
        })
    }

    /// Reduce tasks a grep in `mode` needs: one to sum per file, none to print lines.
    pub fn reducers(mode: GrepMode) -> u32 {
        match mode {
            GrepMode::Count | GrepMode::Files => 1,
            GrepMode::Lines | GrepMode::Quiet => 0,
        }
    }

    fn selects(&self, line: &[u8]) -> bool {
        self.regex.is_match(line) != self.invert
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
            if !self.selects(r.data) {
                continue;
            }
            matches += 1;
            match self.mode {
                GrepMode::Lines => {
                    line.clear();
                    if self.with_names {
                        line.extend_from_slice(r.input.name.as_bytes());
                        line.push(b':');
                    }
                    line.extend_from_slice(r.data);
                    line.push(b'\n');
                    ctx.emit(b"", &line);
                }
                GrepMode::Quiet => break, // one selected line says it all
                GrepMode::Count | GrepMode::Files => {}
            }
        }
        if let GrepMode::Count | GrepMode::Files = self.mode {
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
        let name = self.names.get(file).map_or("?", String::as_str).as_bytes();
        if self.mode == GrepMode::Files {
            if total > 0 {
                ctx.write(name);
                ctx.write(b"\n");
            }
            return;
        }
        if self.with_names {
            ctx.write(name);
            ctx.write(b":");
        }
        ctx.write(total.to_string().as_bytes());
        ctx.write(b"\n");
    }
}
