#!/usr/bin/env python3
"""What scripts/demo shows: the live view, the sysbench log stamper and the summary.

  stamp    stdin to stdout, each line prefixed with seconds since --t0 (sysbench's output;
           its thread start-up chatter dropped)
  view     every second: the backends (sessions, state, health) from the admin API, or one
           frame of `ferry top --once` with --top FERRY_BIN; sysbench's last report; moves by
           trigger; client errors so far; and the scenario's steps below. --lines prints new
           steps as they come and a one-line status every 5 s instead (no terminal needed)
  summary  the end: queries, client errors (which, when, after which step, why), moves by
           trigger, the stateful clients' checks, every acknowledged row present; exit 1
           when a row is lost, a check failed or the workload broke off
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request

REPORT = re.compile(
    r"\[ *(\d+)s \] thds: (\d+) tps: ([\d.]+) qps: ([\d.]+) .*lat \(ms,95%\): ([\d.]+) "
    r"err/s: ([\d.]+) reconn/s: ([\d.]+)")
IGNORED = re.compile(r"Ignoring error (\d+) (.*)")
STAMP = re.compile(r"^ *([\d.]+)s (.*)$")

# What each client error means in this demo, and whether it is the demo's doing.
WHY = {
    1213: "Galera certification conflict (reported as a deadlock): transactions on two nodes "
          "wrote the same rows and one lost; a direct connection gets the same, sysbench "
          "retries the transaction",
    1205: "lock wait timeout; sysbench retries the transaction",
    1020: "record changed since last read; sysbench retries the transaction",
    2013: "lost connection: a statement or open transaction was in flight on node 3 when it "
          "was killed; its outcome is unknown, so ferry closes the connection as the server "
          "would (it never retries a statement); the client reconnected through ferry",
    2006: "server gone away: the statement after a 2027 below found its connection closed; "
          "sysbench reconnected",
    2027: "'malformed packet': ferry answered a statement in flight on the killed node with a "
          "server ERR packet carrying 2013, and libmariadb (sysbench's client library) refuses "
          "client-side codes (2000-2999) from a server and reports 2027 instead; a ferry bug "
          "(closing the connection without an ERR would give 2013 as a direct connection does)",
    1047: "a Galera node not yet ready (WSREP has not yet prepared node for application use)",
}


def stamp(a):
    for line in sys.stdin:
        line = line.rstrip("\n")
        if "DEBUG: Worker thread" in line or "DEBUG: Reporting thread" in line:
            continue
        print(f"{time.time() - a.t0:7.1f}s {line}", flush=True)


# ------------------------------------------------------------ reading the pieces

def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metrics(text):
    """Prometheus text -> {(name, frozenset(labels)): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-z_]+)(\{([^}]*)\})? ([0-9.e+-]+)$", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def by_label(ms, name, label, **match):
    """Sums metric `name` per value of `label`, over series matching `match`."""
    out = {}
    for (n, labels), v in ms.items():
        if n != name:
            continue
        d = dict(labels)
        if any(d.get(k) != w for k, w in match.items()):
            continue
        out[d.get(label)] = out.get(d.get(label), 0) + v
    return out


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def sysbench_state(lines):
    """Last report, and the ignored errors as [(t, code, message)]."""
    last, errors, prev = None, [], None
    for line in lines:
        m = STAMP.match(line)
        if not m:
            continue
        t, rest = float(m.group(1)), m.group(2)
        r = REPORT.search(rest)
        if r:
            last = r
        e = IGNORED.search(rest)
        if e:
            errors.append((t, int(e.group(1)), e.group(2).strip().rstrip(",")))
        rep = re.search(r"last message repeated (\d+) times", rest)
        if rep and errors and IGNORED.search(prev or ""):
            # sysbench folds repeats of one message into this line.
            errors.extend([(t, errors[-1][1], errors[-1][2])] * int(rep.group(1)))
        prev = rest
    return last, errors


CLIENT_ERR = re.compile(r"client (\d+): error (\d+) during ([^:]+): (.*)")


def client_errors(steps):
    out = []
    for line in steps:
        m = STAMP.match(line)
        if not m:
            continue
        e = CLIENT_ERR.search(m.group(2))
        if e:
            out.append((float(m.group(1)), int(e.group(2)), e.group(3), int(e.group(1))))
    return out


def count_codes(errs):
    out = {}
    for e in errs:
        out[e[1]] = out.get(e[1], 0) + 1
    return out


def fmt_codes(codes):
    return "  ".join(f"{c} ×{n}" for c, n in sorted(codes.items())) or "none"


# ------------------------------------------------------------ the live view

MOVE_TRIGGERS = ("drain", "rebalance", "failover", "admin")


def frame_parts(a, base):
    """The lines of one frame below the backends, as (status, steps)."""
    sb_last, sb_errs = sysbench_state(read_lines(a.sysbench))
    steps = read_lines(a.steps)
    try:
        ms = metrics(get(f"http://{a.admin}/metrics"))
    except Exception:
        ms = {}
    ok = by_label(ms, "ferry_migrations_succeeded_total", "trigger")
    failed = by_label(ms, "ferry_migrations_failed_total", "trigger")
    moves = "  ".join(
        f"{t} {int(ok.get(t, 0) - base.get(t, 0))}" for t in MOVE_TRIGGERS)
    nfail = int(sum(failed.values()) - base.get("failed", 0))
    if sb_last:
        g = sb_last.groups()
        wl = (f"[{g[0]:>4}s] tps {float(g[2]):7.0f}  qps {float(g[3]):7.0f}  "
              f"p95 {float(g[4]):6.1f} ms  err/s {float(g[5]):5.1f}  reconn/s {float(g[6]):4.1f}")
    else:
        wl = "starting"
    c_errs = client_errors(steps)
    status = [
        f"sysbench    {wl}",
        f"moves       {moves}   (failed {nfail})",
        f"errors      sysbench {fmt_codes(count_codes(sb_errs))}   "
        f"stateful clients {fmt_codes(count_codes(c_errs))}",
    ]
    return status, steps


def backends_table(a):
    try:
        bs = json.loads(get(f"http://{a.admin}/api/backends"))
    except Exception as e:
        return [f"(admin API not answering: {e})"]
    rows = [f"{'backend':8} {'addr':16} {'state':9} {'health':6} {'sessions':>8}"]
    for b in bs:
        n = b.get("connections", 0)
        rows.append(f"{b['id']:8} {b['addr']:16} {b['state']:9} {b['health']:6} {n:8}  "
                    + "█" * min(n, 40))
    return rows


def top_frame(a):
    try:
        out = subprocess.run([a.top, "top", "--once", "--admin", a.admin], capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.rstrip("\n").splitlines()
    except Exception:
        pass
    return backends_table(a)


def base_moves(a):
    try:
        ms = metrics(get(f"http://{a.admin}/metrics"))
    except Exception:
        return {}
    base = by_label(ms, "ferry_migrations_succeeded_total", "trigger")
    base["failed"] = sum(by_label(ms, "ferry_migrations_failed_total", "trigger").values())
    return base


def view(a):
    base = base_moves(a)
    if a.lines:
        return view_lines(a, base)
    sys.stdout.write("\033[?25l")  # no cursor flicker; scripts/demo shows it again
    while True:
        t = time.time() - a.t0
        cols, rows = shutil.get_terminal_size((100, 40))
        head = [f"ferry demo  {t:5.0f}s of {a.duration}s workload   "
                f"(admin {a.admin}; Ctrl-C stops everything)", ""]
        body = top_frame(a) if a.top else backends_table(a)
        status, steps = frame_parts(a, base)
        lines = head + body + [""] + status + ["", "── scenario and stateful clients " + "─" * 20]
        room = max(rows - len(lines) - 1, 4)
        lines += steps[-room:]
        out = "\033[H" + "".join(l[:cols] + "\033[K\n" for l in lines[: rows - 1]) + "\033[J"
        sys.stdout.write(out)
        sys.stdout.flush()
        time.sleep(1)


def view_lines(a, base):
    shown, last_status = 0, 0.0
    while True:
        status, steps = frame_parts(a, base)
        for line in steps[shown:]:
            print(line, flush=True)
        shown = len(steps)
        now = time.time()
        if now - last_status >= 5:
            last_status = now
            bs = backends_table(a)[1:]
            per = "  ".join(" ".join(b.split()[i] for i in (0, 3, 4)) for b in bs if b.split())
            print(f"{now - a.t0:7.1f}s  · {per} | {status[0][12:]} | {status[1][12:]}",
                  flush=True)
        time.sleep(0.5)


# ------------------------------------------------------------ the summary

STEP = re.compile(r"▶ (\d+)\. (.*)")


def step_times(steps):
    out = []
    for line in steps:
        m = STAMP.match(line)
        if m:
            s = STEP.search(m.group(2))
            if s:
                out.append((float(m.group(1)), s.group(1), s.group(2).split(":")[0].split(" (")[0]))
    return out


def after_step(t, marks):
    prev = None
    for m in marks:
        if m[0] <= t:
            prev = m
    if prev is None:
        return "before the first step"
    return f"{t - prev[0]:+.1f}s after step {prev[1]} ({prev[2]})"


def spans(errs, marks):
    """Groups errors of one code by the step they followed: [(code, n, t_first, t_last, where)]."""
    groups = {}
    for t, code, *_ in errs:
        prev = max((m for m in marks if m[0] <= t), default=None, key=lambda m: m[0])
        key = (code, prev[1] if prev else "0")
        g = groups.setdefault(key, [code, 0, t, t, after_step(t, marks)])
        g[1] += 1
        g[3] = t
    return [tuple(g) for g in groups.values()]


def sysbench_totals(lines):
    text = "\n".join(STAMP.match(l).group(2) if STAMP.match(l) else l for l in lines)
    def num(label):
        m = re.search(label + r":\s+([\d.]+)(?:\s+\(([\d.]+) per sec\.\))?", text)
        return (float(m.group(1)), float(m.group(2) or 0)) if m else (None, None)
    return {
        "queries": num("queries"), "transactions": num("transactions"),
        "ignored": num("ignored errors"), "reconnects": num("reconnects"),
        "p95": num("95th percentile")[0], "time": num("total time")[0],
        "fatal": [l for l in text.splitlines() if "FATAL" in l][:5],
    }


def summary(a):
    steps = read_lines(a.steps)
    marks = step_times(steps)
    sb_lines = read_lines(a.sysbench)
    _, sb_errs = sysbench_state(sb_lines)
    tot = sysbench_totals(sb_lines)
    with open(a.clients) as f:
        cl = json.load(f)
    before = metrics(open(a.metrics_before).read())
    after = metrics(open(a.metrics_after).read())
    problems = []
    w = print

    w("")
    w("═" * 78)
    w("ferry demo: summary")
    w("═" * 78)
    w("Scenario:")
    for t, n, what in marks:
        w(f"  {t:6.1f}s  {n}. {what}")
    if a.scenario_status != 0:
        problems.append("the scenario did not finish (see steps.log)")
    w("")
    q, qps = tot["queries"]
    tr, tps = tot["transactions"]
    if q is None:
        w("Workload: sysbench printed no totals (it broke off)")
        problems.append("sysbench broke off")
    else:
        w(f"Workload: sysbench {int(q):,} queries ({qps:,.0f}/s), {int(tr):,} transactions "
          f"({tps:,.0f}/s) in {tot['time']:.0f} s, p95 {tot['p95']} ms, "
          f"{int(tot['ignored'][0])} ignored errors, {int(tot['reconnects'][0])} reconnects")
    if a.sysbench_status != 0:
        problems.append(f"sysbench exited with status {a.sysbench_status}")
        if a.sysbench_status == 139:
            w("  sysbench crashed (SIGSEGV): it does so after it has ignored a 2027 (see below), "
              "with prepared statements and with --db-ps-mode=disable alike")
        for l in tot["fatal"]:
            w(f"  {l}")
    w("")
    w("Client errors (sysbench through ferry; it went on past 1213,1205,1020,2013,2006,2027 on purpose):")
    if not sb_errs:
        w("  none")
    for code, n, t1, t2, where in spans(sb_errs, marks):
        when = f"at {t1:.1f}s" if n == 1 else f"{t1:.1f}-{t2:.1f}s"
        w(f"  {code} ×{n:<4} {when:>13}, first {where}")
    codes = count_codes(sb_errs)
    for code in sorted(codes):
        w(f"    {code}: {WHY.get(code, 'unexpected: see ' + a.dir + '/sysbench.log')}")
    # A drain must be invisible: nothing but the certification conflicts that
    # happen all along may fall between the drain and the kill.
    drain = [m for m in marks if m[1] == "1"]
    kill = [m for m in marks if m[1] == "3"]
    if drain and kill:
        inside = [e for e in sb_errs if drain[0][0] <= e[0] < kill[0][0] and e[1] not in (1213, 1205, 1020)]
        inside += [e for e in client_errors(steps) if drain[0][0] <= e[0] < kill[0][0]]
        if inside:
            problems.append(f"{len(inside)} client errors during the drain and resume of cn2")
            w(f"  !! during the drain/resume of cn2: {fmt_codes(count_codes(inside))}")
        else:
            w("  drain and resume of cn2: no client error from them (any 1213 there is Galera's)")
    w("")
    d = lambda name, **m: {k: after_by - before_by.get(k, 0)
                           for before_by in [by_label(before, name, "trigger", **m)]
                           for k, after_by in by_label(after, name, "trigger", **m).items()}
    ok = d("ferry_migrations_succeeded_total")
    w("Moves (ferry /metrics): " + ", ".join(f"{t} {int(ok.get(t, 0))}" for t in MOVE_TRIGGERS))
    failed = {}
    for (n, labels), v in after.items():
        if n == "ferry_migrations_failed_total":
            dv = v - before.get((n, labels), 0)
            if dv:
                l = dict(labels)
                failed[f"{l.get('trigger')}/{l.get('reason')}"] = int(dv)
    w("  failed moves (the session stayed where it was): "
      + (", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"))
    w("")
    clients = cl["clients"]
    checks = sum(c["checks"] for c in clients)
    bad = sum(c["checks_failed"] for c in clients)
    moves = sum(c["moves"] for c in clients)
    mchecked = sum(c["moves_checked"] for c in clients)
    recon = sum(c["reconnects"] for c in clients)
    cerrs = [e for c in clients for e in c["errors"]]
    w(f"Stateful clients ({len(clients)}; user variables, time_zone, div_precision_increment, a text "
      f"PREPARE and a binary prepared statement):")
    w(f"  {checks} state checks, {bad} failed; {moves} moves seen by the clients (@@port changed), "
      f"state intact after {mchecked} of them")
    if cerrs:
        w(f"  {len(cerrs)} errors, {recon} reconnects (state set again):")
        for e in cerrs:
            w(f"    {e['t']:6.1f}s  {e['code']} during {e['during']}, {after_step(e['t'], marks)}: {e['msg'][:70]}")
    else:
        w("  no errors")
    if bad:
        problems.append(f"{bad} stateful checks failed")
    for c in clients:
        if c.get("fatal"):
            problems.append(f"stateful client {c['client']}: {c['fatal']}")
    v = cl.get("verify")
    w("")
    if v is None:
        problems.append("the rows were not verified")
        w("Rows: not verified")
    else:
        w(f"Rows: {v['acked']} acknowledged inserts; missing on each node: "
          + ", ".join(f"{k} {n['acked_missing']}" for k, n in v["nodes"].items()))
        if v["unknown"]:
            w(f"  {v['unknown']} inserts got no answer (connection lost); on node 1 "
              f"{list(v['nodes'].values())[0]['unknown_present']} of them committed anyway")
        if v["lost"]:
            problems.append(f"{v['lost']} acknowledged rows lost")
    w("")
    lost = v["lost"] if v else "?"
    if problems:
        w("RESULT: FAILED: " + "; ".join(problems))
    else:
        w(f"RESULT: OK: {lost} acknowledged rows lost, {checks - bad}/{checks} state checks passed, "
          f"state intact after {mchecked}/{moves} moves")
    w(f"(logs: {a.dir}: steps.log, sysbench.log, ferry.log, clients.json, galera/)")
    return 1 if problems else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stamp")
    s.add_argument("--t0", type=float, required=True)
    v = sub.add_parser("view")
    v.add_argument("--admin", required=True)
    v.add_argument("--steps", required=True)
    v.add_argument("--sysbench", required=True)
    v.add_argument("--t0", type=float, required=True)
    v.add_argument("--duration", type=int, required=True)
    v.add_argument("--top", help="ferry binary with `ferry top --once`")
    v.add_argument("--lines", action="store_true")
    m = sub.add_parser("summary")
    m.add_argument("--steps", required=True)
    m.add_argument("--sysbench", required=True)
    m.add_argument("--clients", required=True)
    m.add_argument("--metrics-before", required=True)
    m.add_argument("--metrics-after", required=True)
    m.add_argument("--sysbench-status", type=int, default=0)
    m.add_argument("--scenario-status", type=int, default=0)
    m.add_argument("--dir", required=True)
    a = p.parse_args()
    try:
        return {"stamp": stamp, "view": view, "summary": summary}[a.cmd](a)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
