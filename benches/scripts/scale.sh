#!/usr/bin/env bash
# Real inputs, bounded resources: the benchmarks of "many small files, any fan-in,
# reducers that spill". Not a test: it prints figures (wall time, peak anonymous memory).
#
#   bash benches/scripts/scale.sh [WORKDIR]        (default WORKDIR: /tmp/quern-scale)
#   QUERN_SCALE_GB=8 QUERN_SCALE_ONLY=grep bash benches/scripts/scale.sh
#
# Sections (QUERN_SCALE_ONLY=grep|terasort|remote|splits picks one):
# - grep: `quern grep -c` vs `rg -c --no-ignore` over real trees of many files and a
#   generated one of 100k small files (warm cache; median of 3 each).
# - terasort: 1 GB and $QUERN_SCALE_GB GB (default 8) terasort with --memory 512MiB on the
#   local cluster: wall time, peak RssAnon summed over every quern process, t(N)/t(1).
# - remote: a coordinator + 2 workers with --no-local-reads, 4 GB terasort, --reducers 2
#   --memory 512MiB: peak RssAnon of each worker.
# - splits: a 1 GB terasort cut into more than vm.max_map_count (65,530) splits.
#
# Peak RssAnon is sampled from /proc/PID/status every 50 ms (file-backed mmap pages are
# RssFile and do not count).
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-/tmp/quern-scale}
GB=${QUERN_SCALE_GB:-8}
ONLY=${QUERN_SCALE_ONLY:-}
mkdir -p "$W"
cargo build --release -q -p quern-jobs --bin quern
Q=$PWD/target/release/quern

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# sample_anon OUTFILE PATTERN: until killed, writes "peak_sum_kib peak_max_one_kib" of
# the processes whose command line matches PATTERN.
sample_anon() {
    local out=$1 pat=$2 peak=0 one=0
    while true; do
        local sum=0
        for pid in $(pgrep -f "$pat" || true); do
            local kb
            kb=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
            kb=${kb:-0}
            sum=$((sum + kb))
            [ "$kb" -gt "$one" ] && one=$kb
        done
        [ "$sum" -gt "$peak" ] && peak=$sum
        echo "$peak $one" > "$out"
        sleep 0.05
    done
}

# timed LABEL CMD...: runs CMD, prints wall seconds and the peak RssAnon of quern processes.
timed() {
    local label=$1; shift
    local mem="$W/mem.$$"
    sample_anon "$mem" "$Q" & local sampler=$!
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    local secs
    secs=$(echo "$t1 - $t0" | bc)
    read -r peak one < "$mem"
    printf '%-44s %8.2f s   peak RssAnon: all quern %6d MiB, largest process %6d MiB\n' \
        "$label" "$secs" $((peak / 1024)) $((one / 1024))
    LAST=$secs
}

median3() { printf '%s\n' "$@" | sort -n | sed -n 2p; }

if want grep; then
    echo "== grep -c over trees of many files vs rg -c (warm cache, median of 3)"
    tree=$W/small-tree
    if [ ! -d "$tree" ]; then
        python3 - "$tree" <<'PY'
import os, sys, random
root = sys.argv[1]
random.seed(7)
words = open('/usr/share/dict/words').read().split() if os.path.exists('/usr/share/dict/words') else \
    "the quick brown fox jumps over the lazy dog while a king and a wolf watch".split()
for i in range(100_000):
    d = os.path.join(root, f"d{i // 1000:03}", f"e{i % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}.txt"), "w") as f:
        for _ in range(random.randint(0, 12)):
            f.write(" ".join(random.choice(words) for _ in range(random.randint(1, 12))) + "\n")
PY
    fi
    for dir in /usr/share /usr/lib "$HOME/.cargo/registry/src" "$tree"; do
        [ -d "$dir" ] || continue
        files=$(cd "$dir" && find . -type f -not -path '*/.*' 2>/dev/null | wc -l)
        qt=(); rt=()
        for i in 1 2 3; do
            t0=$(date +%s.%N); "$Q" grep -c 'the|wolf' "$dir" > "$W/q.out" || true; t1=$(date +%s.%N)
            qt+=("$(echo "$t1 - $t0" | bc)")
            t0=$(date +%s.%N); rg -c --no-ignore --no-messages 'the|wolf' "$dir" > "$W/rg.out" || true; t1=$(date +%s.%N)
            rt+=("$(echo "$t1 - $t0" | bc)")
        done
        q=$(median3 "${qt[@]}"); r=$(median3 "${rt[@]}")
        printf '%-40s %7d files  quern %6.2f s  rg %6.2f s  ratio %5.1fx\n' "$dir" "$files" "$q" "$r" "$(echo "$q / $r" | bc -l)"
    done
fi

if want terasort; then
    echo "== terasort with --memory 512MiB on the local cluster"
    for size in 1 "$GB"; do
        records=$((size * 10000000))
        rm -rf "$W/gen$size" "$W/sorted$size"
        "$Q" teragen -q --records "$records" -o "$W/gen$size"
        timed "terasort ${size} GB --memory 512MiB" "$Q" terasort -q "$W/gen$size" -o "$W/sorted$size" --memory 512MiB
        eval "t$size=$LAST"
        "$Q" teravalidate -q "$W/sorted$size" | tail -1
        rm -rf "$W/sorted$size"
        [ "$size" = 1 ] || rm -rf "$W/gen$size"
    done
    printf 't(%s GB) / t(1 GB) = %.2f (linear: %s)\n' "$GB" "$(eval echo "\$t$GB / \$t1" | bc -l)" "$GB"
fi

if want remote; then
    echo "== coordinator + 2 workers, --no-local-reads, 4 GB terasort -r 2 --memory 512MiB"
    secret=$W/secret
    "$Q" secret "$secret" >/dev/null
    rm -rf "$W/gen4" "$W/sorted4" "$W/w0" "$W/w1"
    "$Q" teragen -q --records 40000000 -o "$W/gen4"
    "$Q" coordinator --listen 127.0.0.1:7171 --secret-file "$secret" > "$W/coord.log" 2>&1 & coord=$!
    sleep 0.5
    for i in 0 1; do
        "$Q" worker --join 127.0.0.1:7171 --secret-file "$secret" --no-local-reads --work-dir "$W/w$i" > "$W/worker$i.log" 2>&1 &
        eval "worker$i=$!"
    done
    sleep 1
    for i in 0 1; do (sample_anon "$W/mem.w$i" "work-dir $W/w$i" & echo $! > "$W/sampler$i"); done
    timed "terasort 4 GB, QUIC shuffle" "$Q" terasort -q "$W/gen4" -o "$W/sorted4" -r 2 --memory 512MiB \
        --coordinator 127.0.0.1:7171 --secret-file "$secret"
    for i in 0 1; do
        kill "$(cat "$W/sampler$i")" 2>/dev/null || true
        read -r peak _ < "$W/mem.w$i"
        printf '  worker %d peak RssAnon: %d MiB\n' "$i" $((peak / 1024))
    done
    "$Q" teravalidate -q "$W/sorted4" | tail -1
    kill "$coord" "$worker0" "$worker1" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$W/gen4" "$W/sorted4"
fi

if want splits; then
    echo "== 1 GB terasort in more than 65,530 splits"
    [ -d "$W/gen1" ] || "$Q" teragen -q --records 10000000 -o "$W/gen1"
    rm -rf "$W/sorted-many"
    timed "terasort 1 GB, --split-size 15000" "$Q" terasort "$W/gen1" -o "$W/sorted-many" --split-size 15000 2> "$W/many.log"
    grep -E "map tasks|merge passes" "$W/many.log" || true
    "$Q" teravalidate -q "$W/sorted-many" | tail -1
    rm -rf "$W/sorted-many"
fi
