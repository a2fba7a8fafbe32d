//! `grep`: lines matching a regular expression, in input order, as GNU grep prints them.
//!
//! Printing lines it is a map-only job: each map task writes its split's selected lines in
//! order, so the part files concatenated in name order are grep's output. With `-c` (and
//! `-l`) each map counts its split's selected lines and one reducer sums them per file, in
//! input order. With `-q` nothing is written and each split stops at its first selected line.
//!
//! Line numbers (`-n`): a map sees a chunk of a file, not the lines before it, so with `-n`
//! the job gets one reducer that numbers the lines, in one pass over sorted keys. Each map
//! emits, per chunk, its selected lines under `(file, chunk start, 0, line in chunk)` and
//! then the chunk's line count under `(file, chunk start, 1)` ([`NumberedKey`], big-endian,
//! so bytewise order is file order, then chunk order, a chunk's lines before its count).
//! [`Job::reduce_partition`] walks them in that order keeping the lines of the file's
//! earlier chunks: a selected line's number is that plus its place in its chunk, plus 1.
//! Nothing scans a file from its start, and the shuffle holds only the selected lines and
//! one count per chunk. (With `--skip-bad-records`, a skipped line is not counted, so the
//! numbers after it in its file are one short.)
//!
//! Binary files, as GNU grep 3.8 treats them (in the C locale, where only NUL bytes make a
//! file binary): GNU grep reads a file in blocks of [`GNU_BLOCK`] bytes, and once a block
//! holds a NUL the file is binary from that block on. From there it prints no more lines;
//! if a line selected there (NULs count as line ends there, so a line is cut into pieces at
//! its NULs), it prints `grep: NAME: binary file matches` on stderr. `-c`, `-l` and `-q`
//! count every selected piece and print no such message. quern does the same per file:
//! the lines of a file that end before the block of its first NUL are text, the rest are
//! binary. A file inside one map chunk is decided by its map; the client finds the first
//! NUL of each file spread over several chunks when it plans ([`first_nuls`]). A map whose
//! file matched in its binary part counts [`binary_counter`] for it, and the command prints
//! the message for those files, after the selected lines.
//!
//! GNU grep's later blocks can start up to a page earlier when a long line crosses a block
//! boundary, so for a first NUL beyond the first block the cut-off is exact only when lines
//! are short; files with holes, which GNU grep also treats as binary, are not detected.

use quern_runtime::input::{line_count, Chunk, ChunkData};
use quern_runtime::{
    InputFile, InputFormat, Job, KeyGroups, MapContext, Record, ReduceContext, Split, SplitInfo,
};
use regex::bytes::{Regex, RegexBuilder};

/// Counter: lines selected (matching, or with `-v` not matching).
pub const MATCHES: &str = "grep.matches";

/// The size of GNU grep 3.8's reads: a file is binary from the block holding its first NUL.
pub const GNU_BLOCK: u64 = 96 * 1024;

/// The counter a map adds to when file `index` has a selected line in its binary part.
pub fn binary_counter(index: u32) -> String {
    format!("grep.binary_matches.{index}")
}

/// The offset of the first NUL of each of `inputs` that `splits` spread over several
/// chunks, by input index (`None` for the other files and for files without a NUL): what
/// a map reading one chunk of such a file cannot see for itself.
pub fn first_nuls(
    inputs: &[InputFile],
    splits: &[Split],
) -> quern_runtime::Result<Vec<Option<u64>>> {
    let mut chunks = vec![0usize; inputs.len()];
    for c in splits.iter().flat_map(|s| &s.chunks) {
        if let Some(n) = chunks.get_mut(c.file as usize) {
            *n += 1;
        }
    }
    let mut nuls = vec![None; inputs.len()];
    for (input, _) in inputs.iter().zip(&chunks).filter(|(_, n)| **n > 1) {
        let whole = Chunk {
            file: input.index,
            start: 0,
            len: input.size,
        };
        let data = ChunkData::open(input, &whole, InputFormat::Lines)?;
        nuls[input.index as usize] = memchr::memchr(0, data.bytes()).map(|i| i as u64);
    }
    Ok(nuls)
}

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
    /// The first NUL of the files spread over several chunks, by input index (see
    /// [`first_nuls`]).
    pub first_nuls: Vec<Option<u64>>,
    /// `-n`: prefix each printed line with its line number in its file (only
    /// [`GrepMode::Lines`] prints lines; the other modes ignore it, as GNU grep does).
    pub line_numbers: bool,
}

impl GrepParams {
    /// Reduce tasks the job needs: one to sum per file (`-c`, `-l`) or to number lines
    /// (`-n`), none to print lines as they are or for `-q`.
    pub fn reducers(&self) -> u32 {
        match self.mode {
            GrepMode::Count | GrepMode::Files => 1,
            GrepMode::Lines if self.line_numbers => 1,
            GrepMode::Lines | GrepMode::Quiet => 0,
        }
    }
}

/// A key of a numbered grep's map output (`-n`; see the module doc): a selected line of a
/// chunk, or the chunk's line count, which sorts after the chunk's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumberedKey {
    /// The input index of the chunk's file.
    pub file: u32,
    /// The chunk's first byte in its file.
    pub chunk: u64,
    /// `Some(i)`: the chunk's line `i` (0-based), whose value is the line; `None`: the
    /// chunk's line count, whose value is the count (`u64`, big-endian).
    pub line: Option<u64>,
}

impl NumberedKey {
    /// The key's bytes, whose bytewise order is (file, chunk, lines before the count).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.file.to_be_bytes());
        out.extend_from_slice(&self.chunk.to_be_bytes());
        match self.line {
            Some(i) => {
                out.push(0);
                out.extend_from_slice(&i.to_be_bytes());
            }
            None => out.push(1),
        }
    }

    /// Parses what [`NumberedKey::encode`] wrote (`None` for any other bytes).
    pub fn decode(key: &[u8]) -> Option<NumberedKey> {
        let file = u32::from_be_bytes(key.get(..4)?.try_into().ok()?);
        let chunk = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
        let line = match key.get(12..)? {
            [1] => None,
            [0, i @ ..] => Some(u64::from_be_bytes(i.try_into().ok()?)),
            _ => return None,
        };
        Some(NumberedKey { file, chunk, line })
    }
}

/// What [`Grep::print_lines`] found in a chunk.
#[derive(Debug, Clone, Copy, Default)]
struct Printed {
    /// Selected lines (at least 1 for a binary part that matched).
    matches: u64,
    /// Whether a line of the binary part was selected.
    binary_match: bool,
    /// Lines read: all the chunk's, unless it stopped at a binary part's match (then no
    /// later line of the file is printed, so none needs a number).
    lines: u64,
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
    /// The first NUL of the files spread over several chunks, by input index.
    pub first_nuls: Vec<Option<u64>>,
    /// Print line numbers (`-n`, with [`GrepMode::Lines`]): maps emit [`NumberedKey`]s for
    /// one reducer to number.
    pub numbered: bool,
    /// The pattern compiled to search a whole chunk at once (`^` and `$` at line ends), for
    /// the modes that only count; `None` when a match could cross or depend on a line end
    /// (see `chunk_regex`), or lines are printed.
    pub chunk_regex: Option<ChunkRegex>,
}

/// A pattern compiled to search many lines as one haystack, for [`Grep::chunk_regex`].
#[derive(Debug, Clone)]
pub struct ChunkRegex {
    regex: Regex,
    /// No match can hold a NUL either, nor be empty, and the pattern has no `^` or `$`
    /// (which would not match at a NUL): a block holding NULs, whose lines GNU grep cuts at
    /// them, can be searched at once too, each piece between `\n`s and NULs counted once.
    nul_ends: bool,
}

/// `expr` compiled for searching a chunk of lines as one haystack, when that finds exactly
/// the lines a search line by line would: no match can hold a `\n` (no literal or class of
/// the pattern contains one) and no assertion looks at the haystack's own ends (`\A`, `\z`,
/// `(?-m)^`); `^` and `$` then match at line ends, as they match at a line's ends when each
/// line is searched alone. ripgrep searches buffers the same way, for the same reason.
fn chunk_regex(expr: &str, ignore_case: bool) -> Option<ChunkRegex> {
    use regex_syntax::hir::{Class, Hir, HirKind, Look};
    /// Whether no match of `h` can hold a byte of `ends`, nor (with a NUL among them) test
    /// for a line end, which the regex sees only at `\n`.
    fn line_bound(h: &Hir, ends: &[u8]) -> bool {
        let line_look = |l: &Look| match l {
            Look::Start | Look::End | Look::StartCRLF | Look::EndCRLF => true,
            Look::StartLF | Look::EndLF => ends.contains(&0),
            _ => false,
        };
        match h.kind() {
            HirKind::Empty => true,
            HirKind::Literal(l) => !l.0.iter().any(|b| ends.contains(b)),
            HirKind::Class(Class::Unicode(c)) => !ends.iter().any(|&e| {
                c.iter()
                    .any(|r| r.start() <= char::from(e) && char::from(e) <= r.end())
            }),
            HirKind::Class(Class::Bytes(c)) => !ends
                .iter()
                .any(|&e| c.iter().any(|r| r.start() <= e && e <= r.end())),
            HirKind::Look(l) => !line_look(l),
            HirKind::Repetition(r) => line_bound(&r.sub, ends),
            HirKind::Capture(c) => line_bound(&c.sub, ends),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => {
                hs.iter().all(|h| line_bound(h, ends))
            }
        }
    }
    let hir = regex_syntax::ParserBuilder::new()
        .case_insensitive(ignore_case)
        .multi_line(true)
        .utf8(false)
        .build()
        .parse(expr)
        .ok()?;
    if !line_bound(&hir, b"\n") {
        return None;
    }
    let regex = RegexBuilder::new(expr)
        .case_insensitive(ignore_case)
        .multi_line(true)
        .build()
        .ok()?;
    let nul_ends = line_bound(&hir, b"\n\0") && !regex.is_match(b"");
    Some(ChunkRegex { regex, nul_ends })
}

impl Grep {
    /// Compiles the pattern, with a one-line error message on failure.
    pub fn new(p: GrepParams) -> Result<Grep, String> {
        let GrepParams {
            pattern,
            mode,
            options,
            names,
            first_nuls,
            line_numbers,
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
        let chunk_regex = match mode {
            GrepMode::Lines => None,
            _ => chunk_regex(&expr, options.ignore_case),
        };
        Ok(Grep {
            regex,
            chunk_regex,
            invert: options.invert,
            mode,
            with_names: names.len() > 1,
            names,
            first_nuls,
            numbered: line_numbers && mode == GrepMode::Lines,
        })
    }

    fn selects(&self, line: &[u8]) -> bool {
        self.regex.is_match(line) != self.invert
    }

    /// Selected lines in `line` as GNU grep counts them: a line holding NULs (which only
    /// binary blocks do) is the pieces between them.
    fn selected(&self, line: &[u8]) -> u64 {
        if memchr::memchr(0, line).is_none() {
            return u64::from(self.selects(line));
        }
        line.split(|b| *b == 0).filter(|p| self.selects(p)).count() as u64
    }

    /// Prints selected line `r`, the chunk's line `index` (0-based), of a chunk starting at
    /// `chunk`: with `-n` as a [`NumberedKey`] for the reducer to number and name.
    fn write_line(
        &self,
        (index, r): &(u64, Record<'_>),
        chunk: u64,
        out: &mut Vec<u8>,
        ctx: &mut MapContext<'_>,
    ) {
        if self.numbered {
            let key = NumberedKey {
                file: r.input.index,
                chunk,
                line: Some(*index),
            };
            key.encode(out);
            ctx.emit(out, r.data);
            return;
        }
        out.clear();
        if self.with_names {
            out.extend_from_slice(r.input.name.as_bytes());
            out.push(b':');
        }
        out.extend_from_slice(r.data);
        out.push(b'\n');
        ctx.emit(b"", out);
    }

    /// Prints the selected text lines of one chunk (of one file) in order, holding back
    /// those of the current block until the block is known to be NUL-free.
    fn print_lines<'r>(
        &self,
        split: &SplitInfo<'_>,
        records: &mut dyn Iterator<Item = Record<'r>>,
        ctx: &mut MapContext<'_>,
    ) -> Printed {
        let block = |at: u64| at - at % GNU_BLOCK;
        // The line, with its newline, ends at or before `at`.
        let ends_before = |r: &Record<'_>, at: u64| r.offset + (r.data.len() as u64) < at;
        let chunk = split.start;
        let mut binary_from = self
            .first_nuls
            .get(split.input.index as usize)
            .copied()
            .flatten()
            .map(block);
        let mut found = Printed::default();
        // Selected lines not printed yet, with their index in the chunk.
        let mut held: Vec<(u64, Record<'r>)> = Vec::new();
        let mut line = Vec::new();
        for r in records {
            let index = found.lines;
            found.lines += 1;
            if binary_from.is_none() {
                if let Some(i) = memchr::memchr(0, r.data) {
                    binary_from = Some(block(r.offset + i as u64));
                }
            }
            // Held lines are text once a later line starts a new block without a NUL.
            let text_below = binary_from.unwrap_or_else(|| block(r.offset));
            let text = held.partition_point(|(_, h)| ends_before(h, text_below));
            for h in held.drain(..text) {
                self.write_line(&h, chunk, &mut line, ctx);
            }
            if binary_from.is_some() && !held.is_empty() {
                found.binary_match = true; // a held line is selected, and in the binary part
                held.clear();
            }
            match binary_from {
                Some(b) if !ends_before(&r, b) => {
                    if self.selected(r.data) > 0 {
                        found.matches += 1;
                        found.binary_match = true;
                        break; // GNU grep stops at a binary file's first match
                    }
                }
                _ => {
                    if self.selects(r.data) {
                        found.matches += 1;
                        held.push((index, r));
                    }
                }
            }
        }
        // The chunk ends its file's NUL-free stretch, or its file (a file spread over
        // several chunks has its first NUL from the client).
        let text_below = binary_from.unwrap_or(u64::MAX);
        let text = held.partition_point(|(_, h)| ends_before(h, text_below));
        for h in held.drain(..text) {
            self.write_line(&h, chunk, &mut line, ctx);
        }
        found.binary_match |= !held.is_empty();
        found
    }

    /// Reports the `selected` lines of a chunk that `-c`, `-l` or `-q` searched.
    fn count_chunk(&self, split: &SplitInfo<'_>, selected: u64, ctx: &mut MapContext<'_>) {
        if let GrepMode::Count | GrepMode::Files = self.mode {
            // One pair per chunk, even for zero matches: every file gets a count line.
            ctx.emit(&split.input.index.to_be_bytes(), &selected.to_be_bytes());
        }
        ctx.count(MATCHES, u128::from(selected));
    }

    /// Numbers and prints the selected lines of a `-n` grep's only partition: `keys` are
    /// [`NumberedKey`]s, each file's chunks in order, each chunk's lines before its count.
    fn number_lines(&self, keys: &mut KeyGroups<'_, '_>, ctx: &mut ReduceContext<'_>) {
        // The file being numbered, and the lines of its chunks before the current one.
        let mut file = None;
        let mut before = 0u64;
        while let Some((key, values)) = keys.next_key() {
            let Some(k) = NumberedKey::decode(key) else {
                ctx.fail(format!("grep -n: not a line-number key: {key:02x?}"));
                return;
            };
            if file != Some(k.file) {
                file = Some(k.file);
                before = 0;
            }
            let Some(index) = k.line else {
                for v in values {
                    let Ok(lines) = <[u8; 8]>::try_from(*v) else {
                        ctx.fail(format!("grep -n: not a line count: {v:02x?}"));
                        return;
                    };
                    before = before.saturating_add(u64::from_be_bytes(lines));
                }
                continue;
            };
            let number = before.saturating_add(index).saturating_add(1).to_string();
            for line in values {
                if self.with_names {
                    let name = self.names.get(k.file as usize).map_or("?", String::as_str);
                    ctx.write(name.as_bytes());
                    ctx.write(b":");
                }
                ctx.write(number.as_bytes());
                ctx.write(b":");
                ctx.write(line);
                ctx.write(b"\n");
            }
        }
    }
}

/// Bytes `map_chunk` checks, counts and searches at a time: well inside a core's L2 cache.
const CACHE_BLOCK: usize = 256 * 1024;

/// `bytes` in consecutive pieces of whole lines, each of about `size` bytes: cut after the
/// last `\n` within `size`, or after the first one beyond it for a longer line; the last
/// piece may end without one.
fn line_blocks(bytes: &[u8], size: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= size {
            rest.len()
        } else {
            match memchr::memrchr(b'\n', &rest[..size]) {
                Some(i) => i + 1,
                None => memchr::memchr(b'\n', &rest[size..]).map_or(rest.len(), |i| size + i + 1),
            }
        };
        let (block, tail) = rest.split_at(cut);
        rest = tail;
        Some(block)
    })
}

/// Lines of `bytes` holding a match of `regex` (a [`chunk_regex`]), up to the first one
/// with `first`: one search of the chunk, going on from the next line after each match.
/// With `nul_ends` (only for a [`ChunkRegex::nul_ends`] pattern) a NUL ends a line too.
fn matching_lines(regex: &Regex, bytes: &[u8], first: bool, nul_ends: bool) -> u64 {
    if bytes.is_empty() {
        return 0;
    }
    // Without the last line's `\n` the haystack ends where that line does, and no empty
    // line follows it for `^$` to match.
    let hay = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let (mut lines, mut at) = (0u64, 0usize);
    while let Some(m) = regex.find_at(hay, at) {
        lines += 1;
        let rest = &hay[m.start()..];
        let end = if nul_ends {
            memchr::memchr2(b'\n', 0, rest)
        } else {
            memchr::memchr(b'\n', rest)
        };
        match end {
            Some(i) if !first => at = m.start() + i + 1,
            _ => break,
        }
    }
    lines
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
        if self.mode == GrepMode::Lines {
            let found = self.print_lines(split, records, ctx);
            if found.binary_match {
                ctx.count_named(binary_counter(split.input.index), 1);
            }
            if self.numbered {
                let mut key = Vec::new();
                NumberedKey {
                    file: split.input.index,
                    chunk: split.start,
                    line: None,
                }
                .encode(&mut key);
                ctx.emit(&key, &found.lines.to_be_bytes());
            }
            ctx.count(MATCHES, u128::from(found.matches));
            return;
        }
        let mut matches = 0u64;
        for r in records {
            matches += self.selected(r.data);
            if matches > 0 && self.mode == GrepMode::Quiet {
                break; // one selected line says it all
            }
        }
        self.count_chunk(split, matches, ctx);
    }

    /// `-c`, `-l` and `-q`: one search of each block of whole lines of the chunk (see
    /// `chunk_regex`); after each match the search goes on from the next line. A block
    /// holding a NUL, whose lines GNU grep cuts at its NULs, is searched the same way with
    /// NULs ending lines too when the pattern allows it (`ChunkRegex::nul_ends`, and no
    /// `-v`: the pieces it selects would need counting); otherwise the chunk is searched
    /// line by line. The NUL check, the line count (`map.input.records`) and the search
    /// read each block while it is in cache: three passes over memory would cost more
    /// than the search.
    fn map_chunk(&self, split: &SplitInfo<'_>, bytes: &[u8], ctx: &mut MapContext<'_>) -> bool {
        let Some(chunk) = &self.chunk_regex else {
            return false;
        };
        // With -q one selected line says it all.
        let first = self.mode == GrepMode::Quiet && !self.invert;
        let (mut lines, mut matching) = (0u64, 0u64);
        let nul_ok = chunk.nul_ends && !self.invert;
        for block in line_blocks(bytes, CACHE_BLOCK) {
            let nul = memchr::memchr(0, block).is_some();
            if nul && !nul_ok {
                return false;
            }
            lines += line_count(block);
            if !(first && matching > 0) {
                matching += matching_lines(&chunk.regex, block, first, nul);
            }
        }
        ctx.chunk_lines(lines);
        let selected = if self.invert {
            lines - matching
        } else {
            matching
        };
        self.count_chunk(split, selected, ctx);
        true
    }

    fn partition(&self, _key: &[u8], _reducers: u32) -> u32 {
        0
    }

    fn reduce_partition(
        &self,
        _partition: u32,
        keys: &mut KeyGroups<'_, '_>,
        ctx: &mut ReduceContext<'_>,
    ) {
        if self.numbered {
            self.number_lines(keys, ctx);
        } else {
            while let Some((key, values)) = keys.next_key() {
                self.reduce(key, &mut values.iter().copied(), ctx);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_keys_round_trip_and_sort_lines_before_their_chunks_count() {
        let keys = [
            (0, 0, Some(0)),
            (0, 0, Some(1)),
            (0, 0, Some(u64::MAX)),
            (0, 0, None),
            (0, 1, Some(0)),
            (0, 1, None),
            (0, 1 << 40, Some(7)),
            (0, 1 << 40, None),
            (1, 0, Some(0)),
            (1, 0, None),
            (u32::MAX, u64::MAX, None),
        ]
        .map(|(file, chunk, line)| NumberedKey { file, chunk, line });
        let mut encoded = Vec::new();
        for k in keys {
            let mut bytes = Vec::new();
            k.encode(&mut bytes);
            assert_eq!(NumberedKey::decode(&bytes), Some(k));
            encoded.push(bytes);
        }
        assert!(
            encoded.windows(2).all(|w| w[0] < w[1]),
            "bytewise order is (file, chunk, lines before the count)"
        );
        // Too short, a line key without its line, a cut line, an unknown tag, a long count.
        let chunk = [0u8; 12];
        for tail in [&[][..], &[0], &[0; 8], &[2], &[1, 0]] {
            let bad = [&chunk[..], tail].concat();
            assert_eq!(NumberedKey::decode(&bad), None, "{bad:?}");
        }
        assert_eq!(NumberedKey::decode(&chunk[..11]), None);
    }

    /// `matching_lines` over `text` + each of `ends` counts the lines (with `nul_ends`, the
    /// pieces between `\n`s and NULs) that `expr` matches searched one by one.
    fn assert_counts_lines(
        chunk: &ChunkRegex,
        expr: &str,
        ignore_case: bool,
        text: &[u8],
        ends: &[&[u8]],
        nul_ends: bool,
    ) {
        let per_line = RegexBuilder::new(expr)
            .case_insensitive(ignore_case)
            .build()
            .unwrap();
        for end in ends {
            let text = [text, end].concat();
            let lines = text
                .strip_suffix(b"\n")
                .unwrap_or(&text)
                .split(|b| *b == b'\n' || (nul_ends && *b == 0));
            let want = lines.filter(|l| per_line.is_match(l)).count() as u64;
            let what = format!("{expr:?} ending {end:?}");
            let found = |first| matching_lines(&chunk.regex, &text, first, nul_ends);
            assert_eq!(found(false), want, "{what}");
            assert_eq!(found(true), want.min(1), "{what}");
        }
    }

    #[test]
    fn a_chunk_searched_at_once_finds_the_lines_a_search_per_line_finds() {
        let text: &[u8] = b"alpha beta\n\nbeta\r\nxalpha\n  \nthe word alpha.\nlast alpha";
        let cases: &[(&str, bool)] = &[
            ("alpha", false),
            ("ALPHA", true),
            ("^alpha", false),
            ("alpha$", false),
            ("beta\r$", false),
            ("^$", false),
            ("^ *$", false),
            ("a*", false),
            ("(?-u:\\b)(?:alpha)(?-u:\\b)", false),
            (r"\balpha\b", false),
            ("[a-z]+ph[a-z]", false),
            ("x|^b", false),
            ("zzz", false),
        ];
        for &(expr, ignore_case) in cases {
            let chunk = chunk_regex(expr, ignore_case)
                .unwrap_or_else(|| panic!("{expr:?} cannot cross a line"));
            // Ending without a newline, with one, and with an empty last line.
            assert_counts_lines(
                &chunk,
                expr,
                ignore_case,
                text,
                &[b"", b"\n", b"\n\n"],
                false,
            );
        }
        assert_eq!(
            matching_lines(&chunk_regex("^$", false).unwrap().regex, b"", false, false),
            0
        );
        // A pattern that could match across or at the chunk's own ends is searched per line.
        for expr in [
            r"a\nb", r"[^a]", r"\s", "(?s).", r"\Aalpha", r"alpha\z", "(?-m)^a", "(?R)^a",
        ] {
            assert!(chunk_regex(expr, false).is_none(), "{expr:?}");
        }
    }

    /// A block holding NULs is searched at once for the patterns that cannot hold, look
    /// for or stand for a line end or be empty, and counts the pieces between `\n`s and
    /// NULs that a search of each piece would select.
    #[test]
    fn a_block_with_nuls_searched_at_once_counts_the_pieces_that_match() {
        let text: &[u8] = b"foo\0bar\nfoo foo\0\0xfoo\n\0\nbar\0baz foo\nfoofoo\0";
        let cases: &[(&str, bool)] = &[
            ("foo", false),
            ("FOO", true),
            ("ba[rz]", false),
            (r"\bfoo\b", false),
            ("(?-u:\\b)foo(?-u:\\b)", false),
            ("o+ f", false),
            ("zzz", false),
        ];
        for &(expr, ignore_case) in cases {
            let chunk = chunk_regex(expr, ignore_case).expect("searched at once");
            assert!(chunk.nul_ends, "{expr:?} can be searched across NULs");
            assert_counts_lines(
                &chunk,
                expr,
                ignore_case,
                text,
                &[b"", b"\n", b"\0\n"],
                true,
            );
        }
        // Line anchors (which match only at `\n`), NULs in the pattern and empty matches
        // keep a block with NULs searched line by line.
        for expr in ["^foo", "foo$", "(?m)^", "[^a]", "foo\\x00", "a*", r"\W"] {
            let chunk = chunk_regex(expr, false);
            assert!(!chunk.is_some_and(|c| c.nul_ends), "{expr:?}");
        }
    }

    #[test]
    fn line_blocks_cut_after_newlines_and_keep_every_byte() {
        let text: &[u8] = b"ab\ncdefgh\n\nij\nklmnopqrstu\nv";
        for size in 1..=text.len() + 1 {
            let blocks: Vec<&[u8]> = line_blocks(text, size).collect();
            assert_eq!(blocks.concat(), text, "size {size}");
            let (last, whole) = blocks.split_last().unwrap();
            for block in whole {
                assert!(block.ends_with(b"\n"), "size {size}: {block:?}");
                // Longer than the size only for a single line that is.
                let lines = block.iter().filter(|&&b| b == b'\n').count();
                assert!(block.len() <= size || lines == 1, "size {size}: {block:?}");
            }
            assert!(!last.is_empty());
            assert_eq!(
                blocks.iter().map(|b| line_count(b)).sum::<u64>(),
                line_count(text),
                "size {size}"
            );
        }
        assert_eq!(line_blocks(b"", 4).count(), 0);
        assert_eq!(line_blocks(b"abcdef", 2).collect::<Vec<_>>(), [b"abcdef"]);
    }

    #[test]
    fn line_numbers_need_a_reducer_only_when_lines_are_printed() {
        let params = |mode, line_numbers| GrepParams {
            pattern: "a".into(),
            mode,
            options: GrepOptions::default(),
            names: vec!["x".into()],
            first_nuls: vec![],
            line_numbers,
        };
        assert_eq!(params(GrepMode::Lines, true).reducers(), 1);
        assert_eq!(params(GrepMode::Lines, false).reducers(), 0);
        assert_eq!(params(GrepMode::Quiet, true).reducers(), 0);
        assert_eq!(params(GrepMode::Count, true).reducers(), 1);
        assert_eq!(params(GrepMode::Files, true).reducers(), 1);
        let grep = |mode| Grep::new(params(mode, true)).map(|g| g.numbered);
        assert_eq!(grep(GrepMode::Lines), Ok(true));
        assert_eq!(grep(GrepMode::Count), Ok(false));
    }
}
