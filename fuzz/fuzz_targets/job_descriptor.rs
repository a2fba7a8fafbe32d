//! Job descriptors (`JobDescriptor::decode` and `build`): the `JobSpec::job` bytes every worker
//! rebuilds its job from.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_job_descriptor(data));
