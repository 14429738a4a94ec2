#!/bin/bash
# contrib/systemd/check.sh: conn-daemon under a real systemd (PID 1 of new
# namespaces: sandbox.sh), with the units of contrib/systemd as shipped, and,
# given two builds of the Debian package, the package's life cycle.
#
#   check.sh [--binary PATH] [--deb OLD.deb NEW.deb]
#
# Exit status: 0 every check passed; 1 a check failed (the unit's journal is
# printed); 77 systemd cannot boot on this machine (nothing was checked).
#
# The units are installed as shipped, but for one drop-in: the same ExecStart=
# with -D 2000 appended, so that a slow request is still in flight when a stop
# comes. The port stays 9000: the sandbox has a network namespace of its own
# with nothing but its loopback, so no port of the host is touched and no
# packet leaves loopback. Every wait is bounded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$repo/target/release/conn-daemon
deb_old=
deb_new=
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=$2; shift 2;;
    --deb) deb_old=$2; deb_new=$3; shift 3;;
    *) echo "usage: $0 [--binary PATH] [--deb OLD.deb NEW.deb]" >&2; exit 2;;
  esac
done
[ -x "$bin" ] || { echo "check.sh: no binary at $bin (cargo build --release)" >&2; exit 1; }

export SB_DIR=${SB_DIR:-/tmp/conn-daemon-check.$$}
# shellcheck source=contrib/systemd/sandbox.sh
. "$here/sandbox.sh"

PORT=9000
SLOW_MS=2000
UNIT=conn-daemon.service
work=$repo/target/systemd-check
share=$work/share
started=$(date +%s.%N)
checks=0
booted=

log() { printf '%s\n' "$*"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }
section() { printf '\n== %s (at %s s)\n' "$*" "$(elapsed "$started")"; }
pass() { checks=$((checks + 1)); printf '  ok   %s\n' "$*"; }
fail() {
  printf '  FAIL %s\n' "$*"
  if [ -n "$booted" ]; then
    echo "--- journal of conn-daemon (last 60 lines)"
    sb journalctl -u conn-daemon.service -u conn-daemon.socket --no-pager -o short-precise -n 60 || true
    echo "--- systemctl status"
    sb systemctl status --no-pager conn-daemon.service conn-daemon.socket || true
  fi
  exit 1
}
cleanup() {
  local rc=$?
  if [ -n "$booted" ]; then sb_halt >/dev/null || true; fi
  rm -rf "$SB_DIR"
  exit "$rc"
}
trap cleanup EXIT

# wait_for SECONDS WHAT CMD...: polls CMD every 0.1 s until it succeeds.
wait_for() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "$what: not within $secs s"
}
# stop UNIT...: systemctl stop, bounded; its chatter ("can still be activated
# by conn-daemon.socket") only shown when it fails.
stop() { local out; out=$(sb timeout 40 systemctl stop "$@" 2>&1) || fail "systemctl stop $*: $out"; }
prop() { sb systemctl show -p "$1" --value "${2:-$UNIT}"; }
is() { [ "$(prop "$1" "${3:-$UNIT}")" = "$2" ]; }
gone() { ! sb kill -0 "$1" 2>/dev/null; }
differs() { local now; now=$(prop MainPID); [ "$now" != "$1" ] && [ "$now" != 0 ]; }
serving() { is SubState running && is StatusText "serving on 1 address"; }
fast_ok() { sb /srv/share/client.py fast "$PORT" >/dev/null; }
cursor() { sb journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p'; }
journal_since() { sb journalctl -u conn-daemon.service -u conn-daemon.socket --no-pager -o short-precise --after-cursor="$1"; }

# bg_wait PID SECONDS: waits for a background job of ours, bounded; its status.
bg_wait() {
  local pid=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid"; return $?; }
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  fail "a client (pid $pid) still running after $secs s"
}

# The drop-in of the checks: the unit's own ExecStart= (read from $1), -D added.
slow_dropin() {
  local exec
  exec=$(sb grep '^ExecStart=' "$1")
  sb mkdir -p /etc/systemd/system/conn-daemon.service.d
  printf '[Service]\nExecStart=\n%s -D %s\n' "$exec" "$SLOW_MS" \
    | sb tee /etc/systemd/system/conn-daemon.service.d/50-check.conf >/dev/null
}

# install_binary FILE: as an upgrade should, by rename in the same directory.
install_binary() {
  sb install -m 755 "$1" /usr/local/bin/.conn-daemon.new
  sb mv -f /usr/local/bin/.conn-daemon.new /usr/local/bin/conn-daemon
}

# reload_to_new: `systemctl reload`, then waits for the new process to serve
# and the old one to finish its drain. Sets $new to the new main pid.
reload_to_new() {
  local old
  old=$(prop MainPID)
  sb systemctl reload "$UNIT"
  wait_for 20 "a new main process after reload (was $old)" differs "$old"
  wait_for 20 "serving after reload" serving
  new=$(prop MainPID)
  wait_for 20 "the old process $old to drain and exit" gone "$old"
}

# slow_in_flight COUNT NAME: COUNT slow requests in the background (their
# output in $work/NAME.out), returns once all are sent. Sets $slow_pid.
slow_in_flight() {
  sb rm -f "/run/$2.sent"
  sb /srv/share/client.py slow "$PORT" "$1" "/run/$2.sent" >"$work/$2.out" 2>&1 &
  slow_pid=$!
  wait_for 10 "$1 slow requests sent" sb test -e "/run/$2.sent"
  # The requests are complete (sent); give the accept threads a moment to
  # read them and hand them to the workers, well within -D.
  sleep 0.3
}

# The load of a reload check: /test/fast from 8 threads in the background
# until load_check (at most 60 s); $load_pid, output in $work/NAME.out.
load_start() {
  sb rm -f "/run/$1.stop"
  sb /srv/share/client.py load "$PORT" 60 8 "/run/$1.stop" >"$work/$1.out" 2>&1 &
  load_pid=$!
  sleep 1
}
# load_check NAME MIN WHAT: one more second of load, then its count: 0 failed.
load_check() {
  local name=$1 min=$2 what=$3 ok failed
  sleep 1
  kill -0 "$load_pid" 2>/dev/null || fail "$what: the load ended (60 s) before the last step"
  sb touch "/run/$name.stop"
  bg_wait "$load_pid" 30 || fail "$what: the load client failed: $(cat "$work/$name.out")"
  ok=$(sed -n 's/^ok=\([0-9]*\) .*/\1/p' "$work/$name.out")
  failed=$(sed -n 's/.* failed=\([0-9]*\)$/\1/p' "$work/$name.out")
  [ -n "$ok" ] && [ -n "$failed" ] || fail "$what: no result: $(cat "$work/$name.out")"
  [ "$failed" = 0 ] || fail "$what: $failed of $((ok + failed)) requests failed: $(cat "$work/$name.out")"
  [ "$ok" -ge "$min" ] || fail "$what: only $ok requests answered (expected at least $min)"
  pass "$what: $ok requests, 0 failed"
}

# uid, capabilities, no_new_privs, seccomp of the main process.
hardening() {
  local pid=$1 st uid
  st=$(sb cat "/proc/$pid/status")
  uid=$(awk '/^Uid:/ {print $2}' <<<"$st")
  awk '/^Uid:/ {exit !($2 == $3 && $3 == $4 && $4 == $5)}' <<<"$st" || fail "uids differ: $(grep ^Uid <<<"$st")"
  [ "$uid" -ge 61184 ] && [ "$uid" -le 65519 ] || fail "uid $uid is not a dynamic user's (61184-65519)"
  local cap
  for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
    grep -qx "$cap:[[:space:]]*0000000000000000" <<<"$st" || fail "$cap is not empty: $(grep "^$cap" <<<"$st")"
  done
  grep -qx 'NoNewPrivs:[[:space:]]*1' <<<"$st" || fail "no_new_privs is not set"
  grep -qx 'Seccomp:[[:space:]]*2' <<<"$st" || fail "no seccomp filter"
  pass "hardening of pid $pid: dynamic user $uid ($(sb stat -c %U "/proc/$pid")), no capability (Inh/Prm/Eff/Bnd/Amb 0), NoNewPrivs, seccomp filter"
}

rm -rf "$work"
mkdir -p "$share"
cp "$bin" "$share/conn-daemon"
cp "$here/conn-daemon.service" "$here/conn-daemon.socket" "$here/client.py" "$share/"
cp "$repo/contrib/debian/conn-daemon.conf" "$share/"
[ -z "$deb_old" ] || cp "$deb_old" "$share/old.deb"
[ -z "$deb_new" ] || cp "$deb_new" "$share/new.deb"

boot() {
  local rc=0
  SB_SHARE=$share sb_boot || rc=$?
  [ "$rc" = 0 ] || exit "$rc"
  booted=yes
}
halt() { booted=; sb_halt >/dev/null || fail "halting the sandbox"; }

# ---------------------------------------------------------------------------
section "the units of contrib/systemd under systemd"
boot
sb install -m 644 /srv/share/conn-daemon.service /srv/share/conn-daemon.socket /etc/systemd/system/
sb install -D -m 644 /srv/share/conn-daemon.conf /etc/conn-daemon/conn-daemon.conf
install_binary /srv/share/conn-daemon
slow_dropin /etc/systemd/system/conn-daemon.service
sb systemctl daemon-reload
verify=$(sb systemd-analyze verify conn-daemon.socket conn-daemon.service 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
pass "systemd-analyze verify: nothing"

section "socket activation"
sb systemctl start conn-daemon.socket
is ActiveState inactive || fail "the service started with its socket"
listeners=$(sb ss -Hltnp "sport = :$PORT")
[ "$(wc -l <<<"$listeners")" = 1 ] && grep -q '"systemd",pid=1,' <<<"$listeners" \
  || fail "expected one listener on :$PORT, systemd's: $listeners"
pass "the socket listens (systemd's), the service is inactive"
fast_ok || fail "the first connection was not answered with the 57 bytes"
is SubState running || fail "the first connection did not start the service"
listeners=$(sb ss -Hltnp "sport = :$PORT")
[ "$(wc -l <<<"$listeners")" = 1 ] || fail "the service bound a socket of its own: $listeners"
grep -q "\"conn-daemon\",pid=$(prop MainPID),fd=3" <<<"$listeners" \
  || fail "the service does not serve the inherited socket as fd 3: $listeners"
pass "the first connection started the service and got the 57 bytes; it serves systemd's socket (fd 3) and bound none"

section "start through READY=1, status, the 57 bytes, hardening"
stop "$UNIT"
c=$(cursor)
sb timeout 40 systemctl start "$UNIT" || fail "systemctl start"
is SubState running || fail "not running after start"
is StatusText "serving on 1 address" || fail "StatusText: $(prop StatusText)"
journal_since "$c" | grep -q 'Started conn-daemon.service' || fail "no 'Started' in the journal"
pass "Type=notify start returned once READY=1 came: running, StatusText=\"$(prop StatusText)\""
sb systemctl status --no-pager "$UNIT" | grep -qF 'Status: "serving on 1 address"' \
  || fail "systemctl status shows no Status: line"
pass "systemctl status shows Status: \"serving on 1 address\""
fast_ok || fail "GET /test/fast"
pass "GET /test/fast: exactly the 57 bytes"
hardening "$(prop MainPID)"
exposure=$(sb systemd-analyze security --no-pager "$UNIT" | sed -n 's/.*Overall exposure level for conn-daemon.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN {exit !(e <= 2.0)}' \
  || fail "systemd-analyze security: exposure '$exposure' (expected <= 2.0)"
pass "systemd-analyze security: exposure $exposure"

section "stop without a reload drains"
slow_in_flight 3 stop0
stop "$UNIT"
bg_wait "$slow_pid" 30 || fail "stop without reload: $(cat "$work/stop0.out")"
is Result success || fail "Result=$(prop Result)"
pass "stop: $(cat "$work/stop0.out"), Result=success"

section "3 reloads under load"
sb timeout 40 systemctl start "$UNIT"
first=$(prop MainPID)
inv=$(prop InvocationID)
load_start reloads
pid=$first
for n in 1 2 3; do
  install_binary /srv/share/conn-daemon
  reload_to_new
  [ "$(sb cat /run/conn-daemon/conn-daemon.pid)" = "$new" ] || fail "the pid file does not name $new"
  sb test "$(sb readlink "/proc/$new/exe")" = /usr/local/bin/conn-daemon || fail "pid $new is not /usr/local/bin/conn-daemon"
  log "       reload $n: MainPID $pid -> $new"
  pid=$new
  sleep 1
done
load_check reloads 1000 "3 reloads under load"
is NRestarts 0 || fail "NRestarts=$(prop NRestarts)"
is InvocationID "$inv" || fail "the service was restarted, not reloaded"
procs=$(sb cat "/sys/fs/cgroup$(prop ControlGroup)/cgroup.procs")
[ "$procs" = "$pid" ] || fail "the service's cgroup holds $procs, not only MainPID $pid"
[ "$(sb awk '{print $4}' "/proc/$pid/stat")" = 1 ] || fail "pid $pid: its parent is not PID 1"
pass "systemd follows MainPID through 3 reloads ($first -> $pid, not its child), no restart, only MainPID in the cgroup"

section "stop after a reload drains (the defect of issue 20)"
slow_in_flight 3 stop1
c=$(cursor)
t0=$(date +%s.%N)
stop "$UNIT"
bg_wait "$slow_pid" 30 || fail "stop after reload: $(cat "$work/stop1.out")"
is Result success || fail "Result=$(prop Result) after a stop after a reload"
journal_since "$c" | grep -q SIGKILL && fail "SIGKILL in the journal of the stop"
pass "stop after 3 reloads: $(cat "$work/stop1.out"), Result=success, systemctl stop took $(elapsed "$t0") s"
echo "       journal of that stop:"
journal_since "$c" | sed 's/^/         /'

section "a reload to a broken binary keeps serving"
sb timeout 40 systemctl start "$UNIT"
reload_to_new   # a MainPID systemd did not fork
c=$(cursor)
install_binary /bin/false
sb systemctl reload "$UNIT"
wait_for 20 "STATUS 'serving (upgrade failed)'" is StatusText "serving (upgrade failed)"
is MainPID "$new" || fail "MainPID changed to $(prop MainPID)"
is SubState running || fail "SubState=$(prop SubState)"
fast_ok || fail "no answer after a failed upgrade"
journal_since "$c" | grep -q 'upgrade failed: /usr/local/bin/conn-daemon' || fail "no 'upgrade failed' line in the journal"
pass "a reload to /bin/false: MainPID $new still serves, STATUS \"serving (upgrade failed)\", one journal line"
install_binary /srv/share/conn-daemon
reload_to_new
fast_ok || fail "no answer after the upgrade that fixed it"
pass "the next reload to a good binary: MainPID $new"

section "edit the config file, reload: applied; a bad edit is refused"
CONF=/etc/conn-daemon/conn-daemon.conf
# Accept threads other than the main one are named accept-N.
accept_threads() { sb sh -c "cat /proc/$1/task/*/comm" | grep -c '^accept-' || true; }
[ "$(accept_threads "$new")" = 3 ] || fail "pid $new: $(accept_threads "$new") accept threads besides the main one, not 3 (-A 4)"
sb sed -i 's/^accept-threads = 4$/accept-threads = 2/' "$CONF"
sb /usr/local/bin/conn-daemon --config "$CONF" --check-config >/dev/null || fail "--check-config refused the edited file"
reload_to_new
[ "$(accept_threads "$new")" = 1 ] || fail "after the edit to -A 2, pid $new has $(accept_threads "$new") accept threads besides the main one"
fast_ok || fail "no answer after the reload that applied the edit"
pass "accept-threads = 2 in $CONF, systemctl reload: MainPID $new runs 2 accept threads"
line=$(sb grep -n '^accept-threads = 2$' "$CONF" | cut -d: -f1)
sb sed -i 's/^accept-threads = 2$/accept-threads = 0/' "$CONF"
out=$(sb /usr/local/bin/conn-daemon --config "$CONF" --check-config 2>&1) && fail "--check-config accepted accept-threads = 0"
[ "$out" = "conn-daemon: $CONF:$line: invalid value '0' for '--accept-threads <N>': expected a whole number from 1 to 18446744073709551615" ] \
  || fail "--check-config said: $out"
c=$(cursor)
sb systemctl reload "$UNIT"
wait_for 20 "STATUS 'serving (upgrade failed)'" is StatusText "serving (upgrade failed)"
is MainPID "$new" || fail "MainPID changed to $(prop MainPID)"
fast_ok || fail "no answer after a refused config"
journal_since "$c" | grep -qF "]: $CONF:$line: invalid value '0'" || fail "no line naming $CONF:$line in the journal: $(journal_since "$c")"
journal_since "$c" | grep -q 'upgrade failed: .*exited with status 1); still serving' || fail "no 'upgrade failed' line: $(journal_since "$c")"
pass "accept-threads = 0: --check-config and the reload refuse it naming $CONF:$line; MainPID $new serves on"
# priority CONF-TEXT: the PRIORITY of the unit's journal entries that
# contain TEXT since cursor $c, one per line.
priority() {
  sb journalctl -u "$UNIT" --no-pager -o json --after-cursor="$c" \
    | python3 -c 'import json,sys; [print(e.get("PRIORITY")) for e in map(json.loads, sys.stdin) if sys.argv[1] in str(e.get("MESSAGE"))]' "$1"
}
[ "$(priority "$CONF:$line: invalid value")" = 3 ] \
  || fail "the refusal is not at priority 3 (err) in the journal: $(priority "$CONF:$line: invalid value")"
[ "$(priority "upgrade failed:")" = 4 ] || fail "'upgrade failed' is not at priority 4 (warning): $(priority "upgrade failed:")"
[ "$(priority "SIGUSR2: upgrade: started")" = 6 ] || fail "'upgrade: started' is not at priority 6 (info)"
all=$(sb journalctl -u "$UNIT" --no-pager)
grep -q ']: conn-daemon: ' <<<"$all" && fail "journal lines named twice: $(grep ']: conn-daemon: ' <<<"$all" | head -3)"
grep -q 'counters' <<<"$all" && fail "the counters were not shared (seccomp, memfd?): $(grep counters <<<"$all" | head -3)"
pass "the journal has the lines at their priorities (err 3, warning 4, info 6), each named once: conn-daemon[PID]: text"
sb install -m 644 /srv/share/conn-daemon.conf "$CONF"
reload_to_new

section "a crash of a reloaded process restarts it; systemctl kill reaches it"
c=$(cursor)
sb systemctl kill --kill-who=main --signal=SIGKILL "$UNIT"
wait_for 10 "the killed process $new to go" gone "$new"
wait_for 20 "a restart (Restart=on-failure)" is NRestarts 1
wait_for 20 "serving after the restart" serving
fast_ok || fail "no answer after the restart"
journal_since "$c" | grep -q 'Main process exited, code=killed, status=9/KILL' || fail "systemd did not see the crash"
pass "systemctl kill -s KILL --kill-who=main killed reloaded pid $new; systemd saw it and restarted: MainPID $(prop MainPID)"
reload_to_new
sb systemctl kill "$UNIT"
wait_for 30 "the service to drain and end after systemctl kill" is ActiveState inactive
gone "$new" || fail "pid $new still alive"
is Result success || fail "Result=$(prop Result) after systemctl kill (SIGTERM)"
is NRestarts 1 || fail "restarted after a clean exit"
pass "systemctl kill (SIGTERM) reached reloaded pid $new: drained, exit 0, not restarted"
stop conn-daemon.socket
halt

# ---------------------------------------------------------------------------
if [ -n "$deb_old" ]; then
  section "the Debian package: install"
  boot
  # apt's policy-rc.d (exit 101) keeps dpkg from starting services in images.
  if sb test -e /usr/sbin/policy-rc.d; then sb mv /usr/sbin/policy-rc.d /root/; fi
  dpkg-deb --fsys-tarfile "$share/old.deb" | tar -xO ./lib/systemd/system/conn-daemon.service >"$work/pkg.service"
  grep -q '^ExecStart=/usr/bin/conn-daemon ' "$work/pkg.service" || fail "the package's unit does not run /usr/bin/conn-daemon"
  # The drop-in (-D) before dpkg -i, so that the package's first start has it.
  sb mkdir -p /etc/systemd/system/conn-daemon.service.d
  printf '[Service]\nExecStart=\n%s -D %s\n' "$(grep '^ExecStart=' "$work/pkg.service")" "$SLOW_MS" \
    | sb tee /etc/systemd/system/conn-daemon.service.d/50-check.conf >/dev/null
  sb timeout 120 dpkg -i /srv/share/old.deb >"$work/dpkg-i.out" 2>&1 || fail "dpkg -i: $(cat "$work/dpkg-i.out")"
  for u in conn-daemon.socket conn-daemon.service; do
    [ "$(sb systemctl is-enabled "$u")" = enabled ] || fail "$u is not enabled"
    sb systemctl --quiet is-active "$u" || fail "$u is not active"
  done
  serving || fail "not serving after dpkg -i"
  [ "$(sb readlink "/proc/$(prop MainPID)/exe")" = /usr/bin/conn-daemon ] || fail "the service does not run /usr/bin/conn-daemon"
  fast_ok || fail "no answer after dpkg -i"
  pass "dpkg -i $(sb dpkg-query -W -f='${Version}' conn-daemon): socket and service enabled and active, /usr/bin/conn-daemon answers the 57 bytes"
  sb dpkg-query -W -f='${Conffiles}\n' conn-daemon | grep -q '^ /etc/conn-daemon/conn-daemon.conf ' \
    || fail "/etc/conn-daemon/conn-daemon.conf is not a conffile: $(sb dpkg-query -W -f='${Conffiles}' conn-daemon)"
  grep -q -- '--config /etc/conn-daemon/conn-daemon.conf' "$work/pkg.service" || fail "the package's unit does not pass --config"
  pass "/etc/conn-daemon/conn-daemon.conf is a conffile, and the unit passes --config"
  v=$(sb dpkg-query -W -f='${Version}' conn-daemon)
  sb /usr/bin/conn-daemon --version | grep -qF "release build, package $v)" \
    || fail "--version does not name the package $v: $(sb /usr/bin/conn-daemon --version)"
  pass "--version: $(sb /usr/bin/conn-daemon --version)"
  sb zcat /usr/share/man/man8/conn-daemon.8.gz >"$work/man.8"
  for s in NAME SYNOPSIS OPTIONS SIGNALS UPGRADE FILES '"EXIT STATUS"' EXAMPLES; do
    grep -qx ".SH $s" "$work/man.8" || fail "the man page has no $s section"
  done
  sb test -s /usr/share/doc/conn-daemon/copyright || fail "no copyright"
  sb test -s /usr/share/doc/conn-daemon/README.md || fail "no README"
  sb test -s /usr/share/doc/conn-daemon/changelog.Debian.gz || fail "no changelog.Debian.gz"
  for doc in $(sb grep -ho '/usr/share/doc/conn-daemon/docs/[a-z-]*\.md' /lib/systemd/system/conn-daemon.service /lib/systemd/system/conn-daemon.socket); do
    sb test -s "$doc" || fail "the units cite $doc, which the package does not install"
  done
  if sb sh -c 'command -v man' >/dev/null 2>&1; then
    [ "$(sb man -w conn-daemon)" = /usr/share/man/man8/conn-daemon.8.gz ] || fail "man -w conn-daemon: $(sb man -w conn-daemon 2>&1)"
  fi
  pass "man page conn-daemon(8) with SIGNALS, UPGRADE, FILES, EXIT STATUS, EXAMPLES; README, docs the units cite, changelog and copyright in /usr/share/doc"

  section "the Debian package: upgrade with dpkg -i under load"
  old=$(prop MainPID)
  inv=$(prop InvocationID)
  ino_old=$(sb stat -c %i /usr/bin/conn-daemon)
  c=$(cursor)
  load_start upgrade
  sb timeout 120 dpkg -i /srv/share/new.deb >"$work/dpkg-up.out" 2>&1 || fail "dpkg -i (upgrade): $(cat "$work/dpkg-up.out")"
  grep -q 'upgraded without a restart' "$work/dpkg-up.out" || fail "postinst did not report the upgrade: $(cat "$work/dpkg-up.out")"
  wait_for 20 "the old process $old to drain and exit" gone "$old"
  load_check upgrade 1000 "dpkg -i of the newer package under load"
  new=$(prop MainPID)
  [ "$new" != "$old" ] || fail "the same MainPID after the upgrade"
  is InvocationID "$inv" || fail "dpkg -i restarted the service instead of reloading it"
  journal_since "$c" | grep -q 'Reloaded conn-daemon.service' || fail "no reload in the journal"
  journal_since "$c" | grep -qE 'Stopped conn-daemon|Starting conn-daemon' && fail "the upgrade stopped or started the service: $(journal_since "$c")"
  [ "$(sb readlink "/proc/$new/exe")" = /usr/bin/conn-daemon ] || fail "the new process runs $(sb readlink "/proc/$new/exe")"
  ino_new=$(sb stat -c %i /usr/bin/conn-daemon)
  [ "$ino_new" != "$ino_old" ] || fail "dpkg did not replace /usr/bin/conn-daemon"
  [ "$(sb stat -L -c %i "/proc/$new/exe")" = "$ino_new" ] || fail "pid $new does not run the newly unpacked file"
  pass "dpkg -i $(sb dpkg-query -W -f='${Version}' conn-daemon): reloaded, MainPID $old -> $new, same invocation, the newly unpacked /usr/bin/conn-daemon serves"
  sed 's/^/       postinst: /' "$work/dpkg-up.out" | grep 'upgraded'

  section "the Debian package: dpkg -r drains, dpkg -P leaves nothing"
  slow_in_flight 3 remove
  c=$(cursor)
  sb timeout 120 dpkg -r conn-daemon >"$work/dpkg-r.out" 2>&1 || fail "dpkg -r: $(cat "$work/dpkg-r.out")"
  bg_wait "$slow_pid" 30 || fail "dpkg -r: $(cat "$work/remove.out")"
  journal_since "$c" | grep -q 'conn-daemon.service: Deactivated successfully' || fail "no clean stop in the journal: $(journal_since "$c")"
  journal_since "$c" | grep -qE 'SIGKILL|Failed with result' && fail "the stop killed or failed: $(journal_since "$c")"
  [ -z "$(sb ss -Hltn "sport = :$PORT")" ] || fail "something still listens on :$PORT"
  [ -z "$(sb pgrep -x conn-daemon)" ] || fail "conn-daemon still runs"
  pass "dpkg -r with 3 slow requests in flight: $(cat "$work/remove.out"); deactivated successfully, nothing listens"
  sb rm -rf /etc/systemd/system/conn-daemon.service.d   # ours, not the package's
  sb timeout 120 dpkg -P conn-daemon >"$work/dpkg-P.out" 2>&1 || fail "dpkg -P: $(cat "$work/dpkg-P.out")"
  sb systemctl daemon-reload
  st=$(sb dpkg-query -W -f='${db:Status-Status}' conn-daemon 2>/dev/null || true)
  [ -z "$st" ] || [ "$st" = not-installed ] || fail "dpkg still knows conn-daemon: $st"
  while read -r path; do
    sb test ! -e "$path" -a ! -L "$path" || fail "left behind: $path"
  done < <(dpkg-deb -c "$share/new.deb" | awk '$1 !~ /^d/ {sub(/^\./, "", $6); print $6}')
  left=$(sb find /etc /lib/systemd /usr/lib/systemd /var/lib/systemd /var/lib/dpkg/info /run /usr/share/doc /usr/share/man \
    -name '*conn-daemon*' 2>/dev/null || true)
  [ -z "$left" ] || fail "left behind: $left"
  units=$(sb systemctl list-unit-files --no-legend 'conn-daemon*' || true)
  [ -z "$units" ] || fail "systemd still has unit files: $units"
  loaded=$(sb systemctl list-units --all --no-legend 'conn-daemon*' || true)
  [ -z "$loaded" ] || fail "systemd still has units loaded: $loaded"
  pass "dpkg -P: no file of the package, no unit, no enable link, no deb-systemd-helper state, nothing in /run"
  halt
fi

printf '\ncheck.sh: all %d checks passed in %s s\n' "$checks" "$(elapsed "$started")"
