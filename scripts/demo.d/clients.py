#!/usr/bin/env python3
"""The demo's stateful clients: sessions that hold state and check it after every move.

`run`: N clients (mysql-connector-python, pure Python, so the binary prepared
statement is a real COM_STMT_PREPARE) connect through ferry and each sets user
variables, session variables, a text PREPARE and a binary prepared statement
once. Then, until the stop file appears, each one loops:

  - inserts a row with a unique id (autocommit, or now and then a two-row
    transaction); a row counts as acknowledged once its INSERT or COMMIT
    returned OK;
  - reads its state back (both prepared statements and the variables) and the
    backend it is on (@@port, @@wsrep_node_name). A different backend than the
    last read is a move; the state must be what it set, every time.

A client error is written down with its time, code and the statement it hit;
a lost connection (2013/2006) is re-opened and the state set again (a row whose
INSERT or COMMIT got no answer has an unknown outcome: not acknowledged, and
looked for at the end). Events go to --events as they happen, one line each;
the totals go to --out as JSON.

`verify`: reads the acknowledged ids from the --out file and checks that every
one is present on every Galera node given (wsrep_sync_wait=1), and how many of
the unknown-outcome rows made it; adds that to the JSON.
"""

import argparse
import json
import os
import sys
import threading
import time

TABLE = "demo.acked"
LOST = (2006, 2013, 2055)
TIME_ZONES = ["+05:30", "-03:00", "+09:00", "+01:00", "-07:00", "+11:00"]


def now_rel(t0):
    return time.time() - t0


class Events:
    """One line per event, flushed at once, shared by every client thread."""

    def __init__(self, path, t0):
        self.f = open(path, "a", buffering=1) if path else None
        self.t0 = t0
        self.lock = threading.Lock()

    def say(self, text):
        line = f"{now_rel(self.t0):7.1f}s  {text}"
        with self.lock:
            if self.f:
                self.f.write(line + "\n")
            else:
                print(line, flush=True)


def err_code(e):
    return getattr(e, "errno", None) or 0


def txt(v):
    if isinstance(v, (bytes, bytearray)):
        return v.decode()
    return v if v is None or isinstance(v, str) else str(v)


class Client(threading.Thread):
    def __init__(self, i, a, events, t0):
        super().__init__(daemon=True)
        self.i, self.a, self.events, self.t0 = i, a, events, t0
        self.tz = TIME_ZONES[i % len(TIME_ZONES)]
        self.tag = f"client-{i}-state"
        self.expected = None  # the state as the session set it
        self.seq = 0
        self.acked = []
        self.unknown = []  # ids whose INSERT/COMMIT got no answer
        self.errors = []  # {t, code, msg, during}
        self.checks = 0
        self.checks_failed = 0
        self.moves = 0
        self.moves_checked = 0
        self.reconnects = 0
        self.backend = None
        self.conn = None
        self.fatal = None

    # -------------------------------------------------------------- session

    def connect(self):
        import mysql.connector

        self.conn = mysql.connector.connect(
            host="127.0.0.1", port=self.a.port, user=self.a.user, password=self.a.password,
            database="demo", use_pure=True, ssl_disabled=True, connection_timeout=10,
            autocommit=True)
        self.cur = self.conn.cursor()
        self.prep_check = self.conn.cursor(prepared=True)
        self.prep_insert = self.conn.cursor(prepared=True)
        for sql in (
            f"SET SESSION time_zone = '{self.tz}', div_precision_increment = {self.i % 8 + 2}",
            f"SET @demo_n = {1000 + self.i}, @demo_s = '{self.tag}'",
            "PREPARE demo_text FROM 'SELECT CONCAT(?, ''/'', @@time_zone, ''/'', @demo_n)'",
        ):
            self.cur.execute(sql)
        # Binary protocol: the same text on the same cursor executes the statement
        # prepared by its first execute, so that statement must survive every move.
        self.check_sql = (
            "SELECT ? + @demo_n, @demo_s, @@time_zone, @@div_precision_increment, "
            "@@port, @@wsrep_node_name")
        self.insert_sql = f"INSERT INTO {TABLE} (id, client, node, kind) VALUES (?, ?, @@wsrep_node_name, ?)"
        self.expected = {
            "binary": str(1000 + self.i + 7),
            "user_var": self.tag,
            "time_zone": self.tz,
            "div_precision_increment": str(self.i % 8 + 2),
            "text_prepare": f"x/{self.tz}/{1000 + self.i}",
        }
        self.backend = None

    def read_state(self):
        self.prep_check.execute(self.check_sql, (7,))
        row = [txt(v) for v in self.prep_check.fetchall()[0]]
        self.cur.execute("EXECUTE demo_text USING @demo_x")
        text = txt(self.cur.fetchall()[0][0])
        state = {
            "binary": row[0],
            "user_var": row[1],
            "time_zone": row[2],
            "div_precision_increment": row[3],
            "text_prepare": text,
        }
        return state, f"{row[5]}:{row[4]}"

    def insert(self, kind):
        self.seq += 1
        rid = (self.i + 1) * 1_000_000 + self.seq
        self.prep_insert.execute(self.insert_sql, (rid, self.i, kind))
        return rid

    def step(self):
        """One iteration; returns normally or raises the client error."""
        if self.seq % 5 == 4:
            # A two-row transaction: both rows are acknowledged by the COMMIT.
            self.during = "BEGIN/INSERT/INSERT/COMMIT"
            self.cur.execute("BEGIN")
            ids = [self.insert("trx"), self.insert("trx")]
            self.pending = ids
            self.cur.execute("COMMIT")
        else:
            self.during = "INSERT"
            self.pending = [self.seq + 1 + (self.i + 1) * 1_000_000]
            ids = [self.insert("auto")]
        self.acked.extend(ids)
        self.pending = []
        self.during = "state check"
        state, backend = self.read_state()
        self.checks += 1
        moved = self.backend is not None and backend != self.backend
        if state != self.expected:
            self.checks_failed += 1
            bad = {k: (v, state.get(k)) for k, v in self.expected.items() if state.get(k) != v}
            self.events.say(f"client {self.i}: STATE DIFFERS on {backend}: {bad}")
        if moved:
            self.moves += 1
            if state == self.expected:
                self.moves_checked += 1
            self.events.say(
                f"client {self.i}: moved {self.backend} -> {backend}; "
                f"variables and prepared statements {'intact' if state == self.expected else 'DIFFER'}")
        self.backend = backend

    def run(self):
        import mysql.connector

        self.cur = None
        self.during = "connect"
        self.pending = []
        try:
            self.connect()
        except Exception as e:  # the first login must work
            self.fatal = f"connect: {e}"
            self.events.say(f"client {self.i}: cannot connect: {e}")
            return
        self.cur.execute("SET @demo_x = 'x'")
        while not os.path.exists(self.a.stop_file):
            try:
                self.step()
            except mysql.connector.Error as e:
                code = err_code(e)
                self.errors.append({"t": round(now_rel(self.t0), 1), "code": code,
                                    "msg": str(e)[:200], "during": self.during})
                self.events.say(f"client {self.i}: error {code} during {self.during}: {str(e)[:120]}")
                self.unknown.extend(self.pending)
                self.pending = []
                if code in LOST or not self.conn.is_connected():
                    self.reopen()
                else:
                    try:
                        self.cur.execute("ROLLBACK")
                    except mysql.connector.Error:
                        self.reopen()
            time.sleep(self.a.pause)
        try:
            self.conn.close()
        except Exception:
            pass

    def reopen(self):
        import mysql.connector

        while not os.path.exists(self.a.stop_file):
            try:
                self.connect()
                self.cur.execute("SET @demo_x = 'x'")
                self.reconnects += 1
                self.events.say(f"client {self.i}: reconnected, state set again")
                return
            except mysql.connector.Error as e:
                self.errors.append({"t": round(now_rel(self.t0), 1), "code": err_code(e),
                                    "msg": str(e)[:200], "during": "reconnect"})
                time.sleep(0.5)

    def result(self):
        return {
            "client": self.i,
            "checks": self.checks,
            "checks_failed": self.checks_failed,
            "moves": self.moves,
            "moves_checked": self.moves_checked,
            "reconnects": self.reconnects,
            "errors": self.errors,
            "acked": self.acked,
            "unknown": self.unknown,
            "fatal": self.fatal,
        }


def cmd_run(a):
    t0 = a.t0 or time.time()
    events = Events(a.events, t0)
    clients = [Client(i, a, events, t0) for i in range(a.clients)]
    for c in clients:
        c.start()
        time.sleep(0.05)
    for c in clients:
        c.join()
    out = {"clients": [c.result() for c in clients]}
    with open(a.out, "w") as f:
        json.dump(out, f)


def cmd_verify(a):
    import pymysql

    with open(a.out) as f:
        res = json.load(f)
    acked = {i for c in res["clients"] for i in c["acked"]}
    unknown = {i for c in res["clients"] for i in c["unknown"]}
    nodes = {}
    for addr in a.nodes.split(","):
        host, port = addr.rsplit(":", 1)
        conn = pymysql.connect(host=host, port=int(port), user="root", password="111",
                               connect_timeout=10, read_timeout=60)
        with conn.cursor() as cur:
            cur.execute("SET SESSION wsrep_sync_wait = 1")
            cur.execute(f"SELECT id FROM {TABLE}")
            present = {r[0] for r in cur.fetchall()}
        conn.close()
        nodes[addr] = {"rows": len(present), "acked_missing": len(acked - present),
                       "unknown_present": len(unknown & present)}
    res["verify"] = {"acked": len(acked), "unknown": len(unknown), "nodes": nodes,
                     "lost": max(v["acked_missing"] for v in nodes.values())}
    with open(a.out, "w") as f:
        json.dump(res, f)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--user", default="app")
    r.add_argument("--password", default="secret")
    r.add_argument("--clients", type=int, default=4)
    r.add_argument("--pause", type=float, default=0.2, help="seconds between iterations")
    r.add_argument("--stop-file", required=True)
    r.add_argument("--events")
    r.add_argument("--out", required=True)
    r.add_argument("--t0", type=float, help="epoch seconds the event times are relative to")
    v = sub.add_parser("verify")
    v.add_argument("--out", required=True)
    v.add_argument("--nodes", required=True, help="host:port,... of the Galera nodes")
    a = p.parse_args()
    {"run": cmd_run, "verify": cmd_verify}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
