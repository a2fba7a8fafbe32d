//! Histograms as bytes: HdrHistogram's V2 encoding (no deflate), as workers ship them to the
//! coordinator and as `report.json` stores them (base64).
//!
//! [`decode_v2`] reads bytes that crossed the network, so it checks them before the
//! `hdrhistogram` deserializer sees them: that deserializer trusts the payload length (it
//! allocates it up front) and negates zig-zag numbers without checking for overflow (a
//! 9-byte varint of all ones panics in a debug build). `hdrhistogram` also sums counts
//! unchecked when it computes a quantile, so the total count is bounded too
//! ([`MAX_SAMPLES`]). Past those checks every failure is an `Err`, never a panic.
//!
//! Layout of a V2 encoding (big-endian): cookie `u32`, payload length `u32`, normalizing
//! index offset `u32`, significant figures `u32`, lowest discernible value `u64`, highest
//! trackable value `u64`, integer-to-double ratio `f64`, then `payload length` bytes of
//! zig-zag LEB128 varints (a count, or a negative run of empty buckets).

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

use crate::{Error, Result};

/// Cookie of an uncompressed V2 encoding (`0x1c849303 | 0x10`).
const V2_COOKIE: u32 = 0x1c84_9313;

/// Bytes before the payload.
const V2_HEADER_LEN: usize = 40;

/// The most bytes one varint takes (LEB128-64b9B: the ninth byte carries 8 bits).
const MAX_VARINT_LEN: usize = 9;

/// The most samples a decoded histogram may hold. Workers record a few samples per attempt,
/// so this is never reached honestly; bounding it keeps the sum of the counts (which
/// `value_at_quantile` adds up unchecked) within `u64` even after the coordinator merges
/// up to 2^23 decoded histograms.
pub(crate) const MAX_SAMPLES: u64 = 1 << 40;

/// `h` in HdrHistogram's V2 encoding, uncompressed.
///
/// Never fails: a count above `i64::MAX` (which V2 cannot carry) is clamped to `i64::MAX`.
pub fn encode_v2(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    if V2Serializer::new().serialize(h, &mut out).is_ok() {
        return out;
    }
    // The only error left for a histogram in memory on a 64-bit host is a count V2 cannot
    // zig-zag encode: clamp such counts and encode the copy.
    let mut clamped = Histogram::<u64>::new_from(h);
    for v in h.iter_recorded() {
        clamped.saturating_record_n(
            v.value_iterated_to(),
            v.count_at_value().min(i64::MAX as u64),
        );
    }
    out.clear();
    V2Serializer::new()
        .serialize(&clamped, &mut out)
        .expect("counts are at most i64::MAX and writing to a Vec cannot fail");
    out
}

/// Decodes a histogram [`encode_v2`] made. The result auto-resizes, so it can absorb
/// (`add`) histograms of any range.
///
/// `bytes` must be exactly one uncompressed V2 encoding. Garbage yields
/// [`Error::Report`], never a panic. Memory is bounded by the range the header declares:
/// the counts array of the widest legal histogram (1..=u64::MAX at 5 significant figures) is
/// about 50 MB, zeroed lazily; quern's own (3 figures) stay under 1 MB.
pub fn decode_v2(bytes: &[u8]) -> Result<Histogram<u64>> {
    let payload_len =
        check_v2(bytes).map_err(|why| Error::Report(format!("bad histogram: {why}")))?;
    debug_assert_eq!(V2_HEADER_LEN + payload_len, bytes.len());
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| Error::Report(format!("bad histogram: {e}")))?;
    h.auto(true);
    Ok(h)
}

/// Checks what the `hdrhistogram` deserializer would trust, returning the payload length.
fn check_v2(bytes: &[u8]) -> std::result::Result<usize, String> {
    let Some((header, payload)) = bytes.split_at_checked(V2_HEADER_LEN) else {
        return Err(format!(
            "{} bytes, shorter than the {V2_HEADER_LEN}-byte V2 header",
            bytes.len()
        ));
    };
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let cookie = word(0);
    if cookie != V2_COOKIE {
        return Err(format!(
            "cookie {cookie:#010x} is not an uncompressed V2 histogram"
        ));
    }
    let declared = word(4) as usize;
    if declared != payload.len() {
        return Err(format!(
            "header declares a {declared}-byte payload, {} bytes follow it",
            payload.len()
        ));
    }
    // Walk the varints: each must end inside the payload, none may decode to i64::MIN,
    // whose negation overflows inside the deserializer, and the counts (the non-negative
    // numbers) may add up to at most MAX_SAMPLES.
    let mut at = 0;
    let mut samples = 0u64;
    while at < payload.len() {
        let mut len = 1;
        while len < MAX_VARINT_LEN && payload[at + len - 1] & 0x80 != 0 {
            if at + len >= payload.len() {
                return Err(format!("varint at payload byte {at} runs past the end"));
            }
            len += 1;
        }
        let varint = &payload[at..at + len];
        if len == MAX_VARINT_LEN && varint.iter().all(|&b| b == 0xff) {
            return Err(format!("varint at payload byte {at} is out of range"));
        }
        if let Some(count) = zig_zag_count(varint) {
            samples = samples.saturating_add(count);
            if samples > MAX_SAMPLES {
                return Err(format!(
                    "counts add up to more than {MAX_SAMPLES} samples at payload byte {at}"
                ));
            }
        }
        at += len;
    }
    Ok(declared)
}

/// The count a LEB128-64b9B zig-zag varint carries, or `None` for a (negative) run of
/// empty buckets.
fn zig_zag_count(varint: &[u8]) -> Option<u64> {
    let mut raw = 0u64;
    for (i, &b) in varint.iter().enumerate() {
        // Bytes 0..8 carry 7 bits each; the ninth carries all 8.
        let bits = if i + 1 == MAX_VARINT_LEN { b } else { b & 0x7f };
        raw |= u64::from(bits) << (7 * i);
    }
    // Zig-zag: even numbers are the non-negative values, `raw / 2`.
    (raw & 1 == 0).then_some(raw >> 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::new_histogram;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for i in 1..=5_000u64 {
            h.record(i * 37 % 100_000 + 1).unwrap();
        }
        h.record(3_600_000_000).unwrap();
        h
    }

    #[test]
    fn round_trips() {
        let h = sample();
        let back = decode_v2(&encode_v2(&h)).unwrap();
        assert_eq!(back, h);
        assert!(back.is_auto_resize());
        let empty = new_histogram();
        assert_eq!(decode_v2(&encode_v2(&empty)).unwrap().len(), 0);
    }

    #[test]
    fn decoded_histogram_absorbs_wider_ranges() {
        let mut small = new_histogram();
        small.record(5).unwrap();
        let mut merged = decode_v2(&encode_v2(&small)).unwrap();
        merged.add(sample()).unwrap();
        assert_eq!(merged.len(), 5_002);
    }

    #[test]
    fn rejects_trailing_and_truncated_bytes() {
        let good = encode_v2(&sample());
        let mut long = good.clone();
        long.push(0);
        assert!(decode_v2(&long).is_err());
        for cut in [0, 3, 39, 40, good.len() - 1] {
            assert!(decode_v2(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_the_overflowing_varint() {
        let mut bytes = encode_v2(&new_histogram());
        bytes.truncate(V2_HEADER_LEN);
        bytes.extend_from_slice(&[0xff; 9]);
        bytes[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert!(decode_v2(&bytes).is_err());
    }

    /// Found by `fuzz/` (target `hdr_v2`): three buckets of `i64::MAX` samples decoded,
    /// and then `Percentiles::of` panicked with an overflow inside `value_at_quantile`.
    #[test]
    fn rejects_counts_that_overflow_the_total() {
        let i64_max = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let mut bytes = vec![
            0x1c, 0x84, 0x93, 0x13, // cookie
            0x00, 0x00, 0x00, 0x1b, // payload length: 27
            0x00, 0x00, 0x00, 0x00, // normalizing index offset
            0x00, 0x00, 0x00, 0x03, // significant figures
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, // lowest discernible value
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, // highest trackable value
            0x3f, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // integer-to-double ratio 1.0
        ];
        for _ in 0..3 {
            bytes.extend_from_slice(&i64_max);
        }
        let err = decode_v2(&bytes).unwrap_err().to_string();
        assert!(err.contains("samples"), "{err}");
        // One such bucket is still too many samples; a few are fine.
        bytes.truncate(V2_HEADER_LEN);
        bytes[4..8].copy_from_slice(&9u32.to_be_bytes());
        bytes.extend_from_slice(&i64_max);
        assert!(decode_v2(&bytes).is_err());
        let mut h = new_histogram();
        h.record_n(7, MAX_SAMPLES).unwrap();
        assert_eq!(decode_v2(&encode_v2(&h)).unwrap().len(), MAX_SAMPLES);
        h.record(8).unwrap();
        assert!(decode_v2(&encode_v2(&h)).is_err());
    }

    /// A cheap fuzz: random bytes, and valid encodings with random bytes overwritten, must
    /// decode to `Ok` or `Err` without panicking.
    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let good = encode_v2(&sample());
        for round in 0..3_000 {
            let mut bytes = if round % 2 == 0 {
                let len = (next() % 128) as usize;
                (0..len).map(|_| next() as u8).collect::<Vec<_>>()
            } else {
                good.clone()
            };
            if round % 3 == 0 && bytes.len() >= 8 {
                // A valid cookie and payload length, so the garbage reaches the varints.
                bytes[..4].copy_from_slice(&V2_COOKIE.to_be_bytes());
                let payload = bytes.len().saturating_sub(V2_HEADER_LEN) as u32;
                bytes[4..8].copy_from_slice(&payload.to_be_bytes());
            }
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                if !bytes.is_empty() {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] = next() as u8;
                }
            }
            let _ = decode_v2(&bytes);
        }
    }
}
