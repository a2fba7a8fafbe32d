//! gensort-compatible record generation (the Sort Benchmark's `gensort` 1.x).
//!
//! Record `i` is derived from the `i+1`-th output of a 128-bit linear congruential generator
//! `x' = a·x + c (mod 2^128)` started at 0, with a = `0x2360ed05…f645` (L'Ecuyer) and
//! c = `0x4a696d47…2001`. [`skip_ahead`] jumps to any position in O(log n), which is what
//! lets P part files be generated in parallel and still concatenate to gensort's single
//! file (gensort's `-b` starting-record semantics). The layouts of binary and ASCII
//! (`-a`) records follow gensort exactly; the checksum is valsort's: the 128-bit sum of the
//! CRC-32 of every record.

/// Bytes per record.
pub const RECORD_LEN: usize = 100;
/// Bytes of key at the start of a record.
pub const KEY_LEN: usize = 10;

const A: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;
const C: u128 = 0x4a69_6d47_7261_7952_4950_2020_2020_2001;

/// One generator step.
#[inline]
pub fn next_rand(x: u128) -> u128 {
    x.wrapping_mul(A).wrapping_add(C)
}

/// The generator state after `n` steps from `seed` (gensort: seed 0), in O(log n):
/// composes the affine map `x -> a·x + c` with itself by repeated squaring.
pub fn skip_ahead(seed: u128, mut n: u128) -> u128 {
    let (mut ra, mut rc) = (1u128, 0u128); // identity map
    let (mut ba, mut bc) = (A, C); // f^(2^k)
    while n > 0 {
        if n & 1 == 1 {
            // result = base ∘ result
            ra = ba.wrapping_mul(ra);
            rc = ba.wrapping_mul(rc).wrapping_add(bc);
        }
        // base = base ∘ base
        bc = ba.wrapping_mul(bc).wrapping_add(bc);
        ba = ba.wrapping_mul(ba);
        n >>= 1;
    }
    ra.wrapping_mul(seed).wrapping_add(rc)
}

#[inline]
fn hex_digit(x: u64) -> u8 {
    b"0123456789ABCDEF"[(x & 0xF) as usize]
}

#[inline]
fn put_row_number(rec: &mut [u8; RECORD_LEN], row: u128) {
    for i in 0..32 {
        rec[12 + i] = hex_digit((row >> (124 - 4 * i)) as u64);
    }
}

/// gensort's binary record for generator output `rand` and record number `row`.
pub fn binary_record(rand: u128, row: u128, rec: &mut [u8; RECORD_LEN]) {
    let (hi, lo) = ((rand >> 64) as u64, rand as u64);
    rec[..8].copy_from_slice(&hi.to_be_bytes());
    rec[8] = (lo >> 56) as u8;
    rec[9] = (lo >> 48) as u8;
    rec[10] = 0x00;
    rec[11] = 0x11;
    put_row_number(rec, row);
    rec[44..48].copy_from_slice(&[0x88, 0x99, 0xAA, 0xBB]);
    for g in 0..12 {
        let d = hex_digit(lo >> (44 - 4 * g));
        rec[48 + 4 * g..52 + 4 * g].fill(d);
    }
    rec[96..100].copy_from_slice(&[0xCC, 0xDD, 0xEE, 0xFF]);
}

/// gensort's ASCII (`-a`) record: printable 10-byte key, ends in `\r\n`.
pub fn ascii_record(rand: u128, row: u128, rec: &mut [u8; RECORD_LEN]) {
    let (hi, lo) = ((rand >> 64) as u64, rand as u64);
    let mut t = hi;
    for b in rec.iter_mut().take(8) {
        *b = b' ' + (t % 95) as u8;
        t /= 95;
    }
    t = lo;
    for b in rec.iter_mut().take(10).skip(8) {
        *b = b' ' + (t % 95) as u8;
        t /= 95;
    }
    rec[10] = b' ';
    rec[11] = b' ';
    put_row_number(rec, row);
    rec[44] = b' ';
    rec[45] = b' ';
    for g in 0..13 {
        let d = hex_digit(lo >> (48 - 4 * g));
        rec[46 + 4 * g..50 + 4 * g].fill(d);
    }
    rec[98] = b'\r';
    rec[99] = b'\n';
}

/// Generates records `first..first+count` (with `seed` 0: gensort's), calling `f` on each.
pub fn generate(
    seed: u128,
    first: u64,
    count: u64,
    ascii: bool,
    mut f: impl FnMut(&[u8; RECORD_LEN]),
) {
    let mut rand = skip_ahead(seed, u128::from(first));
    let mut rec = [0u8; RECORD_LEN];
    for row in first..first + count {
        rand = next_rand(rand);
        if ascii {
            ascii_record(rand, u128::from(row), &mut rec);
        } else {
            binary_record(rand, u128::from(row), &mut rec);
        }
        f(&rec);
    }
}

/// valsort's per-record checksum term.
#[inline]
pub fn record_crc(rec: &[u8]) -> u128 {
    u128::from(crc32fast::hash(rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// valsort's published output for `gensort -a 10000000` reads
    /// `Checksum: 4c48a881c779d5`; generating the same records here must agree.
    #[test]
    fn ascii_10m_checksum_matches_valsort() {
        let mut sum = 0u128;
        generate(0, 0, 10_000_000, true, |r| sum += record_crc(r));
        assert_eq!(format!("{sum:x}"), "4c48a881c779d5");
    }

    #[test]
    fn skip_ahead_matches_stepping() {
        for seed in [0u128, 1, 0xdead_beef] {
            let mut x = seed;
            for n in 0..300u128 {
                assert_eq!(skip_ahead(seed, n), x, "seed {seed} n {n}");
                x = next_rand(x);
            }
        }
    }

    #[test]
    fn parts_concatenate_to_the_single_run() {
        let mut whole = Vec::new();
        generate(0, 0, 1000, false, |r| whole.extend_from_slice(r));
        let mut parts = Vec::new();
        for (first, count) in [(0, 333), (333, 1), (334, 666)] {
            generate(0, first, count, false, |r| parts.extend_from_slice(r));
        }
        assert_eq!(whole, parts);
    }

    #[test]
    fn record_layouts_follow_gensort() {
        let mut recs = Vec::new();
        generate(0, 0, 2, false, |r| recs.push(*r));
        let r = &recs[1];
        assert_eq!(&r[10..12], &[0x00, 0x11]);
        assert_eq!(&r[12..44], b"00000000000000000000000000000001");
        assert_eq!(&r[44..48], &[0x88, 0x99, 0xAA, 0xBB]);
        assert_eq!(&r[96..100], &[0xCC, 0xDD, 0xEE, 0xFF]);
        // First key = top 80 bits of a·0 + c = c.
        let first = (next_rand(0) >> 48).to_be_bytes();
        assert_eq!(&recs[0][..10], &first[6..16]);
        let mut a = Vec::new();
        generate(0, 41, 1, true, |r| a.push(*r));
        let a = &a[0];
        assert!(a[..10].iter().all(|b| (b' '..=b'~').contains(b)));
        assert_eq!(&a[12..44], b"00000000000000000000000000000029");
        assert_eq!(&a[98..], b"\r\n");
        assert!(a[46..98].iter().all(|b| b.is_ascii_hexdigit()));
    }
}
