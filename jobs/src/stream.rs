//! `stream`: Hadoop Streaming. Any executable is the mapper, combiner or reducer, run
//! through `/bin/sh -c` with Hadoop's contract, so existing streaming scripts run unchanged.
//!
//! - **Map.** One process per chunk of a split (a packed split holds several small files:
//!   one process per file), in a fresh working directory. Its stdin gets each line of the
//!   chunk (a trailing `\r` removed) and `\n`, written straight from the mapped input. Each
//!   stdout line is split at the `key_fields`-th separator (default: the first TAB): key
//!   before, value after; a line without one is all key. A map-only job writes the lines
//!   as they come.
//! - **Combine.** One process per partition of each spill, fed `key\tvalue\n` in key
//!   order; its output is split like the mapper's.
//! - **Reduce.** One process per partition, fed `key\tvalue\n` in key order (each key's
//!   values adjacent, ascending); its stdout lines are the output. Without a reducer the
//!   identity: the sorted `key\tvalue` lines.
//! - **stderr.** `reporter:counter:GROUP,COUNTER,AMOUNT` adds to counter `GROUP.COUNTER`,
//!   `reporter:status:MESSAGE` sets the attempt's status; other lines are kept (the last
//!   [`STDERR_TAIL`] bytes) and shown if the attempt fails.
//! - **Failure.** A non-zero exit, death by a signal, a broken pipe or [`StreamParams::
//!   timeout_ms`] of silence fails the attempt, naming the command, its status and its
//!   stderr's tail; the runtime retries it as any attempt. The process group is killed
//!   whatever happens ([`quern_runtime::child`]).

use std::io::IoSlice;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use quern_runtime::child::{Drain, Feed, Finished, TaskProcess, MAX_SLICES};
use quern_runtime::{
    AttemptInfo, InputFormat, Job, KeyGroups, MapContext, Record, ReduceContext, SplitInfo,
};

/// Bytes of a process's other stderr lines kept to explain its failure.
pub const STDERR_TAIL: usize = 64 << 10;

/// A streaming job's parameters, as sent to the workers.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct StreamParams {
    /// The mapper command.
    pub mapper: String,
    /// The combiner command, if any.
    pub combiner: Option<String>,
    /// The reducer command (`None`: the identity reduce).
    pub reducer: Option<String>,
    /// No reduce phase: the mapper's lines are the output, in input order.
    pub map_only: bool,
    /// Map output keys end at this separator (1: the first).
    pub key_fields: u32,
    /// The field separator of map and combiner output lines.
    pub separator: Vec<u8>,
    /// Extra environment (`--env NAME=VALUE`).
    pub env: Vec<(String, String)>,
    /// Files linked into every process's working directory (`--file`), absolute paths.
    pub files: Vec<String>,
    /// A process silent this long is killed, ms.
    pub timeout_ms: u64,
}

/// A Hadoop Streaming job.
#[derive(Debug, Clone)]
pub struct Stream {
    params: StreamParams,
}

impl Stream {
    /// A streaming job; fails if the parameters cannot work.
    pub fn new(params: StreamParams) -> Result<Stream, String> {
        if params.key_fields == 0 {
            return Err("--key-fields must be at least 1".into());
        }
        if params.separator.is_empty() {
            return Err("--separator must not be empty".into());
        }
        Ok(Stream { params })
    }

    /// Splits a map or combiner output line into key and value.
    fn split_line<'l>(&self, line: &'l [u8]) -> (&'l [u8], &'l [u8]) {
        let sep = &self.params.separator;
        let mut from = 0;
        for _ in 0..self.params.key_fields {
            match memchr::memmem::find(&line[from..], sep) {
                Some(at) => from += at + sep.len(),
                None => return (line, b""),
            }
        }
        (&line[..from - sep.len()], &line[from..])
    }

    /// Runs `command` as `role`, fed by `feed`, its output lines going to `target`; the
    /// failure message if it failed (`None` also when the attempt was cancelled).
    fn run<'a>(
        &self,
        role: &str,
        command: &str,
        env: Vec<(String, String)>,
        feed: &mut dyn Feed<'a>,
        target: &mut dyn Target,
    ) -> Option<String> {
        let scratch = std::env::temp_dir();
        let base = target.attempt().map_or(scratch.as_path(), |a| &a.work_dir);
        let failed = |what: String, tail: &[u8]| Some(failure(role, command, &what, tail));
        let dir = match std::fs::create_dir_all(base).and_then(|()| {
            tempfile::Builder::new()
                .prefix(&format!("stream-{role}-"))
                .tempdir_in(base)
        }) {
            Ok(dir) => dir,
            Err(e) => {
                return failed(
                    format!("cannot make its directory in {}: {e}", base.display()),
                    b"",
                )
            }
        };
        if let Err(e) = self.link_files(dir.path()) {
            return failed(e, b"");
        }
        let mut env = env;
        env.extend(self.params.env.iter().cloned());
        let process = match TaskProcess::spawn(command, dir.path(), &env) {
            Ok(p) => p,
            Err(e) => return failed(e.to_string(), b""),
        };
        let mut drain = LineDrain {
            target,
            out: Vec::new(),
            err: Vec::new(),
            tail: Vec::new(),
        };
        let idle = Duration::from_millis(self.params.timeout_ms.max(1));
        let result = process.pump(feed, &mut drain, idle);
        drain.finish();
        match result {
            Ok(Finished {
                status,
                broken_pipe,
                input_bytes,
            }) => {
                if !status.success() {
                    failed(describe(status), &drain.tail)
                } else if broken_pipe {
                    failed(
                        format!(
                            "stopped reading its input after {input_bytes} bytes (broken pipe)"
                        ),
                        &drain.tail,
                    )
                } else {
                    None
                }
            }
            Err(quern_runtime::Error::Cancelled) => None,
            Err(e) => failed(e.to_string(), &drain.tail),
        }
    }

    /// Symlinks the `--file`s into a process's working directory.
    fn link_files(&self, dir: &Path) -> Result<(), String> {
        for file in &self.params.files {
            let path = PathBuf::from(file);
            let name = path
                .file_name()
                .ok_or_else(|| format!("--file {file}: not a file name"))?;
            std::os::unix::fs::symlink(&path, dir.join(name))
                .map_err(|e| format!("--file {file}: {e}"))?;
        }
        Ok(())
    }
}

/// Hadoop's names for a task and its attempt: `job_quern_0001`, `task_quern_0001_m_000003`,
/// `attempt_quern_0001_m_000003_7`.
fn task_env(attempt: Option<&AttemptInfo>) -> Vec<(String, String)> {
    let Some(a) = attempt else {
        return Vec::new();
    };
    let kind = if a.is_map { 'm' } else { 'r' };
    let job = format!("quern_{:04}", a.job);
    let task = format!("task_{job}_{kind}_{:06}", a.index);
    let attempt = format!("attempt_{job}_{kind}_{:06}_{}", a.index, a.attempt);
    let mut env = vec![
        ("mapreduce_job_id".to_string(), format!("job_{job}")),
        ("mapreduce_task_id".to_string(), task.clone()),
        ("mapreduce_task_attempt_id".to_string(), attempt.clone()),
        ("mapreduce_task_partition".to_string(), a.index.to_string()),
        ("mapreduce_task_ismap".to_string(), a.is_map.to_string()),
    ];
    // Hadoop 1's names, which old scripts read.
    env.push(("mapred_task_id".to_string(), attempt));
    env.push(("mapred_tip_id".to_string(), task));
    env.push(("mapred_task_partition".to_string(), a.index.to_string()));
    env.push(("mapred_task_is_map".to_string(), a.is_map.to_string()));
    env
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended: {status}"),
    }
}

fn failure(role: &str, command: &str, what: &str, tail: &[u8]) -> String {
    let mut message = format!("{role} `{command}` {what}");
    let tail = String::from_utf8_lossy(tail);
    let tail = tail.trim_end();
    if !tail.is_empty() {
        message.push_str("; its stderr ends with:\n");
        message.push_str(tail);
    }
    message
}

/// Where a process's output lines, counters and status go.
trait Target {
    fn line(&mut self, line: &[u8]);
    fn count(&mut self, name: String, n: u128);
    fn status(&mut self, message: String);
    fn cancelled(&self) -> bool;
    fn attempt(&self) -> Option<&AttemptInfo>;
}

/// Mapper and combiner output: pairs (split at the separator), or raw lines (map-only).
struct Pairs<'j, 'c, 'm> {
    job: &'j Stream,
    ctx: &'c mut MapContext<'m>,
    raw: bool,
}

impl Target for Pairs<'_, '_, '_> {
    fn line(&mut self, line: &[u8]) {
        if self.raw {
            self.ctx.emit(line, b"\n");
        } else {
            let (key, value) = self.job.split_line(line);
            self.ctx.emit(key, value);
        }
    }
    fn count(&mut self, name: String, n: u128) {
        self.ctx.count_named(name, n);
    }
    fn status(&mut self, message: String) {
        self.ctx.set_status(message);
    }
    fn cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }
    fn attempt(&self) -> Option<&AttemptInfo> {
        self.ctx.attempt()
    }
}

/// Reducer output: the partition's part file.
struct Output<'c, 'r> {
    ctx: &'c mut ReduceContext<'r>,
}

impl Target for Output<'_, '_> {
    fn line(&mut self, line: &[u8]) {
        self.ctx.write(line);
        self.ctx.write(b"\n");
    }
    fn count(&mut self, name: String, n: u128) {
        self.ctx.count_named(name, n);
    }
    fn status(&mut self, message: String) {
        self.ctx.set_status(message);
    }
    fn cancelled(&self) -> bool {
        self.ctx.is_cancelled()
    }
    fn attempt(&self) -> Option<&AttemptInfo> {
        self.ctx.attempt()
    }
}

/// Cuts a process's stdout and stderr into lines; handles the `reporter:` protocol.
struct LineDrain<'t> {
    target: &'t mut dyn Target,
    /// A stdout line not yet ended.
    out: Vec<u8>,
    /// A stderr line not yet ended.
    err: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of other stderr lines.
    tail: Vec<u8>,
}

impl LineDrain<'_> {
    /// Takes the lines that were not ended by `\n`.
    fn finish(&mut self) {
        if !self.out.is_empty() {
            let line = std::mem::take(&mut self.out);
            self.target.line(&line);
        }
        if !self.err.is_empty() {
            let line = std::mem::take(&mut self.err);
            self.stderr_line(&line);
        }
    }

    fn stderr_line(&mut self, line: &[u8]) {
        if let Some(report) = line.strip_prefix(b"reporter:counter:") {
            let text = String::from_utf8_lossy(report);
            let fields: Vec<&str> = text.trim_end().split(',').collect();
            if let [group, counter, amount] = fields[..] {
                if let Ok(n) = amount.trim().parse::<u128>() {
                    self.target.count(format!("{group}.{counter}"), n);
                    return;
                }
            }
        } else if let Some(status) = line.strip_prefix(b"reporter:status:") {
            self.target
                .status(String::from_utf8_lossy(status).trim_end().to_string());
            return;
        }
        self.tail.extend_from_slice(line);
        self.tail.push(b'\n');
        if self.tail.len() > 2 * STDERR_TAIL {
            let cut = self.tail.len() - STDERR_TAIL;
            self.tail.drain(..cut);
        }
    }
}

/// Calls `each` with every line `bytes` completes, `partial` holding the unended rest.
fn lines(partial: &mut Vec<u8>, mut bytes: &[u8], mut each: impl FnMut(&[u8])) {
    while let Some(nl) = memchr::memchr(b'\n', bytes) {
        if partial.is_empty() {
            each(&bytes[..nl]);
        } else {
            partial.extend_from_slice(&bytes[..nl]);
            each(partial);
            partial.clear();
        }
        bytes = &bytes[nl + 1..];
    }
    partial.extend_from_slice(bytes);
}

impl Drain for LineDrain<'_> {
    fn stdout(&mut self, bytes: &[u8]) {
        let target = &mut *self.target;
        lines(&mut self.out, bytes, |line| target.line(line));
    }

    fn stderr(&mut self, bytes: &[u8]) {
        let mut partial = std::mem::take(&mut self.err);
        lines(&mut partial, bytes, |line| self.stderr_line(line));
        if partial.len() > STDERR_TAIL {
            // A "line" this long is not a report: keep it as text.
            let line = std::mem::take(&mut partial);
            self.stderr_line(&line);
        }
        self.err = partial;
    }

    fn cancelled(&self) -> bool {
        self.target.cancelled()
    }
}

/// A mapper's input: each record, without a trailing `\r`, and `\n`.
struct Lines<'r, 'i> {
    records: &'r mut dyn Iterator<Item = Record<'i>>,
}

impl<'i> Feed<'i> for Lines<'_, 'i> {
    fn feed(&mut self, slices: &mut Vec<IoSlice<'i>>) -> bool {
        while slices.len() + 2 <= MAX_SLICES {
            let Some(r) = self.records.next() else {
                return false;
            };
            let line = r.data.strip_suffix(b"\r").unwrap_or(r.data);
            slices.extend([IoSlice::new(line), IoSlice::new(b"\n")]);
        }
        true
    }
}

/// Appends `key\tvalue\n` as four slices.
fn pair_line<'a>(slices: &mut Vec<IoSlice<'a>>, key: &'a [u8], value: &'a [u8]) {
    slices.extend([
        IoSlice::new(key),
        IoSlice::new(b"\t"),
        IoSlice::new(value),
        IoSlice::new(b"\n"),
    ]);
}

/// A combiner's input: one spill's pairs of one partition, as `key\tvalue\n` lines.
struct PairLines<'r, 'p> {
    pairs: &'r mut dyn Iterator<Item = (&'p [u8], &'p [u8])>,
}

impl<'p> Feed<'p> for PairLines<'_, 'p> {
    fn feed(&mut self, slices: &mut Vec<IoSlice<'p>>) -> bool {
        while slices.len() + 4 <= MAX_SLICES {
            let Some((key, value)) = self.pairs.next() else {
                return false;
            };
            pair_line(slices, key, value);
        }
        true
    }
}

/// A reducer's input: the partition's keys, each value as a `key\tvalue\n` line.
struct GroupLines<'r, 'm, 'a> {
    keys: &'r mut KeyGroups<'m, 'a>,
    key: &'a [u8],
    /// The current key's values (copies of the references the groups lend).
    values: Vec<&'a [u8]>,
    at: usize,
}

impl<'a> Feed<'a> for GroupLines<'_, '_, 'a> {
    fn feed(&mut self, slices: &mut Vec<IoSlice<'a>>) -> bool {
        while slices.len() + 4 <= MAX_SLICES {
            if let Some(&value) = self.values.get(self.at) {
                self.at += 1;
                pair_line(slices, self.key, value);
                continue;
            }
            let Some((key, values)) = self.keys.next_key() else {
                return false;
            };
            self.key = key;
            self.values.clear();
            self.values.extend_from_slice(values);
            self.at = 0;
        }
        true
    }
}

impl Job for Stream {
    fn name(&self) -> &str {
        "stream"
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
        let mut env = task_env(ctx.attempt());
        let file = split.input.path.display().to_string();
        env.extend([
            ("mapreduce_map_input_file".to_string(), file.clone()),
            ("map_input_file".to_string(), file),
            (
                "mapreduce_map_input_start".to_string(),
                split.start.to_string(),
            ),
            (
                "mapreduce_map_input_length".to_string(),
                split.len.to_string(),
            ),
            ("map_input_start".to_string(), split.start.to_string()),
            ("map_input_length".to_string(), split.len.to_string()),
        ]);
        let mut feed = Lines { records };
        let mut target = Pairs {
            job: self,
            ctx: &mut *ctx,
            raw: self.params.map_only,
        };
        let failed = self.run("mapper", &self.params.mapper, env, &mut feed, &mut target);
        if let Some(message) = failed {
            ctx.fail(message);
        }
    }

    fn has_combiner(&self) -> bool {
        self.params.combiner.is_some()
    }

    fn combines_runs(&self) -> bool {
        true
    }

    fn combine_run<'p>(
        &self,
        _partition: u32,
        pairs: &mut dyn Iterator<Item = (&'p [u8], &'p [u8])>,
        ctx: &mut MapContext<'_>,
    ) {
        let Some(combiner) = &self.params.combiner else {
            for (k, v) in pairs {
                ctx.emit(k, v);
            }
            return;
        };
        let env = task_env(ctx.attempt());
        let mut feed = PairLines { pairs };
        let mut target = Pairs {
            job: self,
            ctx: &mut *ctx,
            raw: false,
        };
        if let Some(message) = self.run("combiner", combiner, env, &mut feed, &mut target) {
            ctx.fail(message);
        }
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        for value in values {
            ctx.write(key);
            ctx.write(b"\t");
            ctx.write(value);
            ctx.write(b"\n");
        }
    }

    fn reduce_partition(
        &self,
        partition: u32,
        keys: &mut KeyGroups<'_, '_>,
        ctx: &mut ReduceContext<'_>,
    ) {
        let Some(reducer) = &self.params.reducer else {
            while let Some((key, values)) = keys.next_key() {
                self.reduce(key, &mut values.iter().copied(), ctx);
            }
            return;
        };
        let _ = partition;
        let env = task_env(ctx.attempt());
        let mut feed = GroupLines {
            keys,
            key: b"",
            values: Vec::new(),
            at: 0,
        };
        let mut target = Output { ctx: &mut *ctx };
        if let Some(message) = self.run("reducer", reducer, env, &mut feed, &mut target) {
            ctx.fail(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key_fields: u32, separator: &str) -> Stream {
        Stream::new(StreamParams {
            mapper: "cat".into(),
            combiner: None,
            reducer: None,
            map_only: false,
            key_fields,
            separator: separator.as_bytes().to_vec(),
            env: Vec::new(),
            files: Vec::new(),
            timeout_ms: 1000,
        })
        .expect("job")
    }

    #[test]
    fn lines_split_at_the_nth_separator() {
        let j = job(1, "\t");
        assert_eq!(j.split_line(b"a\tb\tc"), (&b"a"[..], &b"b\tc"[..]));
        assert_eq!(j.split_line(b"abc"), (&b"abc"[..], &b""[..]));
        assert_eq!(j.split_line(b"a\t"), (&b"a"[..], &b""[..]));
        let j = job(2, ".");
        assert_eq!(j.split_line(b"a.b.c.d"), (&b"a.b"[..], &b"c.d"[..]));
        assert_eq!(j.split_line(b"a.b"), (&b"a.b"[..], &b""[..]));
        let j = job(1, "::");
        assert_eq!(j.split_line(b"k::v::w"), (&b"k"[..], &b"v::w"[..]));
        assert!(Stream::new(StreamParams {
            key_fields: 0,
            ..job(1, "\t").params
        })
        .is_err());
    }

    #[test]
    fn lines_are_cut_across_reads() {
        let mut partial = Vec::new();
        let mut seen: Vec<Vec<u8>> = Vec::new();
        for chunk in [&b"ab"[..], b"c\nde\n\nf", b"", b"g\n"] {
            lines(&mut partial, chunk, |l| seen.push(l.to_vec()));
        }
        assert_eq!(seen, [&b"abc"[..], b"de", b"", b"fg"]);
        assert!(partial.is_empty());
    }
}
