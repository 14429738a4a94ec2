#!/usr/bin/python3
"""client.py: the clients of check.sh, run inside the sandbox (loopback only).

  client.py fast PORT                  one GET /test/fast; exit 0 iff the 57 bytes came
  client.py load PORT SECONDS CONNS [STOP]
                                       /test/fast from CONNS threads for SECONDS, or
                                       until the file STOP exists; prints
                                       "ok=N failed=M" (+ the first errors)
  client.py slow PORT COUNT MARKER     COUNT GET /test/slow at once; creates MARKER once
                                       every request is sent, then prints
                                       "answered=N of COUNT in S s"; exit 0 iff all were

Every socket operation has a timeout (TIMEOUT s), so every run is bounded.
"""
import os
import socket
import sys
import threading
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
TIMEOUT = 25.0
assert len(RESPONSE) == 57


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def read_all(s):
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk


def one(port, path):
    """The response's bytes, or raises."""
    with connect(port) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: check\r\n\r\n")
        return read_all(s)


def fast(port):
    got = one(port, b"/test/fast")
    print(repr(got))
    return 0 if got == RESPONSE else 1


def load(port, seconds, conns, stop):
    until = time.monotonic() + seconds
    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    errors = []

    def run():
        ok = failed = 0
        while time.monotonic() < until and not (stop and os.path.exists(stop)):
            try:
                got = one(port, b"/test/fast")
                why = None if got == RESPONSE else "response %r" % got
            except OSError as e:
                why = repr(e)
            if why is None:
                ok += 1
            else:
                failed += 1
                with lock:
                    if len(errors) < 5:
                        errors.append(why)
        with lock:
            counts["ok"] += ok
            counts["failed"] += failed

    threads = [threading.Thread(target=run) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("ok=%d failed=%d" % (counts["ok"], counts["failed"]))
    for e in errors:
        print("error: " + e)
    return 0


def slow(port, count, marker):
    socks = []
    for _ in range(count):
        s = connect(port)
        s.sendall(b"GET /test/slow HTTP/1.1\r\nHost: check\r\n\r\n")
        socks.append(s)
    start = time.monotonic()
    open(marker, "w").close()
    answered = 0
    for s in socks:
        try:
            got = read_all(s)
        except OSError as e:
            got = repr(e).encode()
        if got == RESPONSE:
            answered += 1
        else:
            print("not answered: %r" % got)
        s.close()
    print("answered=%d of %d in %.1f s" % (answered, count, time.monotonic() - start))
    return 0 if answered == count else 1


def main(argv):
    what, port = argv[1], int(argv[2])
    if what == "fast":
        return fast(port)
    if what == "load":
        return load(port, float(argv[3]), int(argv[4]), argv[5] if len(argv) > 5 else None)
    if what == "slow":
        return slow(port, int(argv[3]), argv[4])
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
