//! `report.json` parsed (`quern_runtime::report::parse_report`) and rendered as `report.html`
//! (`render_html`), as `quern report DIR` does.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| quern_fuzz::check_report_render(data));
