//! Map tasks: read a split in place, partition + sort + combine emitted pairs, and write
//! them as runs of framed rkyv blocks (or, for map-only jobs, straight to a part file).
//!
//! Memory: each emitted pair is copied once into the task's arena, and a 24-byte `Entry`
//! points at it. When arena + entries exceed the task's budget, the buffer is sorted by
//! (partition, key, value) and written as one *run* file: for each partition a contiguous
//! segment of blocks, whose byte ranges are kept in [`RunFile::segments`]. The last run is
//! written when the split is done. Reducers merge all runs of all maps.
//!
//! A job whose values fold in place ([`Job::folds_values`], e.g. word count's sums) keeps
//! one entry per distinct key instead: a hash table over the buffered keys finds the entry
//! of each emitted key, the value is folded into it, and only distinct keys are sorted.
//! Its pairs wait in a batch of 16 (a second, small copy) so that their lookups' cache
//! misses overlap.

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

use quern_shuffle::BlockWriter;

use crate::input::{ChunkData, Split};
use crate::io::{FileWriter, IoService};
use crate::job::{
    Counters, InputFile, InputFormat, Job, MapContext, Pacer, Sink, SplitInfo, TaskControl,
};
use crate::{Error, Result};

/// A map task's progress covers all of its work, so that LATE's "time left" is right for
/// a task slowed in any phase: each input byte is worth [`READ_WEIGHT`] units once it is
/// read and mapped, [`SORT_WEIGHT`] once the buffer holding its output is sorted, and
/// [`WRITE_WEIGHT`] once that output is written to a run (credited record by record).
///
/// Measured on this machine (`--sequential`, time in `feed_split` vs the final sort and
/// spill): a terasort map over 64 MiB spent 0.06–0.45 s reading and mapping and 0.49–0.60 s
/// sorting and spilling; a word count map over 50 MB spent 1.8 s and 5.4 s. Reading is
/// about a quarter of a map task; of the rest, the profile puts about a third in the sort.
/// A progress that counted only the bytes read reached 100% a quarter of the way through.
pub(crate) const READ_WEIGHT: u64 = 1;
// The read phase's units are the bytes read: `TaskControl::input_done` (the input rate
// plots) relies on it.
const _: () = assert!(READ_WEIGHT == 1);
/// See [`READ_WEIGHT`].
pub(crate) const SORT_WEIGHT: u64 = 1;
/// See [`READ_WEIGHT`].
pub(crate) const WRITE_WEIGHT: u64 = 2;
/// Progress units of one input byte of a map task with reducers.
const MAP_UNITS: u64 = READ_WEIGHT + SORT_WEIGHT + WRITE_WEIGHT;

/// Records written between progress updates and cancellation checks of a spill.
const SPILL_STEP: usize = 4096;

/// Bytes handed to the I/O layer per write.
pub(crate) const CHUNK: usize = 4 << 20;
/// Target payload of one block.
pub const BLOCK_BYTES: usize = 512 << 10;

/// One sorted run written by a map task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFile {
    /// Where the run lives.
    pub path: PathBuf,
    /// `(offset, len)` of each partition's segment in the file.
    pub segments: Vec<(u64, u64)>,
}

/// What a map task leaves for the reducers.
#[derive(Debug, Clone, Default)]
pub struct MapOutput {
    /// The runs, in the order they were written.
    pub runs: Vec<RunFile>,
}

/// Everything a map task needs besides its split.
#[derive(Debug)]
pub struct MapEnv<'a> {
    /// The I/O backend for run files.
    pub io: &'a IoService,
    /// Directory for run files.
    pub work_dir: &'a Path,
    /// Number of reduce partitions (0 = map-only).
    pub reducers: u32,
    /// Sort buffer budget of this task, bytes.
    pub memory: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// First 8 key bytes, big-endian, zero-padded: orders like the key itself.
    prefix: u64,
    off: u32,
    klen: u32,
    vlen: u32,
    part: u32,
}

/// First 8 bytes of a key as a big-endian integer, zero-padded: `a < b` implies
/// `key_prefix(a) <= key_prefix(b)`, so comparing prefixes first is sound.
pub(crate) fn key_prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

/// The partitioned sort buffer; spills runs when full.
struct SortBuffer<'a> {
    job: &'a dyn Job,
    env: &'a MapEnv<'a>,
    control: &'a TaskControl,
    /// Split position up to which input has been spilled (its sort and write credited).
    spilled_through: u64,
    name: String,
    arena: Vec<u8>,
    entries: Vec<Entry>,
    runs: Vec<RunFile>,
    error: Option<Error>,
    counters: Counters,
    /// In-mapper combining, for a job that folds values (see [`Job::folds_values`]).
    folds: Option<Folds>,
}

/// In-mapper combining's table: the buffered key of each distinct emitted key, by the hash
/// of its bytes. Open addressing with linear probing over 32-byte slots (as Spark's
/// `AppendOnlyMap`), each holding its key's hash, first 8 bytes and place in the arena
/// and, when the value is at most [`INLINE`] bytes, the value: finding a key of up to 8
/// bytes and folding into its value usually touch one cache line. (A table with separate
/// control bytes, as hashbrown's, misses the cache twice per key of a large vocabulary:
/// measured, the table's loads were 80% of a word count's map.)
struct Folds {
    /// A power of two of slots (or none), at most [`Folds::MAX_LOAD`] full.
    slots: Vec<Slot>,
    len: usize,
    hasher: foldhash::fast::RandomState,
    pending: Pending,
}

/// A slot of [`Folds`]; all zeros (hash 0) when empty.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Slot {
    prefix: u64,
    value: [u8; INLINE],
    off: u32,
    klen: u32,
    vlen: u32,
    /// The key's hash, never 0.
    hash: u32,
}

/// Values of at most this many bytes are folded inside the table.
const INLINE: usize = 8;

impl Slot {
    fn inline(&self) -> bool {
        self.vlen as usize <= INLINE
    }
}

impl Folds {
    /// The table grows when more than this fraction of its slots would be full.
    const MAX_LOAD: (usize, usize) = (3, 4);

    fn new() -> Folds {
        Folds {
            slots: Vec::new(),
            len: 0,
            hasher: foldhash::fast::RandomState::default(),
            pending: Pending::default(),
        }
    }

    fn hash(&self, key: &[u8]) -> u32 {
        let h = self.hasher.hash_one(key);
        ((h >> 32) as u32 ^ h as u32) | 1
    }

    /// Bytes the table holds.
    fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }

    fn full(&self) -> bool {
        (self.len + 1) * Self::MAX_LOAD.1 > self.slots.len() * Self::MAX_LOAD.0
    }

    /// Bytes the table will hold after one more insert.
    fn bytes_after_insert(&self) -> usize {
        if self.full() {
            (self.slots.len() * 2).max(64) * std::mem::size_of::<Slot>()
        } else {
            self.bytes()
        }
    }

    /// The slot of `key` (whose hash is `hash`), if the table has it.
    fn find(&self, hash: u32, key: &[u8], arena: &[u8]) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let prefix = key_prefix(key);
        let mut i = hash as usize & mask;
        loop {
            let s = &self.slots[i];
            if s.hash == 0 {
                return None;
            }
            // Equal prefixes and lengths are equal keys up to 8 bytes: the arena is read
            // only for the rest of longer keys.
            if s.hash == hash
                && s.prefix == prefix
                && s.klen as usize == key.len()
                && (key.len() <= 8 || arena[s.off as usize + 8..][..key.len() - 8] == key[8..])
            {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds the entry at `off` in the arena of `key` (not in the table) and its `value`.
    fn insert(&mut self, hash: u32, key: &[u8], value: &[u8], off: u32) {
        if self.full() {
            self.grow();
        }
        let mut slot = Slot {
            prefix: key_prefix(key),
            value: [0; INLINE],
            off,
            klen: key.len() as u32,
            vlen: value.len() as u32,
            hash,
        };
        if slot.inline() {
            slot.value[..value.len()].copy_from_slice(value);
        }
        self.place(slot);
        self.len += 1;
    }

    fn place(&mut self, slot: Slot) {
        let mask = self.slots.len() - 1;
        let mut i = slot.hash as usize & mask;
        while self.slots[i].hash != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(64);
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); size]);
        for slot in old.into_iter().filter(|s| s.hash != 0) {
            self.place(slot);
        }
    }

    /// Empties the table (keeping its slots).
    fn clear(&mut self) {
        self.slots.fill(Slot::default());
        self.len = 0;
    }

    /// Loads the first slot of each of `hashes` (see [`SortBuffer::drain_pending`]).
    fn touch(&self, hashes: impl Iterator<Item = u32>) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.slots.len() - 1;
        let seen = hashes.fold(0u32, |x, h| x ^ self.slots[h as usize & mask].hash);
        std::hint::black_box(seen);
    }

    /// Copies the values kept in the table to their entries in `arena`.
    fn write_back(&self, arena: &mut [u8]) {
        for slot in self.slots.iter().filter(|s| s.hash != 0 && s.inline()) {
            let start = slot.off as usize + slot.klen as usize;
            let len = slot.vlen as usize;
            arena[start..start + len].copy_from_slice(&slot.value[..len]);
        }
    }
}

/// What [`SortBuffer::fold`] did with an emitted pair.
enum Fold {
    /// Folded into the buffered value of its key.
    Done,
    /// Its key is buffered but the job could not fold the values: keep the pair.
    Kept,
    /// Its key is not buffered.
    New,
}

impl SortBuffer<'_> {
    /// Removes the runs spilled so far (the attempt failed: nobody will read them).
    fn remove_runs(&mut self) {
        for run in self.runs.drain(..) {
            let _ = std::fs::remove_file(&run.path);
        }
    }

    fn used(&self) -> usize {
        self.arena.len()
            + self.entries.len() * std::mem::size_of::<Entry>()
            + self.folds.as_ref().map_or(0, Folds::bytes)
    }

    /// Folds `value` into the buffered value of `key` (whose hash is `hash`), if the buffer
    /// holds one and the job can.
    fn fold(&mut self, hash: u32, key: &[u8], value: &[u8]) -> Fold {
        let Some(folds) = &mut self.folds else {
            return Fold::New;
        };
        let Some(i) = folds.find(hash, key, &self.arena) else {
            return Fold::New;
        };
        let slot = &mut folds.slots[i];
        let acc = if slot.inline() {
            &mut slot.value[..slot.vlen as usize]
        } else {
            let start = slot.off as usize + slot.klen as usize;
            &mut self.arena[start..start + slot.vlen as usize]
        };
        if self.job.fold_value(key, acc, value) {
            Fold::Done
        } else {
            Fold::Kept
        }
    }

    fn key(&self, e: &Entry) -> &[u8] {
        &self.arena[e.off as usize..e.off as usize + e.klen as usize]
    }

    fn value(&self, e: &Entry) -> &[u8] {
        let start = e.off as usize + e.klen as usize;
        &self.arena[start..start + e.vlen as usize]
    }

    /// Sorts the entries by partition, key and value, checking for cancellation between
    /// buckets (see [`sort_entries`]).
    fn sort(&mut self) -> Result<()> {
        sort_entries(
            &mut self.entries,
            &self.arena,
            self.env.reducers,
            self.control,
        )
    }

    /// Sorts the buffer and writes it as one run file; empties the buffer. The buffer holds
    /// the output of the input up to split position `upto`: its sort and write progress is
    /// credited as the spill goes.
    fn spill(&mut self, upto: u64) -> Result<()> {
        let covered = upto.saturating_sub(self.spilled_through);
        self.spilled_through = self.spilled_through.max(upto);
        if self.entries.is_empty() && !self.runs.is_empty() {
            self.control
                .add_done(covered * (SORT_WEIGHT + WRITE_WEIGHT));
            return Ok(());
        }
        if let Some(folds) = &self.folds {
            folds.write_back(&mut self.arena);
        }
        self.sort()?;
        self.control.add_done(covered * SORT_WEIGHT);
        let write_units = covered * WRITE_WEIGHT;
        let mut credited = 0u64;
        let path = self
            .env
            .work_dir
            .join(format!("{}-run{}.qrun", self.name, self.runs.len()));
        let mut file = self.env.io.create(&path)?;
        let mut out = Vec::with_capacity(CHUNK + BLOCK_BYTES * 2);
        let mut blocks = BlockWriter::new(BLOCK_BYTES);
        let mut segments = Vec::with_capacity(self.env.reducers as usize);
        let mut scratch: Vec<u8> = Vec::new();
        let mut scratch_ends: Vec<usize> = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        let combine = self.job.has_combiner();
        let combine_runs = combine && self.job.combines_runs();
        let n = self.entries.len();
        let mut i = 0;
        let mut records_out = 0u128;
        for part in 0..self.env.reducers {
            let seg_start = file.len() + out.len() as u64;
            if combine_runs {
                let end = i + self.entries[i..].partition_point(|e| e.part == part);
                let combined = match self.combine_run(part, i, end) {
                    Ok(pairs) => pairs,
                    Err(e) => {
                        drop(file);
                        let _ = std::fs::remove_file(&path);
                        return Err(e);
                    }
                };
                for (key, value) in combined.iter() {
                    push(&mut blocks, key, value, &mut out, &path)?;
                    if out.len() >= CHUNK {
                        file.write(std::mem::replace(
                            &mut out,
                            Vec::with_capacity(CHUNK + BLOCK_BYTES * 2),
                        ))?;
                    }
                }
                records_out += combined.len() as u128;
                let due = (u128::from(write_units) * end as u128 / n.max(1) as u128) as u64;
                self.control.add_done(due - credited);
                credited = due;
                i = end;
            }
            while i < n && self.entries[i].part == part {
                let key = self.key(&self.entries[i]);
                let mut j = i + 1;
                while j < n && self.entries[j].part == part && self.key(&self.entries[j]) == key {
                    j += 1;
                }
                if combine && j - i > 1 {
                    scratch.clear();
                    scratch_ends.clear();
                    let mut values = self.entries[i..j].iter().map(|e| self.value(e));
                    self.job.combine(key, &mut values, &mut |v: &[u8]| {
                        scratch.extend_from_slice(v);
                        scratch_ends.push(scratch.len());
                    });
                    let value_at = |k: usize| {
                        let s = if k == 0 { 0 } else { scratch_ends[k - 1] };
                        &scratch[s..scratch_ends[k]]
                    };
                    order.clear();
                    order.extend(0..scratch_ends.len());
                    order.sort_unstable_by(|&a, &b| value_at(a).cmp(value_at(b)));
                    for &k in &order {
                        push(&mut blocks, key, value_at(k), &mut out, &path)?;
                    }
                    records_out += order.len() as u128;
                } else {
                    for e in &self.entries[i..j] {
                        push(&mut blocks, key, self.value(e), &mut out, &path)?;
                    }
                    records_out += (j - i) as u128;
                }
                if i / SPILL_STEP != j / SPILL_STEP {
                    if self.control.is_cancelled() {
                        drop(file);
                        let _ = std::fs::remove_file(&path);
                        return Err(Error::Cancelled);
                    }
                    let due = (u128::from(write_units) * j as u128 / n as u128) as u64;
                    self.control.add_done(due - credited);
                    credited = due;
                }
                i = j;
                if out.len() >= CHUNK {
                    file.write(std::mem::replace(
                        &mut out,
                        Vec::with_capacity(CHUNK + BLOCK_BYTES * 2),
                    ))?;
                }
            }
            blocks
                .flush(&mut out)
                .map_err(|e| corrupt(&path, file.len(), e))?;
            let seg_end = file.len() + out.len() as u64;
            segments.push((seg_start, seg_end - seg_start));
        }
        if !out.is_empty() {
            file.write(out)?;
        }
        let bytes = file.finish(false)?;
        self.control.add_done(write_units - credited);
        self.counters.add("map.output.records", records_out);
        self.counters.add("map.output.bytes", u128::from(bytes));
        self.counters.add("map.spills", 1);
        self.runs.push(RunFile { path, segments });
        self.arena.clear();
        self.entries.clear();
        if let Some(folds) = &mut self.folds {
            folds.clear();
        }
        Ok(())
    }
}

impl SortBuffer<'_> {
    /// Runs [`Job::combine_run`] over the entries `from..to` (one partition, sorted) and
    /// sorts what it emits.
    fn combine_run(&mut self, part: u32, from: usize, to: usize) -> Result<Pairs> {
        let mut pairs = Pairs::default();
        if from == to {
            return Ok(pairs);
        }
        let job = self.job;
        let arena = &self.arena;
        let mut input = self.entries[from..to].iter().map(|e| {
            let (k, v) = (e.off as usize, e.off as usize + e.klen as usize);
            (&arena[k..v], &arena[v..v + e.vlen as usize])
        });
        let mut ctx = MapContext::new(&mut pairs, &mut self.counters).with_control(self.control);
        job.combine_run(part, &mut input, &mut ctx);
        if let Some(e) = ctx.take_failure() {
            return Err(e);
        }
        if self.control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        pairs.sort();
        Ok(pairs)
    }
}

/// Pairs emitted by a run combiner, sorted before they are written.
#[derive(Default)]
struct Pairs {
    arena: Vec<u8>,
    /// (start in `arena`, key length, value length).
    spans: Vec<(usize, usize, usize)>,
}

impl Pairs {
    fn pair(&self, &(start, klen, vlen): &(usize, usize, usize)) -> (&[u8], &[u8]) {
        let value = start + klen;
        (&self.arena[start..value], &self.arena[value..value + vlen])
    }

    fn sort(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_unstable_by(|a, b| self.pair(a).cmp(&self.pair(b)));
        self.spans = spans;
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|s| self.pair(s))
    }
}

impl Sink for Pairs {
    fn emit(&mut self, key: &[u8], value: &[u8]) {
        self.spans.push((self.arena.len(), key.len(), value.len()));
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
    }
}

/// Sorts `entries` (keys and values in `arena`) by partition, key, value — interruptibly:
/// one in-place pass (American flag sort) groups them into buckets by partition and first
/// key byte (by partition alone when there are more than 256 partitions), then each bucket
/// is sorted on its own, with a cancellation check between buckets. A cancelled attempt so
/// stops after at most one bucket's sort (a few ms on uniform keys) instead of after the
/// whole buffer's; the bucketing is also one radix pass the comparison sort need not do.
fn sort_entries(
    entries: &mut [Entry],
    arena: &[u8],
    reducers: u32,
    control: &TaskControl,
) -> Result<()> {
    let key = |e: &Entry| &arena[e.off as usize..e.off as usize + e.klen as usize];
    let value = |e: &Entry| {
        let s = e.off as usize + e.klen as usize;
        &arena[s..s + e.vlen as usize]
    };
    let by_byte = reducers <= 256;
    let buckets = if by_byte {
        reducers.max(1) as usize * 256
    } else {
        reducers as usize
    };
    let bucket = |e: &Entry| {
        if by_byte {
            e.part as usize * 256 + (e.prefix >> 56) as usize
        } else {
            e.part as usize
        }
    };
    let starts = partition_in_place(entries, buckets, bucket);
    for b in 0..buckets {
        let run = &mut entries[starts[b]..starts[b + 1]];
        if run.len() < 2 {
            continue;
        }
        if control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        run.sort_unstable_by(|a, b| {
            a.prefix
                .cmp(&b.prefix)
                .then_with(|| key(a).cmp(key(b)))
                .then_with(|| value(a).cmp(value(b)))
        });
    }
    Ok(())
}

/// Reorders `items` in place so that bucket 0's items come first, then bucket 1's, ...
/// (American flag sort: count, then swap each item into its bucket's next free place).
/// Returns the `buckets + 1` bucket boundaries. `bucket` must return `0..buckets`.
fn partition_in_place<T>(
    items: &mut [T],
    buckets: usize,
    bucket: impl Fn(&T) -> usize,
) -> Vec<usize> {
    let mut starts = vec![0usize; buckets + 1];
    for item in items.iter() {
        starts[bucket(item) + 1] += 1;
    }
    for b in 0..buckets {
        starts[b + 1] += starts[b];
    }
    let mut next = starts[..buckets].to_vec();
    for b in 0..buckets {
        let end = starts[b + 1];
        while next[b] < end {
            let target = bucket(&items[next[b]]);
            if target == b {
                next[b] += 1;
            } else {
                // The item goes to its own bucket; what was there is looked at next.
                items.swap(next[b], next[target]);
                next[target] += 1;
            }
        }
    }
    starts
}

fn push(
    blocks: &mut BlockWriter,
    key: &[u8],
    value: &[u8],
    out: &mut Vec<u8>,
    path: &Path,
) -> Result<()> {
    blocks
        .push(key, value, out)
        .map_err(|e| corrupt(path, 0, e))
}

fn corrupt(path: &Path, offset: u64, source: quern_shuffle::BlockError) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        source,
    }
}

impl Sink for SortBuffer<'_> {
    #[inline]
    fn emit(&mut self, key: &[u8], value: &[u8]) {
        let Some(folds) = &mut self.folds else {
            self.add(None, key, value);
            return;
        };
        let hash = folds.hash(key);
        folds.pending.push(hash, key, value);
        if folds.pending.pairs.len() == BATCH {
            self.drain_pending();
        }
    }
}

/// Emitted pairs of a folding job wait in batches of this many for their table lookups.
const BATCH: usize = 16;

/// Emitted pairs waiting for their table lookups (copied: the sink keeps what it needs).
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Hash, key length and value length of each pair, in emit order.
    pairs: Vec<(u32, u32, u32)>,
}

impl Pending {
    fn push(&mut self, hash: u32, key: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(value);
        self.pairs
            .push((hash, key.len() as u32, value.len() as u32));
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.pairs.clear();
    }
}

impl SortBuffer<'_> {
    /// Looks up and adds the pending pairs of a folding job. The batch's slots are loaded
    /// first, all at once, so that their cache misses overlap instead of following one
    /// another (memory-level parallelism: measured, a third less time per word on a
    /// vocabulary of a million words).
    fn drain_pending(&mut self) {
        let Some(folds) = &mut self.folds else {
            return;
        };
        let pending = std::mem::take(&mut folds.pending);
        folds.touch(pending.pairs.iter().map(|p| p.0));
        let mut at = 0;
        for &(hash, klen, vlen) in &pending.pairs {
            let (klen, vlen) = (klen as usize, vlen as usize);
            let key = &pending.bytes[at..at + klen];
            let value = &pending.bytes[at + klen..at + klen + vlen];
            at += klen + vlen;
            self.add(Some(hash), key, value);
        }
        if let Some(folds) = &mut self.folds {
            folds.pending = pending;
            folds.pending.clear();
        }
    }

    /// Adds an emitted pair: folds it into its key's value (a folding job's, whose key
    /// hashes to `hash`) or appends it, spilling first if the buffer is full.
    fn add(&mut self, hash: Option<u32>, key: &[u8], value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let mut insert = match hash.map(|h| self.fold(h, key, value)) {
            Some(Fold::Done) => return,
            Some(Fold::Kept) => false,
            Some(Fold::New) => true,
            None => false,
        };
        let size = key.len() + value.len();
        let table_growth = match &self.folds {
            Some(f) if insert => f.bytes_after_insert() - f.bytes(),
            _ => 0,
        };
        if !self.entries.is_empty()
            && (self.used() + size + std::mem::size_of::<Entry>() + table_growth > self.env.memory
                || self.arena.len() + size > u32::MAX as usize)
        {
            let upto = self.control.current_record().unwrap_or(0);
            if let Err(e) = self.spill(upto) {
                self.error = Some(e);
                return;
            }
            // The spill emptied the table: the key is new to it.
            insert = self.folds.is_some();
        }
        if size > u32::MAX as usize {
            self.error = Some(Error::Usage(format!(
                "map emitted a {size}-byte record; the limit is 4 GiB"
            )));
            return;
        }
        let part = self.job.partition(key, self.env.reducers);
        if part >= self.env.reducers {
            self.error = Some(Error::Usage(format!(
                "job {}: partition() returned {part} for key {:?}, outside 0..{}",
                self.job.name(),
                String::from_utf8_lossy(&key[..key.len().min(64)]),
                self.env.reducers
            )));
            return;
        }
        let off = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        self.entries.push(Entry {
            prefix: key_prefix(key),
            off,
            klen: key.len() as u32,
            vlen: value.len() as u32,
            part,
        });
        if let (true, Some(hash), Some(folds)) = (insert, hash, &mut self.folds) {
            folds.insert(hash, key, value, off);
        }
    }
}

/// Map-only output: `key ++ value` in emit order, straight to a file.
struct DirectSink<'c> {
    control: &'c TaskControl,
    file: FileWriter,
    out: Vec<u8>,
    error: Option<Error>,
    records: u128,
}

impl Sink for DirectSink<'_> {
    #[inline]
    fn emit(&mut self, key: &[u8], value: &[u8]) {
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(value);
        self.records += 1;
        if self.out.len() >= CHUNK && self.error.is_none() {
            let chunk = std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK + 4096));
            self.control.add_written(chunk.len() as u64);
            if let Err(e) = self.file.write(chunk) {
                self.error = Some(e);
            }
        }
    }
}

/// Feeds every chunk of `split` through `job.map_split` into `sink`, in input order.
/// Returns (records read, records skipped as bad).
///
/// Progress: the task's total is `units` per byte of the split; reading credits
/// [`READ_WEIGHT`] per byte (the rest is for later phases to credit).
fn feed_split(
    job: &dyn Job,
    inputs: &[InputFile],
    split: &Split,
    sink: &mut dyn Sink,
    counters: &mut Counters,
    control: &TaskControl,
    units: u64,
) -> Result<(u128, u128)> {
    let format = job.input_format();
    let total = split.len();
    control.set_progress(0, total * units);
    let (mut records_in, mut skipped, mut base) = (0u128, 0u128, 0u64);
    for chunk in &split.chunks {
        let input = inputs.get(chunk.file as usize).ok_or_else(|| {
            Error::Usage(format!(
                "split names input {} of {}",
                chunk.file,
                inputs.len()
            ))
        })?;
        let data = ChunkData::open(input, chunk, format)?;
        let mut records = data.records(input, chunk, format);
        let info = SplitInfo {
            input,
            start: chunk.start,
            len: chunk.len,
        };
        let mut counted = CountingRecords::new(&mut records, chunk.start, base, control);
        let failure = {
            let mut ctx = MapContext::new(&mut *sink, &mut *counters)
                .with_control(control)
                .at(base, READ_WEIGHT);
            if format == InputFormat::Lines
                && !control.needs_records()
                && job.map_chunk(&info, data.bytes(), &mut ctx)
            {
                let lines = ctx.chunk_lines.take();
                counted.n =
                    u128::from(lines.unwrap_or_else(|| crate::input::line_count(data.bytes())));
            } else {
                job.map_split(&info, &mut counted, &mut ctx);
            }
            ctx.take_failure()
        };
        if let Some(e) = failure {
            return Err(e);
        }
        records_in += counted.n;
        skipped += counted.skipped;
        if control.is_cancelled() {
            return Err(Error::Cancelled);
        }
        base += chunk.len;
        control.set_done(base * READ_WEIGHT);
    }
    Ok((records_in, skipped))
}

fn count_input(counters: &mut Counters, format: InputFormat, split: &Split, read: (u128, u128)) {
    let (records_in, skipped) = read;
    counters.add("map.input.records", records_in);
    if skipped > 0 {
        counters.add("map.skipped.records", skipped);
    }
    let bytes = match format {
        InputFormat::Rows(_) => 0,
        _ => split.len(),
    };
    counters.add("map.input.bytes", u128::from(bytes));
}

/// Runs `job`'s map over one split, producing sorted runs in `env.work_dir`.
pub fn run_map(
    job: &dyn Job,
    inputs: &[InputFile],
    split: &Split,
    name: &str,
    env: &MapEnv<'_>,
    control: &TaskControl,
) -> Result<(MapOutput, Counters)> {
    let format = job.input_format();
    // Most jobs emit about as many bytes as they read: reserve that much up front (within
    // the budget) instead of growing the arena by repeated copies.
    let expect = usize::try_from(split.len())
        .unwrap_or(usize::MAX)
        .min(env.memory / 2);
    let expect_entries = match format {
        InputFormat::Fixed(n) => expect / n.max(1),
        _ => expect / 64,
    };
    let mut buffer = SortBuffer {
        job,
        env,
        control,
        spilled_through: 0,
        name: name.to_string(),
        arena: Vec::with_capacity(expect),
        entries: Vec::with_capacity(expect_entries),
        runs: Vec::new(),
        error: None,
        counters: Counters::default(),
        folds: (job.has_combiner() && job.folds_values()).then(Folds::new),
    };
    let mut counters = Counters::default();
    let read = feed_split(
        job,
        inputs,
        split,
        &mut buffer,
        &mut counters,
        control,
        MAP_UNITS,
    );
    // A folding job's last pairs still wait for their lookups.
    buffer.drain_pending();
    if let Some(e) = buffer.error.take() {
        buffer.remove_runs();
        return Err(e);
    }
    let read = read.inspect_err(|_| buffer.remove_runs())?;
    buffer
        .spill(split.len())
        .inspect_err(|_| buffer.remove_runs())?;
    counters.merge(&buffer.counters);
    count_input(&mut counters, format, split, read);
    Ok((MapOutput { runs: buffer.runs }, counters))
}

/// Runs a map-only task: the output goes to `out_path` (not yet committed).
pub fn run_map_only(
    job: &dyn Job,
    inputs: &[InputFile],
    split: &Split,
    out_path: &Path,
    io: &IoService,
    control: &TaskControl,
) -> Result<Counters> {
    let mut sink = DirectSink {
        control,
        file: io.create(out_path)?,
        out: Vec::with_capacity(CHUNK + 4096),
        error: None,
        records: 0,
    };
    let mut counters = Counters::default();
    let read = feed_split(
        job,
        inputs,
        split,
        &mut sink,
        &mut counters,
        control,
        READ_WEIGHT,
    )?;
    let DirectSink {
        control: _,
        mut file,
        out,
        error,
        records,
    } = sink;
    if let Some(e) = error {
        return Err(e);
    }
    if !out.is_empty() {
        control.add_written(out.len() as u64);
        file.write(out)?;
    }
    let bytes = file.finish(true)?;
    count_input(&mut counters, job.input_format(), split, read);
    counters.add("map.output.records", records);
    counters.add("output.bytes", u128::from(bytes));
    Ok(counters)
}

/// Wraps a split's records: counts them, publishes progress, stops early when the attempt
/// is cancelled, remembers the current record (to blame it if `map` crashes), skips known
/// bad records, and applies injected faults.
struct CountingRecords<'r, I> {
    inner: &'r mut I,
    n: u128,
    skipped: u128,
    /// The chunk's first byte (or row) in its file.
    start: u64,
    /// The chunk's position in its split.
    base: u64,
    control: &'r TaskControl,
    pacer: Pacer,
}

impl<'r, I> CountingRecords<'r, I> {
    fn new(inner: &'r mut I, start: u64, base: u64, control: &'r TaskControl) -> Self {
        CountingRecords {
            inner,
            n: 0,
            skipped: 0,
            start,
            base,
            control,
            pacer: Pacer::new(control),
        }
    }
}

impl<'a, I: Iterator<Item = crate::Record<'a>>> Iterator for CountingRecords<'_, I> {
    type Item = crate::Record<'a>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.n % 4096 == 0 && self.n > 0 {
                if self.control.is_cancelled() {
                    return None;
                }
                self.pacer.pace();
            }
            let rec = self.inner.next()?;
            self.n += 1;
            // The record's position in its split names it across attempts.
            let pos = self.base + rec.offset.saturating_sub(self.start);
            self.control.set_current(pos);
            if self.n % 4096 == 0 {
                self.control.set_done(pos * READ_WEIGHT);
            }
            if self.control.skips(pos) {
                self.skipped += 1;
                continue;
            }
            if let Some(text) = self.control.panic_on() {
                if memchr::memmem::find(rec.data, text).is_some() {
                    panic!(
                        "injected fault: record at byte {} contains {:?}",
                        rec.offset,
                        String::from_utf8_lossy(text)
                    );
                }
            }
            return Some(rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::job::{hash_partition, ReduceContext};
    use crate::Record;

    /// Emits each line as a key and samples the attempt's progress in `combine`, which only
    /// the spill calls.
    struct Sampler {
        control: Arc<TaskControl>,
        during_spill: Mutex<Vec<(u64, u64)>>,
    }

    impl Job for Sampler {
        fn name(&self) -> &str {
            "sampler"
        }
        fn input_format(&self) -> InputFormat {
            InputFormat::Lines
        }
        fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
            ctx.emit(&record.data[..2], b"1");
        }
        fn has_combiner(&self) -> bool {
            true
        }
        fn combine(
            &self,
            _key: &[u8],
            values: &mut dyn Iterator<Item = &[u8]>,
            emit: &mut dyn FnMut(&[u8]),
        ) {
            emit(format!("{}", values.count()).as_bytes());
            if let Ok(mut s) = self.during_spill.lock() {
                s.push(self.control.progress());
            }
        }
        fn reduce(&self, _: &[u8], _: &mut dyn Iterator<Item = &[u8]>, _: &mut ReduceContext<'_>) {}
    }

    #[test]
    fn map_progress_covers_the_sort_and_spill_not_only_the_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 100,000 lines with 251 distinct two-byte keys: every combine call is inside the
        // final spill.
        let text: String = (0..100_000)
            .map(|i| format!("{:02x}{}\n", i % 251, i % 40))
            .collect();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, &text).expect("write input");
        let inputs = crate::input::expand_inputs(&[path]).expect("inputs");
        let split = Split::single(0, 0, text.len() as u64);
        let control = Arc::new(TaskControl::default());
        let job = Sampler {
            control: control.clone(),
            during_spill: Mutex::new(Vec::new()),
        };
        let io = IoService::std();
        let env = MapEnv {
            io: &io,
            work_dir: dir.path(),
            reducers: 2,
            memory: 64 << 20,
        };
        run_map(&job, &inputs, &split, "m", &env, &control).expect("map");
        let samples = job.during_spill.into_inner().expect("samples");
        let total = text.len() as u64 * MAP_UNITS;
        assert!(!samples.is_empty());
        // Everything was read before the spill began, and the spill is still work left.
        for &(done, t) in &samples {
            assert_eq!(t, total);
            assert!(done >= text.len() as u64 * READ_WEIGHT, "{done} of {t}");
            assert!(
                done < total,
                "progress reached 100% during the spill: {done} of {t}"
            );
        }
        // The write is credited record by record: progress moves during the spill.
        let (first, last) = (samples[0].0, samples[samples.len() - 1].0);
        assert!(
            last > first,
            "progress did not move during the spill ({first}..{last})"
        );
        assert_eq!(
            control.progress(),
            (total, total),
            "all work credited at the end"
        );
    }

    /// Counts lines by first byte with 8-byte counts that fold in place, except lines that
    /// start with `x`, which count with 4-byte values that do not fold.
    struct Folding;

    impl Job for Folding {
        fn name(&self) -> &str {
            "folding"
        }
        fn input_format(&self) -> InputFormat {
            InputFormat::Lines
        }
        fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
            if record.data[0] == b'x' {
                ctx.emit(b"x", &1u32.to_le_bytes());
            } else {
                ctx.emit(&record.data[..1], &1u64.to_le_bytes());
            }
        }
        fn has_combiner(&self) -> bool {
            true
        }
        fn combine(
            &self,
            _key: &[u8],
            values: &mut dyn Iterator<Item = &[u8]>,
            emit: &mut dyn FnMut(&[u8]),
        ) {
            emit(&values.map(count_of).sum::<u64>().to_le_bytes());
        }
        fn folds_values(&self) -> bool {
            true
        }
        fn fold_value(&self, _key: &[u8], acc: &mut [u8], value: &[u8]) -> bool {
            if acc.len() != 8 || value.len() != 8 {
                return false;
            }
            let sum = count_of(acc) + count_of(value);
            acc.copy_from_slice(&sum.to_le_bytes());
            true
        }
        fn reduce(&self, _: &[u8], _: &mut dyn Iterator<Item = &[u8]>, _: &mut ReduceContext<'_>) {}
    }

    fn count_of(v: &[u8]) -> u64 {
        match v.len() {
            4 => u64::from(u32::from_le_bytes(v.try_into().expect("4 bytes"))),
            _ => u64::from_le_bytes(v.try_into().expect("8 bytes")),
        }
    }

    /// Every record of every run of `out`: (run, partition, key, count).
    fn run_records(out: &MapOutput) -> Vec<(usize, u32, Vec<u8>, u64)> {
        let mut records = Vec::new();
        for (r, run) in out.runs.iter().enumerate() {
            for (part, &(offset, len)) in run.segments.iter().enumerate() {
                if len == 0 {
                    continue;
                }
                let segment =
                    crate::reduce::Segment::map_range(&run.path, offset, len).expect("map run");
                for block in quern_shuffle::FrameIter::new(segment.bytes()) {
                    for (k, v) in block.expect("valid block").iter() {
                        records.push((r, part as u32, k.to_vec(), count_of(v)));
                    }
                }
            }
        }
        records
    }

    #[test]
    fn folded_values_count_every_pair_through_spills_and_unfoldable_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut want: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
        let mut text = String::new();
        let mut x = 12345u64;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = b'a' + (x >> 59) as u8 % 26;
            let c = if c == b'y' { b'x' } else { c };
            *want.entry(vec![c]).or_default() += 1;
            text.push(c as char);
            text.push_str("rest\n");
        }
        let path = dir.path().join("in.txt");
        std::fs::write(&path, &text).expect("write input");
        let inputs = crate::input::expand_inputs(&[path]).expect("inputs");
        let split = Split::single(0, 0, text.len() as u64);
        let io = IoService::std();
        // A roomy buffer holds one entry per key; a tiny one spills (and empties the table)
        // again and again.
        for memory in [64 << 20, 1 << 10] {
            let work = dir.path().join(format!("work-{memory}"));
            std::fs::create_dir_all(&work).expect("work dir");
            let env = MapEnv {
                io: &io,
                work_dir: &work,
                reducers: 3,
                memory,
            };
            let control = TaskControl::default();
            let (out, counters) =
                run_map(&Folding, &inputs, &split, "m", &env, &control).expect("map");
            let records = run_records(&out);
            let mut got: std::collections::BTreeMap<Vec<u8>, u64> = Default::default();
            for (run, part, key, n) in &records {
                assert_eq!(
                    *part,
                    hash_partition(key, 3),
                    "{memory}: partition of {key:?}"
                );
                *got.entry(key.clone()).or_default() += n;
                let in_run = records
                    .iter()
                    .filter(|(r, _, k, _)| r == run && k == key)
                    .count();
                assert_eq!(in_run, 1, "{memory}: {key:?} {in_run} times in run {run}");
            }
            assert_eq!(got, want, "{memory}: every emitted pair is counted once");
            assert_eq!(
                counters.get("map.output.records"),
                records.len() as u128,
                "{memory}"
            );
            if memory == 64 << 20 {
                assert_eq!(out.runs.len(), 1);
                assert_eq!(records.len(), want.len(), "one record per key");
            } else {
                assert!(out.runs.len() > 10, "{memory}: {} runs", out.runs.len());
            }
        }
    }

    /// Sends every key to partition `reducers`, one past the last.
    struct BadPartition;

    impl Job for BadPartition {
        fn name(&self) -> &str {
            "bad_partition"
        }
        fn input_format(&self) -> InputFormat {
            InputFormat::Lines
        }
        fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
            ctx.emit(record.data, b"");
        }
        fn partition(&self, _key: &[u8], reducers: u32) -> u32 {
            reducers
        }
        fn reduce(&self, _: &[u8], _: &mut dyn Iterator<Item = &[u8]>, _: &mut ReduceContext<'_>) {}
    }

    #[test]
    fn a_partition_out_of_range_fails_the_map_naming_the_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "alpha\nbeta\n").expect("write input");
        let inputs = crate::input::expand_inputs(&[path]).expect("inputs");
        let split = Split::single(0, 0, 11);
        let io = IoService::std();
        let env = MapEnv {
            io: &io,
            work_dir: dir.path(),
            reducers: 3,
            memory: 1 << 20,
        };
        let err = run_map(
            &BadPartition,
            &inputs,
            &split,
            "m",
            &env,
            &TaskControl::default(),
        )
        .expect_err("an out-of-range partition must fail the map");
        let msg = err.to_string();
        assert!(
            msg.contains("bad_partition") && msg.contains("returned 3") && msg.contains("0..3"),
            "{msg}"
        );
    }

    /// Entries over `keys` (each key's value is its index), partitioned `part(i)`.
    fn entries_of(keys: &[Vec<u8>], part: impl Fn(usize) -> u32) -> (Vec<Entry>, Vec<u8>) {
        let mut arena = Vec::new();
        let mut entries = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let v = (i as u32).to_be_bytes();
            let off = arena.len() as u32;
            arena.extend_from_slice(k);
            arena.extend_from_slice(&v);
            entries.push(Entry {
                prefix: key_prefix(k),
                off,
                klen: k.len() as u32,
                vlen: 4,
                part: part(i),
            });
        }
        (entries, arena)
    }

    fn sorted_keys(entries: &[Entry], arena: &[u8]) -> Vec<(u32, Vec<u8>)> {
        entries
            .iter()
            .map(|e| {
                let end = e.off as usize + (e.klen + e.vlen) as usize;
                (e.part, arena[e.off as usize..end].to_vec())
            })
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The bucketed sort orders exactly as one comparison sort of (partition, key,
        /// value) would, for skewed keys (few first bytes, shared prefixes, empty keys) and
        /// for more partitions than 256 (buckets by partition alone).
        #[test]
        fn bucketed_sort_orders_like_a_plain_sort(
            keys in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec![0u8, 1, b'a', b't', 255]), 0..12),
                0..400,
            ),
            reducers in proptest::sample::select(vec![1u32, 3, 256, 257, 700]),
        ) {
            let part = |i: usize| (i as u32).wrapping_mul(2_654_435_761) % reducers;
            let (mut entries, arena) = entries_of(&keys, part);
            let mut want = sorted_keys(&entries, &arena);
            want.sort_by(|a, b| {
                let klen = |x: &(u32, Vec<u8>)| x.1.len() - 4;
                (a.0, &a.1[..klen(a)], &a.1[klen(a)..]).cmp(&(b.0, &b.1[..klen(b)], &b.1[klen(b)..]))
            });
            sort_entries(&mut entries, &arena, reducers, &TaskControl::default()).unwrap();
            proptest::prop_assert_eq!(sorted_keys(&entries, &arena), want);
        }

        #[test]
        fn partition_in_place_groups_a_permutation(
            items in proptest::collection::vec(0usize..17, 0..300),
        ) {
            let mut got = items.clone();
            let starts = partition_in_place(&mut got, 17, |&x| x);
            let mut want = items.clone();
            want.sort_unstable();
            proptest::prop_assert_eq!(&got, &want);
            for b in 0..17 {
                proptest::prop_assert!(got[starts[b]..starts[b + 1]].iter().all(|&x| x == b));
            }
        }
    }

    /// A cancelled attempt's sort stops at the next bucket instead of sorting on.
    #[test]
    fn a_cancelled_sort_stops_between_buckets() {
        let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let (mut entries, arena) = entries_of(&keys, |_| 0);
        entries.reverse();
        let control = TaskControl::default();
        control.cancel();
        let r = sort_entries(&mut entries, &arena, 1, &control);
        assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    }
}
