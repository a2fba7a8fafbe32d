#!/usr/bin/env bash
# A worker slowed by the operating system, not by quern's fault hook. Four workers of a
# hand-started cluster stand for four machines: with the cgroup v1 cpu controller (the
# default when /sys/fs/cgroup/cpu is writable, i.e. as root) each worker is a cgroup with a
# CPU quota of half a core (2 cores / 4 workers), and the slowed worker's quota is 10% of
# that. Without it (QUERN_SLOW=sigstop) the slowed worker is stopped and continued from
# outside (SIGSTOP 90 ms / SIGCONT 10 ms), and the other workers share the machine's cores.
# Each worker has one slot per core (QUERN_SLOTS=N to change), as on the local cluster.
# Terasort of 800 MB, --reducers 4, RUNS runs of each configuration in alternation:
# healthy, slowed with speculation, slowed without. Prints medians and ratios, the backups
# launched/won, and the task-seconds backups cost on the healthy cluster. Not a test.
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
CG=/sys/fs/cgroup/cpu
if [ -z "${QUERN_SLOW:-}" ]; then
    if [ -w "$CG" ]; then QUERN_SLOW=cgroup; else QUERN_SLOW=sigstop; fi
fi
SLOTS=${QUERN_SLOTS:-$(nproc)} # slots per worker: the local cluster's default (one per core)
PERIOD=100000 # µs
SHARE=$((PERIOD * $(nproc) / 4)) # each worker's quota: its share of the machine's cores
quota() { echo "$2" > "$CG/quern-straggler-$1/cpu.cfs_quota_us"; } # quota WORKER MICROSECONDS
echo "slowed by: $QUERN_SLOW"
"$Q" coordinator --listen 127.0.0.1:$port --secret-file "$secret" > "$W/coord.log" 2>&1 & coord=$!
pids=()
for i in 0 1 2 3; do
    sleep 0.3 # join one at a time: worker 0 joins first and gets the first map
    "$Q" worker --join 127.0.0.1:$port --secret-file "$secret" --slots "$SLOTS" --work-dir "$W/w$i" > "$W/worker$i.log" 2>&1 &
    pids+=($!)
    if [ "$QUERN_SLOW" = cgroup ]; then
        mkdir -p "$CG/quern-straggler-$i"
        echo "$PERIOD" > "$CG/quern-straggler-$i/cpu.cfs_period_us"
        quota "$i" "$SHARE"
        echo "$!" > "$CG/quern-straggler-$i/cgroup.procs"
    fi
done
cleanup() {
    kill "${cycler:-}" 2>/dev/null || true
    kill -CONT "${pids[0]}" 2>/dev/null || true
    kill "$coord" "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    for i in 0 1 2 3; do rmdir "$CG/quern-straggler-$i" 2>/dev/null || true; done
}
trap cleanup EXIT
sleep 1

run() { # LABEL SLOWED SPECULATION
    local label=$1 slowed=$2 spec=$3 cycler=""
    rm -rf "$W/out" "$W/report-$label"
    if [ "$slowed" = 1 ] && [ "$QUERN_SLOW" = cgroup ]; then
        quota 0 $((SHARE / 10))
    elif [ "$slowed" = 1 ]; then
        bash -c "while kill -STOP ${pids[0]} 2>/dev/null; do sleep 0.09; kill -CONT ${pids[0]}; sleep 0.01; done" & cycler=$!
    fi
    local t0 t1
    t0=$(date +%s.%N)
    "$Q" terasort "$W/gen" -o "$W/out" -r 4 --speculation "$spec" \
        --coordinator 127.0.0.1:$port --secret-file "$secret" --report "$W/report-$label" 2> "$W/job.log"
    t1=$(date +%s.%N)
    if [ -n "$cycler" ]; then kill "$cycler"; wait "$cycler" 2>/dev/null || true; kill -CONT "${pids[0]}"; fi
    if [ "$QUERN_SLOW" = cgroup ]; then quota 0 "$SHARE"; fi
    local secs backups
    secs=$(echo "$t1 - $t0" | bc)
    backups=$(grep -o 'backups: [0-9]* launched, [0-9]* won' "$W/job.log" || echo "backups: ?")
    # Task-seconds: every attempt's run time; the backups' share of them.
    local cost
    cost=$(python3 -c '
import json, sys
attempts = json.load(open(sys.argv[1]))["attempts"]
secs = lambda a: (a["end_us"] - a["start_us"]) / 1e6
total = sum(secs(a) for a in attempts)
backup = sum(secs(a) for a in attempts if a["backup"])
print(f"{backup:.2f} {total:.2f}")' "$W/report-$label/report.json")
    echo "$label $secs $cost $backups" | tee -a "$W/runs.txt"
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
grep '^healthy ' "$W/runs.txt" | awk '{b += $3; t += $4} END {printf "healthy runs: backups took %.2f of %.2f task-seconds (%.1f%%)\n", b, t, t ? 100 * b / t : 0}'
