#!/usr/bin/env bash
# A worker slowed by the operating system, not by quern's fault hook: one of 4 workers of a
# hand-started cluster gets 10% of the time (SIGSTOP / SIGCONT every 100 ms, from outside).
# Terasort of 800 MB, --reducers 4, RUNS runs of each configuration in alternation:
# healthy, slowed with speculation, slowed without. Prints medians and ratios, and the
# backups launched/won. Not a test.
#
#   bash benches/scripts/os_straggler.sh [RUNS] [WORKDIR]     (defaults: 5, /tmp/quern-osslow)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-5}
W=${2:-/tmp/quern-osslow}
mkdir -p "$W"
cargo build --release -q -p quern-jobs --bin quern
Q=$PWD/target/release/quern
secret=$W/secret
"$Q" secret "$secret" >/dev/null
[ -d "$W/gen" ] || "$Q" teragen -q --records 8000000 -o "$W/gen" >/dev/null
port=7373
"$Q" coordinator --listen 127.0.0.1:$port --secret-file "$secret" > "$W/coord.log" 2>&1 & coord=$!
pids=()
for i in 0 1 2 3; do
    sleep 0.3 # join one at a time: worker 0 joins first and gets the first map
    "$Q" worker --join 127.0.0.1:$port --secret-file "$secret" --slots 1 --work-dir "$W/w$i" > "$W/worker$i.log" 2>&1 &
    pids+=($!)
done
cleanup() { kill "${cycler:-}" 2>/dev/null || true; kill -CONT "${pids[0]}" 2>/dev/null || true; kill "$coord" "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
sleep 1

run() { # LABEL SLOWED SPECULATION
    local label=$1 slowed=$2 spec=$3 cycler=""
    rm -rf "$W/out"
    if [ "$slowed" = 1 ]; then
        bash -c "while kill -STOP ${pids[0]} 2>/dev/null; do sleep 0.09; kill -CONT ${pids[0]}; sleep 0.01; done" & cycler=$!
    fi
    local t0 t1
    t0=$(date +%s.%N)
    "$Q" terasort "$W/gen" -o "$W/out" -r 4 --speculation "$spec" \
        --coordinator 127.0.0.1:$port --secret-file "$secret" 2> "$W/job.log"
    t1=$(date +%s.%N)
    if [ -n "$cycler" ]; then kill "$cycler"; wait "$cycler" 2>/dev/null || true; kill -CONT "${pids[0]}"; fi
    local secs backups
    secs=$(echo "$t1 - $t0" | bc)
    backups=$(grep -o 'backups: [0-9]* launched, [0-9]* won' "$W/job.log" || echo "backups: ?")
    echo "$label $secs $backups" | tee -a "$W/runs.txt"
}

: > "$W/runs.txt"
for r in $(seq 1 "$RUNS"); do
    run healthy 0 on
    run slowed-spec 1 on
    run slowed-nospec 1 off
done
med() { grep "^$1 " "$W/runs.txt" | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
h=$(med healthy); s=$(med slowed-spec); n=$(med slowed-nospec)
printf 'medians of %d: healthy %.2f s; slowed, speculation on %.2f s (%.2fx); slowed, off %.2f s (%.2fx)\n' \
    "$RUNS" "$h" "$s" "$(echo "$s / $h" | bc -l)" "$n" "$(echo "$n / $h" | bc -l)"
