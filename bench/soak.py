#!/usr/bin/env python3
"""Soak benchmark (not in CI): minutes of mixed fast, slow, invalid and aborted
traffic against conn-daemon on 127.0.0.1; samples the server's resident memory and
fd count and checks both stay flat after warm-up.

    python3 bench/soak.py [--minutes 3] [--binary target/release/conn-daemon] [--port 9400]
"""
import argparse, os, random, signal, socket, struct, subprocess, sys, threading, time

REQ_FAST = b"GET /test/fast HTTP/1.0\r\nHost: soak\r\n\r\n"
REQ_SLOW = b"GET /test/slow HTTP/1.0\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))

def one(port, kind, counts, lock):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    ok = True
    try:
        if kind == "fast" or kind == "slow":
            s.sendall(REQ_FAST if kind == "fast" else REQ_SLOW)
            data = b""
            while True:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            ok = data == RESPONSE
        elif kind == "invalid":
            s.sendall(b"POST /nope HTTP/1.0\r\n\r\n")
            ok = s.recv(256) == b""
        elif kind == "reset":
            s.sendall(b"GET /test/fa")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "abandon":
            s.sendall(REQ_SLOW)
        elif kind == "oversized":
            try:
                s.sendall(b"GET /test/fast " + b"x" * 5000)
            except OSError:
                pass
    except OSError:
        ok = kind in ("oversized", "reset")
    finally:
        s.close()
    with lock:
        counts[kind] = counts.get(kind, 0) + 1
        if not ok:
            counts["errors"] = counts.get("errors", 0) + 1

def client(port, stop, counts, lock, seed):
    rnd = random.Random(seed)
    kinds = ["fast"] * 6 + ["slow", "invalid", "reset", "abandon", "oversized"]
    while not stop.is_set():
        one(port, rnd.choice(kinds), counts, lock)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3)
    ap.add_argument("--binary", default="target/release/conn-daemon")
    ap.add_argument("--port", type=int, default=9400)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()
    server = subprocess.Popen([a.binary, "-p", str(a.port), "-D", "5", "--read-timeout", "2000"])
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", a.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("server did not listen")
                time.sleep(0.01)
        stop, lock, counts = threading.Event(), threading.Lock(), {}
        threads = [threading.Thread(target=client, args=(a.port, stop, counts, lock, i)) for i in range(a.clients)]
        for t in threads:
            t.start()
        samples, start = [], time.time()
        print("  t(s)  rss(KiB)  fds  connections")
        while time.time() - start < a.minutes * 60:
            time.sleep(10)
            with lock:
                total = sum(v for k, v in counts.items() if k != "errors")
            samples.append((time.time() - start, rss_kib(server.pid), fds(server.pid)))
            print(f"{samples[-1][0]:6.0f}  {samples[-1][1]:8d}  {samples[-1][2]:3d}  {total}", flush=True)
        stop.set()
        for t in threads:
            t.join()
        time.sleep(2.5)  # read deadlines of the last aborted clients
        final_fds = fds(server.pid)
        warm = samples[min(2, len(samples) - 1)]
        peak = max(s[1] for s in samples[2:] or samples)
        print(f"traffic: {counts}")
        print(f"rss after warm-up {warm[1]} KiB, peak after {peak} KiB, last {samples[-1][1]} KiB")
        print(f"fds: at start of load {samples[0][2]}, after the load {final_fds}")
        flat = peak <= warm[1] * 1.10 + 1024 and counts.get("errors", 0) == 0
        print("FLAT" if flat else "NOT FLAT")
        sys.exit(0 if flat else 1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)

if __name__ == "__main__":
    main()
