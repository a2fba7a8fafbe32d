//! What quern's fuzz targets check, shared by the targets (`fuzz_targets/`) and the seed
//! writer (`examples/seeds.rs`).
//!
//! Every function here takes arbitrary bytes, runs them through a decoder exactly as the
//! receiving process does, and panics only when an invariant of that decoder is broken
//! (a panic inside a decoder is a bug by itself). Where the format carries a checksum,
//! the check also retries with the checksum fixed up, so that mutated inputs reach the
//! parsing behind it instead of stopping at the checksum every time.
//!
//! Invariants checked, beyond "returns instead of panicking":
//! - block frames: a frame consumes at most the bytes it was given, ends at a 16-byte
//!   boundary (or the end of the buffer), and its records re-encode to a frame that
//!   decodes to the same records;
//! - control messages and job descriptors: a value that decodes re-encodes to bytes that
//!   decode to the same value, and validation (`access`) agrees with deserialisation;
//! - the journal: the valid prefix re-encodes byte for byte, and decoding it alone finds
//!   the same records and no torn tail;
//! - HDR V2: a decoded histogram re-encodes to one that decodes equal;
//! - `report.json`: a report that parses serialises to JSON that parses equal (rendering
//!   its page is a separate target, `report_render`, as it is a thousand times slower).

use std::path::Path;

use quern_runtime::report;
use quern_scheduler::journal;
use quern_shuffle::block::{BlockError, BlockWriter, FrameIter, ValidBlock};
use quern_shuffle::block::{FRAME_ALIGN, FRAME_HEADER_LEN};
use quern_shuffle::net;
use quern_shuffle::wire::{self, decode_msg, encode_msg};
use rkyv::util::AlignedVec;

/// How many checksums one input may have fixed up.
const MAX_FIXUPS: usize = 8;

/// The largest control frame a quern process accepts (`quern_runtime::cluster::MAX_FRAME`).
pub const MAX_FRAME: usize = quern_runtime::cluster::MAX_FRAME;

/// `bytes` copied to a 16-byte aligned buffer, as `read_frame` and the segment receivers
/// deliver them.
pub fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut v = AlignedVec::<16>::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
}

// ---------------------------------------------------------------------------------------
// Block frames (shuffle/src/block.rs)

/// A segment of block frames, walked as a reducer's merge walks it: every frame
/// validated, every record of a valid block read.
pub fn check_segment(bytes: &[u8]) {
    let mut buf = aligned(bytes);
    // After a fix-up the walk resumes at the fixed frame: the frames before it are
    // unchanged, and a frame boundary is 16-byte aligned, so `buf[start..]` is too.
    let mut start = 0;
    for _ in 0..=MAX_FIXUPS {
        match walk_segment(&buf[start..]) {
            Some((at, actual)) => {
                start += at;
                buf[start + 8..start + 12].copy_from_slice(&actual.to_le_bytes());
            }
            None => return,
        }
    }
}

/// Walks `buf`; on a checksum error returns the frame's offset and the payload's crc32c.
fn walk_segment(buf: &[u8]) -> Option<(usize, u32)> {
    let mut frames = FrameIter::new(buf);
    loop {
        let at = frames.position();
        match frames.next()? {
            Ok(block) => {
                let end = frames.position();
                let used = end - at;
                assert!(
                    end <= buf.len(),
                    "frame at {at} ends at {end} > {}",
                    buf.len()
                );
                assert!(used >= FRAME_HEADER_LEN, "frame at {at} used {used} bytes");
                assert!(
                    used.is_multiple_of(FRAME_ALIGN) || end == buf.len(),
                    "frame at {at} ends unaligned at {end}"
                );
                check_block(block, used);
            }
            Err(BlockError::Checksum { actual, .. }) => return Some((at, actual)),
            Err(_) => {
                assert_eq!(frames.position(), buf.len(), "an error ends the segment");
                assert!(frames.next().is_none());
                return None;
            }
        }
    }
}

/// Reads every record of a valid block and checks that they re-encode faithfully.
fn check_block(block: ValidBlock<'_>, frame_len: usize) {
    let records: Vec<(&[u8], &[u8])> = block.iter().collect();
    assert_eq!(records.len(), block.len());
    assert_eq!(block.is_empty(), records.is_empty());
    let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(
        bytes <= frame_len,
        "{bytes} record bytes in a {frame_len}-byte frame"
    );
    if records.is_empty() {
        return; // a writer never emits an empty frame
    }
    let mut writer = BlockWriter::new(usize::MAX);
    let mut out = Vec::new();
    for (k, v) in &records {
        writer
            .push(k, v, &mut out)
            .expect("records of a valid block fit a block");
    }
    writer.flush(&mut out).expect("a valid block re-encodes");
    let out = aligned(&out);
    let (again, used) = quern_shuffle::decode_frame(&out).expect("a re-encoded frame decodes");
    assert_eq!(used, out.len());
    assert!(again.iter().eq(records.iter().copied()), "records changed");
}

/// A fetch response as a reducer receives it (`net::recv_segments`): `u64` LE
/// `max_total`, then per segment a `u64` LE length and its bytes; each segment is then
/// validated as block frames.
pub fn check_fetch_segments(bytes: &[u8]) {
    let Some((max_total, mut rest)) = bytes.split_first_chunk::<8>() else {
        return;
    };
    let max_total = u64::from_le_bytes(*max_total);
    let mut received = 0u64;
    while let Some((header, body)) = rest.split_first_chunk::<{ net::SEGMENT_HEADER_BYTES }>() {
        let Ok(len) = net::parse_segment_header(*header, received, max_total) else {
            return;
        };
        received += len as u64;
        assert!(
            received <= max_total,
            "{received} bytes past a limit of {max_total}"
        );
        let Some((segment, tail)) = body.split_at_checked(len) else {
            return; // the stream ended inside the segment: an error, nothing allocated
        };
        check_segment(segment);
        rest = tail;
    }
}

// ---------------------------------------------------------------------------------------
// Control messages (shuffle/src/wire.rs, shuffle/src/net.rs)

/// Decodes `bytes` as a `T` both ways a receiver can (`wire::decode_msg`, `net::decode`),
/// checks they agree and that a decoded value round-trips. Returns whether it decoded.
macro_rules! round_trip {
    ($ty:ty, $bytes:expr) => {{
        let bytes: &[u8] = $bytes;
        let owned = decode_msg::<$ty>(bytes);
        let archived = net::decode::<rkyv::Archived<$ty>>(bytes);
        assert_eq!(
            owned.is_ok(),
            archived.is_ok(),
            "access and from_bytes disagree"
        );
        match owned {
            Ok(value) => {
                let again = encode_msg(&value).expect("a decoded message re-encodes");
                let back = decode_msg::<$ty>(&again).expect("a re-encoded message decodes");
                assert_eq!(back, value);
                true
            }
            Err(_) => false,
        }
    }};
}

/// Message types decoded off the wire (or out of the journal), chosen by
/// [`check_control_msg`]'s first byte.
pub const CONTROL_TYPES: [&str; 7] = [
    "Hello",
    "ToWorker",
    "ToCoordinator",
    "ToClient",
    "FetchRequest",
    "JobSpec",
    "CommittedOutput",
];

/// `bytes[0] % 7` picks a message type of [`CONTROL_TYPES`]; the rest is its archive.
pub fn check_control_msg(bytes: &[u8]) {
    let Some((&which, body)) = bytes.split_first() else {
        return;
    };
    let body = aligned(body);
    let _ = control_msg(which, &body);
}

fn control_msg(which: u8, body: &[u8]) -> bool {
    match which % CONTROL_TYPES.len() as u8 {
        0 => round_trip!(wire::Hello, body),
        1 => round_trip!(wire::ToWorker, body),
        2 => {
            let ok = round_trip!(wire::ToCoordinator, body);
            if let Ok(wire::ToCoordinator::Finished { histograms, .. }) = decode_msg(body) {
                // The coordinator decodes every histogram a finished attempt ships.
                for h in histograms {
                    check_hdr_v2(&h.v2);
                }
            }
            ok
        }
        3 => {
            let ok = round_trip!(wire::ToClient, body);
            if let Ok(wire::ToClient::Done { report, .. }) = decode_msg(body) {
                // The client parses the report the coordinator sends with `Done` and prints
                // its summary (`report_json` and `report_render` fuzz the rest).
                if let Ok(report) = serde_json::from_str::<report::Report>(&report) {
                    let _ = report.summary();
                }
            }
            ok
        }
        4 => round_trip!(wire::FetchRequest, body),
        5 => round_trip!(wire::JobSpec, body),
        _ => round_trip!(wire::CommittedOutput, body),
    }
}

/// A fetch request as a map's worker reads it: a control frame (`u32` LE length, bounded
/// by [`MAX_FRAME`]) holding a [`wire::FetchRequest`].
pub fn check_fetch_request(bytes: &[u8]) {
    let Some((header, rest)) = bytes.split_first_chunk::<{ net::FRAME_HEADER_BYTES }>() else {
        return;
    };
    let Ok(len) = net::parse_frame_header(*header, MAX_FRAME) else {
        assert!(u32::from_le_bytes(*header) as usize > MAX_FRAME);
        return;
    };
    assert!(len <= MAX_FRAME);
    let Some(body) = rest.get(..len) else {
        return; // the stream ended inside the frame
    };
    let _ = round_trip!(wire::FetchRequest, &aligned(body));
}

// ---------------------------------------------------------------------------------------
// Job descriptors (jobs/src/registry.rs): `JobSpec::job`, rebuilt by every worker

/// Decodes a job descriptor and builds its job, as a worker's factory does; then reads the
/// bytes after the first as the parameters of the built-in job the first selects (in the
/// order of `Registry::names`), which a whole mutated descriptor seldom reaches.
pub fn check_job_descriptor(bytes: &[u8]) {
    use quern_jobs::registry::{JobDescriptor, Registry};
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    let registry = REGISTRY.get_or_init(Registry::builtin);
    if let Ok(desc) = JobDescriptor::decode(bytes) {
        let again = desc.encode().expect("a decoded descriptor re-encodes");
        assert_eq!(JobDescriptor::decode(&again).as_ref(), Ok(&desc));
        let _ = registry.build(&desc);
    }
    let Some((&which, params)) = bytes.split_first() else {
        return;
    };
    let names: Vec<&str> = registry.names().collect();
    let desc = JobDescriptor {
        name: names[usize::from(which) % names.len()].to_string(),
        params: params.to_vec(),
    };
    let _ = registry.build(&desc);
}

// ---------------------------------------------------------------------------------------
// The journal (scheduler/src/journal.rs, read by runtime/src/cluster/journal.rs)

/// Decodes a journal as a restarted coordinator does: every record of the valid prefix,
/// then the job spec and committed outputs inside them.
pub fn check_journal(bytes: &[u8]) {
    let mut buf = bytes.to_vec();
    for _ in 0..=MAX_FIXUPS {
        let decoded = journal::decode_all(&buf);
        check_decoded_journal(&buf, &decoded);
        // Fix the checksum of the entry that stopped the decoding, if it is complete.
        let at = decoded.valid_len;
        let Some(header) = buf.get(at..at + 8) else {
            return;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let Some(payload) = (at + 8)
            .checked_add(len)
            .and_then(|end| buf.get(at + 8..end))
        else {
            return;
        };
        let crc = crc32fast::hash(payload).to_le_bytes();
        if buf[at + 4..at + 8] == crc {
            return; // the checksum was right: the payload does not parse
        }
        buf[at + 4..at + 8].copy_from_slice(&crc);
    }
}

fn check_decoded_journal(bytes: &[u8], decoded: &journal::Decoded) {
    assert!(decoded.valid_len <= bytes.len());
    assert_eq!(decoded.torn, decoded.valid_len < bytes.len());
    let mut again = Vec::new();
    for record in &decoded.records {
        journal::encode(record, &mut again);
    }
    assert!(
        again == bytes[..decoded.valid_len],
        "the valid prefix re-encodes differently"
    );
    let prefix = journal::decode_all(&bytes[..decoded.valid_len]);
    assert_eq!(prefix.records, decoded.records);
    assert!(!prefix.torn);
    // What `Coordinator::resume` decodes out of the records.
    for record in &decoded.records {
        match record {
            journal::Record::JobAccepted { job, spec } => {
                let _ = round_trip!(wire::JobSpec, &aligned(spec));
                let _ = journal::commits(&decoded.records, *job);
                let _ = journal::first_free_attempt(&decoded.records, *job);
            }
            journal::Record::TaskCommitted { output, .. } => {
                let _ = round_trip!(wire::CommittedOutput, &aligned(output));
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// HDR V2 histograms (runtime/src/report/codec.rs)

/// Decodes a V2 histogram as the coordinator does with a worker's, and merges it.
pub fn check_hdr_v2(bytes: &[u8]) {
    let Ok(h) = report::decode_v2(bytes) else {
        return;
    };
    let again = report::encode_v2(&h);
    let back = report::decode_v2(&again).expect("a re-encoded histogram decodes");
    assert_eq!(back, h);
    assert_eq!(
        (back.len(), back.min(), back.max()),
        (h.len(), h.min(), h.max())
    );
    let _ = report::Percentiles::of(&h);
    let mut merged = report::new_histogram();
    let _ = merged.add(&h);
}

// ---------------------------------------------------------------------------------------
// report.json (runtime/src/report/dir.rs)

/// Parses `report.json` as `quern report DIR` does, then does what that command does
/// with it short of writing files, except the page (see [`check_report_render`]): the
/// summary, and every histogram decoded and printed as `.hgrm` text.
pub fn check_report_json(bytes: &[u8]) {
    let Some(parsed) = parse_report(bytes) else {
        return;
    };
    let json = serde_json::to_string(&parsed).expect("a parsed report serialises");
    let back = report::parse_report(&json, Path::new("again")).expect("re-serialised parses");
    assert_eq!(back, parsed);
    let _ = parsed.summary();
    for named in &parsed.histograms {
        if let Ok(h) = named.histogram() {
            let _ = report::percentile_distribution(&h);
        }
    }
}

/// Parses `report.json` and renders `report.html` from it, as `quern report DIR` does.
/// Rendering takes milliseconds, so this is its own target, apart from the parser's.
pub fn check_report_render(bytes: &[u8]) {
    if let Some(parsed) = parse_report(bytes) {
        let _ = report::render_html(&parsed);
    }
}

fn parse_report(bytes: &[u8]) -> Option<report::Report> {
    // `load_dir` reads the file with `read_to_string`, which refuses non-UTF-8 first.
    let text = std::str::from_utf8(bytes).ok()?;
    report::parse_report(text, Path::new("report.json")).ok()
}
