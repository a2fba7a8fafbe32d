//! The coordinator journal (`quern_scheduler::journal::decode_all`) and the job spec and map
//! outputs a resumed coordinator decodes from it; a torn tail must be tolerated.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_journal(data));
