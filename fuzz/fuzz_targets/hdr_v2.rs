//! HDR histograms in the V2 encoding (`quern_runtime::report::decode_v2`), as workers ship them
//! to the coordinator.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_hdr_v2(data));
