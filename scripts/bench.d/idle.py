#!/usr/bin/env python3
"""Resident memory per idle session of a proxy (scripts/bench, phase idle).

    idle.py --pid PID --port PORT --sessions N --out OUT.json [--user U --password P --database D]

Opens a few sessions and closes them (so thread stacks, allocator arenas and the
like exist before the baseline), reads the proxy's VmRSS, opens N sessions with
PyMySQL one after another (each logs in and then sends nothing: autocommit=None
keeps PyMySQL from sending SET AUTOCOMMIT), checks every one still answers a
liveness test without traffic (the socket is open and has nothing to read), reads
VmRSS again once it stops growing, and writes
{sessions, rss_before_kib, rss_after_kib, per_session_bytes} to OUT.json.
"""

import argparse
import json
import select
import sys
import time

import pymysql

WARMUP = 20


def vm_rss_kib(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss(pid, timeout=10.0):
    """VmRSS once two readings 0.5 s apart agree within 64 KiB (or after timeout)."""
    last = vm_rss_kib(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = vm_rss_kib(pid)
        if abs(now - last) <= 64:
            return now
        last = now
    return last


def connect(a):
    return pymysql.connect(host="127.0.0.1", port=a.port, user=a.user, password=a.password,
                           database=a.database, autocommit=None, connect_timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--user", default="sbtest")
    ap.add_argument("--password", default="sbtest")
    ap.add_argument("--database", default="sbtest")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    for c in [connect(a) for _ in range(WARMUP)]:
        c.close()
    before = settled_rss(a.pid)
    t0 = time.monotonic()
    conns = []
    for _ in range(a.sessions):
        conns.append(connect(a))
    opened_s = time.monotonic() - t0
    after = settled_rss(a.pid)
    # An idle session has nothing to read; a closed one reads EOF (readable).
    poller = select.poll()
    for c in conns:
        poller.register(c._sock.fileno(), select.POLLIN)
    readable = poller.poll(0)
    if readable:
        print(f"idle.py: {len(readable)} of {len(conns)} sessions were closed or got data "
              "while idle", file=sys.stderr)
        return 1
    result = {
        "sessions": a.sessions,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "per_session_bytes": round((after - before) * 1024 / a.sessions),
        "open_s": round(opened_s, 2),
    }
    for c in conns:
        c.close()
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    print(f"idle.py: {a.sessions} sessions, VmRSS {before} -> {after} KiB, "
          f"{result['per_session_bytes']} bytes each", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
