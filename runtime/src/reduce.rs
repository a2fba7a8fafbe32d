//! Reduce tasks: merge one partition of every map run, group by key, call `reduce`, and
//! write the partition's part file.
//!
//! Each segment is memory-mapped; every block is validated once (checksum, rkyv bytecheck,
//! record table) when the merge first reaches it, and its records are then read in place —
//! the merge moves slices, never bytes. The heap orders cursors by (key, value, run), so each
//! key's values reach `reduce` in ascending bytewise order regardless of which map produced
//! them.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use quern_shuffle::{FrameIter, ValidBlock};
use rkyv::util::AlignedVec;

use crate::input::map_file;
use crate::io::FileWriter;
use crate::job::{Counters, Job, ReduceContext, TaskControl};
use crate::map::{key_prefix, CHUNK};
use crate::{Error, Result};

/// One partition's segment of one run: memory-mapped from local disk, or received over the
/// network into an aligned buffer. Either way it is read in place.
#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    offset: u64,
    map: Option<u32>,
    bytes: SegmentBytes,
}

#[derive(Debug)]
enum SegmentBytes {
    Empty,
    Mapped(Mmap),
    Fetched(AlignedVec<16>),
}

impl Segment {
    /// Maps `len` bytes of the file at `path` from `offset` (an empty segment maps nothing).
    pub fn map_range(path: &Path, offset: u64, len: u64) -> Result<Segment> {
        let bytes = if len == 0 {
            SegmentBytes::Empty
        } else {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            SegmentBytes::Mapped(map_file(&file, path, offset, len)?)
        };
        Ok(Segment {
            path: path.to_path_buf(),
            offset,
            map: None,
            bytes,
        })
    }

    /// A segment received from the network; `origin` names where it came from in errors,
    /// `offset` is its position in the remote run file.
    pub fn fetched(origin: PathBuf, offset: u64, bytes: AlignedVec<16>) -> Segment {
        Segment {
            path: origin,
            offset,
            map: None,
            bytes: SegmentBytes::Fetched(bytes),
        }
    }

    /// Attributes the segment to map task `map`, so corruption is reported against it.
    pub fn of_map(mut self, map: u32) -> Segment {
        self.map = Some(map);
        self
    }

    /// The segment's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            SegmentBytes::Empty => &[],
            SegmentBytes::Mapped(m) => m,
            SegmentBytes::Fetched(v) => v,
        }
    }

    fn corrupt(&self, at: u64, source: quern_shuffle::BlockError) -> Error {
        let (path, offset) = (self.path.clone(), self.offset + at);
        match self.map {
            Some(map) => Error::BadMapOutput {
                map,
                path,
                offset,
                source,
            },
            None => Error::Corrupt {
                path,
                offset,
                source,
            },
        }
    }
}

/// A position in one run's sorted stream.
struct Cursor<'a> {
    frames: FrameIter<'a>,
    block: Option<ValidBlock<'a>>,
    idx: usize,
    /// First 8 bytes of `key` (big-endian, zero-padded): most comparisons stop here.
    prefix: u64,
    key: &'a [u8],
    value: &'a [u8],
    run: usize,
    segment: &'a Segment,
    /// Bytes of input merged so far, over all cursors (progress for speculation).
    merged: &'a Cell<u64>,
    /// Bytes credited to `merged` per record of the current block; the block's remainder is
    /// credited when the cursor leaves it.
    per_record: u64,
    /// Bytes of the current block (frame) not yet credited.
    uncredited: u64,
}

impl<'a> Cursor<'a> {
    fn new(segment: &'a Segment, run: usize, merged: &'a Cell<u64>) -> Result<Option<Self>> {
        let mut c = Cursor {
            frames: FrameIter::new(segment.bytes()),
            block: None,
            idx: 0,
            prefix: 0,
            key: &[],
            value: &[],
            run,
            segment,
            merged,
            per_record: 0,
            uncredited: 0,
        };
        Ok(if c.load_block()? { Some(c) } else { None })
    }

    /// Moves to the next non-empty block; false at the end of the segment.
    fn load_block(&mut self) -> Result<bool> {
        self.merged.set(self.merged.get() + self.uncredited);
        self.uncredited = 0;
        loop {
            let at = self.frames.position() as u64;
            let next = self.frames.next();
            let bytes = self.frames.position() as u64 - at;
            match next {
                None => return Ok(false),
                Some(Err(source)) => return Err(self.segment.corrupt(at, source)),
                Some(Ok(block)) if block.is_empty() => self.merged.set(self.merged.get() + bytes),
                Some(Ok(block)) => {
                    (self.key, self.value) = block.record(0);
                    self.prefix = key_prefix(self.key);
                    self.block = Some(block);
                    self.idx = 0;
                    self.per_record = bytes / block.len() as u64;
                    self.uncredited = bytes;
                    return Ok(true);
                }
            }
        }
    }

    /// Advances one record; false when the run is exhausted.
    fn advance(&mut self) -> Result<bool> {
        let Some(block) = self.block else {
            return Ok(false);
        };
        self.merged.set(self.merged.get() + self.per_record);
        self.uncredited -= self.per_record;
        self.idx += 1;
        if self.idx < block.len() {
            (self.key, self.value) = block.record(self.idx);
            self.prefix = key_prefix(self.key);
            return Ok(true);
        }
        self.load_block()
    }
}

impl PartialEq for Cursor<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Cursor<'_> {}
impl PartialOrd for Cursor<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Cursor<'_> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the smallest record first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .prefix
            .cmp(&self.prefix)
            .then_with(|| other.key.cmp(self.key))
            .then_with(|| other.value.cmp(self.value))
            .then_with(|| other.run.cmp(&self.run))
    }
}

/// A k-way merge of sorted segments, in (key, value) order: the reduce's grouping loop and
/// the merge planner's intermediate passes both read records through it.
pub(crate) struct Merge<'a> {
    heap: BinaryHeap<Cursor<'a>>,
}

impl<'a> Merge<'a> {
    /// Opens a cursor on every non-empty segment (validating its first block).
    /// `merged` accumulates the bytes of input consumed, for progress.
    pub(crate) fn new(segments: &'a [Segment], merged: &'a Cell<u64>) -> Result<Merge<'a>> {
        let mut heap = BinaryHeap::with_capacity(segments.len());
        for (run, segment) in segments.iter().enumerate() {
            if let Some(c) = Cursor::new(segment, run, merged)? {
                heap.push(c);
            }
        }
        Ok(Merge { heap })
    }

    /// The next record in order, or `None` at the end.
    pub(crate) fn next_record(&mut self) -> Result<Option<(&'a [u8], &'a [u8])>> {
        let Some(mut top) = self.heap.peek_mut() else {
            return Ok(None);
        };
        let record = (top.key, top.value);
        // Advancing the top in place costs one sift-down.
        if !top.advance()? {
            std::collections::binary_heap::PeekMut::pop(top);
        }
        Ok(Some(record))
    }

    /// The next key in order, with all its values (in ascending order) in `values`; `None`
    /// at the end.
    pub(crate) fn next_key(&mut self, values: &mut Vec<&'a [u8]>) -> Result<Option<&'a [u8]>> {
        values.clear();
        let Some(key) = self.heap.peek().map(|top| top.key) else {
            return Ok(None);
        };
        while let Some(mut next) = self.heap.peek_mut() {
            if next.key != key {
                break;
            }
            values.push(next.value);
            if !next.advance()? {
                std::collections::binary_heap::PeekMut::pop(next);
            }
        }
        Ok(Some(key))
    }
}

/// A reduce attempt's progress units per byte of its partition's input: gathering it (the
/// fetches; instant for local runs)...
pub const FETCH_WEIGHT: u64 = 1;
/// ... and the final merge, which reads it, calls `reduce` and writes the output (Hadoop's
/// copy / sort + reduce split: a third, two thirds).
pub const MERGE_WEIGHT: u64 = 2;

/// One reduce partition's input as [`Job::reduce_partition`] sees it: its keys in ascending
/// bytewise order, each with its values (ascending too). It checks for cancellation and
/// publishes progress as keys are taken.
pub struct KeyGroups<'m, 'a> {
    merge: Merge<'a>,
    values: Vec<&'a [u8]>,
    control: &'m TaskControl,
    merged: &'a Cell<u64>,
    fetched: u64,
    keys: u128,
    records: u128,
    pacer: crate::job::Pacer,
    error: Option<Error>,
}

impl std::fmt::Debug for KeyGroups<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGroups")
            .field("keys", &self.keys)
            .field("records", &self.records)
            .finish()
    }
}

impl<'a> KeyGroups<'_, 'a> {
    /// The next key and its values; `None` at the end of the partition (or when the
    /// attempt was cancelled or its input is corrupt: the runtime then fails the attempt).
    pub fn next_key(&mut self) -> Option<(&'a [u8], &[&'a [u8]])> {
        if self.error.is_some() {
            return None;
        }
        if self.keys % 1024 == 1023 {
            if self.control.is_cancelled() {
                self.error = Some(Error::Cancelled);
                return None;
            }
            self.control
                .set_done(self.fetched + MERGE_WEIGHT * self.merged.get());
            self.pacer.pace();
        }
        match self.merge.next_key(&mut self.values) {
            Ok(Some(key)) => {
                self.keys += 1;
                self.records += self.values.len() as u128;
                Some((key, &self.values))
            }
            Ok(None) => None,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// Merges `segments` (each sorted by key, value) and calls `job.reduce_partition` over
/// them, writing the output through `out`. Returns the task's counters.
///
/// Progress: the fetch phase is done ([`FETCH_WEIGHT`] per byte), and the merge credits
/// [`MERGE_WEIGHT`] per byte it consumes.
pub fn reduce_segments(
    job: &dyn Job,
    part: u32,
    segments: &[Segment],
    out: &mut FileWriter,
    control: &TaskControl,
) -> Result<Counters> {
    let bytes: u64 = segments.iter().map(|s| s.bytes().len() as u64).sum();
    let fetched = FETCH_WEIGHT * bytes;
    control.set_progress(fetched, fetched + MERGE_WEIGHT * bytes);
    let merged = Cell::new(0);
    let mut groups = KeyGroups {
        merge: Merge::new(segments, &merged)?,
        values: Vec::new(),
        control,
        merged: &merged,
        fetched,
        keys: 0,
        records: 0,
        pacer: crate::job::Pacer::new(control),
        error: None,
    };
    let mut counters = Counters::default();
    let mut buf = Vec::with_capacity(CHUNK + (64 << 10));
    let mut ctx = ReduceContext::to_file(&mut buf, &mut counters, out, control);
    job.reduce_partition(part, &mut groups, &mut ctx);
    let written = ctx.finish();
    if let Some(e) = groups.error.take() {
        return Err(e);
    }
    if control.is_cancelled() {
        return Err(Error::Cancelled);
    }
    written?;
    control.set_done(fetched + MERGE_WEIGHT * merged.get());
    counters.add("reduce.input.keys", groups.keys);
    counters.add("reduce.input.records", groups.records);
    Ok(counters)
}

/// Reduces `segments` into `out_path` (fsynced, not yet committed).
pub fn reduce_to_file(
    job: &dyn Job,
    part: u32,
    segments: &[Segment],
    out_path: &Path,
    io: &crate::io::IoService,
    control: &TaskControl,
) -> Result<Counters> {
    let mut out = io.create(out_path)?;
    let mut counters = reduce_segments(job, part, segments, &mut out, control)?;
    let bytes = out.finish(true)?;
    counters.add("output.bytes", u128::from(bytes));
    Ok(counters)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use quern_shuffle::block::BlockWriter;

    use super::*;
    use crate::job::{InputFormat, MapContext, Record};

    /// Counts values per key and samples the attempt's progress at every key.
    struct Sampler {
        control: Arc<TaskControl>,
        samples: Mutex<Vec<(u64, u64)>>,
    }

    impl Job for Sampler {
        fn name(&self) -> &str {
            "sampler"
        }
        fn input_format(&self) -> InputFormat {
            InputFormat::Lines
        }
        fn map(&self, _: &Record<'_>, _: &mut MapContext<'_>) {}
        fn reduce(
            &self,
            _key: &[u8],
            values: &mut dyn Iterator<Item = &[u8]>,
            ctx: &mut ReduceContext<'_>,
        ) {
            ctx.write(format!("{}\n", values.count()).as_bytes());
            if let Ok(mut s) = self.samples.lock() {
                s.push(self.control.progress());
            }
        }
    }

    /// A fetched segment of `records` (already in order), in blocks of about `block` bytes.
    fn segment(records: &[(Vec<u8>, Vec<u8>)], block: usize) -> Segment {
        let mut bytes = Vec::new();
        let mut w = BlockWriter::new(block);
        for (k, v) in records {
            w.push(k, v, &mut bytes).expect("push");
        }
        w.flush(&mut bytes).expect("flush");
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes);
        Segment::fetched(PathBuf::from("test"), 0, aligned)
    }

    /// One segment holding a single large block of `n` records.
    fn one_block_segment(n: u32) -> Segment {
        let records: Vec<_> = (0..n)
            .map(|i| (i.to_be_bytes().to_vec(), b"v".to_vec()))
            .collect();
        segment(&records, usize::MAX)
    }

    #[test]
    fn merge_yields_every_record_in_key_value_order() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        // Short keys from a small alphabet (many duplicates, equal 8-byte prefixes with
        // different tails), some runs empty, blocks of a few records.
        for k in [0usize, 1, 2, 3, 4, 5, 7, 8, 16, 17, 33] {
            let runs: Vec<Vec<(Vec<u8>, Vec<u8>)>> = (0..k)
                .map(|_| {
                    let n = if next(5) == 0 { 0 } else { next(40) };
                    let mut run: Vec<_> = (0..n)
                        .map(|_| {
                            let klen = next(13) as usize;
                            let key = (0..klen).map(|_| b"ab"[next(2) as usize]).collect();
                            (key, vec![b"xy"[next(2) as usize]])
                        })
                        .collect();
                    run.sort();
                    run
                })
                .collect();
            let segments: Vec<Segment> = runs.iter().map(|r| segment(r, 64)).collect();
            // Records equal in key and value are alike whichever run they came from.
            let mut want: Vec<(&[u8], &[u8])> = runs
                .iter()
                .flatten()
                .map(|(k, v)| (&k[..], &v[..]))
                .collect();
            want.sort();
            let merged = Cell::new(0);
            let mut merge = Merge::new(&segments, &merged).expect("merge");
            let mut got = Vec::new();
            while let Some(record) = merge.next_record().expect("record") {
                got.push(record);
            }
            assert_eq!(got, want, "{k} runs");
            let total: u64 = segments.iter().map(|s| s.bytes().len() as u64).sum();
            assert_eq!(merged.get(), total, "{k} runs: every byte credited");
            // Grouped: each key once, in order, with its values ascending.
            let mut merge = Merge::new(&segments, &merged).expect("merge");
            let (mut values, mut keys, mut at) = (Vec::new(), Vec::new(), 0);
            while let Some(key) = merge.next_key(&mut values).expect("key") {
                for v in &values {
                    assert_eq!((key, *v), want[at], "{k} runs");
                    at += 1;
                }
                keys.push(key);
            }
            assert_eq!(at, want.len());
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "{k} runs: keys once each"
            );
        }
    }

    #[test]
    fn reduce_progress_advances_per_record_not_per_block() {
        let control = Arc::new(TaskControl::default());
        let job = Sampler {
            control: control.clone(),
            samples: Mutex::new(Vec::new()),
        };
        let segments = [one_block_segment(10_000), one_block_segment(3)];
        let bytes: u64 = segments.iter().map(|s| s.bytes().len() as u64).sum();
        // The fetch phase is credited up front; the merge moves the rest.
        let (fetched, total) = (FETCH_WEIGHT * bytes, (FETCH_WEIGHT + MERGE_WEIGHT) * bytes);
        let dir = tempfile::tempdir().expect("tempdir");
        let io = crate::io::IoService::std();
        reduce_to_file(&job, 0, &segments, &dir.path().join("part"), &io, &control)
            .expect("reduce");
        let samples = job.samples.into_inner().expect("samples");
        assert_eq!(samples.len(), 10_000);
        assert!(samples.windows(2).all(|w| w[0].0 <= w[1].0), "monotone");
        assert!(samples.iter().all(|&(_, t)| t == total));
        // With the whole segment in one block, progress must still move through the merge:
        // samples strictly between 0 and the total, spread over it.
        let inside = samples
            .iter()
            .filter(|(d, _)| *d > fetched && *d < total)
            .count();
        // Progress is published every 1024 keys.
        assert!(
            inside > 8_000,
            "{inside} samples inside ({fetched}, {total})"
        );
        let mid = (samples[5_000].0 - fetched) as f64 / (total - fetched) as f64;
        assert!(
            (0.3..0.7).contains(&mid),
            "halfway through, progress {mid:.2}"
        );
        assert_eq!(
            control.progress(),
            (total, total),
            "all work credited at the end"
        );
    }
}
