#!/usr/bin/env python3
"""Tests of scripts/bench's report.py (parsing, targets, table, chart, README section).

Run by scripts/test: python3 -m unittest discover -s scripts/bench.d -p 'test_*.py'
"""

import os
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

SYSBENCH_RUN = """sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)

Running the test with following options:
Number of threads: 16

SQL statistics:
    queries performed:
        read:                            245310
        write:                           0
        other:                           0
        total:                           245310
    transactions:                        245310 (24525.61 per sec.)
    queries:                             245310 (24525.61 per sec.)
    ignored errors:                      3      (0.30 per sec.)
    reconnects:                          0      (0.00 per sec.)

General statistics:
    total time:                          10.0012s
    total number of events:              245310

Latency (ms):
         min:                                    0.15
         avg:                                    0.65
         max:                                   25.03
         95th percentile:                        1.37
         sum:                               159543.39
"""


def sb_output(qps, p95, seconds=10.0, tps=None):
    q = int(qps * seconds)
    t = int((tps or qps) * seconds)
    return (f"    transactions:                        {t} ({tps or qps:.2f} per sec.)\n"
            f"    queries:                             {q} ({qps:.2f} per sec.)\n"
            f"    ignored errors:                      0      (0.00 per sec.)\n"
            f"    total time:                          {seconds:.4f}s\n"
            f"         95th percentile:                        {p95:.2f}\n")


class Parse(unittest.TestCase):
    def test_sysbench_run(self):
        sb = report.parse_sysbench(SYSBENCH_RUN)
        self.assertEqual(sb["queries"], 245310)
        self.assertAlmostEqual(sb["qps"], 24525.61)
        self.assertAlmostEqual(sb["tps"], 24525.61)
        self.assertAlmostEqual(sb["p95_ms"], 1.37)
        self.assertEqual(sb["errors"], 3)
        self.assertAlmostEqual(sb["seconds"], 10.0012)

    def test_unfinished_run_is_an_error(self):
        with self.assertRaises(ValueError):
            report.parse_sysbench("FATAL: unable to connect to MySQL server on host '127.0.0.1'\n")

    def test_median(self):
        self.assertEqual(report.median([3, 1, 2]), 2)
        self.assertEqual(report.median([4, 1, 2, 3]), 2.5)
        self.assertIsNone(report.median([None]))


def sample_runs(tmp, ferry_qps=9000.0, ferry_cpu=9.0, ferry_syscalls=700000.0):
    """A RUNS.tsv with one case over three rounds, its profile runs, and logins."""
    lines = ["phase\tworkload\tps_mode\tthreads\ttarget\tround\tlog\tcpu_s\tsyscalls"]
    n = 0

    def add(phase, workload, target, rnd, qps, p95, cpu="", sc="", tps=None):
        nonlocal n
        n += 1
        name = f"run{n}.log"
        with open(os.path.join(tmp, name), "w") as f:
            f.write(sb_output(qps, p95, tps=tps))
        lines.append(f"{phase}\t{workload}\tdisable\t16\t{target}\t{rnd}\t{name}\t{cpu}\t{sc}")

    for r, drift in ((1, 0.9), (2, 1.1), (3, 1.0)):  # the median is not the first
        add("qps", "oltp_point_select", "direct", r, 20000 * drift, 1.0)
        add("qps", "oltp_point_select", "haproxy", r, 10000 * drift, 2.0, cpu=f"{8.0 * drift}")
        add("qps", "oltp_point_select", "ferry", r, ferry_qps * drift, 2.5, cpu=f"{ferry_cpu * drift}")
    # 10 s x 10,000 qps = 100,000 queries: HAProxy 7 calls per query.
    add("profile", "oltp_point_select", "haproxy", 1, 10000, 2.0, cpu="8", sc="700000")
    add("profile", "oltp_point_select", "ferry", 1, 10000, 2.0, cpu="9", sc=f"{ferry_syscalls}")
    for r in (1, 2, 3):
        add("logins", "login", "direct", r, 0, 5.0, tps=2000)
        add("logins", "login", "ferry", r, 0, 6.0, cpu="1.0", tps=1900)
    path = os.path.join(tmp, "runs.tsv")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


META = {"date": "2026-12-07T01:00Z", "commit": "abc1234",
        "machine": {"nproc": 2, "cpu": "AMD EPYC", "kernel": "6.18", "load_before": "1.0 1.0 1.0",
                    "load_after": "2.0 2.0 2.0"},
        "settings": {"seconds": 10, "rounds": 3, "tables": 4, "table_size": 10000, "quick": False,
                     "ferry_backends": 3, "syscall_method": "perf"}}
IDLE = {"sessions": 2000,
        "ferry": {"sessions": 2000, "rss_before_kib": 10000, "rss_after_kib": 20000, "per_session_bytes": 5120},
        "haproxy": {"sessions": 2000, "rss_before_kib": 8000, "rss_after_kib": 9000, "per_session_bytes": 512}}
MOVES = {"moves": 1000, "move_duration_ms": {"p50": 0.7, "p99": 4.4},
         "during_move_query_ms": {"p50": 0.9, "p99": 4.9}, "pause_p99_le_s": 0.005}
DRAIN = {"sessions": 1000, "done_s": 0.82}


class Build(unittest.TestCase):
    def build(self, **kw):
        with tempfile.TemporaryDirectory() as tmp:
            return report.build(report.read_runs(sample_runs(tmp, **kw)), dict(META), IDLE, MOVES, DRAIN)

    def check(self, res, prefix):
        found = [c for c in res["checks"] if c["name"].endswith(prefix)]
        self.assertEqual(len(found), 1, prefix)
        return found[0]

    def test_medians_and_ratios(self):
        res = self.build()
        (case,) = res["cases"]
        self.assertEqual((case["workload"], case["ps_mode"], case["threads"]), ("oltp_point_select", "disable", 16))
        t = case["targets"]
        self.assertAlmostEqual(t["direct"]["qps"], 20000)
        self.assertAlmostEqual(t["haproxy"]["qps"], 10000)
        self.assertAlmostEqual(t["ferry"]["p95_ms"], 2.5)
        # CPU: 8 s per 100,000 queries in every round (drift cancels) = 0.08 s per 1,000.
        self.assertAlmostEqual(t["haproxy"]["cpu_s_per_1k"], 0.08, places=4)
        self.assertAlmostEqual(t["ferry"]["cpu_s_per_1k"], 0.1, places=4)
        self.assertAlmostEqual(t["haproxy"]["syscalls_per_query"], 7.0)
        self.assertNotIn("cpu_s_per_1k", t["direct"])
        self.assertAlmostEqual(res["logins"]["targets"]["ferry"]["per_s"], 1900)
        self.assertAlmostEqual(res["logins"]["targets"]["ferry"]["cpu_ms_per_login"], 1000 / 19000, places=4)
        self.assertEqual(res["migration"]["move_p99_ms"], 4.4)
        self.assertEqual(res["migration"]["drain_s"], 0.82)

    def test_targets_missed(self):
        res = self.build()
        self.assertEqual(self.check(res, "QPS ferry/HAProxy")["value"], 0.9)
        self.assertIs(self.check(res, "QPS ferry/HAProxy")["met"], False)
        self.assertIs(self.check(res, "CPU per query ferry/HAProxy")["met"], False)
        self.assertIs(self.check(res, "syscalls per query ferry - HAProxy")["met"], True)  # 7 vs 7
        self.assertIs(self.check(res, "idle session: ferry resident bytes")["met"], True)
        self.assertIs(self.check(res, "logins/s ferry/direct")["met"], True)  # 0.95
        self.assertIs(self.check(res, "move p99 ms")["met"], True)

    def test_targets_met(self):
        res = self.build(ferry_qps=10500, ferry_cpu=7.0, ferry_syscalls=900000)
        self.assertIs(self.check(res, "QPS ferry/HAProxy")["met"], True)
        self.assertIs(self.check(res, "CPU per query ferry/HAProxy")["met"], True)
        # 9 calls per query against HAProxy's 7: more than one over.
        self.assertIs(self.check(res, "syscalls per query ferry - HAProxy")["met"], False)

    def test_table_and_readme_section(self):
        res = self.build()
        text = report.table(res)
        self.assertIn("| oltp_point_select | text | 16 | 20,000 | 10,000 | 9,000 | 0.90 | 0.45 |", text)
        self.assertIn("**missed**", text)
        self.assertIn("5.0 KiB", text)
        readme = f"intro\n{report.README_BEGIN}\nold figures\n{report.README_END}\noutro\n"
        new = report.replace_section(readme, report.readme_section(res, "bench/chart.svg"))
        self.assertTrue(new.startswith("intro\n") and new.endswith("\noutro\n"))
        self.assertNotIn("old figures", new)
        self.assertIn("commit abc1234", new)
        self.assertEqual(report.replace_section(new, report.readme_section(res, "x.svg")).count(report.README_BEGIN), 1)
        with self.assertRaises(ValueError):
            report.replace_section("no markers", "x")

    def test_svg_is_small_valid_xml(self):
        res = self.build()
        # Eight cases as in a full run.
        res["cases"] = [dict(res["cases"][0], threads=t, workload=w)
                        for w in ("oltp_point_select", "oltp_read_write") for t in (16, 64, 128, 256)]
        text = report.svg(res)
        root = ET.fromstring(text)
        self.assertTrue(root.tag.endswith("svg"))
        self.assertLess(len(text.encode()), 50 * 1024)
        bars = [e for e in root.iter() if e.tag.endswith("rect") and e.get("fill") == report.COLORS["ferry"]]
        self.assertEqual(len(bars), 1 + 2 * 8)  # legend + QPS and p95 per case

    def test_compare(self):
        old, new = self.build(), self.build(ferry_qps=10500)
        text = report.compare(old, new)
        self.assertIn("0.90 → 1.05", text)


if __name__ == "__main__":
    unittest.main()
