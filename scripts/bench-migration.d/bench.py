#!/usr/bin/env python3
"""The client side of scripts/bench-migration: moves sessions through ferry's
admin API and measures what clients and ferry see.

    bench.py moves  --port P --admin A --backends cn1=PORT,... --sessions N --moves M --out FILE
    bench.py drain  --port P --admin A --backends cn1=PORT,... --sessions N --out FILE
    bench.py report MOVES_JSON DRAIN_JSON

`moves`: N sessions (mysql-connector-python, pure Python, so a binary prepared
statement is part of the state) each get session variables, user variables, a
text PREPARE and a binary prepared statement. Then M times: a baseline query on
a session that is not moving, POST /api/sessions/{id}/migrate for another
session, the same query on that session at once (timed), and a wait until
GET /api/sessions/{id} reports the move's outcome and duration. Afterwards
every session's state is compared with a snapshot taken before the first
move, and ferry's counters with the number of moves.

`drain`: N idle PyMySQL sessions with state are opened while only cn1 takes
sessions; cn2 and cn3 are resumed, cn1 drained, and the time until cn1 is
empty (and until every move has finished) is measured; then every session is
checked for its state and for having left cn1.

Each measuring command writes its figures as JSON to --out and exits 1 when
something broke (state lost, a move failed, an error); `report` prints the
table and always exits 0.
"""
import argparse
import concurrent.futures
import gc
import http.client
import json
import os
import re
import signal
import sys
import time

QUERY = "SELECT @@port, @u"


def txt(v):
    """A column value as text (mysql-connector may hand back bytes or bytearray)."""
    return v.decode() if isinstance(v, (bytes, bytearray)) else str(v)


def log(msg):
    print(f"bench-migration: {msg}", file=sys.stderr, flush=True)


class Broken(Exception):
    """Something the benchmark must not tolerate: lost state, a failed move, an error."""


# --------------------------------------------------------------------------- admin API


class Admin:
    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.conn = None

    def call(self, method, path, body=None):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                data = None if body is None else json.dumps(body).encode()
                headers = {"content-type": "application/json"} if data else {}
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                text = resp.read().decode()
                return resp.status, text
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method, path, body=None, expect=(200,)):
        status, text = self.call(method, path, body)
        if status not in expect:
            raise Broken(f"{method} {path} answered {status}: {text}")
        return json.loads(text) if text else None

    def metrics(self):
        status, text = self.call("GET", "/metrics")
        if status != 200:
            raise Broken(f"GET /metrics answered {status}")
        return parse_metrics(text)


def parse_metrics(text):
    """{(name, frozenset(labels)): value} from Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(metrics, name, **labels):
    return metrics.get((name, frozenset(labels.items())), 0.0)


def histogram(metrics, name):
    """[(upper bound, cumulative count)] sorted by bound, +Inf last."""
    rows = []
    for (n, labels), v in metrics.items():
        if n != name + "_bucket":
            continue
        le = dict(labels)["le"]
        rows.append((float("inf") if le == "+Inf" else float(le), v))
    return sorted(rows)


def histogram_diff(after, before):
    b = dict(before)
    return [(le, v - b.get(le, 0.0)) for le, v in after]


def histogram_quantile(buckets, q):
    """The upper bound of the bucket holding quantile q (None without observations)."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    for le, cum in buckets:
        if cum >= rank:
            return le
    return float("inf")


# --------------------------------------------------------------------------- statistics


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def summary(values):
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


# --------------------------------------------------------------------------- sessions


SQL_MODES = [
    "STRICT_TRANS_TABLES,NO_ZERO_DATE,NO_ENGINE_SUBSTITUTION",
    "ANSI_QUOTES,STRICT_ALL_TABLES",
    "NO_BACKSLASH_ESCAPES,ONLY_FULL_GROUP_BY",
    "PIPES_AS_CONCAT,ERROR_FOR_DIVISION_BY_ZERO",
]
TIME_ZONES = ["+02:00", "-05:30", "+09:00", "+00:00"]


class MovingSession:
    """A mysql-connector-python session with typical state, moved by the benchmark."""

    def __init__(self, i, host, port, user, password, database):
        import mysql.connector

        self.i = i
        # database=None makes mysql-connector send CLIENT_CONNECT_WITH_DB with an
        # empty name; see --database.
        self.conn = mysql.connector.connect(
            host=host, port=port, user=user, password=password, database=database,
            use_pure=True, ssl_disabled=True, connection_timeout=10, autocommit=True)
        self.id = self.conn.connection_id  # ferry's handshake id = the admin API's session id
        self.cur = self.conn.cursor()
        self.prep = self.conn.cursor(prepared=True)
        sql_mode, tz = SQL_MODES[i % len(SQL_MODES)], TIME_ZONES[i % len(TIME_ZONES)]
        for sql in (
            f"SET SESSION sql_mode = '{sql_mode}', time_zone = '{tz}', "
            f"group_concat_max_len = {4096 + i}, div_precision_increment = {i % 8 + 1}",
            f"SET @u = 'user-{i}', @n = {1000 + i}",
            "PREPARE s FROM 'SELECT CONCAT(?, ''/'', @@time_zone, ''/'', @@div_precision_increment)'",
        ):
            self.cur.execute(sql)
        # Binary protocol (COM_STMT_PREPARE + COM_STMT_EXECUTE); the same text on the
        # same cursor executes the statement prepared here, so it must survive moves.
        self.bin_sql = "SELECT ? + @n, @@group_concat_max_len, @@sql_mode"
        self.prep.execute(self.bin_sql, (self.i,))
        self.prep.fetchall()

    def query(self, sql):
        self.cur.execute(sql)
        return self.cur.fetchall()

    def timed_query(self):
        t0 = time.perf_counter_ns()
        self.cur.execute(QUERY)
        rows = self.cur.fetchall()
        t1 = time.perf_counter_ns()
        return (t1 - t0) / 1e6, rows[0]

    def state(self):
        """Everything set at start-up, as the session sees it now."""
        row = self.query(
            "SELECT DATABASE(), @@sql_mode, @@time_zone, @@group_concat_max_len, "
            "@@div_precision_increment, @u, @n")[0]
        text_prep = self.query("EXECUTE s USING @u")[0]
        self.prep.execute(self.bin_sql, (self.i,))
        bin_prep = self.prep.fetchall()[0]
        norm = lambda r: [txt(v) for v in r]
        return {"vars": norm(row), "text_prepare": norm(text_prep), "binary_prepare": norm(bin_prep)}

    def close(self):
        try:
            self.conn.close()
        except Exception:
            pass


def wait_move(admin, sid, prev_last, timeout):
    """Polls GET /api/sessions/{sid} until a move newer than prev_last has ended."""
    deadline = time.monotonic() + timeout
    while True:
        s = admin.json("GET", f"/api/sessions/{sid}")
        last = s.get("last_migration")
        if s.get("pending_migration") is None and last is not None and last != prev_last:
            return s
        if time.monotonic() > deadline:
            raise Broken(f"session {sid}: move not finished after {timeout}s: {json.dumps(s)}")
        time.sleep(0.0005)


def cmd_moves(a):
    backends = dict(kv.split("=") for kv in a.backends.split(","))
    port_of = {k: int(v) for k, v in backends.items()}
    backend_at = {v: k for k, v in port_of.items()}
    admin = Admin(a.admin)
    log(f"opening {a.sessions} sessions with state (mysql-connector-python, pure)")
    sessions = [MovingSession(i, "127.0.0.1", a.port, a.user, a.password, a.database or None)
                for i in range(a.sessions)]
    listed = {s["id"]: s for s in admin.json("GET", "/api/sessions")}
    for s in sessions:
        if s.id not in listed:
            raise Broken(f"session {s.id} is not in GET /api/sessions")
    spread = {}
    for s in listed.values():
        spread[s["backend"]] = spread.get(s["backend"], 0) + 1
    log(f"sessions per backend: {spread}")
    before = {s.id: s.state() for s in sessions}

    m0 = admin.metrics()
    prev_last = {s.id: listed[s.id].get("last_migration") for s in sessions}
    n = len(sessions)
    baseline, during, durations = [], [], []
    ran_on = {"new": 0, "old": 0}
    failures = []
    log(f"{a.moves} moves, one at a time, each with a query sent at once on the moving session")
    gc.disable()
    started = time.monotonic()
    try:
        for k in range(a.moves):
            s = sessions[k % n]
            other = sessions[(k + n // 2) % n]
            ms, row = other.timed_query()
            baseline.append(ms)
            if txt(row[1]) != f"user-{other.i}":
                raise Broken(f"session {other.id}: @u is {row[1]!r}, want 'user-{other.i}'")
            status, text = admin.call("POST", f"/api/sessions/{s.id}/migrate", {})
            if status != 202:
                raise Broken(f"POST /api/sessions/{s.id}/migrate answered {status}: {text}")
            ms, row = s.timed_query()
            during.append(ms)
            if txt(row[1]) != f"user-{s.i}":
                raise Broken(f"session {s.id}: @u is {row[1]!r} during a move, want 'user-{s.i}'")
            info = wait_move(admin, s.id, prev_last[s.id], a.move_timeout)
            last = info["last_migration"]
            prev_last[s.id] = last
            if last["outcome"] != "ok":
                failures.append(last)
                log(f"move {k + 1} of session {s.id} failed: {last.get('reason')}")
                continue
            durations.append(float(last["duration_ms"]))
            answered_on = backend_at.get(int(txt(row[0])))
            ran_on["new" if answered_on == last["to"] else "old"] += 1
            if (k + 1) % 200 == 0:
                log(f"  {k + 1} moves, {time.monotonic() - started:.1f}s")
    finally:
        gc.enable()
    elapsed = time.monotonic() - started
    m1 = admin.metrics()

    after = {s.id: s.state() for s in sessions}
    lost = []
    for s in sessions:
        if after[s.id] != before[s.id]:
            lost.append({"session": s.id, "before": before[s.id], "after": after[s.id]})
    final = {s["id"]: s for s in admin.json("GET", "/api/sessions")}
    spread_after = {}
    for s in sessions:
        b = final[s.id]["backend"]
        spread_after[b] = spread_after.get(b, 0) + 1
    for s in sessions:
        s.close()

    succeeded = {t: metric(m1, "ferry_migrations_succeeded_total", trigger=t)
                 - metric(m0, "ferry_migrations_succeeded_total", trigger=t)
                 for t in ("admin", "rebalance", "drain", "failover")}
    failed_total = sum(v - m0.get(k, 0.0) for k, v in m1.items()
                       if k[0] == "ferry_migrations_failed_total")
    pause = histogram_diff(histogram(m1, "ferry_migration_pause_seconds"),
                           histogram(m0, "ferry_migration_pause_seconds"))
    pause_sum = (metric(m1, "ferry_migration_pause_seconds_sum")
                 - metric(m0, "ferry_migration_pause_seconds_sum"))
    dur_hist = histogram_diff(histogram(m1, "ferry_migration_duration_seconds"),
                              histogram(m0, "ferry_migration_duration_seconds"))
    result = {
        "sessions": n,
        "moves": a.moves,
        "elapsed_s": elapsed,
        "spread_before": spread,
        "spread_after": spread_after,
        "move_duration_ms": summary(durations),
        "baseline_query_ms": summary(baseline),
        "during_move_query_ms": summary(during),
        "query_ran_on": ran_on,
        "pause_histogram": [[le, cum] for le, cum in pause],
        "pause_sum_s": pause_sum,
        "pause_p50_le_s": histogram_quantile(pause, 0.50),
        "pause_p99_le_s": histogram_quantile(pause, 0.99),
        "duration_histogram": [[le, cum] for le, cum in dur_hist],
        "succeeded_delta": succeeded,
        "failed_delta": failed_total,
        "move_failures": failures,
        "state_lost": lost,
        "state_checked": n,
    }
    problems = []
    if failures:
        problems.append(f"{len(failures)} moves failed (first: {failures[0].get('reason')})")
    if lost:
        problems.append(f"{len(lost)} of {n} sessions lost state, e.g. {json.dumps(lost[0])}")
    if succeeded["admin"] != a.moves:
        problems.append(f'ferry_migrations_succeeded_total{{trigger="admin"}} rose by '
                        f'{succeeded["admin"]:.0f}, want {a.moves}')
    others = {t: v for t, v in succeeded.items() if t != "admin" and v}
    if others:
        problems.append(f"moves ferry started on its own during the loop: {others}")
    result["problems"] = problems
    write(a.out, result)
    for p in problems:
        log(f"BROKEN: {p}")
    return 1 if problems else 0


# --------------------------------------------------------------------------- drain


def open_idle(i, port, user, password, database):
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password,
                           database=database,
                           connect_timeout=20, read_timeout=60, write_timeout=60,
                           autocommit=True)
    tz = TIME_ZONES[i % len(TIME_ZONES)]
    with conn.cursor() as c:
        c.execute(f"SET SESSION sql_mode = '{SQL_MODES[i % len(SQL_MODES)]}', "
                  f"time_zone = '{tz}', @u = 'idle-{i}'")
        c.execute("PREPARE s FROM 'SELECT CONCAT(?, ''/'', @@time_zone)'")
    return conn


def idle_state(conn):
    with conn.cursor() as c:
        c.execute("SELECT @@port, CONCAT_WS(',', DATABASE(), @@sql_mode), @@time_zone, @u")
        port, sql_mode, tz, u = c.fetchone()
        c.execute("EXECUTE s USING @u")
        (prep,) = c.fetchone()
    return int(port), sql_mode, tz, u, prep


def backends_by_id(admin):
    return {b["id"]: b for b in admin.json("GET", "/api/backends")}


def cmd_drain(a):
    backends = dict(kv.split("=") for kv in a.backends.split(","))
    port_of = {k: int(v) for k, v in backends.items()}
    source, targets = "cn1", [b for b in sorted(port_of) if b != "cn1"]
    admin = Admin(a.admin)
    bs = backends_by_id(admin)
    for t in targets:
        if bs[t]["state"] == "working":
            raise Broken(f"{t} should be draining/drained while the idle sessions open: {bs[t]}")

    log(f"opening {a.sessions} idle sessions on {source} (PyMySQL, 8 at a time)")
    t0 = time.monotonic()
    conns = [None] * a.sessions
    errors = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(open_idle, i, a.port, a.user, a.password, a.database or None): i
                   for i in range(a.sessions)}
        for f in concurrent.futures.as_completed(futures):
            i = futures[f]
            try:
                conns[i] = f.result()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"session {i}: {e}")
    if errors:
        for c in conns:
            if c is not None:
                c.close()
        raise Broken(f"{len(errors)} of {a.sessions} sessions could not be opened; "
                     f"first: {errors[0]}")
    log(f"  opened in {time.monotonic() - t0:.1f}s")
    ids = [c.thread_id() for c in conns]
    want = {}
    for i, c in enumerate(conns):
        port, sql_mode, tz, u, prep = idle_state(c)
        if port != port_of[source]:
            raise Broken(f"session {ids[i]} runs on port {port}, want {source} ({port_of[source]})")
        want[i] = (sql_mode, tz, u, prep)
    bs = backends_by_id(admin)
    if bs[source]["connections"] != a.sessions:
        raise Broken(f"{source} counts {bs[source]['connections']} sessions, want {a.sessions}")

    for t in targets:
        admin.json("POST", f"/api/backends/{t}/resume")
    bs = backends_by_id(admin)
    for t in targets:
        if bs[t]["state"] != "working":
            raise Broken(f"{t} did not resume: {bs[t]}")
    m0 = admin.metrics()
    time.sleep(0.5)  # let ferry's control loop settle; nothing must move yet
    if backends_by_id(admin)[source]["connections"] != a.sessions:
        raise Broken(f"sessions left {source} before the drain (is rebalancing off?)")

    log(f"POST /api/backends/{source}/drain")
    gc.disable()
    t_start = time.monotonic()
    admin.json("POST", f"/api/backends/{source}/drain")
    t_empty = None
    deadline = t_start + a.timeout
    while True:
        b = admin.json("GET", f"/api/backends/{source}")
        now = time.monotonic()
        if b["connections"] == 0 and b["state"] == "drained":
            t_empty = now - t_start
            break
        if now > deadline:
            raise Broken(f"{source} still has {b['connections']} sessions ({b['state']}) "
                         f"after {a.timeout}s: {json.dumps(b)}")
        time.sleep(0.005)
    # cn1's count drops when each move starts; wait for the moves themselves to end.
    mine = set(ids)
    while True:
        sessions = [s for s in admin.json("GET", "/api/sessions") if s["id"] in mine]
        now = time.monotonic()
        busy = [s for s in sessions
                if s["backend"] == source or s["pending_migration"] is not None]
        if not busy and len(sessions) == len(mine):
            t_done = now - t_start
            break
        if len(sessions) != len(mine):
            raise Broken(f"{len(mine) - len(sessions)} sessions disappeared during the drain")
        if now > deadline:
            raise Broken(f"{len(busy)} sessions still on {source} or moving after {a.timeout}s, "
                         f"e.g. {json.dumps(busy[0])}")
        time.sleep(0.02)
    gc.enable()
    m1 = admin.metrics()
    bs = backends_by_id(admin)
    spread = {t: bs[t]["connections"] for t in [source] + targets}
    moved_by_api = {}
    for s in sessions:
        moved_by_api[s["backend"]] = moved_by_api.get(s["backend"], 0) + 1
    durations = [float(s["last_migration"]["duration_ms"]) for s in sessions
                 if s.get("last_migration") and s["last_migration"]["outcome"] == "ok"]

    log(f"checking the state of {'all' if a.verify >= a.sessions else a.verify} sessions")
    step = max(1, a.sessions // max(1, min(a.verify, a.sessions)))
    sample = list(range(0, a.sessions, step))[: a.verify]
    lost = []
    for i in sample:
        try:
            port, sql_mode, tz, u, prep = idle_state(conns[i])
        except Exception as e:  # noqa: BLE001 - a dead session is lost state
            lost.append({"session": ids[i], "error": str(e)})
            continue
        if (sql_mode, tz, u, prep) != want[i] or port == port_of[source]:
            lost.append({"session": ids[i], "want": want[i], "port": port,
                         "got": (sql_mode, tz, u, prep)})
    for c in conns:
        try:
            c.close()
        except Exception:  # noqa: BLE001
            pass

    succeeded = {t: metric(m1, "ferry_migrations_succeeded_total", trigger=t)
                 - metric(m0, "ferry_migrations_succeeded_total", trigger=t)
                 for t in ("admin", "rebalance", "drain", "failover")}
    failed_total = sum(v - m0.get(k, 0.0) for k, v in m1.items()
                       if k[0] == "ferry_migrations_failed_total")
    result = {
        "sessions": a.sessions,
        "empty_s": t_empty,
        "done_s": t_done,
        "spread": spread,
        "sessions_by_backend": moved_by_api,
        "move_duration_ms": summary(durations),
        "succeeded_delta": succeeded,
        "failed_delta": failed_total,
        "verified": len(sample),
        "state_lost": lost,
    }
    problems = []
    if lost:
        problems.append(f"{len(lost)} of {len(sample)} checked sessions lost state, "
                        f"e.g. {json.dumps(lost[0])}")
    if succeeded["drain"] != a.sessions:
        problems.append(f'ferry_migrations_succeeded_total{{trigger="drain"}} rose by '
                        f'{succeeded["drain"]:.0f}, want {a.sessions}')
    if failed_total:
        result["note_failed"] = f"{failed_total:.0f} move attempts failed and were retried"
    result["problems"] = problems
    write(a.out, result)
    for p in problems:
        log(f"BROKEN: {p}")
    return 1 if problems else 0


# --------------------------------------------------------------------------- report


def write(path, result):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


def fmt_ms(v):
    return "-" if v is None else f"{v:.2f} ms"


def cmd_report(a):
    mv = json.load(open(a.moves, encoding="utf-8")) if a.moves != "-" else None
    dr = json.load(open(a.drain, encoding="utf-8")) if a.drain != "-" else None
    rows = []  # (metric, value, target, verdict)

    def judged(name, value, limit, unit_fmt, target_text):
        if value is None:
            rows.append((name, "-", target_text, "MISS"))
        else:
            rows.append((name, unit_fmt(value), target_text, "PASS" if value <= limit else "MISS"))

    if mv:
        print()
        print(f"session moves: {mv['moves']} moves of {mv['sessions']} sessions with state "
              f"in {mv['elapsed_s']:.1f}s; sessions per backend before {mv['spread_before']}, "
              f"after {mv['spread_after']}")
        print("ferry_migration_pause_seconds (this run; a client command waited this long for a move):")
        prev = 0
        for le, cum in mv["pause_histogram"]:
            bound = "+Inf" if le == float("inf") else f"{le * 1000:g} ms"
            print(f"  le {bound:>8}  cumulative {cum:6.0f}  in bucket {cum - prev:6.0f}")
            prev = cum
        count = mv["pause_histogram"][-1][1] if mv["pause_histogram"] else 0
        if count:
            print(f"  count {count:.0f}, mean {mv['pause_sum_s'] / count * 1000:.2f} ms")
        print(f"the query sent right after each move request was answered by the new backend "
              f"{mv['query_ran_on']['new']} times, by the old one (it reached ferry before the "
              f"move began; the move waited for it) {mv['query_ran_on']['old']} times; ferry held "
              f"it for a move {count:.0f} times (otherwise it arrived after the swap)")
        d, q, b = mv["move_duration_ms"], mv["during_move_query_ms"], mv["baseline_query_ms"]
        rows.append(("move duration p50 (admin API)", fmt_ms(d.get("p50")), "", ""))
        judged("move duration p99 (admin API)", d.get("p99"), 5.0, fmt_ms, "<= 5 ms")
        rows.append(("move duration max", fmt_ms(d.get("max")), "", ""))
        rows.append(("query during move p50 (client)", fmt_ms(q.get("p50")), "", ""))
        judged("query during move p99 (client)", q.get("p99"), 5.0, fmt_ms, "<= 5 ms")
        rows.append(("baseline query p50 (client)", fmt_ms(b.get("p50")), "", ""))
        rows.append(("baseline query p99 (client)", fmt_ms(b.get("p99")), "", ""))
        if q.get("p50") is not None and b.get("p50") is not None:
            rows.append(("added by the move, p50 / p99",
                         f"{q['p50'] - b['p50']:.2f} / {q['p99'] - b['p99']:.2f} ms", "", ""))
        p50, p99 = mv.get("pause_p50_le_s"), mv.get("pause_p99_le_s")
        le = lambda v: "-" if v is None else ("> 500 ms" if v == float("inf") else f"<= {v * 1000:g} ms")
        rows.append(("pause p50 (ferry histogram)", le(p50), "", ""))
        rows.append(("pause p99 (ferry histogram)", le(p99), "<= 5 ms",
                     "-" if p99 is None else ("PASS" if p99 <= 0.005 else "MISS")))
        rows.append(('migrations_succeeded{admin} delta', f"{mv['succeeded_delta']['admin']:.0f}",
                     f"= {mv['moves']}",
                     "ok" if mv['succeeded_delta']['admin'] == mv['moves'] else "BROKEN"))
        rows.append(("sessions with state intact", f"{mv['state_checked'] - len(mv['state_lost'])}"
                     f"/{mv['state_checked']}", "all",
                     "ok" if not mv["state_lost"] else "BROKEN"))
    if dr:
        print()
        print(f"drain: {dr['sessions']} idle sessions on cn1 -> {dr['sessions_by_backend']}; "
              f"moves (admin API) p50 {fmt_ms(dr['move_duration_ms'].get('p50'))}, "
              f"p99 {fmt_ms(dr['move_duration_ms'].get('p99'))}")
        if dr.get("note_failed"):
            print(f"  note: {dr['note_failed']}")
        n = dr["sessions"]
        rows.append((f"drain {n}: cn1 shows 0 / drained", f"{dr['empty_s']:.3f} s", "", ""))
        judged(f"drain {n}: every move finished", dr["done_s"], 2.0, lambda v: f"{v:.3f} s",
               "<= 2 s")
        spread = dr["spread"]
        rows.append(("drain spread cn2 / cn3",
                     " / ".join(str(spread.get(b, 0)) for b in sorted(spread) if b != "cn1"),
                     "", ""))
        rows.append(('migrations_succeeded{drain} delta', f"{dr['succeeded_delta']['drain']:.0f}",
                     f"= {n}", "ok" if dr['succeeded_delta']['drain'] == n else "BROKEN"))
        rows.append(("drained sessions with state intact",
                     f"{dr['verified'] - len(dr['state_lost'])}/{dr['verified']}", "all checked",
                     "ok" if not dr["state_lost"] else "BROKEN"))
    w = [max(len(str(r[i])) for r in rows + [("metric", "value", "target", "result")])
         for i in range(4)]
    print()
    line = lambda r: "  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)).rstrip()
    print(line(("metric", "value", "target", "result")))
    print(line(tuple("-" * x for x in w)))
    for r in rows:
        print(line(r))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("moves", "drain"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True, help="ferry's MySQL port")
        s.add_argument("--admin", required=True, help="ferry's admin API, IP:port")
        s.add_argument("--backends", required=True, help="cn1=PORT,cn2=PORT,cn3=PORT")
        s.add_argument("--user", default="root")
        s.add_argument("--password", default="111")
        s.add_argument("--database", default="test",
                       help="database to connect to ('' for none; with mysql-connector that "
                            "sends CONNECT_WITH_DB with an empty name)")
        s.add_argument("--sessions", type=int, required=True)
        s.add_argument("--out", required=True)
    sub.choices["moves"].add_argument("--moves", type=int, default=1000)
    sub.choices["moves"].add_argument("--move-timeout", type=float, default=10.0)
    sub.choices["drain"].add_argument("--timeout", type=float, default=120.0)
    sub.choices["drain"].add_argument("--verify", type=int, default=1000000,
                                      help="how many sessions to check afterwards (default all)")
    r = sub.add_parser("report")
    r.add_argument("moves", help="JSON from `moves`, or - for none")
    r.add_argument("drain", help="JSON from `drain`, or - for none")
    a = p.parse_args()
    # Ctrl-C / SIGTERM: leave at once (the kernel closes the sockets); waiting for
    # connection threads or half-done moves only delays the caller's clean-up.
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        signal.signal(sig, lambda *_, code=code: os._exit(code))
    try:
        return {"moves": cmd_moves, "drain": cmd_drain, "report": cmd_report}[a.cmd](a)
    except Broken as e:
        log(f"BROKEN: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
