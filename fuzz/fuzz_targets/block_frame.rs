//! Block frames (`shuffle::block::decode_frame` / `FrameIter`): a segment as it lies in a run
//! file or arrives from a fetch, walked frame by frame and record by record.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_segment(data));
