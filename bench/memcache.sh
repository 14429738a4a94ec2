#!/usr/bin/env bash
# bench/memcache.sh: the memcache example (examples/memcache) beside Debian's
# memcached 1.6, in one run, printed as Markdown tables (docs/memcache.md).
#
#   bench/memcache.sh > /tmp/memcache-results.md      (progress goes to stderr)
#
# Both servers get the same threads (-t, default 1), the same -m and -c, run on
# CPU 0 (taskset) while the load (memcaslap from libmemcached-tools, on CPU 1)
# drives them over loopback with persistent connections. Four mixes: get-heavy
# (90% get, 10% set) and set-heavy (10% get, 90% set), 32-byte and 4 KB values,
# 30-byte keys. Per mix and server, MC_ROUNDS rounds (alternating servers; the
# medians are printed): ops/s, server CPU per operation (the server's utime +
# stime from /proc over the run, divided by the operations), p99 latency (the
# upper edge of memcaslap's log2 bucket that holds the 99th percentile, in us),
# and each as a ratio to memcached's. Then the memory for the same data: the same
# items loaded into each (1,000,000 of 32 bytes; 50,000 of 4 KB), then `stats`
# bytes and the growth of the resident size; and how many of them each holds
# within the same -m 64 (loaded past it), with the resident size then.
#
# apt-get installs memcached and libmemcached-tools if missing (as root).
# Knobs (environment): MEMCACHE (the example's binary; default
# target/release/examples/memcache, built if missing), MC_THREADS (1), MC_CONC
# (memcaslap -c, 32), MC_TIME (seconds per round, 8), MC_ROUNDS (3), MC_AWAKE
# (1: keep CPU 0 from idling, see below).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
THREADS=${MC_THREADS:-1}
CONC=${MC_CONC:-32}
TIME=${MC_TIME:-8}
ROUNDS=${MC_ROUNDS:-3}
OURS=${MEMCACHE:-$ROOT/target/release/examples/memcache}
MEM_MB=1024

log() { printf '[memcache-bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

missing=()
command -v memcached >/dev/null 2>&1 || missing+=(memcached)
command -v memcaslap >/dev/null 2>&1 || missing+=(libmemcached-tools)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "cannot install ${missing[*]} (run as root, or install them)"
fi
if [ ! -x "$OURS" ]; then
    log "building the example"
    (cd "$ROOT" && cargo build --release --quiet --example memcache)
fi
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (server on CPU 0, load on CPU 1)"

SCRATCH=$(mktemp -d /tmp/memcache-bench.XXXXXX)
PIDS=()
# On this VM a CPU left idle takes 50-100 us to wake: memcached's own background
# threads (LRU maintainer, logger) keep its CPU from idling, the example has none,
# and the client would charge the wake-ups to it as latency. A tiny process on
# CPU 0 that wakes every 0.5 ms keeps the CPU awake for both (MC_AWAKE=0: not).
if [ "${MC_AWAKE:-1}" = 1 ]; then
    taskset -c 0 python3 -c "import time
while True: time.sleep(0.0005)" &
    PIDS+=("$!")
fi
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

# A port the kernel says is free now.
free_port() {
    python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

# start NAME PORT: starts the server on CPU 0; sets SERVER_PID.
start() {
    local name=$1 p=$2
    case $name in
        memcached) taskset -c 0 memcached -u "$(id -un)" -p "$p" -l 127.0.0.1 -U 0 \
                       -t "$THREADS" -m "${MEM:-$MEM_MB}" -c 1024 >"$SCRATCH/$name.log" 2>&1 &
                   SERVER_PID=$! ;;
        ours)      taskset -c 0 "$OURS" -p "$p" -l 127.0.0.1 -t "$THREADS" -m "${MEM:-$MEM_MB}" \
                       -c 1024 >"$SCRATCH/$name.log" 2>&1 &
                   SERVER_PID=$! ;;
    esac
    PIDS+=("$SERVER_PID")
    for _ in $(seq 200); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$p),1).close()" \
            2>/dev/null && return 0
        sleep 0.05
    done
    die "$name did not start (see $SCRATCH/$name.log)"
}

stop() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }

# CPU ticks (utime + stime) of a process, and its resident KB.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# run MIX VALUE PORT: one memcaslap round; prints "ops cpu_us_per_op p99_us".
run() {
    local get=$1 value=$2 p=$3 cfg=$SCRATCH/cfg.$1.$2
    printf 'key\n30 30 1\nvalue\n%s %s 1\ncmd\n0 %s\n1 %s\n' "$value" "$value" \
        "$(python3 -c "print(round(1 - $get, 2))")" "$get" >"$cfg"
    local window=10k
    [ "$value" -gt 1024 ] && window=1k
    local t0 out t1
    t0=$(ticks "$SERVER_PID")
    out=$(taskset -c 1 memcaslap -s "127.0.0.1:$p" -F "$cfg" -t "${TIME}s" -T 1 -c "$CONC" \
        -w "$window" -S "${TIME}s" 2>&1) || die "memcaslap failed: $out"
    t1=$(ticks "$SERVER_PID")
    printf '%s\n' "$out" >"$SCRATCH/memcaslap.out"
    python3 - "$t0" "$t1" "$SCRATCH/memcaslap.out" <<'EOF'
import re, sys, os
t0, t1 = int(sys.argv[1]), int(sys.argv[2])
out = open(sys.argv[3]).read()
hz = os.sysconf("SC_CLK_TCK")
ops = int(re.search(r"Ops: (\d+)", out).group(1))
tps = int(re.search(r"TPS: (\d+)", out).group(1))
# The last "Total Statistics" block's log2 histogram: a row "N: c0 c1 c2 c3"
# counts the latencies in [2^(N+i), 2^(N+i+1)) us.
block = out[out.rfind("Total Statistics"):]
counts = {}
for row in re.finditer(r"^\s+(\d+):((?:\s+\d+)+)\s*$", block, re.M):
    base = int(row.group(1))
    for i, c in enumerate(row.group(2).split()):
        counts[base + i] = int(c)
total = sum(counts.values())
seen, p99 = 0, 0
for b in sorted(counts):
    seen += counts[b]
    if seen >= 0.99 * total:
        p99 = 2 ** (b + 1)
        break
print(tps, "%.3f" % ((t1 - t0) * 1e6 / hz / ops), p99)
EOF
}

# load VALUE COUNT PORT: COUNT items of VALUE bytes, pipelined noreply sets,
# then a round trip to be sure they are all in.
load() {
    python3 - "$1" "$2" "$3" <<'EOF'
import socket, sys
value, count, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
v = b"v" * value
batch = []
for i in range(count):
    batch.append(b"set key:%026d 0 0 %d noreply\r\n%s\r\n" % (i, value, v))
    if len(batch) == 500:
        s.sendall(b"".join(batch)); batch = []
s.sendall(b"".join(batch) + b"version\r\n")
buf = b""
while not buf.endswith(b"\r\n"):
    buf += s.recv(4096)
assert buf.startswith(b"VERSION"), buf
s.sendall(b"stats\r\n")
buf = b""
while not buf.endswith(b"END\r\n"):
    buf += s.recv(65536)
st = dict(l.split(" ")[1:3] for l in buf.decode().splitlines() if l.startswith("STAT "))
print(st["curr_items"], st["bytes"], st["evictions"])
EOF
}

median() { tr ' ' '\n' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

log "memcached $(memcached -V | awk '{print $2}'), memcaslap, $THREADS server thread(s), -c $CONC, ${TIME}s x $ROUNDS rounds"
echo "## Throughput, CPU and latency ($THREADS server thread, memcaslap -c $CONC, medians of $ROUNDS rounds of ${TIME} s)"
echo
echo "| mix | value | memcached ops/s | ours ops/s | ratio | memcached CPU us/op | ours CPU us/op | ratio | memcached p99 us | ours p99 us | ratio |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for value in 32 4096; do
    for get in 0.9 0.1; do
        declare -A ops=() cpu=() p99=()
        for round in $(seq "$ROUNDS"); do
            for name in memcached ours; do
                p=$(free_port)
                start "$name" "$p"
                read -r o c l < <(run "$get" "$value" "$p")
                stop
                ops[$name]+="$o "; cpu[$name]+="$c "; p99[$name]+="$l "
                log "get $get, $value B, round $round, $name: $o ops/s, $c us/op, p99 $l us"
            done
        done
        mix="get-heavy (90/10)"; [ "$get" = 0.1 ] && mix="set-heavy (10/90)"
        mo=$(echo ${ops[memcached]} | median); oo=$(echo ${ops[ours]} | median)
        mc=$(echo ${cpu[memcached]} | median); oc=$(echo ${cpu[ours]} | median)
        ml=$(echo ${p99[memcached]} | median); ol=$(echo ${p99[ours]} | median)
        printf '| %s | %s B | %s | %s | %.2f | %s | %s | %.2f | %s | %s | %.2f |\n' \
            "$mix" "$value" "$mo" "$oo" "$(python3 -c "print($oo/$mo)")" \
            "$mc" "$oc" "$(python3 -c "print($oc/$mc)")" \
            "$ml" "$ol" "$(python3 -c "print($ol/$ml)")"
        unset ops cpu p99
    done
done

echo
echo "## Memory for the same items (-m $MEM_MB, no eviction)"
echo
echo "| items | memcached \`bytes\` | ours \`bytes\` | ratio | memcached RSS growth MB | ours RSS growth MB | ratio |"
echo "|---|---|---|---|---|---|---|"
for spec in "32 1000000" "4096 50000"; do
    read -r value count <<<"$spec"
    declare -A bytes=() grow=()
    for name in memcached ours; do
        p=$(free_port)
        start "$name" "$p"
        before=$(rss_kb "$SERVER_PID")
        read -r items b _ < <(load "$value" "$count" "$p")
        [ "$items" = "$count" ] || die "$name holds $items of $count items"
        after=$(rss_kb "$SERVER_PID")
        stop
        bytes[$name]=$b; grow[$name]=$(( (after - before) / 1024 ))
        log "$count x $value B: $name bytes $b, RSS +$(( (after - before) / 1024 )) MB"
    done
    printf '| %s x %s B | %s | %s | %.2f | %s | %s | %.2f |\n' "$count" "$value" \
        "${bytes[memcached]}" "${bytes[ours]}" "$(python3 -c "print(${bytes[ours]}/${bytes[memcached]})")" \
        "${grow[memcached]}" "${grow[ours]}" "$(python3 -c "print(${grow[ours]}/max(${grow[memcached]},1))")"
    unset bytes grow
done

echo
echo "## Items held within the same -m 64 (loaded past it: the rest evicted)"
echo
echo "| items loaded | memcached holds | ours holds | ratio | memcached RSS MB | ours RSS MB | ratio |"
echo "|---|---|---|---|---|---|---|"
for spec in "32 1500000" "4096 40000"; do
    read -r value count <<<"$spec"
    declare -A held=() rss=()
    for name in memcached ours; do
        p=$(free_port)
        MEM=64 start "$name" "$p"
        read -r items _ evicted < <(load "$value" "$count" "$p")
        rss[$name]=$(( $(rss_kb "$SERVER_PID") / 1024 ))
        stop
        held[$name]=$items
        log "-m 64, $count x $value B: $name holds $items ($evicted evicted), RSS ${rss[$name]} MB"
    done
    printf '| %s x %s B | %s | %s | %.2f | %s | %s | %.2f |\n' "$count" "$value" \
        "${held[memcached]}" "${held[ours]}" "$(python3 -c "print(${held[ours]}/${held[memcached]})")" \
        "${rss[memcached]}" "${rss[ours]}" "$(python3 -c "print(${rss[ours]}/${rss[memcached]})")"
    unset held rss
done
