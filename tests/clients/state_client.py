#!/usr/bin/env python3
"""A client that sets up session state, then prints snapshots of it.

    state_client.py DRIVER SPEC_FILE HOST PORT USER PASSWORD

DRIVER is `pymysql` (text protocol only) or `connector` (mysql-connector-python
with prepared=True: binary prepared statements). SPEC_FILE holds one directive
a line, fields separated by tabs:

    SQL    <statement>                  set-up: run it, discard what it returns
    PREP   <name> <statement>           set-up: prepare it (binary protocol) and run it once
    EXEC   <name> <param> <param>...    snapshot: execute prepared statement <name>
    QUERY  <name> <statement>           snapshot: run it, keep every row
    END    <statement>                  snapshot: run it after the rest (e.g. COMMIT)

Params are typed: i:42  s:text  x:00ff (bytes, hex)  f:1.5 (double)
dec:1.50 (decimal)  n: (NULL).

After set-up it prints one snapshot as a JSON line: {"client": ..., "results":
{name: [[col, ...], ...] | {"error": "..."}}}. Then, for every line read on
stdin, it prints another snapshot, until it reads `quit` or end of input.
Set-up errors end the program with status 1.
"""
import decimal
import json
import sys


def parse_spec(path):
    setup, snapshot = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            kind = fields[0]
            if kind in ("SQL", "PREP"):
                setup.append(fields)
            elif kind in ("EXEC", "QUERY", "END"):
                snapshot.append(fields)
            else:
                raise SystemExit(f"bad spec line: {line!r}")
    return setup, snapshot


def param(p):
    kind, _, value = p.partition(":")
    if kind == "i":
        return int(value)
    if kind == "s":
        return value
    if kind == "x":
        return bytes.fromhex(value)
    if kind == "f":
        return float(value)
    if kind == "dec":
        return decimal.Decimal(value)
    if kind == "n":
        return None
    raise SystemExit(f"bad param {p!r}")


def text(v):
    if v is None:
        return None
    if isinstance(v, (bytes, bytearray)):
        try:
            return bytes(v).decode("ascii")
        except UnicodeDecodeError:
            return "0x" + bytes(v).hex()
    return str(v)


def rows_of(cur):
    if cur.description is None:
        return []
    return [[text(v) for v in row] for row in cur.fetchall()]


def main():
    driver, spec, host, port, user, password = sys.argv[1:7]
    setup, snapshot = parse_spec(spec)
    if driver == "pymysql":
        import pymysql

        conn = pymysql.connect(host=host, port=int(port), user=user, password=password,
                               connect_timeout=10, read_timeout=60, write_timeout=60,
                               autocommit=True)
        errors = (pymysql.err.MySQLError,)
        handshake_id = conn.thread_id()
    elif driver == "connector":
        import mysql.connector

        conn = mysql.connector.connect(host=host, port=int(port), user=user, password=password,
                                       use_pure=True, ssl_disabled=True, connection_timeout=10,
                                       autocommit=True)
        errors = (mysql.connector.Error,)
        handshake_id = conn.connection_id
    else:
        raise SystemExit(f"unknown driver {driver}")

    text_cur = conn.cursor()
    prepared = {}  # name -> (cursor, statement)

    def run_text(sql):
        # No parameters: PyMySQL must not apply %-formatting to the statement.
        text_cur.execute(sql)
        return rows_of(text_cur)

    def execute_prepared(name, params):
        if driver != "connector":
            raise SystemExit("PREP/EXEC need the connector driver")
        cur, sql = prepared[name]
        # The same statement text on the same cursor reuses the statement
        # prepared at set-up (same statement id).
        cur.execute(sql, tuple(params))
        return rows_of(cur)

    def exec_params(name):
        line = next((f for f in snapshot if f[0] == "EXEC" and f[1] == name), None)
        if line is None:
            raise SystemExit(f"PREP {name} has no EXEC line")
        return [param(p) for p in line[2:]]

    for fields in setup:
        try:
            if fields[0] == "SQL":
                run_text(fields[1])
            else:
                # mysql-connector prepares on the first execute: run it once
                # here, under the state set so far.
                name, sql = fields[1], fields[2]
                if driver != "connector":
                    raise SystemExit("PREP needs the connector driver")
                prepared[name] = (conn.cursor(prepared=True), sql)
                execute_prepared(name, exec_params(name))
        except errors as e:
            print(f"set-up failed at {fields!r}: {e}", file=sys.stderr)
            sys.exit(1)

    def snap():
        results = {}
        for fields in snapshot:
            kind = fields[0]
            try:
                if kind == "QUERY":
                    results[fields[1]] = run_text(fields[2])
                elif kind == "EXEC":
                    results[fields[1]] = execute_prepared(fields[1], [param(p) for p in fields[2:]])
                else:
                    run_text(fields[1])
            except errors as e:
                results[fields[1] if kind != "END" else "end"] = {"error": str(e)}
        print(json.dumps({"client": driver, "handshake_id": handshake_id, "results": results}),
              flush=True)

    snap()
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        snap()
    conn.close()


if __name__ == "__main__":
    main()
