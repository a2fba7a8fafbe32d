//! The TeraSort suite: TeraGen (a map-only generator), TeraSort (total-order sort with a
//! sampled range partitioner) and TeraValidate (order, duplicates and checksum of the output).

use quern_runtime::input::ChunkData;
use quern_runtime::{
    InputFile, InputFormat, Job, MapContext, Record, ReduceContext, Split, SplitInfo,
};

use crate::gensort::{self, KEY_LEN, RECORD_LEN};

/// Counter: records generated or validated.
pub const RECORDS: &str = "tera.records";
/// Counter: valsort checksum (sum of record CRC-32s).
pub const CHECKSUM: &str = "tera.checksum";
/// Counter: adjacent records with equal keys.
pub const DUPLICATES: &str = "tera.duplicates";
/// Counter: adjacent records out of order.
pub const MISORDERS: &str = "tera.misorders";

/// gensort-compatible generator: a map-only job over a range of row numbers.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TeraGen {
    /// Records to generate.
    pub records: u64,
    /// Initial generator state (0 = gensort's sequence).
    pub seed: u128,
    /// gensort `-a` records.
    pub ascii: bool,
}

impl Job for TeraGen {
    fn name(&self) -> &str {
        "teragen"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Rows(self.records)
    }

    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
        let info = SplitInfo {
            input: record.input,
            start: record.offset,
            len: 1,
        };
        self.map_split(&info, &mut std::iter::empty(), ctx);
    }

    /// Generates the split's whole row range from one skip-ahead.
    fn map_split(
        &self,
        split: &SplitInfo<'_>,
        _rows: &mut dyn Iterator<Item = Record<'_>>,
        ctx: &mut MapContext<'_>,
    ) {
        let mut sum = 0u128;
        let mut done = 0u64;
        gensort::generate(self.seed, split.start, split.len, self.ascii, |rec| {
            sum += gensort::record_crc(rec);
            ctx.emit(&rec[..KEY_LEN], &rec[KEY_LEN..]);
            done += 1;
            if done % 4096 == 0 {
                ctx.progress(done, split.len);
            }
        });
        ctx.progress(split.len, split.len);
        ctx.count(RECORDS, u128::from(split.len));
        ctx.count(CHECKSUM, sum);
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        identity_reduce(key, values, ctx);
    }
}

fn identity_reduce(
    key: &[u8],
    values: &mut dyn Iterator<Item = &[u8]>,
    ctx: &mut ReduceContext<'_>,
) {
    for v in values {
        ctx.write(key);
        ctx.write(v);
    }
}

/// Total-order sort of 100-byte records by their 10-byte key.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TeraSort {
    /// `R - 1` split points: partition `p` holds keys in `[cuts[p-1], cuts[p])`.
    pub cuts: Vec<[u8; KEY_LEN]>,
}

impl TeraSort {
    /// Builds the range partitioner from a sample of up to `samples` keys taken evenly
    /// across all `splits` (TeraSort's sampler), for `reducers` partitions.
    pub fn sampled(
        inputs: &[InputFile],
        splits: &[Split],
        reducers: u32,
        samples: usize,
    ) -> quern_runtime::Result<TeraSort> {
        let total: u64 = splits.iter().map(|s| s.len() / RECORD_LEN as u64).sum();
        let mut keys: Vec<[u8; KEY_LEN]> = Vec::with_capacity(samples.min(total as usize));
        if total > 0 && reducers > 1 {
            let stride = (total / samples.max(1) as u64).max(1);
            for chunk in splits.iter().flat_map(|s| &s.chunks) {
                let input = &inputs[chunk.file as usize];
                let data = ChunkData::open(input, chunk, InputFormat::Fixed(RECORD_LEN))?;
                let bytes = data.bytes();
                let n = bytes.len() / RECORD_LEN;
                let mut i = 0;
                while i < n {
                    let mut k = [0u8; KEY_LEN];
                    k.copy_from_slice(&bytes[i * RECORD_LEN..i * RECORD_LEN + KEY_LEN]);
                    keys.push(k);
                    i += stride as usize;
                }
            }
        }
        keys.sort_unstable();
        let cuts = if keys.is_empty() {
            Vec::new()
        } else {
            (1..reducers as usize)
                .map(|p| keys[p * keys.len() / reducers as usize])
                .collect()
        };
        Ok(TeraSort { cuts })
    }
}

impl Job for TeraSort {
    fn name(&self) -> &str {
        "terasort"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Fixed(RECORD_LEN)
    }

    #[inline]
    fn map(&self, record: &Record<'_>, ctx: &mut MapContext<'_>) {
        ctx.emit(&record.data[..KEY_LEN], &record.data[KEY_LEN..]);
    }

    fn partition(&self, key: &[u8], reducers: u32) -> u32 {
        let p = self.cuts.partition_point(|cut| cut.as_slice() <= key) as u32;
        p.min(reducers.saturating_sub(1))
    }

    fn reduce(
        &self,
        key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        identity_reduce(key, values, ctx);
    }
}

/// Checks that records are sorted within and across files (in name order), counts records
/// and duplicate keys, and sums the checksum. One reducer sees every split's summary in
/// (file, offset) order and checks the boundaries between them.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TeraValidate {
    /// The files being validated, to name them in reports.
    pub names: Vec<String>,
}

/// Per-split summary: file (4) + start (8) + first key + last key + first misorder (8).
const SUMMARY_LEN: usize = 4 + 8 + KEY_LEN + KEY_LEN + 8;

impl Job for TeraValidate {
    fn name(&self) -> &str {
        "teravalidate"
    }

    fn input_format(&self) -> InputFormat {
        InputFormat::Fixed(RECORD_LEN)
    }

    fn map(&self, _record: &Record<'_>, _ctx: &mut MapContext<'_>) {
        unreachable!("TeraValidate maps whole splits")
    }

    fn map_split(
        &self,
        split: &SplitInfo<'_>,
        records: &mut dyn Iterator<Item = Record<'_>>,
        ctx: &mut MapContext<'_>,
    ) {
        let (mut n, mut sum, mut dups, mut misorders) = (0u128, 0u128, 0u128, 0u128);
        let mut first: Option<&[u8]> = None;
        let mut prev: &[u8] = &[];
        let mut first_bad = u64::MAX;
        for r in records {
            let key = &r.data[..KEY_LEN];
            match first {
                None => first = Some(key),
                Some(_) => match key.cmp(prev) {
                    std::cmp::Ordering::Less => {
                        misorders += 1;
                        first_bad = first_bad.min(r.offset);
                    }
                    std::cmp::Ordering::Equal => dups += 1,
                    std::cmp::Ordering::Greater => {}
                },
            }
            prev = key;
            n += 1;
            sum += gensort::record_crc(r.data);
        }
        ctx.count(RECORDS, n);
        ctx.count(CHECKSUM, sum);
        ctx.count(DUPLICATES, dups);
        ctx.count(MISORDERS, misorders);
        if let Some(first) = first {
            let mut v = [0u8; SUMMARY_LEN];
            v[..4].copy_from_slice(&split.input.index.to_be_bytes());
            v[4..12].copy_from_slice(&split.start.to_be_bytes());
            v[12..22].copy_from_slice(first);
            v[22..32].copy_from_slice(prev);
            v[32..40].copy_from_slice(&first_bad.to_be_bytes());
            ctx.emit(b"", &v);
        }
    }

    fn partition(&self, _key: &[u8], _reducers: u32) -> u32 {
        0
    }

    /// Values arrive sorted by (file, start): exactly the order of the splits.
    fn reduce(
        &self,
        _key: &[u8],
        values: &mut dyn Iterator<Item = &[u8]>,
        ctx: &mut ReduceContext<'_>,
    ) {
        let mut prev_last: Option<[u8; KEY_LEN]> = None;
        for v in values {
            let file = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
            let name = self.names.get(file).map_or("?", String::as_str);
            let start = u64::from_be_bytes(v[4..12].try_into().unwrap_or_default());
            let first_bad = u64::from_be_bytes(v[32..40].try_into().unwrap_or_default());
            if first_bad != u64::MAX {
                ctx.write(format!("{name}: byte {first_bad}: key out of order\n").as_bytes());
            }
            if let Some(last) = prev_last {
                match v[12..22].cmp(&last[..]) {
                    std::cmp::Ordering::Less => {
                        ctx.count(MISORDERS, 1);
                        ctx.write(format!("{name}: byte {start}: key out of order\n").as_bytes());
                    }
                    std::cmp::Ordering::Equal => ctx.count(DUPLICATES, 1),
                    std::cmp::Ordering::Greater => {}
                }
            }
            let mut last = [0u8; KEY_LEN];
            last.copy_from_slice(&v[22..32]);
            prev_last = Some(last);
        }
    }
}
