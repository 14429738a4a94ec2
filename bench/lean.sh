#!/usr/bin/env bash
# bench/lean.sh: conn-daemon's leanness (issue items 2-6) side by side with nginx
# and a bare "eager" C loop (bench/eager.c), printed as one Markdown table.
#
#   bench/lean.sh > bench/lean-results.md      (progress goes to stderr)
#
# Needs Debian's apache2-utils (ab), nginx-light (or any nginx), strace,
# valgrind, gcc, python3 and util-linux (taskset); promtool (Debian's prometheus)
# is optional and checks the --metrics output. See bench/README.md for what
# each row measures and how. Every server listens on 0.0.0.0 (conn-daemon always
# does) but only ever gets traffic on 127.0.0.1. Runs in about 3-6 minutes.
#
# Knobs (environment): CONN_DAEMON (binary; default target/release/conn-daemon,
# built if missing), LEAN_PORT_BASE (first port tried, default 18700),
# LEAN_ROUNDS (CPU rounds, 5), LEAN_CPU_REQS (20000), LEAN_SYS_REQS (2000),
# LEAN_CG_REQS (2000), LEAN_HOLD (10000), LEAN_CONC (ab -c, 50),
# LEAN_KEEP=1 keeps the scratch directory.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
ROUNDS=${LEAN_ROUNDS:-5}
CPU_REQS=${LEAN_CPU_REQS:-20000}
SYS_REQS=${LEAN_SYS_REQS:-2000}
CG_REQS=${LEAN_CG_REQS:-2000}
HOLD=${LEAN_HOLD:-10000}
CONC=${LEAN_CONC:-50}
PORT_BASE=${LEAN_PORT_BASE:-18700}
CD_BIN=${CONN_DAEMON:-$ROOT/target/release/conn-daemon}

log() { printf '[lean %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- prerequisites -----------------------------------------------------------
missing=()
for pair in ab:apache2-utils nginx:nginx-light strace:strace valgrind:valgrind \
            callgrind_annotate:valgrind cc:gcc python3:python3 taskset:util-linux; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin command -v "$cmd" >/dev/null 2>&1 \
        || missing+=("$pkg")
done
export PATH=$PATH:/usr/sbin
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    die "missing tools; install them with: apt-get install -y ${missing[*]}"
fi
[[ -f $HERE/eager.c ]] || die "bench/eager.c not found"
if [[ ! -x $CD_BIN ]]; then
    log "building conn-daemon (cargo build --release)"
    (cd "$ROOT" && cargo build --release >&2)
fi
[[ -x $CD_BIN ]] || die "no conn-daemon binary at $CD_BIN"

# Room for 10,000 held connections (and, where the hard limit allows, for
# conn-daemon's default CPUs x 100,000; raising the hard limit needs CAP_SYS_RESOURCE).
ulimit -Hn 262144 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) >= HOLD + 200)) || die "ulimit -n is $(ulimit -n); need $((HOLD + 200)) (run as root)"

NCPU=$(nproc)
if ((NCPU > 1)); then SRV=(taskset -c 0); CLI=(taskset -c 1); else SRV=(); CLI=(); fi

# --- scratch dir, process bookkeeping, cleanup --------------------------------
TMP=$(mktemp -d /tmp/lean.XXXXXX)
: >"$TMP/pids"
cleanup() {
    local pid
    while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$TMP/pids"
    sleep 0.3
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$TMP/pids"
    wait 2>/dev/null || true
    if [[ ${LEAN_KEEP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Ports: the first 5 consecutive ports from PORT_BASE that no socket uses (any state).
port_used() {
    local hex
    hex=$(printf ':%04X ' "$1")
    grep -q "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
p=$PORT_BASE
while port_used $p || port_used $((p + 1)) || port_used $((p + 2)) || port_used $((p + 3)) \
    || port_used $((p + 4)); do
    p=$((p + 5)); ((p < PORT_BASE + 1000)) || die "no free ports from $PORT_BASE"
done
# cdm: conn-daemon with --metrics (row 6c), its metrics listener on port mx.
declare -A PORT=([cd]=$p [ng]=$((p + 1)) [eg]=$((p + 2)) [cdm]=$((p + 3)) [mx]=$((p + 4)))

cc -O2 -Wall -o "$TMP/eager" "$HERE/eager.c"
# A private copy: a rebuild in the shared target/ during the run cannot mix binaries.
CD_SRC=$CD_BIN
cp "$CD_BIN" "$TMP/conn-daemon"
CD_BIN=$TMP/conn-daemon
CD_SUM=$(sha256sum "$CD_BIN" | cut -c1-12)
CD_DATE=$(date -u -r "$CD_SRC" '+%Y-%m-%d %H:%M:%S UTC')

# nginx: the repo's template with {port}/{dir} substituted (nginx.conf belongs to
# another file owner; a minimal stand-in is written only if it is missing).
NG_TEMPLATE=$HERE/nginx.conf
if [[ ! -f $NG_TEMPLATE ]]; then
    log "warning: bench/nginx.conf missing; using a minimal stand-in"
    NG_TEMPLATE=$TMP/nginx.template
    cat >"$NG_TEMPLATE" <<'EOF'
daemon off;
master_process on;
worker_processes 1;
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_timeout 0; server_tokens off;
    client_body_temp_path "{dir}/client_body"; proxy_temp_path "{dir}/proxy";
    fastcgi_temp_path "{dir}/fastcgi"; uwsgi_temp_path "{dir}/uwsgi"; scgi_temp_path "{dir}/scgi";
    server {
        listen 127.0.0.1:{port} backlog=4096;
        location = /test/fast { default_type ""; return 200; }
        location / { return 404; }
    }
}
EOF
fi
NG_DIR=$TMP/nginx
mkdir -p "$NG_DIR"
sed -e "s|{port}|${PORT[ng]}|g" -e "s|{dir}|$NG_DIR|g" "$NG_TEMPLATE" >"$NG_DIR/nginx.conf"
# 10k row only: nginx must be allowed to hold 10,000 connections to be compared.
sed -E "s/worker_connections +[0-9]+;/worker_connections $((HOLD + 1000));/" \
    "$NG_DIR/nginx.conf" >"$NG_DIR/nginx-hold.conf"
# callgrind row: one process (valgrind --trace-children=no would miss the worker).
sed -E "s/^( *)master_process +on;/\1master_process off;/" "$NG_DIR/nginx.conf" >"$NG_DIR/nginx-cg.conf"
grep -q "worker_connections $((HOLD + 1000));" "$NG_DIR/nginx-hold.conf" || die "cannot raise worker_connections"
grep -q "master_process off;" "$NG_DIR/nginx-cg.conf" || die "cannot set master_process off"
nginx -t -c "$NG_DIR/nginx.conf" -p "$NG_DIR/" -e "$NG_DIR/error.log" >/dev/null 2>&1 \
    || { nginx -t -c "$NG_DIR/nginx.conf" -p "$NG_DIR/" -e "$NG_DIR/error.log" >&2 || true; die "nginx config does not load"; }

# Command lines. cd = conn-daemon with one accept thread (and so one worker), cdd =
# conn-daemon with default options (accept threads = CPUs, capacity 100000).
srv_cmd() { # NAME [conf] -> CMD array
    case $1 in
        cd) CMD=("$CD_BIN" -p "${PORT[cd]}" -A 1) ;;
        cdm) CMD=("$CD_BIN" -p "${PORT[cdm]}" -A 1 --metrics "127.0.0.1:${PORT[mx]}") ;;
        cdd) CMD=("$CD_BIN" -p "${PORT[cd]}") ;;
        ng) CMD=(nginx -c "$NG_DIR/${2:-nginx.conf}" -p "$NG_DIR/" -e "$NG_DIR/error.log") ;;
        eg) CMD=("$TMP/eager" "${PORT[eg]}") ;;
    esac
}
port_of() { case $1 in cd | cdd) echo "${PORT[cd]}" ;; *) echo "${PORT[$1]}" ;; esac; }

# --- helpers -----------------------------------------------------------------
cat >"$TMP/helper.py" <<'PY'
import errno, os, selectors, signal, socket, statistics, sys, time

def rss_kb(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total

def sockets(pids):
    n = 0
    for pid in pids:
        d = f"/proc/{pid}/fd"
        for fd in os.listdir(d):
            try:
                if os.readlink(f"{d}/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    return n

def startup(port, runs, pidfile, cmd):
    """exec -> first successful connect to 127.0.0.1:port, polling every 1 ms."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        quiet = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
        pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=quiet)
        with open(pidfile, "a") as f:
            f.write(f"{pid}\n")
        while True:
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", port))
                t = time.perf_counter() - t0
                s.close()
                break
            except OSError:
                s.close()
                if os.waitpid(pid, os.WNOHANG)[0] or time.perf_counter() - t0 > 20:
                    sys.exit(f"startup: {cmd[0]} died or never listened")
                time.sleep(0.001)
        times.append(t * 1000)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while not os.waitpid(pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        time.sleep(0.2)
    print(f"{statistics.median(times):.1f} " + ",".join(f"{t:.1f}" for t in times))

def hold(port, n, pids):
    """Open n connections that each send a partial request, measure, close them."""
    base = sockets(pids)
    req = b"GET /test/fast HTTP/1.0\r\n"
    sel = selectors.DefaultSelector()
    socks, sent, failed = [], 0, 0
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        socks.append(s)
        err = s.connect_ex(("127.0.0.1", port))
        if err == 0:
            s.send(req)
            sent += 1
        elif err == errno.EINPROGRESS:
            sel.register(s, selectors.EVENT_WRITE)
        else:
            failed += 1
    deadline = time.monotonic() + 10
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            sel.unregister(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    s.send(req)
                    sent += 1
                except OSError:
                    failed += 1
            else:
                failed += 1
    # Let the server take them: wait until its socket count stops growing.
    last, stable, deadline = -1, 0, time.monotonic() + 10
    while time.monotonic() < deadline and stable < 5:
        cur = sockets(pids)
        stable = stable + 1 if cur == last else 0
        last = cur
        if cur - base >= sent:
            break
        time.sleep(0.1)
    time.sleep(0.2)
    rss, held = rss_kb(pids), sockets(pids) - base
    for s in socks:
        s.close()
    print(f"{rss} {held} {sent}")

def cg_top(idle_file, load_file, n, top):
    """Per-request Ir by function: callgrind_annotate (loaded run) minus (idle run)."""
    import re
    pat = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$")
    def parse(path):
        out = {}
        with open(path) as f:
            for line in f:
                m = pat.match(line)
                if m and ":" in m.group(2):
                    key = m.group(2).strip()
                    out[key] = out.get(key, 0) + int(m.group(1).replace(",", ""))
        return out
    a, b = parse(idle_file), parse(load_file)
    delta = {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}
    total = sum(delta.values())
    print(f"| Ir/request | share | function |\n|---:|---:|---|")
    for k, v in sorted(delta.items(), key=lambda kv: -kv[1])[:top]:
        k = re.sub(r"\s*\[[^\]]*\]$", "", k)
        print(f"| {v / n:.0f} | {100 * v / total if total else 0:.1f}% | `{k[:110]}` |")

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "startup":
        startup(int(args[0]), int(args[1]), args[2], args[3:])
    elif cmd == "hold":
        hold(int(args[0]), int(args[1]), [int(p) for p in args[2:]])
    elif cmd == "rss":
        print(rss_kb([int(p) for p in args]))
    elif cmd == "cgtop":
        cg_top(args[0], args[1], int(args[2]), int(args[3]))
PY
HELPER=(python3 "$TMP/helper.py")

# Starts NAME (cd/cdd/ng/eg) in the background; sets SPID (the process; nginx's
# master) and SPIDS (all its processes: nginx master + worker).
# Usage: start NAME [pin] [wrapper...]   pin: 1 = on CPU 0, 0 = unpinned
start() {
    local name=$1 pin=${2:-1} conf=nginx.conf
    shift 2 || shift $#
    [[ $name == ng && -n ${NG_CONF:-} ]] && conf=$NG_CONF
    srv_cmd "$name" "$conf"
    local pre=()
    ((pin)) && pre=("${SRV[@]}")
    "${pre[@]}" "$@" "${CMD[@]}" >"$TMP/$name.out" 2>&1 &
    SPID=$!
    echo "$SPID" >>"$TMP/pids"
    wait_port "$(port_of "$name")" "${WAIT_S:-10}" || { cat "$TMP/$name.out" >&2; die "$name did not listen"; }
    SPIDS=("$SPID")
    if [[ $name == ng && $conf != nginx-cg.conf ]]; then
        local kids="" i
        for i in $(seq 100); do
            kids=$(children "$SPID")
            [[ -n $kids ]] && break
            sleep 0.05
        done
        [[ -n $kids ]] || die "nginx worker did not start"
        SPIDS+=($kids)
    fi
}
children() { # PIDs whose parent is $1
    local f
    if [[ -r /proc/$1/task/$1/children ]]; then
        cat /proc/"$1"/task/*/children 2>/dev/null || true
        return
    fi
    for f in /proc/[0-9]*/status; do
        awk -v p="$1" '$1 == "PPid:" && $2 == p { split(FILENAME, a, "/"); print a[3] }' "$f" 2>/dev/null || true
    done
}
wait_port() { # PORT TIMEOUT_S
    local end=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.01
    done
}
stop() { # PID: SIGTERM, wait (valgrind may need a while to write), then SIGKILL
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 300); do
        [[ -d /proc/$pid ]] && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cpu_ns() { # "on-CPU ns (user+system)  run-queue wait ns" of all threads of the given processes
    local pid t=0 w=0 v vw
    for pid in "$@"; do
        read -r v vw < <(cat /proc/"$pid"/task/*/schedstat | awk '{s += $1; w += $2} END {printf "%.0f %.0f\n", s, w}')
        t=$((t + v)) w=$((w + vw))
    done
    echo "$t $w"
}
cpu_ticks() { # "utime stime" (clock ticks) from /proc/PID/stat, all threads, summed
    local pid u=0 s=0 pu ps
    for pid in "$@"; do
        read -r pu ps < <(sed 's/.*) //' /proc/"$pid"/stat | awk '{print $12, $13}')
        u=$((u + pu)) s=$((s + ps))
    done
    echo "$u $s"
}
run_ab() { # PORT N OUTFILE: ab on CPU 1 (under ${AB_PRE[@]}); warns unless every request got a 2xx
    "${AB_PRE[@]}" "${CLI[@]}" ab -r -q -n "$2" -c "$CONC" "http://127.0.0.1:$1/test/fast" >"$3" 2>&1 || true
    local done failed non2xx
    done=$(awk '/^Complete requests:/ {print $3}' "$3")
    failed=$(awk '/^Failed requests:/ {print $3}' "$3")
    non2xx=$(awk '/^Non-2xx responses:/ {print $3}' "$3")
    if [[ ${done:-0} != "$2" || ${failed:-1} != 0 || -n $non2xx ]]; then
        log "warning: ab on port $1: complete=${done:-?} failed=${failed:-?} non2xx=${non2xx:-0}"
        echo "ab port $1: complete=${done:-?}/$2 failed=${failed:-?} non2xx=${non2xx:-0}" >>"$TMP/warnings"
    fi
}
scrape() { # OUTFILE: one GET /metrics from conn-daemon --metrics; the body into OUTFILE
    exec 4<>"/dev/tcp/127.0.0.1/${PORT[mx]}"
    printf 'GET /metrics HTTP/1.1\r\nHost: lean\r\n\r\n' >&4
    sed '1,/^\r$/d' <&4 >"$1"
    exec 4>&-
}
AB_PRE=()
declare -A R
fdiv() { awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN { if (b == 0) print "n/a"; else printf f, a / b }'; }

# Optional: perf (Debian's linux-perf) counts syscalls without slowing the servers.
PERF_OK=0
PERF_EVENTS=raw_syscalls:sys_enter
if command -v perf >/dev/null 2>&1 && perf stat -x, -e "$PERF_EVENTS" -o /dev/null -- true >/dev/null 2>&1; then
    PERF_OK=1
    more=raw_syscalls:sys_enter
    for sc in accept4 recvfrom read sendto writev close epoll_wait epoll_pwait epoll_ctl; do
        more+=,syscalls:sys_enter_$sc
    done
    perf stat -x, -e "$more" -o /dev/null -- true >/dev/null 2>&1 && PERF_EVENTS=$more
fi

NAMES=(cd ng eg)
# Row 6 also measures conn-daemon with --metrics (row 6c), next to conn-daemon
# without: after it in odd rounds, before it in even ones.
CPU_NAMES=(cd cdm ng eg)
declare -A LABEL=([cd]=conn-daemon [cdd]="conn-daemon (defaults)" [ng]=nginx [eg]="eager loop"
    [cdm]="conn-daemon --metrics")
log "ports ${PORT[cd]} (conn-daemon) ${PORT[ng]} (nginx) ${PORT[eg]} (eager) ${PORT[cdm]} (conn-daemon --metrics, scraped on ${PORT[mx]}); scratch $TMP"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# --- 2. idle RSS ----------------------------------------------------------------
log "idle RSS"
for name in cdd cd ng eg; do
    pin=1
    [[ $name == cdd ]] && pin=0 # defaults: as many accept threads as CPUs
    start "$name" "$pin"
    sleep 1
    R[idle_$name]=$("${HELPER[@]}" rss "${SPIDS[@]}")
    R[threads_$name]=$(ls /proc/"$SPID"/task | wc -l)
    stop "$SPID"
done

# --- 4. start-up --------------------------------------------------------------
log "start-up (exec -> first connect, median of 5)"
for name in cdd ng eg; do
    srv_cmd "$name"
    read -r R[start_$name] R[startall_$name] < <("${HELPER[@]}" startup "$(port_of $name)" 5 "$TMP/pids" "${CMD[@]}")
done

# --- 3. RSS with $HOLD connections open ------------------------------------------
log "RSS with $HOLD connections open"
for name in cd ng eg; do
    NG_CONF=nginx-hold.conf start "$name"
    sleep 0.5
    read -r R[hold_$name] R[held_$name] R[sent_$name] < <("${CLI[@]}" "${HELPER[@]}" hold "$(port_of $name)" "$HOLD" "${SPIDS[@]}")
    stop "$SPID"
    sleep 0.5
done

# --- 5. syscalls per request (strace attached after start-up) --------------------
log "syscalls per request (strace -c -f, $SYS_REQS requests)"
for name in cd ng eg; do
    start "$name"
    sargs=()
    for pid in "${SPIDS[@]}"; do sargs+=(-p "$pid"); done
    strace -c -f -o "$TMP/strace.$name" "${sargs[@]}" 2>"$TMP/strace.$name.err" &
    spid=$!
    echo "$spid" >>"$TMP/pids"
    for i in $(seq 100); do
        (($(grep -c attached "$TMP/strace.$name.err" || true) >= ${#SPIDS[@]})) && break
        sleep 0.05
    done
    sleep 0.3
    run_ab "$(port_of $name)" "$SYS_REQS" "$TMP/ab.strace.$name"
    sleep 0.3
    kill -INT "$spid"
    wait "$spid" 2>/dev/null || true
    stop "$SPID"
    calls=$(awk '$NF == "total" {print $4}' "$TMP/strace.$name")
    R[sys_$name]=$(fdiv "${calls:-0}" "$SYS_REQS")
done

# --- 6a. CPU per request ---------------------------------------------------------
log "CPU per request ($ROUNDS rounds x $CPU_REQS requests, ab -c $CONC, alternating)"
declare -A CPIDS
for name in "${CPU_NAMES[@]}"; do
    start "$name"
    CPIDS[$name]="${SPIDS[*]}"
    run_ab "$(port_of $name)" 2000 "$TMP/ab.warm.$name" # warm-up
done
for r in $(seq "$ROUNDS"); do
    order=("${CPU_NAMES[@]}")
    ((r % 2)) || order=(cdm cd "${NAMES[@]:1}")
    for name in "${order[@]}"; do
        read -ra pids <<<"${CPIDS[$name]}"
        read -r a wa < <(cpu_ns "${pids[@]}")
        read -r ua sa < <(cpu_ticks "${pids[@]}")
        # A scrape per round (Prometheus scrapes every 15 s; a round lasts ~1-2 s).
        [[ $name == cdm ]] && scrape "$TMP/scrape.$r"
        run_ab "$(port_of $name)" "$CPU_REQS" "$TMP/ab.cpu.$name.$r"
        read -r b wb < <(cpu_ns "${pids[@]}")
        read -r ub sb < <(cpu_ticks "${pids[@]}")
        echo "$(fdiv $((b - a)) $((CPU_REQS * 1000)) %.2f)" >>"$TMP/cpu.$name"
        echo "$(fdiv $((wb - wa)) $((CPU_REQS * 1000)) %.1f)" >>"$TMP/wait.$name"
        echo "$(fdiv $(((ub - ua + sb - sa) * 1000000)) $((CPU_REQS * $(getconf CLK_TCK))) %.1f)" >>"$TMP/ticks.$name"
        echo "$((ub - ua)) $((sb - sa))" >>"$TMP/usersys.$name"
        awk '/^Requests per second:/ {printf "%.0f\n", $4}' "$TMP/ab.cpu.$name.$r" >>"$TMP/rps.$name"
    done
done
# 5b. the same servers, unobserved by strace: perf counts syscall entries (if allowed).
for name in "${NAMES[@]}"; do
    R[psys_$name]=n/a
    ((PERF_OK)) || continue
    read -ra pids <<<"${CPIDS[$name]}"
    AB_PRE=(perf stat -x, -e "$PERF_EVENTS" -p "$(IFS=,; echo "${pids[*]}")" -o "$TMP/perf.$name" --)
    run_ab "$(port_of $name)" "$CPU_REQS" "$TMP/ab.perf.$name"
    AB_PRE=()
    calls=$(awk -F, '$3 == "raw_syscalls:sys_enter" {print $1}' "$TMP/perf.$name")
    [[ $calls =~ ^[0-9]+$ ]] && R[psys_$name]=$(fdiv "$calls" "$CPU_REQS")
done
scrape "$TMP/scrape.last"
for name in "${CPU_NAMES[@]}"; do
    read -ra pids <<<"${CPIDS[$name]}"
    stop "${pids[0]}"
    R[cpu_$name]=$(sort -g "$TMP/cpu.$name" | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')
done

# --- 6b. user-space instructions per request (callgrind) --------------------------
log "callgrind: idle start/stop and $CG_REQS requests per server"
for name in "${CPU_NAMES[@]}"; do
    for run in idle load; do
        out=$TMP/cg.$name.$run
        WAIT_S=120 NG_CONF=nginx-cg.conf start "$name" 1 \
            valgrind --tool=callgrind --trace-children=no --callgrind-out-file="$out" --log-file="$out.log"
        sleep 0.5
        [[ $run == load ]] && run_ab "$(port_of $name)" "$CG_REQS" "$TMP/ab.cg.$name"
        stop "$SPID"
        ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$out" 2>/dev/null || true)
        [[ -n $ir ]] || { log "warning: no callgrind total for $name ($run)"; ir=0; }
        R[ir_${name}_$run]=$ir
        callgrind_annotate --threshold=100 "$out" >"$out.txt" 2>/dev/null || true
    done
    R[ir_$name]=$(fdiv $((R[ir_${name}_load] - R[ir_${name}_idle])) "$CG_REQS" %.0f)
done

# --- the table ---------------------------------------------------------------------
mb() { fdiv "$1" 1024 %.1f; }
ratio() { # A B [FORMAT] -> "x.xx" (A/B)
    awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf f, a / b }'
}
verdict() { # VALUE OP LIMIT -> met / MISSED by N% (OP: le/lt)
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (v == "n/a") { print "n/a"; exit }
        ok = (op == "lt") ? (v < l) : (v <= l)
        if (ok) print "met"; else printf "**missed** (+%.0f%%)", 100 * (v - l) / l }'
}
both() { # two verdicts -> one
    if [[ $1 == met && $2 == met ]]; then echo met
    elif [[ $1 == met ]]; then echo "$2 vs eager"
    elif [[ $2 == met ]]; then echo "$1 vs nginx"
    else echo "$1 vs nginx, $2 vs eager"; fi
}

cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "# conn-daemon leanness benchmark (bench/lean.sh)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: nproc $NCPU, kernel $(uname -r), CPU ${cpu_model:-unknown}, $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)"
echo "- load average before / after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- conn-daemon: ${CD_SRC#"$ROOT"/} built $CD_DATE, sha256 $CD_SUM (HEAD $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && [[ -n $(git status --porcelain 2>/dev/null) ]] && echo ', uncommitted changes in the tree'))"
echo "- $(nginx -v 2>&1 | tr -d '\n'), $(ab -V | head -1 | sed 's/This is //; s/, Version/ version/'), $(strace -V | head -1), $(valgrind --version), $(cc --version | head -1)"
echo "- open files limit (soft/hard) for every server: $(ulimit -n)/$(ulimit -Hn)"
echo "- pinning: $( ((NCPU > 1)) && echo 'servers on CPU 0, ab and the connection holder on CPU 1 (taskset)' || echo 'none (1 CPU)'); ab -c $CONC; ports ${PORT[cd]}-${PORT[eg]} (traffic on 127.0.0.1 only)"
echo
echo "| metric | conn-daemon | nginx | eager loop | conn-daemon / nginx | conn-daemon / eager | target | verdict |"
echo "|---|---:|---:|---:|---:|---:|---|---|"
echo "| 2. idle RSS, default options (MB) | $(mb "${R[idle_cdd]}") | $(mb "${R[idle_ng]}") | $(mb "${R[idle_eg]}") | $(ratio "${R[idle_cdd]}" "${R[idle_ng]}") | $(ratio "${R[idle_cdd]}" "${R[idle_eg]}") | < 16 MB | $(verdict "$(mb "${R[idle_cdd]}")" lt 16) |"
echo "| 2b. idle RSS, \`-A 1\` (MB) | $(mb "${R[idle_cd]}") | $(mb "${R[idle_ng]}") | $(mb "${R[idle_eg]}") | $(ratio "${R[idle_cd]}" "${R[idle_ng]}") | $(ratio "${R[idle_cd]}" "${R[idle_eg]}") | (info) | |"
echo "| 3. RSS with $HOLD connections open (MB) | $(mb "${R[hold_cd]}") | $(mb "${R[hold_ng]}") | $(mb "${R[hold_eg]}") | $(ratio "${R[hold_cd]}" "${R[hold_ng]}") | $(ratio "${R[hold_cd]}" "${R[hold_eg]}") | < 64 MB | $(verdict "$(mb "${R[hold_cd]}")" lt 64) |"
echo "| 3b. connections the server held for row 3 | ${R[held_cd]} | ${R[held_ng]} | ${R[held_eg]} | | | $HOLD | $( ((R[held_cd] >= HOLD)) && echo met || echo '**not all held**') |"
echo "| 4. exec to first connect, default options (ms, median of 5) | ${R[start_cdd]} | ${R[start_ng]} | ${R[start_eg]} | $(ratio "${R[start_cdd]}" "${R[start_ng]}") | $(ratio "${R[start_cdd]}" "${R[start_eg]}") | <= 50 ms | $(verdict "${R[start_cdd]}" le 50) |"
echo "| 5. syscalls per request (strace -c -f, $SYS_REQS req) | ${R[sys_cd]} | ${R[sys_ng]} | ${R[sys_eg]} | $(ratio "${R[sys_cd]}" "${R[sys_ng]}") | $(ratio "${R[sys_cd]}" "${R[sys_eg]}") | <= 4.5 | $(verdict "${R[sys_cd]}" le 4.5) |"
echo "| 5b. syscalls per request, unobserved (perf stat, $CPU_REQS req) | ${R[psys_cd]} | ${R[psys_ng]} | ${R[psys_eg]} | $(ratio "${R[psys_cd]}" "${R[psys_ng]}") | $(ratio "${R[psys_cd]}" "${R[psys_eg]}") | (info; <= 4.5) | $(verdict "${R[psys_cd]}" le 4.5) |"
rn=$(ratio "${R[cpu_cd]}" "${R[cpu_ng]}" %.4f) re=$(ratio "${R[cpu_cd]}" "${R[cpu_eg]}" %.4f)
echo "| 6. CPU per request, user+sys, all threads (us, median of $ROUNDS) | ${R[cpu_cd]} | ${R[cpu_ng]} | ${R[cpu_eg]} | $(ratio "${R[cpu_cd]}" "${R[cpu_ng]}") | $(ratio "${R[cpu_cd]}" "${R[cpu_eg]}") | <= 0.70 x nginx and <= 1.10 x eager | $(both "$(verdict "$rn" le 0.70)" "$(verdict "$re" le 1.10)") |"
# On / off per round (the two ran next to each other), and their median.
paste -d' ' "$TMP/cpu.cdm" "$TMP/cpu.cd" | awk '{printf "%.4f\n", $1 / $2}' >"$TMP/onoff"
R[onoff]=$(sort -g "$TMP/onoff" | awk '{v[NR] = $1} END {printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')
echo "| 6c. CPU per fast request, metrics on vs off (us, median of $ROUNDS; \`--metrics\`, scraped once per round) | ${R[cpu_cdm]} (off: ${R[cpu_cd]}) | | | | | on <= 1.03 x off (median of the rounds' on/off) | $(verdict "${R[onoff]}" le 1.03) (${R[onoff]} x; ratio of the medians $(ratio "${R[cpu_cdm]}" "${R[cpu_cd]}" %.3f) x) |"
ri=$(ratio "${R[ir_cd]}" "${R[ir_eg]}" %.4f)
echo "| 6. user-space instructions per request (callgrind, $CG_REQS req) | ${R[ir_cd]} | ${R[ir_ng]} | ${R[ir_eg]} | $(ratio "${R[ir_cd]}" "${R[ir_ng]}") | $(ratio "${R[ir_cd]}" "${R[ir_eg]}") | <= 2 x eager | $(verdict "$ri" le 2) |"
rim=$(ratio "${R[ir_cdm]}" "${R[ir_cd]}" %.4f)
echo "| 6d. user-space instructions per fast request, metrics on vs off (callgrind, $CG_REQS req; deterministic, unlike 6c) | ${R[ir_cdm]} (off: ${R[ir_cd]}) | | | | | on <= 1.03 x off | $(verdict "$rim" le 1.03) ($(ratio "${R[ir_cdm]}" "${R[ir_cd]}" %.3f) x) |"
echo
echo "conn-daemon runs with \`-A 1\` (so 1 accept thread and 1 worker) except in rows 2 and 4 (default options: -A = $NCPU CPUs, -C 100000, unpinned)."
echo "nginx: bench/nginx.conf (1 worker; RSS = master + worker; CPU = master + worker); row 3 raises its worker_connections to $((HOLD + 1000)); callgrind runs it with \`master_process off\`."
echo "The eager loop is single-threaded and blocking: in row 3 it holds one connection and leaves the rest in the kernel's queues."
echo

echo "## Details"
echo
echo "Threads after start-up: conn-daemon defaults ${R[threads_cdd]}, \`-A 1\` ${R[threads_cd]}. RSS in kB: idle defaults ${R[idle_cdd]}, idle -A 1 ${R[idle_cd]}, nginx ${R[idle_ng]}, eager ${R[idle_eg]}; with connections: ${R[hold_cd]} / ${R[hold_ng]} / ${R[hold_eg]} (connections sent a partial request: ${R[sent_cd]} / ${R[sent_ng]} / ${R[sent_eg]})."
echo
echo "Start-up runs (ms): conn-daemon ${R[startall_cdd]}; nginx ${R[startall_ng]}; eager ${R[startall_eg]}."
echo
echo "CPU us/request per round (on-CPU time from /proc/PID/task/*/schedstat; run-queue wait is time the server was runnable but another task had CPU 0, a sign of a busy machine; in brackets utime+stime from /proc/PID/stat, ${CPU_REQS} requests = 1 tick per $(fdiv 1000000 $((CPU_REQS * $(getconf CLK_TCK))) %.1f) us), and ab's requests/s:"
echo
for name in "${CPU_NAMES[@]}"; do
    echo "- ${LABEL[$name]}: $(paste -d' ' "$TMP/cpu.$name" "$TMP/ticks.$name" | awk '{printf "%s%s [%s]", (NR > 1 ? ", " : ""), $1, $2}'); req/s $(paste -sd, "$TMP/rps.$name"); run-queue wait us/request $(paste -sd, "$TMP/wait.$name"); $(awk -v t="$(getconf CLK_TCK)" -v n="$((CPU_REQS * ROUNDS))" '{u += $1; s += $2} END { if (u + s) printf "user %.1f + system %.1f us per request (%.0f%% user, from ticks)", u * 1e6 / t / n, s * 1e6 / t / n, 100 * u / (u + s) }' "$TMP/usersys.$name")"
done
echo
echo "Metrics on / off per round (conn-daemon --metrics right after conn-daemon in odd rounds, right before it in even ones): $(paste -sd, "$TMP/onoff" | sed 's/,/, /g')."
if command -v promtool >/dev/null 2>&1; then
    R[promtool]=$(promtool check metrics <"$TMP/scrape.last" 2>&1 && echo passed || echo "**failed**")
else
    R[promtool]="not run (promtool missing: apt-get install -y prometheus)"
fi
echo "Its last scrape: $(grep -c '^[a-z]' "$TMP/scrape.last") samples, $(wc -c <"$TMP/scrape.last") bytes, \`promtool check metrics\`: $(echo "${R[promtool]}" | paste -sd' '); accepted $(awk '/^conn_daemon_connections_accepted_total/ {s += $2} END {print s}' "$TMP/scrape.last"), fast responses $(awk '/^conn_daemon_responses_total.*kind="fast"/ {s += $2} END {print s}' "$TMP/scrape.last"), closed unanswered $(awk '/^conn_daemon_connections_dropped_total/ {s += $2} END {print s}' "$TMP/scrape.last"), open $(awk '/^conn_daemon_connections_open/ {s += $2} END {print s}' "$TMP/scrape.last") ($((2000 + ROUNDS * CPU_REQS)) requests sent; the readiness probe and the spare connections ab opens but never uses are closed unanswered)."
echo
echo "For scale: the eager loop costs $(ratio "${R[cpu_eg]}" "${R[cpu_ng]}") x nginx's CPU per request here (the issue measured 8.2 / 13.3 = 0.62), so conn-daemon at 0.70 x nginx would need to be $(awk -v e="${R[cpu_eg]}" -v n="${R[cpu_ng]}" 'BEGIN { if (e > 0) printf "%.2f", 0.70 * n / e; else print "n/a" }') x the eager loop."
echo
echo "Callgrind totals (Ir): $(for n in "${CPU_NAMES[@]}"; do printf '%s idle %s, loaded %s; ' "${LABEL[$n]}" "${R[ir_${n}_idle]}" "${R[ir_${n}_load]}"; done)"
echo
echo "### System calls per request by name (strace -c -f, calls / $SYS_REQS)"
for name in "${NAMES[@]}"; do
    echo
    echo "${LABEL[$name]}: $(awk -v n="$SYS_REQS" '$NF != "total" && $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ { printf "%s %.2f%s; ", $NF, $4 / n, ($5 ~ /^[0-9]+$/ && NF == 6) ? " (" sprintf("%.2f", $5 / n) " failed)" : "" }' "$TMP/strace.$name")"
done
if ((PERF_OK)); then
    echo
    echo "### System calls per request without strace (perf stat -e raw_syscalls:sys_enter,syscalls:sys_enter_*, calls / $CPU_REQS)"
    for name in "${NAMES[@]}"; do
        echo
        echo "${LABEL[$name]}: $(awk -F, -v n="$CPU_REQS" '$3 ~ /^syscalls:sys_enter_/ && $1 ~ /^[0-9]+$/ && $1 > 0 { sub("syscalls:sys_enter_", "", $3); printf "%s %.2f; ", $3, $1 / n }' "$TMP/perf.$name")"
    done
fi
echo
echo "### conn-daemon: top functions by user-space instructions per request (callgrind, loaded minus idle run)"
echo
"${HELPER[@]}" cgtop "$TMP/cg.cd.idle.txt" "$TMP/cg.cd.load.txt" "$CG_REQS" 15
echo
echo "### eager loop: top functions (same method)"
echo
"${HELPER[@]}" cgtop "$TMP/cg.eg.idle.txt" "$TMP/cg.eg.load.txt" "$CG_REQS" 8
if [[ -s $TMP/warnings ]]; then
    echo
    echo "### Warnings"
    echo
    sed 's/^/- /' "$TMP/warnings"
fi
log "done"
