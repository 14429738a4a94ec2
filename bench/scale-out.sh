#!/usr/bin/env bash
# Rolling restart behind HAProxy, under load: does any client notice?
#
#   bench/scale-out.sh [--instances N] [--seconds S] [--upgrades U] [--bin PATH]
#
# Starts Debian's haproxy with contrib/haproxy/haproxy.cfg (its `bind` port and
# `server` lines replaced by N conn-daemon instances on free loopback ports),
# drives fast and slow requests through it for S seconds from a small Python
# client (one connection per request, every error counted), and meanwhile
# restarts every instance in turn: SIGTERM, wait for the drain to end (exit
# status 0), start it again, wait until HAProxy sees it up. Then, if the binary
# supports it (its --help mentions SIGUSR2), upgrades U instances in place with
# SIGUSR2 and checks that a new process took over the port and the old one
# exited. Only 127.0.0.1 is used.
#
# Last line, exactly:
#   scale-out: <answered> answered, <failed> failed, <restarts> restarts, <upgrades> upgrades
# where failed counts every client-visible error (refused, reset, timeout, any
# status but 200). Exit status 0 when nothing failed and every restart happened.
# Everything it started is stopped by pid on every exit path.
#
# Needs: haproxy (apt-get install -y haproxy; installed here when missing and
# run as root), python3, a release build (built here when missing).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
INSTANCES=3
SECONDS_TOTAL=20
UPGRADES=1
BIN="$ROOT/target/release/conn-daemon"
# Options every instance runs with: 2 slow workers, the default 30 ms, and a
# short bound on the drain so a stuck drain shows as a failed restart.
DAEMON_ARGS=(-A 1 -w 2 -D 30 --shutdown-timeout 5000)

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --instances) INSTANCES=$2; shift 2 ;;
        --seconds) SECONDS_TOTAL=$2; shift 2 ;;
        --upgrades) UPGRADES=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "scale-out.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
for v in "$INSTANCES" "$SECONDS_TOTAL" "$UPGRADES"; do
    [[ $v =~ ^[0-9]+$ ]] || { echo "scale-out.sh: not a number: $v" >&2; exit 2; }
done
[ "$INSTANCES" -ge 2 ] || { echo "scale-out.sh: --instances must be at least 2 (one must serve while another restarts)" >&2; exit 2; }
[ "$SECONDS_TOTAL" -ge 5 ] || { echo "scale-out.sh: --seconds must be at least 5" >&2; exit 2; }

log() { echo "scale-out: $*" >&2; }

if ! command -v haproxy >/dev/null && [ ! -x /usr/sbin/haproxy ]; then
    if [ "$(id -u)" = 0 ]; then
        log "installing haproxy"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    else
        echo "scale-out.sh: haproxy not found: apt-get install -y haproxy" >&2; exit 1
    fi
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
command -v python3 >/dev/null || { echo "scale-out.sh: python3 not found" >&2; exit 1; }
if [ ! -x "$BIN" ]; then
    log "building $BIN"
    (cd "$ROOT" && cargo build --release -p conn-daemon >&2)
fi

WORK=$(mktemp -d /tmp/scale-out.XXXXXX)
declare -a PID PORT
HAPROXY_PID=""
CLIENT_PID=""

# Stops everything this script started, by pid: TERM, then KILL after 3 s.
cleanup() {
    local pids=() p
    for p in "$CLIENT_PID" "$HAPROXY_PID" "${PID[@]:-}"; do
        [ -n "$p" ] && kill -0 "$p" 2>/dev/null && pids+=("$p")
    done
    if [ ${#pids[@]} -gt 0 ]; then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        for _ in $(seq 30); do
            local alive=0
            for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            [ $alive = 0 ] && break
            sleep 0.1
        done
        for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N+1 distinct free ports (held together while they are picked).
read -r -a PORTS <<<"$(python3 - "$((INSTANCES + 1))" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
FRONT=${PORTS[0]}
for i in $(seq 1 "$INSTANCES"); do PORT[i]=${PORTS[i]}; done

# True once something accepts TCP connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to $2 seconds for port $1 to listen.
wait_listening() {
    local end=$((SECONDS + $2))
    until listening "$1"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.02
    done
}

# With --pid-file (when the binary has it) an upgraded process names itself.
PID_FILE_OPT=0
if "$BIN" --help 2>&1 | grep -q -- '--pid-file'; then PID_FILE_OPT=1; fi

start_instance() {
    local i=$1 extra=()
    [ "$PID_FILE_OPT" = 1 ] && extra=(--pid-file "$WORK/cd$i.pid")
    "$BIN" "${DAEMON_ARGS[@]}" -p "${PORT[i]}" "${extra[@]}" >>"$WORK/cd$i.log" 2>&1 &
    PID[i]=$!
    wait_listening "${PORT[i]}" 5 || { log "instance $i did not listen on ${PORT[i]}; its log:"; tail -5 "$WORK/cd$i.log" >&2; return 1; }
}

# HAProxy's view of server cd$1 (UP, DOWN, ...) from the runtime API.
hap_status() {
    python3 - "$WORK/haproxy.sock" "cd$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(b"show stat\n")
lines = s.makefile("rb").read().decode().splitlines()
head = lines[0].lstrip("# ").split(",")
for line in lines[1:]:
    row = dict(zip(head, line.split(",")))
    if row.get("pxname") == "conn_daemon" and row.get("svname") == sys.argv[2]:
        print(row.get("status", "?"))
        break
EOF
}

# Waits up to $2 seconds until HAProxy reports instance $1 UP.
wait_up() {
    local end=$((SECONDS + $2))
    until [ "$(hap_status "$1" 2>/dev/null)" = UP ]; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.1
    done
}

for i in $(seq 1 "$INSTANCES"); do start_instance "$i"; done

# The repo's config, with this run's ports, instances and socket.
CFG="$WORK/haproxy.cfg"
awk -v front="$FRONT" -v sock="$WORK/haproxy.sock" -v n="$INSTANCES" -v ports="${PORTS[*]}" '
    BEGIN { split(ports, p, " ") }
    /^[ \t]*stats socket / { sub(/stats socket [^ ]+/, "stats socket " sock) }
    /^[ \t]*bind / { sub(/bind [^ ]+/, "bind 127.0.0.1:" front) }
    /^[ \t]*server cd[0-9]+ / {
        if (!done) { for (i = 1; i <= n; i++) printf "    server cd%d 127.0.0.1:%s\n", i, p[i + 1]; done = 1 }
        next
    }
    { print }
' "$ROOT/contrib/haproxy/haproxy.cfg" >"$CFG"
"$HAPROXY" -c -q -f "$CFG" >&2 || { log "haproxy rejects $CFG"; exit 1; }
"$HAPROXY" -db -f "$CFG" >"$WORK/haproxy.log" 2>&1 &
HAPROXY_PID=$!
wait_listening "$FRONT" 5 || { log "haproxy did not listen; its log:"; tail -5 "$WORK/haproxy.log" >&2; exit 1; }
for i in $(seq 1 "$INSTANCES"); do
    wait_up "$i" 10 || { log "haproxy never saw instance $i up"; exit 1; }
done

# Can this binary upgrade in place? (Builds before the SIGUSR2 upgrade cannot.)
if [ "$UPGRADES" -gt 0 ] && ! "$BIN" --help 2>&1 | grep -qiE 'SIGUSR2|upgrade'; then
    log "note: $BIN --help mentions no SIGUSR2 upgrade; skipping upgrades"
    UPGRADES=0
fi

# The load: fast and slow clients for the whole run, one connection per
# request; every request that does not get a complete 200 counts as failed.
python3 - "$FRONT" "$SECONDS_TOTAL" >"$WORK/client.out" 2>"$WORK/client.err" <<'EOF' &
import socket, sys, threading, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
lock = threading.Lock()
counts = {"answered": 0, "failed": 0}
errors = {}

def one(path):
    req = ("GET %s HTTP/1.1\r\nHost: conn-daemon\r\nConnection: close\r\n\r\n" % path).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req)
        data = s.makefile("rb").read()
    if not data.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError("status: %r" % data[:40])

def client(path):
    while time.monotonic() < end:
        try:
            one(path)
            key = "answered"
        except Exception as e:
            key = "failed"
            with lock:
                name = type(e).__name__ + ": " + str(e)[:60]
                errors[name] = errors.get(name, 0) + 1
        with lock:
            counts[key] += 1

threads = [threading.Thread(target=client, args=(p,)) for p in ["/test/fast"] * 4 + ["/test/slow"] * 4]
for t in threads:
    t.start()
for t in threads:
    t.join()
for name, n in sorted(errors.items(), key=lambda kv: -kv[1]):
    print("client error x%d: %s" % (n, name), file=sys.stderr)
print(counts["answered"], counts["failed"])
EOF
CLIENT_PID=$!

# Pace the restarts (and upgrades) evenly over the run, leaving the last
# slice for the load alone.
STEPS=$((INSTANCES + UPGRADES + 1))
PAUSE=$(python3 -c "print(max(0.5, $SECONDS_TOTAL / $STEPS - 1.5))")
RESTARTS=0
DONE_UPGRADES=0

for i in $(seq 1 "$INSTANCES"); do
    sleep "$PAUSE"
    old=${PID[i]}
    log "restart $i/$INSTANCES: SIGTERM to pid $old (port ${PORT[i]})"
    kill -TERM "$old"
    # The drain is bounded by --shutdown-timeout (5 s): 8 s is a failure.
    end=$((SECONDS + 8))
    while kill -0 "$old" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.02; done
    if kill -0 "$old" 2>/dev/null; then log "pid $old still running 8 s after SIGTERM"; exit 1; fi
    status=0
    wait "$old" || status=$?
    [ "$status" = 0 ] || { log "pid $old exited $status after SIGTERM; its log:"; tail -5 "$WORK/cd$i.log" >&2; exit 1; }
    start_instance "$i"
    wait_up "$i" 10 || { log "haproxy never saw restarted instance $i up"; exit 1; }
    RESTARTS=$((RESTARTS + 1))
done

# The pid now listening on port $1, other than $2 (pid file first, else ss).
new_listener() {
    local port=$1 old=$2 i=$3 p=""
    if [ "$PID_FILE_OPT" = 1 ] && [ -f "$WORK/cd$i.pid" ]; then
        p=$(cat "$WORK/cd$i.pid" 2>/dev/null || true)
    fi
    if [ -z "$p" ] || [ "$p" = "$old" ]; then
        p=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | grep -vx "$old" | head -1 || true)
    fi
    [ -n "$p" ] && [ "$p" != "$old" ] && echo "$p"
}

for u in $(seq 1 "$UPGRADES"); do
    [ "$u" -le "$INSTANCES" ] || break
    sleep "$PAUSE"
    old=${PID[u]}
    log "upgrade $u/$UPGRADES: SIGUSR2 to pid $old (port ${PORT[u]})"
    kill -USR2 "$old"
    new=""
    end=$((SECONDS + 5))
    while [ -z "$new" ] && [ $SECONDS -lt $end ]; do
        new=$(new_listener "${PORT[u]}" "$old" "$u" || true)
        [ -n "$new" ] || sleep 0.05
    done
    if [ -z "$new" ]; then
        log "note: no new process listened on ${PORT[u]} within 5 s of SIGUSR2; counting no upgrade"
        continue
    fi
    # The old process drains and exits 0; the new one is not our child, so
    # it is tracked (and stopped at the end) by pid.
    end=$((SECONDS + 8))
    while kill -0 "$old" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.02; done
    if kill -0 "$old" 2>/dev/null; then log "old pid $old still running 8 s after SIGUSR2"; exit 1; fi
    status=0
    wait "$old" || status=$?
    [ "$status" = 0 ] || { log "old pid $old exited $status after the upgrade"; exit 1; }
    PID[u]=$new
    wait_up "$u" 10 || { log "haproxy never saw upgraded instance $u up"; exit 1; }
    DONE_UPGRADES=$((DONE_UPGRADES + 1))
done

wait "$CLIENT_PID" || { log "the load client failed:"; cat "$WORK/client.err" >&2; exit 1; }
CLIENT_PID=""
cat "$WORK/client.err" >&2
read -r ANSWERED FAILED <"$WORK/client.out"
echo "scale-out: $ANSWERED answered, $FAILED failed, $RESTARTS restarts, $DONE_UPGRADES upgrades"
[ "$FAILED" = 0 ] && [ "$RESTARTS" = "$INSTANCES" ]
