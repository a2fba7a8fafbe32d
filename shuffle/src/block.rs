//! Framed rkyv blocks: the on-disk and on-wire format of sorted map output.
//!
//! ```text
//!  offset 0        4             8          12           16                16+len   pad to 16
//!  +--------------+-------------+----------+------------+-----------------+--------+
//!  | magic "QRB1" | payload len | crc32c   | records    | rkyv payload    | zeros  |
//!  +--------------+-------------+----------+------------+-----------------+--------+
//!        all header fields little-endian u32; crc32c covers the payload only
//! ```
//!
//! The payload is the rkyv archive of a [`Block`]: `data` holds the key and value bytes of
//! every record back to back, and `ends` holds, for record `i`, the end of its key
//! (`ends[2i]`) and the end of its value (`ends[2i+1]`) inside `data`. A record's key starts
//! where the previous record's value ended (0 for the first).
//!
//! A sequence of frames is a *segment* (one partition of one run). Writers produce frames
//! with [`BlockWriter`]; readers walk a segment with [`FrameIter`] and get a
//! [`ValidBlock`] per frame — a block whose checksum, archive and `ends` table have all
//! been checked, so its accessors cannot fail.

use rkyv::rancor;
use rkyv::rend::u32_le;

/// Frame magic: "QRB1" (quern run block, version 1).
pub const MAGIC: [u8; 4] = *b"QRB1";
/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 16;
/// Every frame starts at a multiple of this (the rkyv archive's maximum alignment).
pub const FRAME_ALIGN: usize = 16;

/// The archived content of one block. Writers reuse one `Block` (clearing it between
/// frames), so building blocks allocates nothing in steady state.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize)]
pub struct Block {
    /// End offsets in `data`: key end, value end, for each record.
    pub ends: Vec<u32>,
    /// Key and value bytes of every record, back to back.
    pub data: Vec<u8>,
}

/// A malformed frame or block. Every variant names what was expected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    /// Fewer bytes remain than the header or its declared payload needs.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The frame does not start with the magic bytes.
    #[error("bad frame magic {found:02x?}, expected \"QRB1\"")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// The payload's crc32c does not match the header.
    #[error("checksum mismatch: header says {expected:08x}, payload has {actual:08x}")]
    Checksum {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the bytes received.
        actual: u32,
    },
    /// The frame does not start at a 16-byte aligned address, so it cannot be read in place.
    #[error("frame at misaligned address (need {FRAME_ALIGN}-byte alignment)")]
    Misaligned,
    /// rkyv's validation rejected the payload.
    #[error("invalid archive: {0}")]
    Archive(String),
    /// The archive is well-formed but its `ends` table is inconsistent.
    #[error("invalid record table: {0}")]
    Layout(String),
    /// A record (or block) is too large for the format's 32-bit offsets.
    #[error("record of {0} bytes is too large for a block (limit 4 GiB)")]
    TooLarge(usize),
}

/// A block whose frame, checksum, archive and record table have been validated.
/// Records are read in place from the buffer it borrows.
#[derive(Debug, Clone, Copy)]
pub struct ValidBlock<'a> {
    ends: &'a [u32_le],
    data: &'a [u8],
}

impl<'a> ValidBlock<'a> {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// True when the block holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Key and value of record `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn record(&self, i: usize) -> (&'a [u8], &'a [u8]) {
        let start = if i == 0 {
            0
        } else {
            self.ends[2 * i - 1].to_native() as usize
        };
        let key_end = self.ends[2 * i].to_native() as usize;
        let value_end = self.ends[2 * i + 1].to_native() as usize;
        // Validated at construction: ends are non-decreasing and within `data`.
        (&self.data[start..key_end], &self.data[key_end..value_end])
    }

    /// Iterates `(key, value)` in block order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        (0..self.len()).map(|i| self.record(i))
    }
}

/// Decodes and validates the frame at the start of `buf`.
///
/// Returns the block and the number of bytes the frame occupies including its padding
/// (so the next frame starts at `buf[consumed..]`). `buf` must start at a 16-byte aligned
/// address.
pub fn decode_frame(buf: &[u8]) -> Result<(ValidBlock<'_>, usize), BlockError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(BlockError::Truncated {
            need: FRAME_HEADER_LEN,
            have: buf.len(),
        });
    }
    if buf.as_ptr() as usize % FRAME_ALIGN != 0 {
        return Err(BlockError::Misaligned);
    }
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let found = [buf[0], buf[1], buf[2], buf[3]];
    if found != MAGIC {
        return Err(BlockError::BadMagic { found });
    }
    let payload_len = word(4) as usize;
    let expected = word(8);
    let records = word(12) as usize;
    let end = FRAME_HEADER_LEN + payload_len;
    if buf.len() < end {
        return Err(BlockError::Truncated {
            need: end,
            have: buf.len(),
        });
    }
    let payload = &buf[FRAME_HEADER_LEN..end];
    let actual = crc32c::crc32c(payload);
    if actual != expected {
        return Err(BlockError::Checksum { expected, actual });
    }
    let archived = rkyv::access::<ArchivedBlock, rancor::BoxedError>(payload)
        .map_err(|e| BlockError::Archive(e.to_string()))?;
    let ends = archived.ends.as_slice();
    let data = archived.data.as_slice();
    if ends.len() != 2 * records {
        return Err(BlockError::Layout(format!(
            "{} end offsets for {records} records",
            ends.len()
        )));
    }
    let mut prev = 0u32;
    for end in ends {
        let end = end.to_native();
        if end < prev {
            return Err(BlockError::Layout(format!("offset {end} after {prev}")));
        }
        prev = end;
    }
    if prev as usize != data.len() {
        return Err(BlockError::Layout(format!(
            "records end at {prev} but data holds {} bytes",
            data.len()
        )));
    }
    let consumed = end.next_multiple_of(FRAME_ALIGN).min(buf.len()).max(end);
    Ok((ValidBlock { ends, data }, consumed))
}

/// Walks the frames of a segment, validating each once.
#[derive(Debug, Clone)]
pub struct FrameIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> FrameIter<'a> {
    /// Iterates the frames in `segment` (which must start 16-byte aligned).
    pub fn new(segment: &'a [u8]) -> Self {
        FrameIter {
            buf: segment,
            pos: 0,
        }
    }

    /// Offset of the next frame inside the segment.
    pub fn position(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for FrameIter<'a> {
    type Item = Result<ValidBlock<'a>, BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        match decode_frame(&self.buf[self.pos..]) {
            Ok((block, used)) => {
                self.pos += used;
                Some(Ok(block))
            }
            Err(e) => {
                self.pos = self.buf.len(); // a broken segment yields one error, then ends
                Some(Err(e))
            }
        }
    }
}

/// Builds frames from sorted records, appending them to a caller-owned buffer.
///
/// The caller keeps `out` 16-byte aligned relative to where it will be stored (the start
/// of a file, or of an aligned receive buffer); the writer pads each frame to 16.
#[derive(Debug)]
pub struct BlockWriter {
    block: Block,
    target: usize,
    records: u32,
}

impl BlockWriter {
    /// A writer that closes a block once its data reaches `target_bytes`.
    pub fn new(target_bytes: usize) -> Self {
        BlockWriter {
            block: Block::default(),
            target: target_bytes.max(1),
            records: 0,
        }
    }

    /// Appends a record; flushes a frame into `out` when the block is full.
    pub fn push(&mut self, key: &[u8], value: &[u8], out: &mut Vec<u8>) -> Result<(), BlockError> {
        let size = key.len() + value.len();
        if u32::try_from(size).is_err() {
            return Err(BlockError::TooLarge(size));
        }
        if self.records > 0 && self.block.data.len() + size > self.target {
            self.flush(out)?;
        }
        self.block.data.extend_from_slice(key);
        self.block.ends.push(self.block.data.len() as u32);
        self.block.data.extend_from_slice(value);
        self.block.ends.push(self.block.data.len() as u32);
        self.records += 1;
        Ok(())
    }

    /// Writes the pending block (if any) as a frame into `out`.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> Result<(), BlockError> {
        if self.records == 0 {
            return Ok(());
        }
        if u32::try_from(self.block.data.len()).is_err() {
            return Err(BlockError::TooLarge(self.block.data.len()));
        }
        pad_to_align(out);
        let header_at = out.len();
        out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
        let payload_at = out.len();
        let taken = std::mem::take(out);
        *out = rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(&self.block, taken)
            .map_err(|e| BlockError::Archive(e.to_string()))?;
        let payload = &out[payload_at..];
        let payload_len =
            u32::try_from(payload.len()).map_err(|_| BlockError::TooLarge(payload.len()))?;
        let crc = crc32c::crc32c(payload);
        let header = &mut out[header_at..payload_at];
        header[0..4].copy_from_slice(&MAGIC);
        header[4..8].copy_from_slice(&payload_len.to_le_bytes());
        header[8..12].copy_from_slice(&crc.to_le_bytes());
        header[12..16].copy_from_slice(&self.records.to_le_bytes());
        pad_to_align(out);
        self.block.data.clear();
        self.block.ends.clear();
        self.records = 0;
        Ok(())
    }

    /// Records buffered in the pending block.
    pub fn pending(&self) -> usize {
        self.records as usize
    }
}

fn pad_to_align(out: &mut Vec<u8>) {
    let padded = out.len().next_multiple_of(FRAME_ALIGN);
    out.resize(padded, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::util::AlignedVec;

    fn aligned(bytes: &[u8]) -> AlignedVec<16> {
        let mut v = AlignedVec::<16>::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        v
    }

    fn encode(records: &[(Vec<u8>, Vec<u8>)], target: usize) -> Vec<u8> {
        let mut w = BlockWriter::new(target);
        let mut out = Vec::new();
        for (k, v) in records {
            w.push(k, v, &mut out).unwrap();
        }
        w.flush(&mut out).unwrap();
        out
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode_all(buf: &[u8]) -> Result<Pairs, BlockError> {
        let mut got = Vec::new();
        for block in FrameIter::new(buf) {
            for (k, v) in block?.iter() {
                got.push((k.to_vec(), v.to_vec()));
            }
        }
        Ok(got)
    }

    #[test]
    fn round_trip_across_many_blocks() {
        let records: Vec<_> = (0..1000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![b'x'; (i % 37) as usize]))
            .collect();
        let out = encode(&records, 256);
        assert_eq!(out.len() % FRAME_ALIGN, 0);
        let frames = FrameIter::new(&aligned(&out)).count();
        assert!(
            frames > 10,
            "small target must produce many frames, got {frames}"
        );
        assert_eq!(decode_all(&aligned(&out)).unwrap(), records);
    }

    #[test]
    fn empty_keys_values_and_oversized_record() {
        let records = vec![
            (vec![], vec![]),
            (b"k".to_vec(), vec![]),
            (vec![], b"v".to_vec()),
            (vec![7; 5000], vec![9; 3000]),
        ];
        let out = encode(&records, 64);
        assert_eq!(decode_all(&aligned(&out)).unwrap(), records);
    }

    #[test]
    fn flipped_payload_byte_is_a_checksum_error() {
        let mut out = encode(&[(b"key".to_vec(), b"value".to_vec())], 1024);
        // The last bytes may be padding; flip one inside the payload.
        out[FRAME_HEADER_LEN + 2] ^= 0xff;
        match decode_frame(&aligned(&out)) {
            Err(BlockError::Checksum { .. }) => {}
            other => panic!("expected checksum error, got {other:?}"),
        }
    }

    #[test]
    fn bad_magic_truncation_and_misalignment_are_errors() {
        let out = encode(&[(b"key".to_vec(), b"value".to_vec())], 1024);
        let mut bad = out.clone();
        bad[0] = b'X';
        assert!(matches!(
            decode_frame(&aligned(&bad)),
            Err(BlockError::BadMagic { .. })
        ));
        let buf = aligned(&out);
        for cut in [0, 3, FRAME_HEADER_LEN, FRAME_HEADER_LEN + 1, out.len() - 17] {
            assert!(decode_frame(&buf[..cut]).is_err(), "cut at {cut} must fail");
        }
        let mut shifted = AlignedVec::<16>::new();
        shifted.push(0);
        shifted.extend_from_slice(&out);
        assert_eq!(
            decode_frame(&shifted[1..]).unwrap_err(),
            BlockError::Misaligned
        );
    }

    #[test]
    fn inconsistent_record_count_is_a_layout_error() {
        let mut out = encode(&[(b"a".to_vec(), b"b".to_vec())], 1024);
        out[12] = 5; // header claims 5 records
        assert!(matches!(
            decode_frame(&aligned(&out)),
            Err(BlockError::Layout(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn prop_round_trip(records in proptest::collection::vec(
            (proptest::collection::vec(0u8..=255, 0..20), proptest::collection::vec(0u8..=255, 0..50)),
            0..200),
            target in 1usize..2000)
        {
            let out = encode(&records, target);
            proptest::prop_assert_eq!(decode_all(&aligned(&out)).unwrap(), records);
        }

        /// Arbitrary bytes never panic the decoder (the network fuzz property).
        #[test]
        fn prop_garbage_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..600)) {
            let _ = decode_all(&aligned(&bytes));
        }

        /// Corrupting any single byte of a valid segment is detected or harmless padding.
        #[test]
        fn prop_single_byte_corruption_detected(
            records in proptest::collection::vec(
                (proptest::collection::vec(0u8..=255, 1..10), proptest::collection::vec(0u8..=255, 0..10)), 1..30),
            pos in 0usize..10_000, flip in 1u8..=255)
        {
            let mut out = encode(&records, 128);
            let pos = pos % out.len();
            out[pos] ^= flip;
            match decode_all(&aligned(&out)) {
                Err(_) => {}
                Ok(got) => proptest::prop_assert_eq!(got, records), // the byte was padding
            }
        }
    }
}
