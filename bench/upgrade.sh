#!/usr/bin/env bash
# bench/upgrade.sh: zero-downtime upgrades under load. Not run by CI.
#
#   bench/upgrade.sh [--upgrades N] [--seconds S] [--tool wrk|ab] [--baseline]
#
# Starts a private copy of target/release/conn-daemon (after `cargo build
# --release`, a no-op when up to date) with --pid-file on 127.0.0.1, drives it for S
# seconds (default 20) with two load generators at once, one on /test/fast and
# one on /test/slow, and meanwhile upgrades it N times (default 10), evenly
# spaced: each time a new copy of the binary is installed the way an operator
# must (copy to a temporary name in the same directory, then `mv` over the
# old one), SIGUSR2 goes to the pid in the pid file, and the script waits for
# the pid file to name a new, live process. --baseline runs the same load with
# no upgrade (N = 0), to tell the load generator's own errors from ours.
#
# Prints each load generator's summary, then the totals; the last line is
#   upgrade: <requests> requests, <failed> failed, <upgrades> upgrades
# and the exit status is non-zero when a request failed (non-2xx, or a socket
# error: wrk's connect/read/write/timeout, ab's "Failed requests"), when an
# upgrade did not happen, or when an old process was still running at the end.
#
# Every process it starts (servers by the pids they wrote, load generators) is
# stopped on every exit path (trap EXIT), also on Ctrl-C. Knobs (environment):
# CONN_DAEMON (binary), UPGRADE_PORT (18750), UPGRADE_FAST_CONC (wrk/ab -c on
# /test/fast, 50), UPGRADE_SLOW_CONC (on /test/slow, 10), UPGRADE_KEEP=1 keeps
# the scratch directory (server log, load generator outputs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
UPGRADES=10 SECONDS_=20 TOOL=wrk
usage() { echo "usage: bench/upgrade.sh [--upgrades N] [--seconds S] [--tool wrk|ab] [--baseline]" >&2; exit 2; }
while (($#)); do
    case $1 in
        --upgrades) UPGRADES=${2:?}; shift 2 ;;
        --seconds) SECONDS_=${2:?}; shift 2 ;;
        --tool) TOOL=${2:?}; shift 2 ;;
        --baseline) UPGRADES=0; shift ;;
        -h | --help) usage ;;
        *) usage ;;
    esac
done
[[ $UPGRADES =~ ^[0-9]+$ && $SECONDS_ =~ ^[1-9][0-9]*$ ]] || usage
[[ $TOOL == wrk || $TOOL == ab ]] || usage
PORT=${UPGRADE_PORT:-18750}
FAST_CONC=${UPGRADE_FAST_CONC:-50}
SLOW_CONC=${UPGRADE_SLOW_CONC:-10}

log() { printf '[upgrade %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- prerequisites -----------------------------------------------------------
if [[ $TOOL == wrk ]]; then cmd=wrk pkg=wrk; else cmd=ab pkg=apache2-utils; fi
if ! command -v "$cmd" >/dev/null 2>&1; then
    log "installing $pkg"
    { apt-get update && apt-get install -y "$pkg"; } >&2 || die "cannot install $pkg"
fi
if [[ -n ${CONN_DAEMON:-} ]]; then
    SRC_BIN=$CONN_DAEMON
else
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release 2>&1 | tail -n 3 >&2)
    SRC_BIN=$ROOT/target/release/conn-daemon
fi
[[ -x $SRC_BIN ]] || die "no conn-daemon binary at $SRC_BIN"
"$SRC_BIN" --help | grep -q -- --pid-file || die "$SRC_BIN has no --pid-file (an old build?)"

# --- scratch dir, process bookkeeping, cleanup --------------------------------
TMP=$(mktemp -d /tmp/upgrade.XXXXXX)
PIDFILE=$TMP/conn-daemon.pid
BIN=$TMP/conn-daemon
: >"$TMP/servers"    # every server pid seen (the first, then each pid file)
LOADERS=()
# A pid counts while it is running: not gone, and not a zombie nobody reaped.
alive() { [[ -r /proc/$1/stat ]] && [[ $(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) != Z ]]; }
# The servers still running, but $1 (an upgrade's old processes leave by themselves).
running_servers() {
    local pid
    while read -r pid; do
        if [[ $pid != "${1:-}" ]] && alive "$pid"; then echo "$pid"; fi
    done <"$TMP/servers"
}
cleanup() {
    local pid
    for pid in "${LOADERS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $(running_servers); do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        [[ -z $(running_servers) ]] && break
        sleep 0.1
    done
    for pid in $(running_servers); do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${UPGRADE_KEEP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private copy: a rebuild in target/ during the run changes nothing here, and
# the upgrades replace this copy, never the build output.
cp "$SRC_BIN" "$BIN"
pidfile_pid() { cat "$PIDFILE" 2>/dev/null || true; }
# Waits up to $2 tenths of a second for the pid file to name a live process other than $1.
wait_new_pid() {
    local old=$1 n=$2 pid
    while ((n-- > 0)); do
        pid=$(pidfile_pid)
        if [[ -n $pid && $pid != "$old" ]] && alive "$pid"; then
            echo "$pid"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# -A 2 (the machine's cores), room for 5,000 connections per thread: plenty
# for the load and small enough that two processes at once (old and new
# during an upgrade) reserve little memory.
"$BIN" --listen "127.0.0.1:$PORT" -A 2 -C 5000 --pid-file "$PIDFILE" 2>"$TMP/server.log" &
echo $! >>"$TMP/servers"
FIRST=$(wait_new_pid "" 100) || die "conn-daemon did not write its pid file: $(cat "$TMP/server.log")"
log "conn-daemon pid $FIRST serves 127.0.0.1:$PORT ($TOOL, $SECONDS_ s, $UPGRADES upgrades)"

# --- load ---------------------------------------------------------------------
URL=http://127.0.0.1:$PORT/test
start_load() { # name concurrency
    if [[ $TOOL == wrk ]]; then
        wrk -t1 -c"$2" -d"${SECONDS_}s" --timeout 10s --latency "$URL/$1" >"$TMP/$1.out" 2>&1 &
    else
        # -r: count receive errors instead of stopping; -n only sizes ab's
        # table (-t stops it), above what the machine can do in the time.
        ab -r -q -t "$SECONDS_" -n $((SECONDS_ * 40000)) -c "$2" "$URL/$1" >"$TMP/$1.out" 2>&1 &
    fi
    LOADERS+=($!)
}
start_load fast "$FAST_CONC"
start_load slow "$SLOW_CONC"
T0=$(date +%s.%N)

# --- upgrades, evenly spaced --------------------------------------------------
done_=0
current=$FIRST
if ((UPGRADES > 0)); then
    step=$(awk -v s="$SECONDS_" -v n="$UPGRADES" 'BEGIN { printf "%.3f", s / (n + 1) }')
    for i in $(seq "$UPGRADES"); do
        target=$(awk -v t0="$T0" -v s="$step" -v i="$i" 'BEGIN { printf "%.3f", t0 + s * i }')
        wait_s=$(awk -v t="$target" -v now="$(date +%s.%N)" 'BEGIN { d = t - now; printf "%.3f", (d > 0 ? d : 0) }')
        sleep "$wait_s"
        # The way to install a new binary: never write in place (ETXTBSY, and a
        # half-written file could be exec'd); a rename is atomic.
        cp "$SRC_BIN" "$BIN.new" && mv -f "$BIN.new" "$BIN"
        kill -USR2 "$current" || die "upgrade $i: pid $current is gone: $(tail -n 5 "$TMP/server.log")"
        if new=$(wait_new_pid "$current" 150); then
            echo "$new" >>"$TMP/servers"
            done_=$((done_ + 1))
            log "upgrade $i: $current -> $new"
            current=$new
        else
            log "upgrade $i: the pid file still names $current after 15 s"
        fi
    done
fi
for pid in "${LOADERS[@]}"; do wait "$pid" || log "load generator $pid exited with $?"; done
LOADERS=()

# Every old process must have drained and exited by now (--shutdown-timeout 10 s).
for _ in $(seq 120); do
    mapfile -t lingering < <(running_servers "$current")
    ((${#lingering[@]} == 0)) && break
    sleep 0.1
done

# --- figures ------------------------------------------------------------------
requests=0 failed=0
for name in fast slow; do
    out=$TMP/$name.out
    echo "--- $TOOL on /test/$name:"
    if [[ $TOOL == wrk ]]; then
        grep -E 'requests in|Socket errors|Non-2xx|Requests/sec|  50%|  99%' "$out" || cat "$out"
        # "N requests in Xs"; socket errors and non-2xx lines appear only when non-zero.
        n=$(awk '/ requests in / { print $1 }' "$out")
        e=$(awk -F'[ ,]+' '/Socket errors:/ { print $5 + $7 + $9 + $11 }' "$out")
        x=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    else
        grep -E 'Complete requests|Failed requests|Non-2xx|Requests per second|  50%|  99%' "$out" || cat "$out"
        n=$(awk '/^Complete requests:/ { print $3 }' "$out")
        e=$(awk '/^Failed requests:/ { print $3 }' "$out")
        x=$(awk '/^Non-2xx responses:/ { print $3 }' "$out")
    fi
    [[ -n $n ]] || { log "no result from $TOOL on /test/$name"; n=0 e=1; }
    requests=$((requests + n)) failed=$((failed + ${e:-0} + ${x:-0}))
done
echo "--- conn-daemon's log lines:"
sort "$TMP/server.log" | sed -E 's/[0-9]+/N/g' | uniq -c
if ((${#lingering[@]})); then
    echo "old processes still running: ${lingering[*]}"
fi
echo "upgrade: $requests requests, $failed failed, $done_ upgrades"
((failed == 0 && done_ == UPGRADES && ${#lingering[@]} == 0))
