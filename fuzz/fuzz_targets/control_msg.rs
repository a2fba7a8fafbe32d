//! Control messages (`wire::decode_msg` and `net::decode`): the first byte picks the type
//! (`quern_fuzz::CONTROL_TYPES`), the rest is its rkyv archive.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_control_msg(data));
