#!/usr/bin/env python3
"""scripts/bench's bookkeeping: sysbench logs in, results file, table, chart and README out.

    report.py build --runs RUNS.tsv --meta META.json [--idle IDLE.json]
                    [--moves MOVES.json] [--drain DRAIN.json] --out RESULTS.json
    report.py table RESULTS.json          the figures as Markdown tables, targets met/missed
    report.py svg RESULTS.json OUT.svg    bar chart of QPS and p95 per target and case
    report.py readme [RESULTS.json]       rewrite README.md's figures (between the markers)
                                          and bench/chart.svg from RESULTS.json (default:
                                          the newest file in bench/results/)
    report.py compare OLD.json NEW.json   ratios of two results files side by side

RUNS.tsv (written by scripts/bench, one line per sysbench run, tab-separated, header):
phase, workload, ps_mode, threads, target, round, log, cpu_s, syscalls. `phase` is
qps (timed rounds), profile (a separate run with the proxy's system calls counted),
proto (compressed / TLS targets) or logins. cpu_s is the proxy's utime+stime over the
run (empty for direct), syscalls the count from the profile run (empty otherwise).
Only the standard library: it runs wherever scripts/bench runs.
"""

import csv
import glob
import html
import json
import math
import os
import re
import statistics
import sys

SCHEMA = 1
PROXIES = ("haproxy", "ferry")
TARGETS = ("direct", "haproxy", "ferry")
COLORS = {"direct": "#8c8c8c", "haproxy": "#4e79a7", "ferry": "#f28e2b"}
# Targets from issues 11 and 12 (issue 12's are the stricter ones where both speak).
QPS_RATIO_MIN = 1.0          # ferry/HAProxy, issue 12 (issue 11: 0.95)
QPS_RATIO_MIN_ISSUE11 = 0.95
SYSCALL_SLACK = 1.0          # ferry may make at most HAProxy's + 1 per query
IDLE_BYTES_MAX = 8 * 1024    # issue 12 (issue 11: 16 KiB)
LOGIN_RATIO_MIN = 0.9        # logins/s ferry/direct
PAUSE_P99_MAX_MS = 5.0       # migration issue
DRAIN_MAX_S = 2.0            # migration issue, 1,000 sessions
README_BEGIN = "<!-- bench:figures:begin (scripts/bench readme writes this part) -->"
README_END = "<!-- bench:figures:end -->"


# --------------------------------------------------------------------------- parsing


def parse_sysbench(text):
    """The figures of one `sysbench ... run` output: qps, tps, queries, p95_ms, errors, seconds."""
    def grab(pattern, cast=float):
        m = re.search(pattern, text, re.M)
        return cast(m.group(1)) if m else None
    out = {
        "queries": grab(r"^\s*queries:\s+(\d+)\s+\(", int),
        "qps": grab(r"^\s*queries:\s+\d+\s+\(([0-9.]+) per sec\.\)"),
        "transactions": grab(r"^\s*transactions:\s+(\d+)\s+\(", int),
        "tps": grab(r"^\s*transactions:\s+\d+\s+\(([0-9.]+) per sec\.\)"),
        "errors": grab(r"^\s*ignored errors:\s+(\d+)", int),
        "seconds": grab(r"^\s*total time:\s+([0-9.]+)s"),
        "p95_ms": grab(r"^\s*95th percentile:\s+([0-9.]+)"),
    }
    if out["tps"] is None:
        raise ValueError("no 'transactions:' line: not a finished sysbench run")
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return None if a is None or not b else a / b


def read_runs(path):
    """RUNS.tsv as dicts, each with the parsed sysbench figures under 'sb'."""
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            log = row["log"] if os.path.isabs(row["log"]) else os.path.join(base, row["log"])
            with open(log, encoding="utf-8", errors="replace") as lf:
                row["sb"] = parse_sysbench(lf.read())
            row["threads"] = int(row["threads"])
            row["round"] = int(row["round"])
            row["cpu_s"] = float(row["cpu_s"]) if row.get("cpu_s") else None
            row["syscalls"] = float(row["syscalls"]) if row.get("syscalls") else None
            rows.append(row)
    return rows


def summarize_target(runs, profiles):
    """Median QPS/p95 over the rounds; the proxy's CPU per 1,000 queries (median over the
    rounds) and system calls per query (from the profile runs)."""
    t = {
        "qps": median(r["sb"]["qps"] for r in runs),
        "p95_ms": median(r["sb"]["p95_ms"] for r in runs),
        "qps_rounds": [round(r["sb"]["qps"], 1) for r in runs],
    }
    errors = sum(r["sb"]["errors"] or 0 for r in runs)
    if errors:
        t["ignored_errors"] = errors
    cpu = [r["cpu_s"] / r["sb"]["queries"] * 1000 for r in runs
           if r["cpu_s"] is not None and r["sb"]["queries"]]
    if cpu:
        t["cpu_s_per_1k"] = median(cpu)
    sc = [r["syscalls"] / r["sb"]["queries"] for r in profiles
          if r["syscalls"] is not None and r["sb"]["queries"]]
    if sc:
        t["syscalls_per_query"] = median(sc)
    return t


def build(runs, meta, idle=None, moves=None, drain=None):
    """The results file's content (a dict) from the parsed runs and the side measurements."""
    res = {"schema": SCHEMA}
    res.update(meta)
    cases = []
    keys = []
    for r in runs:
        if r["phase"] == "qps":
            k = (r["workload"], r["ps_mode"], r["threads"])
            if k not in keys:
                keys.append(k)
    for k in keys:
        c = {"workload": k[0], "ps_mode": k[1], "threads": k[2], "targets": {}}
        for target in TARGETS:
            mine = [r for r in runs if (r["workload"], r["ps_mode"], r["threads"]) == k
                    and r["target"] == target]
            timed = [r for r in mine if r["phase"] == "qps"]
            if timed:
                c["targets"][target] = summarize_target(
                    timed, [r for r in mine if r["phase"] == "profile"])
        cases.append(c)
    res["cases"] = cases
    proto = [r for r in runs if r["phase"] == "proto"]
    if proto:
        p = {"workload": proto[0]["workload"], "ps_mode": proto[0]["ps_mode"],
             "threads": proto[0]["threads"], "targets": {}}
        for target in dict.fromkeys(r["target"] for r in proto):
            p["targets"][target] = summarize_target([r for r in proto if r["target"] == target], [])
        res["protocols"] = p
    logins = [r for r in runs if r["phase"] == "logins"]
    if logins:
        lg = {"threads": logins[0]["threads"], "targets": {}}
        for target in dict.fromkeys(r["target"] for r in logins):
            mine = [r for r in logins if r["target"] == target]
            lg["targets"][target] = {
                "per_s": median(r["sb"]["tps"] for r in mine),
                "rounds": [round(r["sb"]["tps"], 1) for r in mine],
                "p95_ms": median(r["sb"]["p95_ms"] for r in mine),
            }
            cpu = [r["cpu_s"] / r["sb"]["transactions"] * 1000 for r in mine
                   if r["cpu_s"] is not None and r["sb"]["transactions"]]
            if cpu:
                lg["targets"][target]["cpu_ms_per_login"] = median(cpu)
        res["logins"] = lg
    if idle:
        res["idle"] = idle
    if moves or drain:
        m = {}
        if moves:
            d, q = moves.get("move_duration_ms", {}), moves.get("during_move_query_ms", {})
            m.update({
                "moves": moves.get("moves"),
                "move_p50_ms": d.get("p50"), "move_p99_ms": d.get("p99"),
                "query_during_move_p50_ms": q.get("p50"), "query_during_move_p99_ms": q.get("p99"),
                "pause_hist_p99_le_ms": None if moves.get("pause_p99_le_s") is None
                else moves["pause_p99_le_s"] * 1000,
            })
        if drain:
            m.update({"drain_sessions": drain.get("sessions"), "drain_s": drain.get("done_s")})
        res["migration"] = m
    res["checks"] = checks(res)
    return res


# --------------------------------------------------------------------------- targets


def case_name(c):
    proto = {"disable": "text", "auto": "prepared"}.get(c["ps_mode"], c["ps_mode"])
    return f'{c["workload"].replace("oltp_", "")} {proto} {c["threads"]}t'


def checks(res):
    """Every target of issues 11 and 12 this run can judge: name, value, target, met."""
    out = []

    def add(name, value, target, met, fmt="{:.3f}"):
        out.append({"name": name, "value": None if value is None else float(fmt.format(value)),
                    "target": target, "met": None if value is None else bool(met)})

    for c in res.get("cases", []):
        t = c["targets"]
        f, h = t.get("ferry", {}), t.get("haproxy", {})
        q = ratio(f.get("qps"), h.get("qps"))
        add(f"{case_name(c)}: QPS ferry/HAProxy", q, f">= {QPS_RATIO_MIN} (issue 11: {QPS_RATIO_MIN_ISSUE11})",
            q is not None and q >= QPS_RATIO_MIN)
        fc, hc = f.get("cpu_s_per_1k"), h.get("cpu_s_per_1k")
        add(f"{case_name(c)}: CPU per query ferry/HAProxy", ratio(fc, hc), "<= 1",
            fc is not None and hc is not None and fc <= hc)
        fs, hs = f.get("syscalls_per_query"), h.get("syscalls_per_query")
        add(f"{case_name(c)}: syscalls per query ferry - HAProxy",
            None if fs is None or hs is None else fs - hs, f"<= {SYSCALL_SLACK:g}",
            fs is not None and hs is not None and fs <= hs + SYSCALL_SLACK, "{:.2f}")
    idle = res.get("idle", {}).get("ferry")
    if idle:
        v = idle.get("per_session_bytes")
        add("idle session: ferry resident bytes", v, f"<= {IDLE_BYTES_MAX} (8 KiB; issue 11: 16 KiB)",
            v is not None and v <= IDLE_BYTES_MAX, "{:.0f}")
    lg = res.get("logins", {}).get("targets", {})
    if "ferry" in lg and "direct" in lg:
        v = ratio(lg["ferry"]["per_s"], lg["direct"]["per_s"])
        add("logins/s ferry/direct", v, f">= {LOGIN_RATIO_MIN}", v is not None and v >= LOGIN_RATIO_MIN)
    m = res.get("migration", {})
    if m.get("move_p99_ms") is not None:
        add("migration: move p99 ms", m["move_p99_ms"], f"<= {PAUSE_P99_MAX_MS:g}",
            m["move_p99_ms"] <= PAUSE_P99_MAX_MS, "{:.2f}")
    if m.get("drain_s") is not None:
        add(f'migration: drain {m.get("drain_sessions")} sessions, s', m["drain_s"],
            f"<= {DRAIN_MAX_S:g}", m["drain_s"] <= DRAIN_MAX_S, "{:.3f}")
    return out


# --------------------------------------------------------------------------- table


def fnum(v, fmt="{:,.0f}"):
    return "-" if v is None else fmt.format(v)


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def table(res):
    """The whole figures section as Markdown (printed by scripts/bench and put in the README)."""
    parts = []
    rows = []
    for c in res.get("cases", []):
        t = c["targets"]
        d, h, f = (t.get(k, {}) for k in TARGETS)
        rows.append([
            c["workload"], {"disable": "text", "auto": "prepared"}.get(c["ps_mode"], c["ps_mode"]),
            c["threads"],
            fnum(d.get("qps")), fnum(h.get("qps")), fnum(f.get("qps")),
            fnum(ratio(f.get("qps"), h.get("qps")), "{:.2f}"),
            fnum(ratio(f.get("qps"), d.get("qps")), "{:.2f}"),
            " / ".join(fnum(x.get("p95_ms"), "{:.2f}") for x in (d, h, f)),
            " / ".join(fnum(x.get("cpu_s_per_1k"), "{:.3f}") for x in (h, f)),
            " / ".join(fnum(x.get("syscalls_per_query"), "{:.1f}") for x in (h, f)),
        ])
    if rows:
        parts.append(md_table(
            ["workload", "protocol", "threads", "direct QPS", "HAProxy QPS", "ferry QPS",
             "ferry/HAProxy", "ferry/direct", "p95 ms direct / HAProxy / ferry",
             "CPU s per 1k queries HAProxy / ferry", "syscalls per query HAProxy / ferry"], rows))
    p = res.get("protocols")
    if p:
        t = p["targets"]
        rows = [[k, fnum(v.get("qps")), fnum(v.get("p95_ms"), "{:.2f}"),
                 fnum(v.get("cpu_s_per_1k"), "{:.3f}")] for k, v in t.items()]
        parts.append(f'Compressed and TLS ({p["workload"]}, {p["ps_mode"]}, {p["threads"]} threads; '
                     "ferry-tls: TLS from the client to ferry, plain to MariaDB):\n\n"
                     + md_table(["target", "QPS", "p95 ms", "ferry CPU s per 1k queries"], rows))
        extra = []
        for a, b in (("ferry-zlib", "direct-zlib"), ("ferry-tls", "direct-tls")):
            r = ratio(t.get(a, {}).get("qps"), t.get(b, {}).get("qps"))
            if r is not None:
                extra.append(f"{a}/{b} {r:.2f}")
        if extra:
            parts.append(", ".join(extra))
    other = []
    idle = res.get("idle")
    if idle:
        for k in PROXIES:
            v = idle.get(k)
            if v:
                other.append([f"resident memory per idle session, {k} ({idle['sessions']:,} open)",
                              f'{v["per_session_bytes"] / 1024:.1f} KiB '
                              f'(VmRSS {v["rss_before_kib"]:,} → {v["rss_after_kib"]:,} KiB)'])
    lg = res.get("logins")
    if lg:
        for k, v in lg["targets"].items():
            cpu = f', {v["cpu_ms_per_login"]:.3f} ms CPU per login' if "cpu_ms_per_login" in v else ""
            other.append([f'logins per second, {k} ({lg["threads"]} workers)',
                          f'{v["per_s"]:,.0f} (p95 {fnum(v.get("p95_ms"), "{:.2f}")} ms{cpu})'])
    m = res.get("migration")
    if m:
        if m.get("move_p50_ms") is not None:
            other.append([f'migration: move p50 / p99 ({m.get("moves")} moves)',
                          f'{m["move_p50_ms"]:.2f} / {m["move_p99_ms"]:.2f} ms'])
            other.append(["migration: query sent during a move p50 / p99",
                          f'{fnum(m.get("query_during_move_p50_ms"), "{:.2f}")} / '
                          f'{fnum(m.get("query_during_move_p99_ms"), "{:.2f}")} ms'])
        if m.get("drain_s") is not None:
            other.append([f'migration: drain {m.get("drain_sessions")} idle sessions',
                          f'{m["drain_s"]:.3f} s'])
    if other:
        parts.append(md_table(["figure", "value"], other))
    cks = res.get("checks", [])
    if cks:
        word = {True: "met", False: "**missed**", None: "not measured"}
        parts.append(md_table(["target", "measured", "wanted", ""],
                              [[c["name"], fnum(c["value"], "{:g}"), c["target"], word[c["met"]]]
                               for c in cks]))
    return "\n\n".join(parts) + "\n"


def header(res):
    m = res.get("machine", {})
    s = res.get("settings", {})
    v = res.get("versions", {})
    load = m.get("load_before"), m.get("load_after")
    text = (f'Measured {res.get("date", "?")} at commit {res.get("commit", "?")} on '
            f'{m.get("nproc", "?")} cores ({m.get("cpu", "?")}, kernel {m.get("kernel", "?")}), '
            f'{v.get("sysbench", "sysbench")}, MariaDB {v.get("mariadb", "?")}, '
            f'HAProxy {v.get("haproxy", "?")}; {s.get("rounds", "?")} rounds × {s.get("seconds", "?")} s '
            f'per target and case, alternating; {s.get("tables", "?")} tables × '
            f'{s.get("table_size", "?")} rows; ferry with {s.get("ferry_backends", "?")} backends '
            f'(the same MariaDB), health checks on; system calls: {s.get("syscall_method", "?")}.')
    if load[0] is not None:
        text += f" Load average before / after: {load[0]} / {load[1]}."
    if s.get("note"):
        text += " " + s["note"]
    if s.get("quick"):
        text += " QUICK MODE (short runs, one round): a smoke test, not a measurement."
    return text


# --------------------------------------------------------------------------- chart


def nice_ceiling(v):
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def svg(res):
    """A self-contained SVG: QPS (linear) and p95 latency (log) per case and target."""
    cases = res.get("cases", [])
    width, left, right = 960, 70, 20
    panel_h, top, gap = 230, 50, 80
    height = top + 2 * panel_h + gap + 70
    n = max(len(cases), 1)
    group_w = (width - left - right) / n
    bar_w = group_w * 0.8 / len(TARGETS)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14" font-weight="bold">'
           f'{html.escape("sysbench through direct / HAProxy / ferry")}</text>',
           f'<text x="{left}" y="36" fill="#555">{html.escape(chart_subtitle(res))}</text>']
    for i, t in enumerate(TARGETS):
        x = width - right - 260 + i * 85
        out.append(f'<rect x="{x}" y="10" width="12" height="12" fill="{COLORS[t]}"/>'
                   f'<text x="{x + 16}" y="20">{t}</text>')

    def panel(y0, title, key, log):
        vals = [c["targets"].get(t, {}).get(key) for c in cases for t in TARGETS]
        vals = [v for v in vals if v]
        if log:
            lo = 10 ** math.floor(math.log10(min(vals))) if vals else 0.1
            hi = 10 ** math.ceil(math.log10(max(vals))) if vals else 10
            if hi <= lo:
                hi = lo * 10
            scale = lambda v: (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
            ticks = []
            d = lo
            while d <= hi * 1.0001:
                ticks += [d * m for m in (1, 2, 5) if d * m <= hi * 1.0001]
                d *= 10
        else:
            lo, hi = 0, nice_ceiling(max(vals) if vals else 1)
            scale = lambda v: v / hi
            ticks = [hi * k / 5 for k in range(6)]
        out.append(f'<text x="{left}" y="{y0 - 8}" font-weight="bold">{html.escape(title)}</text>')
        for tk in ticks:
            y = y0 + panel_h - scale(tk) * panel_h if tk > 0 else y0 + panel_h
            out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                       f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick_label(tk)}</text>')
        for gi, c in enumerate(cases):
            gx = left + gi * group_w + group_w * 0.1
            for ti, t in enumerate(TARGETS):
                v = c["targets"].get(t, {}).get(key)
                if not v:
                    continue
                h = max(scale(v), 0) * panel_h
                x = gx + ti * bar_w
                out.append(f'<rect x="{x:.1f}" y="{y0 + panel_h - h:.1f}" width="{bar_w - 1:.1f}" '
                           f'height="{h:.1f}" fill="{COLORS[t]}"><title>{html.escape(case_name(c))} '
                           f'{t}: {v:,.2f}</title></rect>')
                out.append(f'<text x="{x + bar_w / 2:.1f}" y="{y0 + panel_h - h - 3:.1f}" '
                           f'text-anchor="middle" font-size="8">{tick_label(v)}</text>')
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y0 + panel_h}" y2="{y0 + panel_h}" stroke="#333"/>')

    panel(top + 20, "queries per second (median of rounds)", "qps", False)
    panel(top + 20 + panel_h + gap, "p95 latency, ms (log scale)", "p95_ms", True)
    for y in (top + 20 + panel_h, top + 20 + 2 * panel_h + gap):
        for gi, c in enumerate(cases):
            x = left + (gi + 0.5) * group_w
            out.append(f'<text x="{x:.1f}" y="{y + 14}" text-anchor="middle">{html.escape(case_name(c))}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def tick_label(v):
    if v >= 1000:
        return f"{v / 1000:.1f}k".replace(".0k", "k")
    if v >= 10:
        return f"{v:.0f}"
    return f"{v:.2g}"


def chart_subtitle(res):
    m = res.get("machine", {})
    return (f'{res.get("date", "?")}, commit {res.get("commit", "?")}, {m.get("nproc", "?")} cores '
            f'{m.get("cpu", "")}, load {m.get("load_before", "?")}'
            + (" (QUICK MODE)" if res.get("settings", {}).get("quick") else ""))


# --------------------------------------------------------------------------- README


def readme_section(res, chart_path):
    return (f"{README_BEGIN}\n{header(res)}\n\n{table(res)}\n![QPS and p95 latency per target and case]"
            f"({chart_path})\n{README_END}")


def replace_section(text, section):
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        raise ValueError(f"README has no '{README_BEGIN}' ... '{README_END}' markers")
    return text[:a] + section + text[b + len(README_END):]


def newest_results(repo):
    files = sorted(glob.glob(os.path.join(repo, "bench", "results", "*.json")))
    if not files:
        raise SystemExit("no results files in bench/results/")
    return files[-1]


# --------------------------------------------------------------------------- compare


def compare(old, new):
    """Per case, ferry/HAProxy QPS and CPU ratios and syscalls per query of two results files."""
    def index(res):
        return {case_name(c): c["targets"] for c in res.get("cases", [])}
    a, b = index(old), index(new)
    rows = []
    for name in b:
        if name not in a:
            continue
        def figs(t):
            f, h = t.get("ferry", {}), t.get("haproxy", {})
            return (ratio(f.get("qps"), h.get("qps")), ratio(f.get("cpu_s_per_1k"), h.get("cpu_s_per_1k")),
                    f.get("syscalls_per_query"))
        fa, fb = figs(a[name]), figs(b[name])
        rows.append([name] + [f'{fnum(x, "{:.2f}")} → {fnum(y, "{:.2f}")}' for x, y in zip(fa, fb)])
    return (f'{old.get("commit")} ({old.get("date")}) → {new.get("commit")} ({new.get("date")})\n\n'
            + md_table(["case", "QPS ferry/HAProxy", "CPU ferry/HAProxy", "ferry syscalls per query"], rows)
            + "\n")


# --------------------------------------------------------------------------- main


def load(path):
    if not path or path == "-" or not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--runs", required=True)
    b.add_argument("--meta", required=True)
    b.add_argument("--idle")
    b.add_argument("--moves")
    b.add_argument("--drain")
    b.add_argument("--out", required=True)
    sub.add_parser("table").add_argument("results")
    s = sub.add_parser("svg")
    s.add_argument("results")
    s.add_argument("out")
    r = sub.add_parser("readme")
    r.add_argument("results", nargs="?")
    c = sub.add_parser("compare")
    c.add_argument("old")
    c.add_argument("new")
    a = ap.parse_args(argv)
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    if a.cmd == "build":
        res = build(read_runs(a.runs), load(a.meta), load(a.idle), load(a.moves), load(a.drain))
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    elif a.cmd == "table":
        res = load(a.results)
        print(header(res) + "\n\n" + table(res), end="")
    elif a.cmd == "svg":
        with open(a.out, "w", encoding="utf-8") as f:
            f.write(svg(load(a.results)))
    elif a.cmd == "readme":
        path = a.results or newest_results(repo)
        res = load(path)
        chart = os.path.join(repo, "bench", "chart.svg")
        with open(chart, "w", encoding="utf-8") as f:
            f.write(svg(res))
        readme = os.path.join(repo, "README.md")
        with open(readme, encoding="utf-8") as f:
            text = f.read()
        with open(readme, "w", encoding="utf-8") as f:
            f.write(replace_section(text, readme_section(res, "bench/chart.svg")))
        print(f"README.md figures and bench/chart.svg from {os.path.relpath(path, repo)}")
    elif a.cmd == "compare":
        print(compare(load(a.old), load(a.new)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
