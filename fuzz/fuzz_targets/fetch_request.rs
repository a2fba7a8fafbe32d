//! A fetch request as a map's worker reads it: `net::parse_frame_header` (bounded by
//! `MAX_FRAME`), then `wire::FetchRequest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_fetch_request(data));
