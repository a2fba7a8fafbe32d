#!/usr/bin/env bash
# Fuzzes every decoder of bytes that cross a process boundary (the cargo-fuzz targets in
# fuzz/), one target after another. Not a test and not CI: it takes as long as you ask.
#
#   bash benches/scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default: 60 s, all)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Targets are built
# with AddressSanitizer (cargo-fuzz's default) and with debug assertions and overflow checks
# (`-a`), so an arithmetic overflow is a crash too. QUERN_FUZZ_SANITIZER=none builds them
# without a sanitizer (debug assertions stay on): 4-5x the executions per second, for
# reaching large execution counts; the decoders are safe Rust over rkyv's checked access, so
# ASan adds little there.
#
# Each target reads the committed seeds in fuzz/seeds/TARGET and grows a scratch corpus in
# fuzz/corpus/TARGET (git-ignored, kept between runs, so a second run starts where the
# first stopped). A crash, timeout or out-of-memory leaves its input in
# fuzz/artifacts/TARGET/; replay it with `cargo +nightly fuzz run -a TARGET FILE` in fuzz/.
# Logs go to ${QUERN_FUZZ_LOGS:-/tmp/quern-fuzz}/TARGET.log. QUERN_FUZZ_RUNS=N also stops
# each target after N executions (libFuzzer's -runs), whichever comes first.
#
# Prints, per target, the executions, executions per second and ok or CRASH (read from
# libFuzzer's -print_final_stats=1), and exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"
SECS=${1:-60}
shift $(($# > 0 ? 1 : 0))
LOGS=${QUERN_FUZZ_LOGS:-/tmp/quern-fuzz}
mkdir -p "$LOGS"

if [ $# -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi

SAN=(-s "${QUERN_FUZZ_SANITIZER:-address}")
if ! cargo +nightly fuzz build -a "${SAN[@]}" >"$LOGS/build.log" 2>&1; then
    tail -n 30 "$LOGS/build.log" >&2
    echo "fuzz.sh: building the fuzz targets failed (cargo +nightly fuzz build -a ${SAN[*]})" >&2
    exit 2
fi

final_stat() { # final_stat NAME LOG: the value of libFuzzer's final `stat::NAME`, or "?"
    local v
    v=$(grep -a "^stat::$1:" "$2" | tail -n 1 | awk '{print $2}')
    echo "${v:-?}"
}

crashed=0
printf '%-16s %14s %10s  %s\n' target executions exec/s result
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$LOGS/$t.log"
    rc=0
    # The first directory receives new inputs; the seeds are only read.
    cargo +nightly fuzz run -a "${SAN[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECS" ${QUERN_FUZZ_RUNS:+-runs="$QUERN_FUZZ_RUNS"} \
        -timeout=30 -print_final_stats=1 >"$log" 2>&1 || rc=$?
    result=ok
    if [ "$rc" != 0 ]; then
        result="CRASH (exit $rc; see $log and fuzz/artifacts/$t/)"
        crashed=1
    fi
    printf '%-16s %14s %10s  %s\n' "$t" "$(final_stat number_of_executed_units "$log")" \
        "$(final_stat average_exec_per_sec "$log")" "$result"
done
exit "$crashed"
