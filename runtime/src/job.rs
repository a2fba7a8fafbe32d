//! The job model: what a user implements.
//!
//! A job is `map(record) -> (key, value)*`, an optional `combine`, a `partition(key) -> 0..R`
//! and `reduce(key, values) -> bytes`. Keys and values are byte slices. The runtime calls
//! `map` with slices that point into the memory-mapped input and copies each emitted pair
//! exactly once (into the task's sort buffer); there is no per-record allocation.
//!
//! Ordering contract: inside a reduce partition, `reduce` is called once per distinct key in
//! ascending bytewise key order, and sees that key's values in ascending bytewise order. The
//! order therefore never depends on split sizes, spills, worker count or timing, which is
//! what lets every execution mode produce byte-identical output.
//!
//! Map-only jobs (`R = 0`) skip sorting: each map task writes `key ++ value` of every emitted
//! pair, in emit order, to its own part file.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How input files are cut into records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// Text lines. A record is a line without its `\n`; a final line without `\n` is a record.
    Lines,
    /// Fixed-size binary records of this many bytes (TeraSort: 100). A file whose size is not
    /// a multiple of it is rejected.
    Fixed(usize),
    /// No input files: a range of row numbers, one record per row (`Record::offset` is the
    /// row number, `data` is empty). Used by generators such as TeraGen.
    Rows(u64),
}

/// One input file of a job, as the user named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Position in the job's (expanded, ordered) input list.
    pub index: u32,
    /// The file's path.
    pub path: PathBuf,
    /// The name shown to users (the path as given on the command line, or joined below a
    /// directory that was given).
    pub name: String,
    /// The file's size in bytes when the job was planned.
    pub size: u64,
}

/// One chunk of a map task's split: a byte range of one file (see [`crate::input::Split`]).
/// [`Job::map_split`] is called once per chunk, in input order, all feeding the same task
/// output, so per-chunk state is per-file state.
#[derive(Debug, Clone, Copy)]
pub struct SplitInfo<'a> {
    /// The file (or, for [`InputFormat::Rows`], a synthetic entry named `rows`).
    pub input: &'a InputFile,
    /// First byte (or row) of the chunk in its file.
    pub start: u64,
    /// Bytes (or rows) in the chunk.
    pub len: u64,
}

/// One input record: a slice of the mapped input.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The record's bytes (a line without `\n`, or a fixed-size record).
    pub data: &'a [u8],
    /// Byte offset of the record in its file (row number for [`InputFormat::Rows`]).
    pub offset: u64,
    /// The file the record came from.
    pub input: &'a InputFile,
}

/// Where emitted pairs go (a partitioned sort buffer, or a map-only output file).
pub trait Sink {
    /// Accepts one pair; the sink copies what it keeps.
    fn emit(&mut self, key: &[u8], value: &[u8]);
}

/// Named counters of one task attempt, merged by the runtime from committed attempts only.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    values: Vec<(Cow<'static, str>, u128)>,
}

impl Counters {
    /// Adds `n` to counter `name` (a few counters per task: a linear scan beats hashing).
    pub fn add(&mut self, name: &'static str, n: u128) {
        self.add_cow(Cow::Borrowed(name), n);
    }

    /// Adds `n` to a counter whose name was computed (e.g. received from a worker).
    pub fn add_named(&mut self, name: String, n: u128) {
        self.add_cow(Cow::Owned(name), n);
    }

    fn add_cow(&mut self, name: Cow<'static, str>, n: u128) {
        match self.values.iter_mut().find(|(k, _)| *k == name) {
            Some((_, v)) => *v = v.wrapping_add(n),
            None => self.values.push((name, n)),
        }
    }

    /// Current value of `name` (0 if never counted).
    pub fn get(&self, name: &str) -> u128 {
        self.values
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    }

    /// All counters, in first-use order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u128)> + '_ {
        self.values.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// Adds every counter of `other` into `self`.
    pub fn merge(&mut self, other: &Counters) {
        for (k, v) in &other.values {
            self.add_cow(k.clone(), *v);
        }
    }
}

/// Faults injected into every attempt of a worker, for tests and benchmarks only
/// (`QUERN_FAULT`, read by the worker process).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Run this many times slower (1.0 or less: normal speed).
    pub slow: f64,
    /// Panic, as a buggy `map` would, on records containing these bytes.
    pub panic_on: Option<Vec<u8>>,
}

impl Faults {
    /// Parses `slow:N` and `panic-on:TEXT`, comma-separated.
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut faults = Faults::default();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            match item.split_once(':') {
                Some(("slow", n)) => {
                    faults.slow = n
                        .parse()
                        .map_err(|_| format!("QUERN_FAULT: bad factor in {item:?}"))?
                }
                Some(("panic-on", text)) if !text.is_empty() => {
                    faults.panic_on = Some(text.as_bytes().to_vec())
                }
                _ => {
                    return Err(format!(
                        "QUERN_FAULT: unknown fault {item:?} (slow:N, panic-on:TEXT)"
                    ))
                }
            }
        }
        Ok(faults)
    }
}

/// Shared between a running attempt and whoever supervises it: a cancel flag, progress,
/// the record being processed (to blame it if user code crashes), records to skip, and
/// injected faults.
#[derive(Debug, Default)]
pub struct TaskControl {
    cancelled: AtomicBool,
    /// Progress of the current phase, set as an absolute value (a map's read phase: bytes
    /// read; a reduce: bytes merged).
    done: AtomicU64,
    /// Progress credited by later phases (a map's sort and spill), added to `done`.
    later: AtomicU64,
    total: AtomicU64,
    written: AtomicU64,
    current: AtomicU64,
    skip: Vec<u64>,
    faults: Faults,
    attempt: Option<AttemptInfo>,
    status: std::sync::Mutex<Option<String>>,
}

/// Which attempt of which task a [`TaskControl`] supervises, and where it may keep scratch
/// files: what user code that starts processes or names files needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    /// The job's number on its cluster (1 for a job run without a cluster).
    pub job: u64,
    /// True for a map task, false for a reduce.
    pub is_map: bool,
    /// The map task's index, or the reduce's partition.
    pub index: u32,
    /// The attempt's id (unique within the job).
    pub attempt: u64,
    /// A local directory for the attempt's scratch files (shared with other attempts: name
    /// files after the attempt).
    pub work_dir: PathBuf,
}

/// Slows a loop down by a factor (the `slow:N` fault): called now and then, it sleeps for
/// `N - 1` times the time the loop ran since the previous call.
#[derive(Debug)]
pub struct Pacer {
    factor: f64,
    since: std::time::Instant,
}

impl Pacer {
    /// Paces at `control`'s slowness (a no-op at normal speed).
    pub fn new(control: &TaskControl) -> Pacer {
        Pacer {
            factor: control.faults.slow,
            since: std::time::Instant::now(),
        }
    }

    /// Sleeps as the fault requires.
    pub fn pace(&mut self) {
        if self.factor > 1.0 {
            std::thread::sleep(self.since.elapsed().mul_f64(self.factor - 1.0));
            self.since = std::time::Instant::now();
        }
    }
}

impl TaskControl {
    /// A control for an attempt that must skip the records at `skip` (split positions) and
    /// suffer `faults`.
    pub fn new(mut skip: Vec<u64>, faults: Faults) -> TaskControl {
        skip.sort_unstable();
        TaskControl {
            skip,
            faults,
            current: AtomicU64::new(u64::MAX),
            ..TaskControl::default()
        }
    }

    /// Position in its split (see [`crate::input::Split`]) of the record the attempt is
    /// processing (`None` before the first).
    pub fn current_record(&self) -> Option<u64> {
        Some(self.current.load(Ordering::Relaxed)).filter(|&o| o != u64::MAX)
    }

    pub(crate) fn set_current(&self, offset: u64) {
        self.current.store(offset, Ordering::Relaxed);
    }

    pub(crate) fn skips(&self, offset: u64) -> bool {
        !self.skip.is_empty() && self.skip.binary_search(&offset).is_ok()
    }

    pub(crate) fn panic_on(&self) -> Option<&[u8]> {
        self.faults.panic_on.as_deref()
    }

    /// True when the attempt must see every record itself: it has records to skip or
    /// faults to suffer, so it may not be mapped chunk by chunk ([`Job::map_chunk`]).
    pub(crate) fn needs_records(&self) -> bool {
        !self.skip.is_empty() || self.faults != Faults::default()
    }

    /// Names the attempt this control supervises.
    pub fn with_attempt(mut self, info: AttemptInfo) -> TaskControl {
        self.attempt = Some(info);
        self
    }

    /// The attempt this control supervises, when its driver said.
    pub fn attempt(&self) -> Option<&AttemptInfo> {
        self.attempt.as_ref()
    }

    /// Sets the attempt's status message (shown on the cluster's status page).
    pub fn set_status(&self, message: String) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    /// The attempt's latest status message.
    pub fn status(&self) -> Option<String> {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the attempt to stop; it returns [`crate::Error::Cancelled`] at its next check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// True once [`TaskControl::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Records progress: `done` of `total` units (and forgets what later phases credited).
    pub fn set_progress(&self, done: u64, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.later.store(0, Ordering::Relaxed);
        self.done.store(done, Ordering::Relaxed);
    }

    /// Counts `n` bytes of final output handed to the output file.
    pub fn add_written(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes of final output written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Sets the work done in the current phase.
    pub fn set_done(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }

    /// Credits `n` units of work done by a later phase (a map's sort and spill).
    pub fn add_done(&self, n: u64) {
        self.later.fetch_add(n, Ordering::Relaxed);
    }

    /// Units of the current phase done: for a map, the bytes of its split read so far.
    pub fn input_done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Sets the total amount of work, bytes.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// `(done, total)` units, over every phase.
    pub fn progress(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed) + self.later.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// What `map` and `map_split` use to emit pairs and count things.
pub struct MapContext<'a> {
    pub(crate) sink: &'a mut dyn Sink,
    pub(crate) counters: &'a mut Counters,
    pub(crate) control: Option<&'a TaskControl>,
    /// Bytes (or rows) of the split before the current chunk, and progress units per
    /// byte of the read phase: progress reported for a chunk is placed inside the split's.
    pub(crate) base: u64,
    pub(crate) weight: u64,
    pub(crate) failure: Option<String>,
    /// The lines of the chunk [`Job::map_chunk`] mapped, if it counted them.
    pub(crate) chunk_lines: Option<u64>,
}

impl std::fmt::Debug for MapContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapContext")
            .field("counters", &self.counters)
            .finish()
    }
}

impl<'a> MapContext<'a> {
    /// A context over any sink (for tests and tools that run `map` outside the runtime).
    pub fn new(sink: &'a mut dyn Sink, counters: &'a mut Counters) -> Self {
        MapContext {
            sink,
            counters,
            control: None,
            base: 0,
            weight: 1,
            failure: None,
            chunk_lines: None,
        }
    }

    /// Lets the context publish progress to (and see cancellation from) an attempt's control.
    pub(crate) fn with_control(mut self, control: &'a TaskControl) -> Self {
        self.control = Some(control);
        self
    }

    /// Places the chunk being mapped inside its split: `base` bytes (or rows) come before
    /// it, and each is worth `weight` progress units.
    pub(crate) fn at(mut self, base: u64, weight: u64) -> Self {
        self.base = base;
        self.weight = weight;
        self
    }

    /// Reports progress of a `map_split` that does not consume the records iterator (which
    /// otherwise reports it): `done` of `total` units of the current chunk. Speculation
    /// judges attempts by it.
    pub fn progress(&mut self, done: u64, total: u64) {
        if let Some(control) = self.control {
            control.set_done((self.base + done.min(total)) * self.weight);
        }
    }

    /// True when the attempt has been cancelled: a long `map_split` should stop early.
    pub fn is_cancelled(&self) -> bool {
        self.control.is_some_and(TaskControl::is_cancelled)
    }

    /// Emits one intermediate pair. Both slices are copied; they may point anywhere.
    #[inline]
    pub fn emit(&mut self, key: &[u8], value: &[u8]) {
        self.sink.emit(key, value);
    }

    /// Adds `n` to the task's counter `name`.
    pub fn count(&mut self, name: &'static str, n: u128) {
        self.counters.add(name, n);
    }

    /// Adds `n` to a counter whose name was computed (e.g. reported by a child process).
    pub fn count_named(&mut self, name: String, n: u128) {
        self.counters.add_named(name, n);
    }

    /// Fails the attempt with `message` once `map_split` returns (a failure of the job's
    /// own making, such as a child process that exited non-zero: not blamed on a record).
    /// The first failure wins.
    pub fn fail(&mut self, message: String) {
        self.failure.get_or_insert(message);
    }

    /// The attempt being run, when the runtime knows it (always on a cluster).
    pub fn attempt(&self) -> Option<&AttemptInfo> {
        self.control.and_then(TaskControl::attempt)
    }

    /// Sets the attempt's status message.
    pub fn set_status(&mut self, message: String) {
        if let Some(control) = self.control {
            control.set_status(message);
        }
    }

    /// From [`Job::map_chunk`]: the chunk holds `lines` lines (as
    /// [`line_count`](crate::input::line_count) counts them), so the runtime need not count
    /// them again for `map.input.records`. For a job that counts them anyway, in the same
    /// pass as its own work.
    pub fn chunk_lines(&mut self, lines: u64) {
        self.chunk_lines = Some(lines);
    }

    /// The failure recorded by [`MapContext::fail`], as the attempt's error.
    pub(crate) fn take_failure(&mut self) -> Option<crate::Error> {
        self.failure
            .take()
            .map(|message| crate::Error::UserCode { message })
    }
}

/// What `reduce` uses to write output and count things.
#[derive(Debug)]
pub struct ReduceContext<'a> {
    out: &'a mut Vec<u8>,
    counters: &'a mut Counters,
    file: Option<&'a mut crate::io::FileWriter>,
    control: Option<&'a TaskControl>,
    error: Option<crate::Error>,
}

impl<'a> ReduceContext<'a> {
    /// A context writing into `out` (for tests and tools).
    pub fn new(out: &'a mut Vec<u8>, counters: &'a mut Counters) -> Self {
        ReduceContext {
            out,
            counters,
            file: None,
            control: None,
            error: None,
        }
    }

    /// A context that hands `out` to `file` whenever it holds [`crate::map::CHUNK`] bytes.
    pub(crate) fn to_file(
        out: &'a mut Vec<u8>,
        counters: &'a mut Counters,
        file: &'a mut crate::io::FileWriter,
        control: &'a TaskControl,
    ) -> Self {
        ReduceContext {
            out,
            counters,
            file: Some(file),
            control: Some(control),
            error: None,
        }
    }

    /// Appends bytes to the partition's output file.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        if self.out.len() >= crate::map::CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let (Some(file), Some(control)) = (self.file.as_deref_mut(), self.control) else {
            return;
        };
        if self.error.is_some() {
            self.out.clear(); // the attempt has failed: nothing more reaches the file
            return;
        }
        let full = std::mem::replace(self.out, Vec::with_capacity(crate::map::CHUNK + (64 << 10)));
        control.add_written(full.len() as u64);
        if let Err(e) = file.write(full) {
            self.error = Some(e);
        }
    }

    /// Writes what is buffered and gives the attempt's error: a failed write, or what
    /// [`ReduceContext::fail`] recorded.
    pub(crate) fn finish(mut self) -> crate::Result<()> {
        if !self.out.is_empty() {
            self.flush();
        }
        self.error.map_or(Ok(()), Err)
    }

    /// Adds `n` to the task's counter `name`.
    pub fn count(&mut self, name: &'static str, n: u128) {
        self.counters.add(name, n);
    }

    /// Adds `n` to a counter whose name was computed (e.g. reported by a child process).
    pub fn count_named(&mut self, name: String, n: u128) {
        self.counters.add_named(name, n);
    }

    /// Fails the attempt with `message` (see [`MapContext::fail`]). The first failure wins.
    pub fn fail(&mut self, message: String) {
        self.error.get_or_insert(crate::Error::UserCode { message });
    }

    /// True when the attempt has been cancelled: a long reduce should stop early.
    pub fn is_cancelled(&self) -> bool {
        self.control.is_some_and(TaskControl::is_cancelled)
    }

    /// The attempt being run, when the runtime knows it (always on a cluster).
    pub fn attempt(&self) -> Option<&AttemptInfo> {
        self.control.and_then(TaskControl::attempt)
    }

    /// Sets the attempt's status message.
    pub fn set_status(&mut self, message: String) {
        if let Some(control) = self.control {
            control.set_status(message);
        }
    }
}

/// A MapReduce job. Implementations are shared by all task threads (`Send + Sync`) and must
/// be deterministic: re-executing a task must emit the same pairs.
pub trait Job: Send + Sync {
    /// The job's name, for logs and reports.
    fn name(&self) -> &str;

    /// How the job's input is cut into records.
    fn input_format(&self) -> InputFormat;

    /// Maps one record.
    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>);

    /// Maps one chunk of a split: a range of one file (a split packs several small files,
    /// and `map_split` is called for each, in input order). The default calls [`Job::map`]
    /// per record; override it to keep state across the records of a chunk (in-mapper
    /// combining, per-file summaries, or generating a range of rows at once).
    fn map_split(
        &self,
        split: &SplitInfo<'_>,
        records: &mut dyn Iterator<Item = Record<'_>>,
        ctx: &mut MapContext<'_>,
    ) {
        let _ = split;
        for record in records {
            self.map(&record, ctx);
        }
    }

    /// Maps one chunk of [`InputFormat::Lines`] input from its bytes (`bytes` is the chunk,
    /// `split.start` its first byte in the file) instead of record by record: for a job that
    /// does its work faster over the whole buffer, as grep counting matches does with one
    /// search of the chunk instead of one per line. Returns false, having emitted nothing,
    /// to be fed the chunk's records through [`Job::map_split`] instead (the default).
    ///
    /// The runtime offers it only to attempts with no records to skip and no injected
    /// faults, and counts the chunk's lines for `map.input.records` itself unless the job
    /// told it with [`MapContext::chunk_lines`].
    fn map_chunk(&self, split: &SplitInfo<'_>, bytes: &[u8], ctx: &mut MapContext<'_>) -> bool {
        let _ = (split, bytes, ctx);
        false
    }

    /// True if [`Job::combine`] should be applied to sorted map output before it is written.
    fn has_combiner(&self) -> bool {
        false
    }

    /// Folds the values of one key from one map task into fewer values (e.g. summing counts).
    /// Called only when [`Job::has_combiner`] is true; must not change the final result of
    /// `reduce`.
    fn combine(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        let _ = key;
        for v in values {
            emit(v);
        }
    }

    /// True if [`Job::fold_value`] folds values in place (checked only when
    /// [`Job::has_combiner`] is true). The map task then keeps one value per distinct key in
    /// a hash table as it maps (in-mapper combining, Spark's map-side combine) and sorts and
    /// spills only the table's contents, instead of sorting every emitted pair.
    fn folds_values(&self) -> bool {
        false
    }

    /// Folds `value` into `acc`, both values of `key` from one map task, in place. The
    /// result must be what [`Job::combine`] makes of the two values in either order (a sum,
    /// a minimum, a bitwise or): values reach the fold in emit order, not sorted. Returns
    /// false when it cannot (the default; or, say, values of different lengths): the pair
    /// is then kept beside `acc` and [`Job::combine`] sees both when the buffer is spilled.
    fn fold_value(&self, key: &[u8], acc: &mut [u8], value: &[u8]) -> bool {
        let _ = (key, acc, value);
        false
    }

    /// True if [`Job::combine_run`] replaces [`Job::combine`]: the combiner then sees each
    /// partition of each spill whole, as a process or a stateful fold needs.
    fn combines_runs(&self) -> bool {
        false
    }

    /// Combines the sorted pairs of one partition of one spill (called only when
    /// [`Job::combines_runs`] is true), emitting pairs through `ctx` in any order (the
    /// runtime sorts them). The default groups the pairs by key and calls [`Job::combine`].
    fn combine_run<'p>(
        &self,
        partition: u32,
        pairs: &mut dyn Iterator<Item = (&'p [u8], &'p [u8])>,
        ctx: &mut MapContext<'_>,
    ) {
        let _ = partition;
        let mut pairs = pairs.peekable();
        let mut values: Vec<&[u8]> = Vec::new();
        while let Some((key, value)) = pairs.next() {
            values.clear();
            values.push(value);
            while let Some((_, v)) = pairs.next_if(|(k, _)| *k == key) {
                values.push(v);
            }
            self.combine(key, &mut values.iter().copied(), &mut |v| ctx.emit(key, v));
        }
    }

    /// The reduce partition (`0..reducers`) of `key`. Default: a stable 64-bit hash
    /// (xxh3, the same on every machine and version) modulo `reducers`.
    fn partition(&self, key: &[u8], reducers: u32) -> u32 {
        hash_partition(key, reducers)
    }

    /// Reduces all values of one key, writing output bytes to `ctx`.
    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    );

    /// Reduces a whole partition: its keys in ascending order, each with its values. The
    /// default calls [`Job::reduce`] per key; override it to keep state across keys (a
    /// child process fed the whole partition, numbering, per-partition totals).
    fn reduce_partition(
        &self,
        partition: u32,
        keys: &mut crate::reduce::KeyGroups<'_, '_>,
        ctx: &mut ReduceContext<'_>,
    ) {
        let _ = partition;
        while let Some((key, values)) = keys.next_key() {
            self.reduce(key, &mut values.iter().copied(), ctx);
        }
    }
}

/// Calls `f` with each of `values` that differs from the one before it. A key's values
/// reach `combine` and `reduce` in bytewise order, so these are its distinct values (a
/// combiner that drops repeats, or a reduce that lists them once each).
pub fn for_each_distinct<'a>(
    values: &mut dyn Iterator<Item = &'a [u8]>,
    mut f: impl FnMut(&'a [u8]),
) {
    let mut prev: Option<&[u8]> = None;
    for v in values {
        if prev != Some(v) {
            f(v);
            prev = Some(v);
        }
    }
}

/// The default partitioner: xxh3-64 of the key modulo `reducers`.
pub fn hash_partition(key: &[u8], reducers: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(reducers.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_each_distinct_drops_adjacent_repeats() {
        let values: [&[u8]; 6] = [b"a", b"a", b"b", b"", b"", b"a"];
        let mut seen = Vec::new();
        for_each_distinct(&mut values.into_iter(), |v| seen.push(v));
        assert_eq!(seen, [&b"a"[..], b"b", b"", b"a"]);
        for_each_distinct(&mut std::iter::empty(), |_| panic!("no values"));
    }
}
