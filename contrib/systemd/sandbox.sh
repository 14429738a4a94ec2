#!/bin/bash
# sandbox.sh: a real systemd as PID 1 of new namespaces, for the checks of
# check.sh, on a machine whose own init need not be systemd.
#
#   sandbox.sh boot | enter CMD... | halt     by hand (state in $SB_DIR)
#   . sandbox.sh; sb_boot; sb CMD...; sb_halt  from a script
#
# systemd runs as PID 1 of new pid/mount/net/uts/ipc/cgroup namespaces, in a
# cgroup of its own (a child of the host's cgroup2 tree), over a throw-away
# overlay of the host's / (inner.sh). Nothing written inside survives sb_halt;
# the inside has its own network namespace with nothing but its own loopback.
# $SB_SHARE is shown read-only at /srv/share inside.
#
# sb_boot returns 77 when this machine cannot run it (not root, no systemd,
# no cgroup2, namespaces refused): the caller reports that as a skip, not a failure.

SB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SB_DIR=${SB_DIR:-/tmp/conn-daemon-check}
SB_PY=/usr/bin/python3

# The host's cgroup2 hierarchy: pure (/sys/fs/cgroup) or hybrid (.../unified).
sb_cgroup_base() {
  local d
  for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
    if [ "$(stat -fc %T "$d" 2>/dev/null)" = cgroup2fs ]; then echo "$d"; return 0; fi
  done
  return 1
}

# Why systemd cannot boot here, on stdout; nothing (and 0) when it can try.
sb_cannot() {
  [ "$(id -u)" = 0 ] || { echo "not root"; return 1; }
  [ -x /lib/systemd/systemd ] || { echo "no /lib/systemd/systemd (apt-get install systemd)"; return 1; }
  local t
  for t in unshare nsenter setpriv mount pivot_root systemctl; do
    command -v "$t" >/dev/null || { echo "no $t"; return 1; }
  done
  [ -x "$SB_PY" ] || { echo "no $SB_PY"; return 1; }
  sb_cgroup_base >/dev/null || { echo "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified"; return 1; }
  unshare --pid --fork --mount --net --uts --ipc --cgroup --mount-proc true 2>/dev/null \
    || { echo "unshare of pid/mount/net/uts/ipc/cgroup namespaces refused"; return 1; }
  return 0
}

# Runs CMD in every namespace of the sandbox's PID 1, with its root and cwd.
sb() { nsenter -t "$(cat "$SB_DIR/init.pid")" -a -r -w -- "$@"; }

sb_descendants() {
  local p c
  for p in "$@"; do
    echo "$p"
    c=$(cat /proc/"$p"/task/*/children 2>/dev/null)
    # shellcheck disable=SC2086 # one pid per word
    [ -z "$c" ] || sb_descendants $c
  done
}

# Boots; waits (bounded: 10 s for PID 1, 30 s for is-system-running).
sb_boot() {
  local why share cg st p
  if ! why=$(sb_cannot); then echo "sandbox: systemd cannot boot here: $why"; return 77; fi
  share=$(cd "${SB_SHARE:?SB_SHARE: the directory to show at /srv/share}" && pwd)
  cg=$(sb_cgroup_base)/$(basename "$SB_DIR")
  mkdir -p "$SB_DIR"
  if [ -s "$SB_DIR/init.pid" ] && kill -0 "$(cat "$SB_DIR/init.pid")" 2>/dev/null; then
    echo "sandbox: already running in $SB_DIR (pid $(cat "$SB_DIR/init.pid"))"; return 1
  fi
  rm -f "$SB_DIR/init.pid" "$SB_DIR/console.log" "$SB_DIR/boot.out"
  mkdir -p "$cg"
  echo "$cg" >"$SB_DIR/cgroup"
  # The shell moves itself into the sandbox's cgroup, then unshares: the new
  # cgroup namespace is rooted there.
  local run="echo \$\$ > $cg/cgroup.procs; exec $SB_PY $SB_HERE/pty_run.py $SB_DIR/console.log \
    unshare --pid --fork --mount --net --uts --ipc --cgroup --mount-proc $SB_HERE/inner.sh"
  SB_DIR=$SB_DIR SB_SHARE=$share setsid bash -c "$run" </dev/null >"$SB_DIR/boot.out" 2>&1 &
  echo $! >"$SB_DIR/wrapper.pid"
  # PID 1 is the wrapper's descendant that has become systemd.
  for _ in $(seq 100); do
    for p in $(sb_descendants "$(cat "$SB_DIR/wrapper.pid")"); do
      if [ "$(cat /proc/"$p"/comm 2>/dev/null)" = systemd ]; then echo "$p" >"$SB_DIR/init.pid"; break 2; fi
    done
    sleep 0.1
  done
  if [ ! -s "$SB_DIR/init.pid" ]; then
    echo "sandbox: systemd cannot boot here: no systemd process appeared within 10 s"
    cat "$SB_DIR/boot.out"; sb_halt >/dev/null; return 77
  fi
  st=
  for _ in $(seq 150); do
    st=$(sb systemctl is-system-running 2>/dev/null || true)
    case "$st" in running|degraded) break;; esac
    sleep 0.2
  done
  case "$st" in
    running|degraded) echo "sandbox: systemd $(sb systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p') is PID 1 (host pid $(cat "$SB_DIR/init.pid")), $st";;
    *) echo "sandbox: systemd cannot boot here: is-system-running says '$st' after 30 s"
       tail -n 20 "$SB_DIR/console.log" | tr -d '\r'; sb_halt >/dev/null; return 77;;
  esac
}

# Powers off (SIGRTMIN+4: in a pid namespace that only ends the namespace),
# bounded: SIGKILL to PID 1 after 30 s, which ends every process inside; then
# removes the sandbox's cgroups.
sb_halt() {
  local p w cg left
  p=$(cat "$SB_DIR/init.pid" 2>/dev/null || true)
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -s SIGRTMIN+4 "$p"
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then echo "sandbox: still up after 30 s; SIGKILL $p"; kill -9 "$p"; sleep 1; fi
  fi
  w=$(cat "$SB_DIR/wrapper.pid" 2>/dev/null || true)
  if [ -n "$w" ]; then
    for _ in $(seq 50); do kill -0 "$w" 2>/dev/null || break; sleep 0.2; done
  fi
  cg=$(cat "$SB_DIR/cgroup" 2>/dev/null || true)
  if [ -n "$cg" ] && [ -d "$cg" ]; then
    left=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
    if [ -n "$left" ]; then echo "sandbox: processes left in $cg: $left"; return 1; fi
    find "$cg" -depth -type d -exec rmdir {} \;
  fi
  rm -f "$SB_DIR/init.pid" "$SB_DIR/wrapper.pid" "$SB_DIR/cgroup"
  echo "sandbox: halted"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -eu
  case "${1:-}" in
    boot) SB_SHARE=${SB_SHARE:-$PWD} sb_boot;;
    enter) shift; sb "$@";;
    halt) sb_halt;;
    *) echo "usage: $0 boot | enter CMD... | halt   (state: \$SB_DIR=$SB_DIR, share: \$SB_SHARE)" >&2; exit 2;;
  esac
fi
