//! The reduce side's merge planner: a reduce task's input, gathered segment by segment,
//! merged with a bounded fan-in.
//!
//! A reduce partition has one sorted segment per map run — 200,000 of them for a job of
//! the paper's size. Mapping them all at once would exceed `vm.max_map_count`, and holding
//! fetched ones in memory would exceed any budget, so [`ReduceInput`] keeps them as
//! unopened [`Source`]s and never opens more than the *merge factor* at once (Hadoop's
//! `io.sort.factor`):
//!
//! - **Bounded fan-in.** When more than `2·factor − 1` sources are pending, the `factor`
//!   smallest are merged into one intermediate run on local disk (same block format, same
//!   checksums) — while fetches continue. Before the final merge, passes continue until at
//!   most `factor` remain; the first of them merges just enough that every later pass is
//!   full (as Hadoop's `Merger` does). Merging only regroups records, and the final merge
//!   orders by (key, value), so the output is byte for byte what one big merge gives.
//! - **Bounded memory.** A fetched segment lands in memory only while the fetched bytes
//!   held stay within the task's fetch budget ([`ReduceInput::reserve`]); otherwise the
//!   fetch streams it to a file in the work directory, and it is merged from there (mmap).
//!   Map output on this host is never copied: its sources are ranges of the map's run file.
//!
//! Every file the input creates is removed when the input (or the [`ReadyInput`] it
//! becomes) is dropped, whether the attempt succeeded or not.

use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};

use quern_shuffle::BlockWriter;
use rkyv::util::AlignedVec;

use crate::io::IoService;
use crate::job::{Counters, TaskControl};
use crate::map::{RunFile, BLOCK_BYTES, CHUNK};
use crate::reduce::{Merge, Segment};
use crate::{Error, Result};

/// Default merge factor: segments open at once in one merge. Measured on this machine
/// (`cargo bench -p quern-benches --bench sort_blocks -- merge_factor`: one reduce over the
/// runs of 1,024 maps, 20 MB): factor 16 took 213 ms, 64 took 138 ms, 128 took 135 ms, 256
/// took 115 ms and 1,024 (no pass) took 81 ms. A wider heap costs less than another pass
/// over the data, so the factor is the largest measured; 1,024 mapped segments per task
/// stay far below `vm.max_map_count` (65,530) and hold no file descriptors.
pub const DEFAULT_MERGE_FACTOR: usize = 1024;

/// Counter: intermediate merge passes a reduce task ran.
pub const MERGE_PASSES: &str = "reduce.merge.passes";
/// Counter: bytes read by intermediate merge passes.
pub const MERGE_BYTES: &str = "reduce.merge.bytes";
/// Counter: fetched bytes streamed to local disk because the fetch budget was full.
pub const SPILLED_BYTES: &str = "reduce.spilled.bytes";

/// One sorted input of a reduce task, not yet opened.
#[derive(Debug)]
pub enum Source {
    /// A byte range of a file on this machine — a map's run, a spilled fetch, or an
    /// intermediate run — mapped only when it is merged.
    File {
        /// The file.
        path: PathBuf,
        /// First byte of the segment.
        offset: u64,
        /// Its length.
        len: u64,
        /// The map task whose output this is, if it is one map's (corruption is then
        /// blamed on that map, which gets re-run).
        map: Option<u32>,
    },
    /// Fetched bytes held in memory.
    Memory {
        /// Where they came from (for error messages).
        origin: PathBuf,
        /// Their position in the remote run file.
        offset: u64,
        /// The bytes.
        bytes: AlignedVec<16>,
        /// The map task whose output this is.
        map: Option<u32>,
    },
}

impl Source {
    /// Partition `part` of a local run of map `map`.
    pub fn of_run(run: &RunFile, part: usize, map: Option<u32>) -> Result<Source> {
        let (offset, len) = run.segments.get(part).copied().ok_or_else(|| {
            Error::Usage(format!("{} has no partition {part}", run.path.display()))
        })?;
        Ok(Source::File {
            path: run.path.clone(),
            offset,
            len,
            map,
        })
    }

    /// Bytes of the segment.
    pub fn len(&self) -> u64 {
        match self {
            Source::File { len, .. } => *len,
            Source::Memory { bytes, .. } => bytes.len() as u64,
        }
    }

    /// True for an empty segment.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn memory(&self) -> u64 {
        match self {
            Source::File { .. } => 0,
            Source::Memory { bytes, .. } => bytes.len() as u64,
        }
    }

    /// Maps (or takes) the bytes, ready to merge.
    pub fn open(self) -> Result<Segment> {
        let (segment, map) = match self {
            Source::File {
                path,
                offset,
                len,
                map,
            } => (Segment::map_range(&path, offset, len)?, map),
            Source::Memory {
                origin,
                offset,
                bytes,
                map,
            } => (Segment::fetched(origin, offset, bytes), map),
        };
        Ok(match map {
            Some(m) => segment.of_map(m),
            None => segment,
        })
    }
}

/// A pending source, ordered smallest first (then by arrival, for determinism).
#[derive(Debug)]
struct Pending {
    len: u64,
    seq: u64,
    source: Source,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.len, self.seq) == (other.len, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.len, self.seq).cmp(&(other.len, other.seq))
    }
}

/// Files created for one reduce attempt, removed when dropped.
#[derive(Debug, Default)]
pub struct Scratch {
    files: Vec<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// How a reduce input merges and how much it may hold.
#[derive(Debug, Clone)]
pub struct MergeConfig {
    /// Segments merged at once (at least 2).
    pub factor: usize,
    /// Bytes of fetched segments the task may hold in memory.
    pub memory: u64,
}

/// A reduce task's input as it is gathered (see the module docs).
#[derive(Debug)]
pub struct ReduceInput {
    io: IoService,
    dir: PathBuf,
    name: String,
    config: MergeConfig,
    pending: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    /// Fetched bytes held in memory by pending sources and running merges.
    in_memory: u64,
    /// Bytes reserved for fetches under way.
    reserved: u64,
    scratch: Scratch,
    counters: Counters,
}

impl ReduceInput {
    /// An empty input; scratch files go to `dir`, named after `name` (unique per attempt).
    pub fn new(io: &IoService, dir: &Path, name: &str, config: MergeConfig) -> ReduceInput {
        ReduceInput {
            io: io.clone(),
            dir: dir.to_path_buf(),
            name: name.to_string(),
            config: MergeConfig {
                factor: config.factor.max(2),
                ..config
            },
            pending: BinaryHeap::new(),
            seq: 0,
            in_memory: 0,
            reserved: 0,
            scratch: Scratch::default(),
            counters: Counters::default(),
        }
    }

    /// Sources pending (not yet merged).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Fetched bytes held in memory now.
    pub fn in_memory(&self) -> u64 {
        self.in_memory
    }

    /// Adds a source (an empty one is dropped: it holds no record).
    pub fn add(&mut self, source: Source) {
        if source.is_empty() {
            return;
        }
        self.in_memory += source.memory();
        self.seq += 1;
        self.pending.push(Reverse(Pending {
            len: source.len(),
            seq: self.seq,
            source,
        }));
    }

    /// Asks to receive `len` fetched bytes into memory. `true`: they fit in the budget and
    /// are reserved (hand them to [`ReduceInput::add_fetched`], or give the reservation
    /// back with [`ReduceInput::release`]); `false`: stream them to [`ReduceInput::spill_file`].
    pub fn reserve(&mut self, len: u64) -> bool {
        if self.in_memory + self.reserved + len <= self.config.memory {
            self.reserved += len;
            true
        } else {
            false
        }
    }

    /// Gives back a reservation whose fetch failed.
    pub fn release(&mut self, len: u64) {
        self.reserved = self.reserved.saturating_sub(len);
    }

    /// Adds fetched sources received under a reservation of `reserved` bytes.
    pub fn add_fetched(&mut self, sources: Vec<Source>, reserved: u64) {
        self.release(reserved);
        for s in sources {
            self.add(s);
        }
    }

    /// A new file for a fetch that does not fit in memory; removed with the input.
    pub fn spill_file(&mut self) -> PathBuf {
        self.scratch_file("spill")
    }

    /// Counts `bytes` streamed to a spill file.
    pub fn note_spilled(&mut self, bytes: u64) {
        self.counters.add(SPILLED_BYTES, u128::from(bytes));
    }

    fn scratch_file(&mut self, kind: &str) -> PathBuf {
        let path = self.dir.join(format!(
            "{}-{kind}{}.qrun",
            self.name,
            self.scratch.files.len()
        ));
        self.scratch.files.push(path.clone());
        path
    }

    /// A merge to run now, while more input is still arriving: the `factor` smallest
    /// sources once `2·factor − 1` are pending. Run it (on any thread) and hand the result
    /// to [`ReduceInput::put`].
    pub fn background_merge(&mut self) -> Option<MergeBatch> {
        let f = self.config.factor;
        (self.pending.len() > 2 * f - 2).then(|| self.take(f))
    }

    /// Takes the `k` smallest pending sources as a merge into a new intermediate run.
    fn take(&mut self, k: usize) -> MergeBatch {
        let mut sources = Vec::with_capacity(k);
        let mut memory = 0;
        while sources.len() < k {
            let Some(Reverse(p)) = self.pending.pop() else {
                break;
            };
            memory += p.source.memory();
            sources.push(p.source);
        }
        MergeBatch {
            sources,
            memory,
            out: self.scratch_file("merge"),
            io: self.io.clone(),
        }
    }

    /// Takes back a finished merge.
    pub fn put(&mut self, merged: Merged) {
        self.in_memory = self.in_memory.saturating_sub(merged.memory);
        self.counters.add(MERGE_PASSES, 1);
        self.counters.add(MERGE_BYTES, u128::from(merged.bytes_in));
        self.add(merged.source);
    }

    /// All input has arrived: merges until at most `factor` sources remain, then opens
    /// them for the final merge.
    pub fn finish(mut self, control: &TaskControl) -> Result<ReadyInput> {
        let f = self.config.factor;
        while self.pending.len() > f {
            // The first pass merges just enough that every later pass is a full one.
            let n = self.pending.len();
            let k = match (n - 1) % (f - 1) + 1 {
                1 => f,
                k => k,
            };
            let merged = self.take(k).run(control)?;
            self.put(merged);
        }
        let segments = std::mem::take(&mut self.pending)
            .into_sorted_vec()
            .into_iter()
            .rev()
            .map(|Reverse(p)| p.source.open())
            .collect::<Result<Vec<_>>>()?;
        Ok(ReadyInput {
            segments,
            counters: std::mem::take(&mut self.counters),
            _scratch: std::mem::take(&mut self.scratch),
        })
    }
}

/// The input of the final merge: at most `factor` open segments.
#[derive(Debug)]
pub struct ReadyInput {
    /// The segments, opened.
    pub segments: Vec<Segment>,
    /// What the merge planner did (passes, bytes merged, bytes spilled).
    pub counters: Counters,
    /// Removed after the segments (field order: the maps go first).
    _scratch: Scratch,
}

/// Sources taken out of a [`ReduceInput`] to be merged into one intermediate run.
#[derive(Debug)]
pub struct MergeBatch {
    sources: Vec<Source>,
    memory: u64,
    out: PathBuf,
    io: IoService,
}

/// A finished [`MergeBatch`].
#[derive(Debug)]
pub struct Merged {
    source: Source,
    memory: u64,
    bytes_in: u64,
}

impl MergeBatch {
    /// Merges the sources into one run file (blocks in the same format as map runs).
    pub fn run(self, control: &TaskControl) -> Result<Merged> {
        let bytes_in = self.sources.iter().map(Source::len).sum();
        let segments = self
            .sources
            .into_iter()
            .map(Source::open)
            .collect::<Result<Vec<_>>>()?;
        let consumed = Cell::new(0);
        let mut merge = Merge::new(&segments, &consumed)?;
        let mut file = self.io.create(&self.out)?;
        let mut buf = Vec::with_capacity(CHUNK + 2 * BLOCK_BYTES);
        let mut blocks = BlockWriter::new(BLOCK_BYTES);
        let corrupt = |source| Error::Corrupt {
            path: self.out.clone(),
            offset: 0,
            source,
        };
        let mut n = 0u64;
        while let Some((key, value)) = merge.next_record()? {
            blocks.push(key, value, &mut buf).map_err(corrupt)?;
            n += 1;
            if n % 4096 == 0 && control.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if buf.len() >= CHUNK {
                file.write(std::mem::replace(
                    &mut buf,
                    Vec::with_capacity(CHUNK + 2 * BLOCK_BYTES),
                ))?;
            }
        }
        blocks.flush(&mut buf).map_err(corrupt)?;
        file.write(buf)?;
        let len = file.finish(false)?;
        Ok(Merged {
            source: Source::File {
                path: self.out,
                offset: 0,
                len,
                map: None,
            },
            memory: self.memory,
            bytes_in,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes one sorted segment of `records` into its own file; returns its source.
    fn segment_file(dir: &Path, name: &str, records: &Records) -> Source {
        let mut bytes = Vec::new();
        let mut w = BlockWriter::new(256);
        for (k, v) in records {
            w.push(k, v, &mut bytes).expect("push");
        }
        w.flush(&mut bytes).expect("flush");
        let path = dir.join(name);
        std::fs::write(&path, &bytes).expect("write segment");
        Source::File {
            path,
            offset: 0,
            len: bytes.len() as u64,
            map: None,
        }
    }

    type Records = Vec<(Vec<u8>, Vec<u8>)>;

    /// `n` segments of interleaved keys (with duplicates across segments); returns them and
    /// every record in sorted order.
    fn inputs(dir: &Path, n: usize) -> (Vec<Source>, Records) {
        let mut all = Vec::new();
        let sources = (0..n)
            .map(|s| {
                let records: Records = (0..40)
                    .map(|i| {
                        let key = format!("k{:04}", (i * 7 + s * 3) % 150).into_bytes();
                        (key, format!("v{}", s % 5).into_bytes())
                    })
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                all.extend(records.iter().cloned());
                segment_file(dir, &format!("seg{s}"), &records)
            })
            .collect();
        all.sort();
        (sources, all)
    }

    fn read_all(ready: &ReadyInput) -> Records {
        let merged = Cell::new(0);
        let mut merge = Merge::new(&ready.segments, &merged).expect("merge");
        let mut out = Vec::new();
        while let Some((k, v)) = merge.next_record().expect("record") {
            out.push((k.to_vec(), v.to_vec()));
        }
        out
    }

    fn input(dir: &Path, factor: usize) -> ReduceInput {
        ReduceInput::new(
            &IoService::std(),
            dir,
            "reduce-00000-a1",
            MergeConfig {
                factor,
                memory: 1 << 20,
            },
        )
    }

    #[test]
    fn many_segments_merge_in_passes_to_the_same_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sources, want) = inputs(dir.path(), 50);
        let mut input = input(dir.path(), 4);
        let control = TaskControl::default();
        for s in sources {
            input.add(s);
            // What a worker does while fetches continue.
            if let Some(batch) = input.background_merge() {
                let merged = batch.run(&control).expect("background pass");
                input.put(merged);
            }
            assert!(input.pending() < 2 * 4, "pending {}", input.pending());
        }
        let ready = input.finish(&control).expect("finish");
        assert!(
            ready.segments.len() <= 4,
            "{} segments",
            ready.segments.len()
        );
        assert!(
            ready.counters.get(MERGE_PASSES) >= 12,
            "{:?}",
            ready.counters
        );
        assert_eq!(read_all(&ready), want);
        // Intermediate runs are removed with the input.
        let scratch: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.to_string_lossy().contains("-merge"))
            .collect();
        assert!(!scratch.is_empty());
        drop(ready);
        assert!(scratch.iter().all(|p| !p.exists()), "scratch left behind");
    }

    #[test]
    fn final_passes_are_full_after_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 10 segments, factor 4: (10 − 1) % 3 + 1 = 1 would be no merge, so the first
        // pass is a full one (10 → 7), and so is the second (7 → 4).
        let (sources, want) = inputs(dir.path(), 10);
        let mut input = input(dir.path(), 4);
        for s in sources {
            input.add(s);
        }
        let ready = input.finish(&TaskControl::default()).expect("finish");
        assert_eq!(ready.segments.len(), 4);
        assert_eq!(ready.counters.get(MERGE_PASSES), 2);
        assert_eq!(read_all(&ready), want);
    }

    #[test]
    fn fetch_memory_is_reserved_within_the_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut input = input(dir.path(), 4);
        assert!(input.reserve(600 << 10));
        assert!(!input.reserve(600 << 10), "over the 1 MiB budget");
        input.release(600 << 10);
        assert!(input.reserve(1 << 20));
        input.add_fetched(Vec::new(), 1 << 20);
        assert_eq!(input.in_memory(), 0);
    }

    #[test]
    fn corrupt_or_truncated_intermediate_runs_fail_cleanly() {
        for damage in ["flip", "truncate"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (sources, _) = inputs(dir.path(), 9);
            let mut input = input(dir.path(), 4);
            let control = TaskControl::default();
            for s in sources {
                input.add(s);
            }
            let mut merged = input
                .background_merge()
                .expect("9 > 2·4 − 1 pending: a pass is due")
                .run(&control)
                .expect("pass");
            let Source::File { path, len, .. } = &mut merged.source else {
                panic!("a pass writes a file");
            };
            let mut bytes = std::fs::read(&*path).expect("read run");
            match damage {
                "flip" => bytes[*len as usize / 2] ^= 0x40,
                _ => {
                    bytes.truncate(*len as usize - 7);
                    // The planner recorded the old length: map what is there now.
                    *len = bytes.len() as u64;
                }
            }
            std::fs::write(&*path, &bytes).expect("damage run");
            input.put(merged);
            // Opening maps the segments; the damage shows when the merge reaches it.
            let drain = |ready: ReadyInput| -> Result<()> {
                let consumed = Cell::new(0);
                let mut merge = Merge::new(&ready.segments, &consumed)?;
                while merge.next_record()?.is_some() {}
                Ok(())
            };
            let err = input
                .finish(&control)
                .and_then(drain)
                .expect_err("damage must be detected");
            assert!(
                matches!(err, Error::Corrupt { .. }),
                "{damage}: {err} ({err:?})"
            );
            assert!(err.to_string().contains("-merge"), "{damage}: {err}");
        }
    }
}
