//! quern's benchmarks.
//!
//! - Criterion micro-benchmarks of the hot paths live in `benches/` and run with
//!   `cargo bench -p quern-benches` (`-- --test` for a quick smoke run):
//!   `sort_blocks` measures block encode/decode, the map task's sort + spill, and the reduce
//!   task's merge, on TeraSort-like input (100-byte records, 10-byte random keys).
//! - Macro benchmarks of whole jobs against a peer measured in the same run are binaries:
//!   `terasort_vs_sort` times `quern terasort` against `LC_ALL=C sort --parallel` on the same
//!   gensort ASCII records and checks that both outputs are byte-identical.
