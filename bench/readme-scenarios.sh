#!/usr/bin/env bash
# bench/readme-scenarios.sh: the upstream README's own test scenarios, replayed
# against conn-daemon and a build of the C++ reference, printed as one Markdown
# table beside the figures the README publishes.
#
#   bench/readme-scenarios.sh [--server NAME=COMMAND]...     (the table on stdout)
#
# Scenarios (the README's commands; its figures are in the table's README column):
#   one    1 request in 1 thread:   server -A 1; ab 1 fast, ab 1 slow (median of RS_ONE runs)
#   n1     N requests in 1 thread:  server -A 1; ab -n 100000 fast, ab -n 100 slow
#   n10    N requests in 10 threads: server -A 10; ab -n 100000 -c 10 fast, ab -n 100 -c 10 slow
#   queue  load on the task queue:  server -C 1000 -A 100 -w 1; ab -n 500 -c 100 slow
#   stress stress test:             server -C 1000 -w 300; ab -t RS_STRESS_SECONDS -c 100 slow,
#          RS_STRESS_RUNS times (requests over 100 ms counted), then slow and fast -c 100 at once
#
# Servers: each --server NAME=COMMAND is run with the scenario's options and
# `-p PORT` appended (both servers take the reference's options). Default:
# conn-daemon (CONN_DAEMON, else target/release/conn-daemon, built if missing),
# and `reference` = REFERENCE, else reference-build/release/server-demo (what
# bench/build-reference.sh makes) when it exists; without one the column is
# left out and a note says so.
#
# Pinning, as conn-bench pins: servers on the lower half of the allowed CPUs,
# ab on the rest (taskset); on 1 CPU, unpinned. Each server and each ab runs in
# a session of its own (setsid): with the kernel's autogroup scheduling a
# session's CPU share is split across CPUs by where its threads are runnable,
# so an ab sharing the server's session got a sliver of its CPU whenever
# another session ran there, and stalled (measured: docs/performance.md).
#
# Knobs (environment): RS_SCENARIOS ("one n1 n10 queue stress"), RS_PORT (18760:
# each server start takes the next port of 18760-18799 with no socket on it,
# since a port a server just closed connections on is held by TIME-WAIT),
# RS_ONE (11), RS_FAST_N (100000), RS_STRESS_SECONDS (8), RS_STRESS_RUNS (3),
# RS_NICE (unset; e.g. -20, as root: the autogroup priority of the servers' and ab's
# sessions, so that other work on a shared machine yields to the benchmark),
# RS_START_TIMEOUT (60 s: the reference zero-fills 430 MB per accept thread
# before it listens), RS_AB_LIMIT (60 s: a run that takes longer is cut and
# reported as failed), RS_KEEP=1 keeps the scratch directory (ab's outputs).
# Loopback only; every process it starts is stopped on exit. About 2 minutes
# per server with the defaults.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
SCENARIOS=${RS_SCENARIOS:-one n1 n10 queue stress}
PORT_BASE=${RS_PORT:-18760}
PORT=$PORT_BASE
ONE=${RS_ONE:-11}
FAST_N=${RS_FAST_N:-100000}
STRESS_S=${RS_STRESS_SECONDS:-8}
STRESS_RUNS=${RS_STRESS_RUNS:-3}
START_TIMEOUT=${RS_START_TIMEOUT:-60}
AB_LIMIT=${RS_AB_LIMIT:-60}

log() { printf '[readme %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for pair in ab:apache2-utils taskset:util-linux setsid:util-linux timeout:coreutils ss:iproute2; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || die "missing ${pair%%:*}: apt-get install -y ${pair#*:}"
done

# --- servers -----------------------------------------------------------------
NAMES=() CMDS=() NOTES=()
while (($#)); do
    case $1 in
        --server) [[ ${2:-} == *=* ]] || die "--server NAME=COMMAND"
                  NAMES+=("${2%%=*}"); CMDS+=("${2#*=}"); shift 2 ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
if ((${#NAMES[@]} == 0)); then
    cd_bin=${CONN_DAEMON:-$ROOT/target/release/conn-daemon}
    if [[ ! -x $cd_bin ]]; then
        log "building conn-daemon (cargo build --release)"
        (cd "$ROOT" && cargo build --release >&2)
    fi
    NAMES+=(conn-daemon); CMDS+=("$cd_bin")
    ref=${REFERENCE:-$ROOT/reference-build/release/server-demo}
    if [[ -x $ref ]]; then
        NAMES+=(reference); CMDS+=("$ref")
    else
        NOTES+=("No reference build at $ref (set REFERENCE, or build one with bench/build-reference.sh): its column is left out.")
    fi
fi

NCPU=$(nproc)
if ((NCPU > 1)); then
    SRV_CPUS=0-$((NCPU / 2 - 1)) CLI_CPUS=$((NCPU / 2))-$((NCPU - 1))
    SRV=(taskset -c "$SRV_CPUS") CLI=(taskset -c "$CLI_CPUS")
    PINNING="servers on CPUs $SRV_CPUS, ab on CPUs $CLI_CPUS (taskset), each in its own session"
else
    SRV=() CLI=() PINNING="none (1 CPU)"
fi

SCRATCH=$(mktemp -d /tmp/readme-scenarios.XXXXXX)
SERVER_PID=
# Whether process PID runs (a zombie does not).
alive() { [[ -r /proc/$1/stat ]] && [[ $(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do alive "$SERVER_PID" || break; sleep 0.1; done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
cleanup() {
    stop_server
    if [[ ${RS_KEEP:-} == 1 ]]; then log "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# in_session PIDFILE COMMAND...: COMMAND in a new session (its own autogroup),
# at autogroup priority RS_NICE if set; its pid (a process group's id) in PIDFILE.
in_session() {
    local pidfile=$1; shift
    # shellcheck disable=SC2016  # expanded by the inner shell
    setsid -w bash -c 'echo $$ >"$0"; [[ -z $1 ]] || echo "$1" >/proc/$$/autogroup || exit 1; shift; exec "$@"' \
        "$pidfile" "${RS_NICE:-}" "$@"
}

# start_server INDEX OPTIONS...: the server in a session of its own.
start_server() {
    local i=$1 tries=0; shift
    while :; do
        PORT=$((PORT_BASE + (PORT - PORT_BASE + 1) % 40))
        [[ -z $(ss -tanH "sport = :$PORT" 2>/dev/null) ]] && ! port_open && break
        ((++tries < 40)) || die "no free port in $PORT_BASE-$((PORT_BASE + 39)) (set RS_PORT)"
    done
    URL=http://127.0.0.1:$PORT
    rm -f "$SCRATCH/server.pid"
    # shellcheck disable=SC2086  # the command is a template of words
    in_session "$SCRATCH/server.pid" "${SRV[@]}" ${CMDS[$i]} "$@" -p "$PORT" >"$SCRATCH/server.out" 2>&1 &
    for _ in $(seq 100); do [[ -s $SCRATCH/server.pid ]] && break; sleep 0.01; done
    SERVER_PID=$(cat "$SCRATCH/server.pid" 2>/dev/null) || die "the server's session did not start"
    local end=$((SECONDS + START_TIMEOUT))
    until port_open; do
        if ! alive "$SERVER_PID" || ((SECONDS >= end)); then
            stop_server
            log "  ${NAMES[$i]} did not start: $(tail -n 2 "$SCRATCH/server.out" | tr '\n' ' ')"
            return 1
        fi
        sleep 0.05
    done
}

# run_ab OUT ARGS...: ab on the client CPUs, in its own session, bounded.
run_ab() {
    local out=$1; shift
    in_session "$SCRATCH/ab.pid" timeout "$AB_LIMIT" "${CLI[@]}" ab -q -s 20 "$@" >"$out" 2>&1
}

ab_field() { awk -v k="$2" 'index($0, k) == 1 { sub(/^[^:]*:[ \t]*/, ""); print $1; exit }' "$1"; }

# stats GNUPLOT: "count p50 p99 max over100" of ab -g's total times (ms).
stats() {
    awk -F'\t' 'NR > 1 { print $5 }' "$1" | sort -n | awk '
        { v[NR] = $1; if ($1 > 100) over++ }
        END {
            if (NR == 0) { print "0 - - - 0"; exit }
            p50 = v[int((NR - 1) * 0.50) + 1]; p99 = v[int((NR - 1) * 0.99) + 1]
            printf "%d %d %d %d %d\n", NR, p50, p99, v[NR], over + 0
        }'
}

# --- results: ROW keys in order, VAL[row|server] ------------------------------
declare -A VAL README
ROWS=()
row() { # row KEY README-FIGURE
    local k
    for k in "${ROWS[@]}"; do [[ $k == "$1" ]] && return; done
    ROWS+=("$1"); README[$1]=$2
}
put() { VAL[$1|$2]=$3; }

# ab's "Failed requests" plus non-2xx, or why it failed.
failures() {
    local f n
    f=$(ab_field "$1" "Failed requests") n=$(ab_field "$1" "Non-2xx responses")
    [[ -n $f ]] || { echo "ab failed: $(tail -n 1 "$1" | cut -c1-60)"; return; }
    echo $((f + ${n:-0}))
}

scenario_one() { # 1 request in 1 thread
    local s=$1 name=$2 path ms vals
    row "1 request: fast, ms" "0.250"
    row "1 request: slow, ms" "30.389"
    start_server "$s" -A 1 || { put "1 request: fast, ms" "$name" "did not start"; return; }
    for path in fast slow; do
        vals=()
        for _ in $(seq "$ONE"); do
            run_ab "$SCRATCH/one.txt" "$URL/test/$path" || true
            ms=$(ab_field "$SCRATCH/one.txt" "Time per request")
            [[ -n $ms ]] && vals+=("$ms")
        done
        put "1 request: $path, ms" "$name" \
            "$(printf '%s\n' "${vals[@]:-}" | sort -n | awk 'NF { v[++n] = $1 } END { print n ? v[int((n + 1) / 2)] : "failed" }')"
    done
    stop_server
}

# fixed_runs KEY-PREFIX NAME N C PATH: an ab -n N -c C run's req/s, time, p50/max.
fixed_run() {
    local label=$1 name=$2 n=$3 c=$4 path=$5 out=$SCRATCH/fixed.txt f
    if ! run_ab "$out" -n "$n" -c "$c" -g "$SCRATCH/fixed.g" "$URL/test/$path"; then
        put "$label, req/s" "$name" "failed (ab: $(tail -n 1 "$out" | cut -c1-50))"
        return
    fi
    f=$(failures "$out")
    read -r cnt p50 _ max _ < <(stats "$SCRATCH/fixed.g")
    put "$label, req/s" "$name" "$(ab_field "$out" "Requests per second")"
    put "$label, s" "$name" "$(ab_field "$out" "Time taken for tests")"
    put "$label, p50 / max ms" "$name" "$p50 / $max"
    [[ $f == 0 ]] || NOTES+=("$name, $label: $f failed requests")
}

scenario_n() { # N requests in A threads
    local s=$1 name=$2 a=$3 c=$4 fast_rps=$5 fast_s=$6 slow_rps=$7 slow_s=$8 slow_lat=$9
    local t="N requests in $a thread$( ((a > 1)) && echo s)"
    row "$t: fast -n $FAST_N -c $c, req/s" "$fast_rps (-n 100000)"
    row "$t: fast -n $FAST_N -c $c, s" "$fast_s (-n 100000)"
    row "$t: slow -n 100 -c $c, req/s" "$slow_rps"
    row "$t: slow -n 100 -c $c, s" "$slow_s"
    row "$t: slow -n 100 -c $c, p50 / max ms" "$slow_lat"
    start_server "$s" -A "$a" || { put "$t: fast -n $FAST_N -c $c, req/s" "$name" "did not start"; return; }
    fixed_run "$t: fast -n $FAST_N -c $c" "$name" "$FAST_N" "$c" fast
    fixed_run "$t: slow -n 100 -c $c" "$name" 100 "$c" slow
    stop_server
}

scenario_queue() { # load on the task queue: 100 accept threads, 1 worker
    local s=$1 name=$2 t="task queue (-C 1000 -A 100 -w 1): slow -n 500 -c 100"
    row "$t, req/s" "33.22"
    row "$t, s" "15.053"
    row "$t, p50 / max ms" "3008 / 3016"
    start_server "$s" -C 1000 -A 100 -w 1 || { put "$t, req/s" "$name" "did not start"; return; }
    fixed_run "$t" "$name" 500 100 slow
    stop_server
}

scenario_stress() { # -C 1000 -w 300: slow alone (runs), then slow and fast at once
    local s=$1 name=$2 t="stress (-C 1000 -w 300)" r rps=() over=0 runs_over=0 worst=0 p99s=()
    local f cnt p50 p99 max o
    row "$t: slow -c 100, req/s (median of runs)" "3313"
    row "$t: slow -c 100, p50 / p99 ms (median of runs)" "30 / 31"
    row "$t: slow -c 100, worst ms" "49"
    row "$t: slow -c 100, runs with requests over 100 ms" "0"
    row "$t: slow -c 100, requests over 100 ms" "0 (of 11.9 M)"
    row "$t: slow + fast at once, slow req/s" "3313"
    row "$t: slow + fast at once, slow p99 / max ms" "31 / 49"
    row "$t: slow + fast at once, fast req/s" "40184"
    row "$t: slow + fast at once, fast p99 / max ms" "3 / 22"
    start_server "$s" -C 1000 -w 300 || { put "$t: slow -c 100, req/s (median of runs)" "$name" "did not start"; return; }
    for r in $(seq "$STRESS_RUNS"); do
        log "  $name: stress run $r/$STRESS_RUNS"
        run_ab "$SCRATCH/stress.txt" -t "$STRESS_S" -n 100000000 -c 100 -g "$SCRATCH/stress.g" "$URL/test/slow" || true
        f=$(failures "$SCRATCH/stress.txt")
        read -r cnt p50 p99 max o < <(stats "$SCRATCH/stress.g")
        rps+=("$(ab_field "$SCRATCH/stress.txt" "Requests per second")") p99s+=("$p50 / $p99")
        over=$((over + o)); ((o == 0)) || runs_over=$((runs_over + 1))
        [[ $max == - ]] || ((max <= worst)) || worst=$max
        [[ $f == 0 ]] || NOTES+=("$name, $t, run $r: $f failed requests")
    done
    put "$t: slow -c 100, req/s (median of runs)" "$name" \
        "$(printf '%s\n' "${rps[@]}" | sort -n | awk '{ v[++n] = $1 } END { print v[int((n + 1) / 2)] }')"
    put "$t: slow -c 100, p50 / p99 ms (median of runs)" "$name" \
        "$(printf '%s\n' "${p99s[@]}" | sort -t/ -k2 -n | awk '{ v[++n] = $0 } END { print v[int((n + 1) / 2)] }')"
    put "$t: slow -c 100, worst ms" "$name" "$worst"
    put "$t: slow -c 100, runs with requests over 100 ms" "$name" "$runs_over of $STRESS_RUNS"
    put "$t: slow -c 100, requests over 100 ms" "$name" "$over"
    # Both loads at once, as the README ran them (two ab on the client CPUs).
    run_ab "$SCRATCH/both-slow.txt" -t "$STRESS_S" -n 100000000 -c 100 -g "$SCRATCH/both-slow.g" "$URL/test/slow" &
    local slow_ab=$!
    run_ab "$SCRATCH/both-fast.txt" -t "$STRESS_S" -n 100000000 -c 100 -g "$SCRATCH/both-fast.g" "$URL/test/fast" || true
    wait "$slow_ab" || true
    read -r cnt p50 p99 max o < <(stats "$SCRATCH/both-slow.g")
    put "$t: slow + fast at once, slow req/s" "$name" "$(ab_field "$SCRATCH/both-slow.txt" "Requests per second")"
    put "$t: slow + fast at once, slow p99 / max ms" "$name" "$p99 / $max"
    read -r cnt p50 p99 max o < <(stats "$SCRATCH/both-fast.g")
    put "$t: slow + fast at once, fast req/s" "$name" "$(ab_field "$SCRATCH/both-fast.txt" "Requests per second")"
    put "$t: slow + fast at once, fast p99 / max ms" "$name" "$p99 / $max"
    for f in slow fast; do
        o=$(failures "$SCRATCH/both-$f.txt")
        [[ $o == 0 ]] || NOTES+=("$name, $t, $f at once: $o failed requests")
    done
    stop_server
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for sc in $SCENARIOS; do
    for i in "${!NAMES[@]}"; do
        log "$sc: ${NAMES[$i]}"
        case $sc in
            one) scenario_one "$i" "${NAMES[$i]}" ;;
            n1) scenario_n "$i" "${NAMES[$i]}" 1 1 28211.74 3.545 32.95 3.035 "30 / 30" ;;
            n10) scenario_n "$i" "${NAMES[$i]}" 10 10 39432.46 2.536 326.10 0.307 "30 / 31" ;;
            queue) scenario_queue "$i" "${NAMES[$i]}" ;;
            stress) scenario_stress "$i" "${NAMES[$i]}" ;;
            *) die "unknown scenario $sc (one n1 n10 queue stress)" ;;
        esac
    done
done

# --- the table -----------------------------------------------------------------
header="| scenario, measure | README |" rule="| --- | ---: |"
for n in "${NAMES[@]}"; do header+=" $n |"; rule+=" ---: |"; done
echo "$header"
echo "$rule"
for k in "${ROWS[@]}"; do
    line="| $k | ${README[$k]} |"
    for n in "${NAMES[@]}"; do line+=" ${VAL[$k|$n]:--} |"; done
    echo "$line"
done
echo
echo "- servers: $(for i in "${!NAMES[@]}"; do printf '`%s` = `%s`; ' "${NAMES[$i]}" "${CMDS[$i]}"; done)"
echo "- README: the upstream README's published figures (its machine, ab 2.3, unpinned; its stress test ran 1 hour)"
echo "- machine: nproc $NCPU, kernel $(uname -r), $(ab -V | head -n 1); pinning: $PINNING"
[[ -z ${RS_NICE:-} ]] || echo "- sessions at autogroup priority $RS_NICE (RS_NICE)"
echo "- load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine: read ratios in one run)"
for n in "${NOTES[@]}"; do echo "- $n"; done
