#!/bin/bash
# inner.sh: PID 1 of the sandbox's new namespaces (started by sandbox.sh boot).
# Builds a throw-away root the way systemd-nspawn does (an overlay of the host's /
# with a tmpfs on top, its own /proc, a read-only /sys, cgroup2, a private /dev
# whose console is our pty), pivots into it and execs systemd as PID 1.
# Environment: SB_DIR (the sandbox's state directory), SB_SHARE (a directory
# shown read-only at /srv/share inside).
set -eu
S=$SB_DIR
R=$S/root
CONSOLE=$(tty)                       # the pty made by pty_run.py
# Nothing mounted from here on propagates back to the host.
mount --make-rprivate /
# mount(8) would write /run/mount/utab on the host's /run: give it a private one
# (-n: no utab at all for the mounts below).
mount -n -t tmpfs -o mode=755 check-hostrun /run
mkdir -p "$S/ovl" "$R"
mount -n -t tmpfs -o mode=755 check-ovl "$S/ovl"
mkdir -p "$S/ovl/upper" "$S/ovl/work"
# Every write inside lands in the tmpfs: /etc, /usr, /var vanish at halt.
mount -n -t overlay overlay -o "lowerdir=/,upperdir=$S/ovl/upper,workdir=$S/ovl/work" "$R"

mount -n -t proc -o nosuid,nodev,noexec proc "$R/proc"
mount -n --bind "$R/proc/sys" "$R/proc/sys"           # the host's sysctls stay untouched
mount -n -o remount,bind,ro "$R/proc/sys"
mount -n -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"   # read-only: no udev inside
# The cgroup namespace is rooted at the sandbox's own cgroup (sandbox.sh): systemd
# manages that subtree and nothing above it.
mount -n -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"

mount -n -t tmpfs -o mode=755,nosuid,size=16m check-dev "$R/dev"
mknod -m 666 "$R/dev/null" c 1 3;    mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7;    mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9; mknod -m 666 "$R/dev/tty" c 5 0
mkdir -m 755 "$R/dev/pts"; mkdir -m 1777 "$R/dev/shm"
mount -n -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"; ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
touch "$R/dev/console"; mount -n --bind "$CONSOLE" "$R/dev/console"

# The share, read-only, at /srv/share (not under /tmp: systemd-tmpfiles empties
# /tmp at boot).
mkdir -p "$R/srv/share"
mount -n --bind "$SB_SHARE" "$R/srv/share"
mount -n -o remount,bind,ro "$R/srv/share"
# Boot only what the checks need: sysinit (tmpfiles, journald's sockets) and
# journald, not the host's default target.
mkdir -p "$R/etc/systemd/system"
cat >"$R/etc/systemd/system/check.target" <<'UNIT'
[Unit]
Description=conn-daemon check sandbox (sysinit + journald only)
Requires=sysinit.target
After=sysinit.target
Wants=systemd-journald.service
AllowIsolate=yes
UNIT

cd "$R"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
# As systemd-nspawn: no module loading, raw I/O, clock, syslog or MAC changes inside.
exec setpriv --bounding-set -sys_module,-sys_rawio,-sys_time,-wake_alarm,-block_suspend,-syslog,-sys_pacct,-mac_admin,-mac_override \
  env -i container=conn-daemon-check TERM=linux PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --unit=check.target --show-status=yes --log-level=info
