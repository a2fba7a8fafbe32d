//! Reduce tasks: merge one partition of every map run, group by key, call `reduce`, and
//! write the partition's part file.
//!
//! Each segment is memory-mapped; every block is validated once (checksum, rkyv bytecheck,
//! record table) when the merge first reaches it, and its records are then read in place —
//! the merge moves slices, never bytes. The heap orders cursors by (key, value, run), so each
//! key's values reach `reduce` in ascending bytewise order regardless of which map produced
//! them.

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
use crate::map::{key_prefix, RunFile, CHUNK};
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
    /// Maps partition `part` of a local `run` (an empty segment maps nothing).
    pub fn open(run: &RunFile, part: usize) -> Result<Segment> {
        let (offset, len) = run.segments.get(part).copied().ok_or_else(|| {
            Error::Usage(format!("{} has no partition {part}", run.path.display()))
        })?;
        let bytes = if len == 0 {
            SegmentBytes::Empty
        } else {
            let file = File::open(&run.path).map_err(|e| Error::io(&run.path, e))?;
            SegmentBytes::Mapped(map_file(&file, &run.path, offset, len)?)
        };
        Ok(Segment {
            path: run.path.clone(),
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
    control: &'a TaskControl,
}

impl<'a> Cursor<'a> {
    fn new(segment: &'a Segment, run: usize, control: &'a TaskControl) -> Result<Option<Self>> {
        let mut c = Cursor {
            frames: FrameIter::new(segment.bytes()),
            block: None,
            idx: 0,
            prefix: 0,
            key: &[],
            value: &[],
            run,
            segment,
            control,
        };
        Ok(if c.load_block()? { Some(c) } else { None })
    }

    /// Moves to the next non-empty block; false at the end of the segment.
    fn load_block(&mut self) -> Result<bool> {
        loop {
            let at = self.frames.position() as u64;
            let next = self.frames.next();
            self.control.add_done(self.frames.position() as u64 - at);
            match next {
                None => return Ok(false),
                Some(Err(source)) => return Err(self.segment.corrupt(at, source)),
                Some(Ok(block)) if block.is_empty() => continue,
                Some(Ok(block)) => {
                    (self.key, self.value) = block.record(0);
                    self.prefix = key_prefix(self.key);
                    self.block = Some(block);
                    self.idx = 0;
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

/// Merges `segments` (each sorted by key, value) and calls `job.reduce` per key, writing the
/// output through `out`. Returns the task's counters.
pub fn reduce_segments(
    job: &dyn Job,
    segments: &[Segment],
    out: &mut FileWriter,
    control: &TaskControl,
) -> Result<Counters> {
    control.set_progress(0, segments.iter().map(|s| s.bytes().len() as u64).sum());
    let mut heap = BinaryHeap::with_capacity(segments.len());
    for (run, segment) in segments.iter().enumerate() {
        if let Some(c) = Cursor::new(segment, run, control)? {
            heap.push(c);
        }
    }
    let mut counters = Counters::default();
    let mut buf = Vec::with_capacity(CHUNK + (64 << 10));
    let mut values: Vec<&[u8]> = Vec::new();
    let (mut keys, mut records) = (0u128, 0u128);
    let mut pacer = crate::job::Pacer::new(control);
    while let Some(top) = heap.peek() {
        let key = top.key;
        values.clear();
        // Take every record with this key; advancing the top in place costs one sift-down.
        while let Some(mut next) = heap.peek_mut() {
            if next.key != key {
                break;
            }
            values.push(next.value);
            if !next.advance()? {
                std::collections::binary_heap::PeekMut::pop(next);
            }
        }
        keys += 1;
        records += values.len() as u128;
        if keys % 1024 == 0 {
            if control.is_cancelled() {
                return Err(Error::Cancelled);
            }
            pacer.pace();
        }
        let mut ctx = ReduceContext::new(&mut buf, &mut counters);
        job.reduce(key, &mut values.iter().copied(), &mut ctx);
        if buf.len() >= CHUNK {
            out.write(std::mem::replace(
                &mut buf,
                Vec::with_capacity(CHUNK + (64 << 10)),
            ))?;
        }
    }
    if !buf.is_empty() {
        out.write(buf)?;
    }
    counters.add("reduce.input.keys", keys);
    counters.add("reduce.input.records", records);
    Ok(counters)
}

/// Runs reduce partition `part` over local `runs`, writing to `out_path` (fsynced, not yet
/// committed).
pub fn run_reduce(
    job: &dyn Job,
    runs: &[&RunFile],
    part: usize,
    out_path: &Path,
    io: &crate::io::IoService,
) -> Result<Counters> {
    let segments = runs
        .iter()
        .map(|run| Segment::open(run, part))
        .collect::<Result<Vec<_>>>()?;
    reduce_to_file(job, &segments, out_path, io, &TaskControl::default())
}

/// Reduces `segments` into `out_path` (fsynced, not yet committed).
pub fn reduce_to_file(
    job: &dyn Job,
    segments: &[Segment],
    out_path: &Path,
    io: &crate::io::IoService,
    control: &TaskControl,
) -> Result<Counters> {
    let mut out = io.create(out_path)?;
    let mut counters = reduce_segments(job, segments, &mut out, control)?;
    let bytes = out.finish(true)?;
    counters.add("output.bytes", u128::from(bytes));
    Ok(counters)
}
