//! `report.json` (`quern_runtime::report::parse_report`), then what `quern report DIR` does
//! with it short of the page: the summary, the histograms and their `.hgrm` text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_report_json(data));
