#!/usr/bin/python3
"""pty_run.py LOG CMD...: run CMD as a session leader on a fresh pty.

The pty is CMD's controlling terminal and its stdin/stdout/stderr; everything
written to it is copied into LOG. sandbox.sh bind-mounts this pty over the
sandbox's /dev/console (as systemd-nspawn does), so systemd as PID 1 has a
console to write its status to and nothing reaches the caller's terminal.
"""
import errno
import fcntl
import os
import sys
import termios

log, cmd = sys.argv[1], sys.argv[2:]
master, slave = os.openpty()
pid = os.fork()
if pid == 0:
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    os.execvp(cmd[0], cmd)
os.close(slave)
with open(log, "ab", buffering=0) as out:
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError as e:
            # EIO: every holder of the pty's slave side is gone (systemd exited).
            if e.errno == errno.EIO:
                break
            raise
        if not chunk:
            break
        out.write(chunk)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
