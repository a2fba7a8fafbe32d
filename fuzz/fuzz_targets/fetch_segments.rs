//! A fetch response (`net::parse_segment_header`, then each segment's block frames): `u64` LE
//! limit, then `u64` LE length-prefixed segments.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_fetch_segments(data));
