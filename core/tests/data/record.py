#!/usr/bin/env python3
"""Records real client<->server byte streams for the tracker's trace tests.

    record.py HOST PORT USER PASSWORD OUTDIR [SCENARIO...]

Logs in to a MariaDB/MySQL server with mysql_native_password, then plays each
scenario below twice (with and without CLIENT_DEPRECATE_EOF) and writes
OUTDIR/<scenario>[-eof].trace: a `caps` line with the negotiated capabilities,
then one line per chunk exactly as sent (`C <hex>`) or received (`S <hex>`)
after login (only the named scenarios when some are given). The client reads until the server has been quiet for a moment, so
it needs no knowledge of response shapes (that is what is under test).
"""

import hashlib
import os
import socket
import struct
import sys
import time

PROTOCOL_41 = 1 << 9
LONG_PASSWORD = 1
LONG_FLAG = 1 << 2
CONNECT_WITH_DB = 1 << 3
LOCAL_FILES = 1 << 7
TRANSACTIONS = 1 << 13
SECURE_CONNECTION = 1 << 15
MULTI_STATEMENTS = 1 << 16
MULTI_RESULTS = 1 << 17
PS_MULTI_RESULTS = 1 << 18
PLUGIN_AUTH = 1 << 19
SESSION_TRACK = 1 << 23
DEPRECATE_EOF = 1 << 24
# MariaDB extended capabilities (the last 4 filler bytes of the response; CLIENT_MYSQL = LONG_PASSWORD clear).
CACHE_METADATA = 1 << 4

QUIET = 0.25


def packet(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq & 0xFF]) + payload


def scramble(password, salt):
    p1 = hashlib.sha1(password.encode()).digest()
    p2 = hashlib.sha1(p1).digest()
    x = hashlib.sha1(salt + p2).digest()
    return bytes(a ^ b for a, b in zip(p1, x))


class Conn:
    def __init__(self, host, port, user, password, deprecate_eof, mariadb=0):
        self.s = socket.create_connection((host, port))
        self.buf = b""
        self.log = None
        hs = self.read_packet()
        pos = 1 + hs[1:].index(b"\0") + 1
        pos += 4
        salt = hs[pos:pos + 8]
        pos += 8 + 1
        caps = struct.unpack("<H", hs[pos:pos + 2])[0]
        pos += 2 + 1 + 2
        caps |= struct.unpack("<H", hs[pos:pos + 2])[0] << 16
        pos += 2 + 1 + 10
        salt += hs[pos:pos + 12]
        want = (LONG_PASSWORD | LONG_FLAG | CONNECT_WITH_DB | LOCAL_FILES | PROTOCOL_41
                | TRANSACTIONS | SECURE_CONNECTION | MULTI_STATEMENTS | MULTI_RESULTS
                | PS_MULTI_RESULTS | PLUGIN_AUTH | SESSION_TRACK
                | (DEPRECATE_EOF if deprecate_eof else 0))
        self.caps = want & caps
        if mariadb:
            self.caps &= ~LONG_PASSWORD
        pos_ext = 1 + hs[1:].index(b"\0") + 1 + 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 6
        self.mariadb = mariadb & struct.unpack("<I", hs[pos_ext:pos_ext + 4])[0]
        self.user, self.password = user, password
        auth = scramble(password, salt)
        resp = struct.pack("<IIB", self.caps, 1 << 24, 45) + b"\0" * 19 + struct.pack("<I", self.mariadb)
        resp += user.encode() + b"\0" + bytes([len(auth)]) + auth
        resp += b"test\0" + b"mysql_native_password\0"
        self.s.sendall(packet(1, resp))
        reply = self.read_packet()
        if reply[0] != 0:
            raise SystemExit("login failed: %r" % reply)

    def read_packet(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + int.from_bytes(self.buf[:3], "little"):
            self.buf += self.s.recv(65536)
        n = int.from_bytes(self.buf[:3], "little")
        p, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return p

    def send(self, data):
        self.log.append("C " + data.hex())
        self.s.sendall(data)

    def command(self, payload):
        self.send(packet(0, payload))

    def drain(self):
        """Reads until the server is quiet; returns everything read."""
        got = b""
        self.s.settimeout(QUIET)
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    break
                self.log.append("S " + chunk.hex())
                got += chunk
        except socket.timeout:
            pass
        self.s.settimeout(None)
        return got

    def query(self, sql):
        self.command(b"\x03" + sql.encode())
        return self.drain()


def stmt(code, sid, rest=b""):
    return bytes([code]) + struct.pack("<I", sid) + rest


def prepare(c, sql):
    c.command(b"\x16" + sql.encode())
    got = c.drain()
    return struct.unpack("<I", got[5:9])[0]


SETUP = [
    "SET session_track_system_variables='*', session_track_schema=ON, "
    "session_track_state_change=ON, session_track_transaction_info='STATE'",
]


def multi_statement_error(c):
    c.query("SELECT 1; SELECT * FROM no_such_table; SELECT 2")
    c.query("BEGIN; INSERT INTO rec_t VALUES (1); SELECT 3")
    c.query("COMMIT")


def procedure_two_results(c):
    c.query("DROP PROCEDURE IF EXISTS rec_p")
    c.query("CREATE PROCEDURE rec_p() BEGIN SELECT 1 AS a; SELECT 'x' AS b, 2 AS c; END")
    c.query("CALL rec_p()")


def cursor_fetch(c):
    sid = prepare(c, "SELECT seq FROM seq_1_to_10")
    c.command(stmt(0x17, sid, b"\x01\x01\x00\x00\x00"))
    c.drain()
    for _ in range(3):
        c.command(stmt(0x1C, sid, struct.pack("<I", 4)))
        c.drain()
    c.command(stmt(0x19, sid))
    c.query("SELECT 'after'")


def local_infile(c):
    c.query("DELETE FROM rec_t")
    c.command(b"\x03LOAD DATA LOCAL INFILE 'rec.csv' INTO TABLE rec_t")
    got = c.drain()
    seq = got[3]
    c.send(packet(seq + 1, b"10\n11\n12\n"))
    c.send(packet(seq + 2, b""))
    c.drain()
    c.query("SELECT COUNT(*) FROM rec_t")


def send_long_data(c):
    sid = prepare(c, "INSERT INTO rec_blob VALUES (?)")
    c.command(stmt(0x18, sid, b"\x00\x00" + b"a" * 1000))
    c.command(stmt(0x18, sid, b"\x00\x00" + b"b" * 1000))
    c.command(stmt(0x17, sid, b"\x00\x01\x00\x00\x00" + b"\x00" + b"\x01" + b"\xfc\x00"))
    c.drain()
    c.command(stmt(0x19, sid))
    c.query("SELECT LENGTH(b) FROM rec_blob")


def long_result(c):
    c.query("SELECT seq, REPEAT('x', seq % 7) FROM seq_1_to_700")


def state_items(c):
    c.query("USE test")
    c.query("SET @u = 1, sql_mode = 'ANSI_QUOTES'")
    c.query("CREATE TEMPORARY TABLE rec_tmp (a INT); SELECT GET_LOCK('rec', 1)")
    c.query("DROP TEMPORARY TABLE rec_tmp; SELECT RELEASE_LOCK('rec')")
    c.command(b"\x1f")
    c.drain()
    c.command(b"\x0e")
    c.drain()
    c.command(b"\x09")
    c.drain()


def other_commands(c):
    c.command(b"\x04rec_t\x00")
    c.drain()
    c.command(b"\x1b\x00\x00")
    c.drain()
    c.command(b"\x1b\x01\x00")
    c.drain()
    c.query("SELECT 1 FROM rec_t WHERE a = ANY (SELECT 1) LIMIT 1")
    # Change user with a plugin the server does not use for root: it answers with an auth switch.
    c.command(b"\x11" + c.user.encode() + b"\x00\x00test\x00\x2d\x00caching_sha2_password\x00")
    got = c.drain()
    if got[4] == 0xFE:
        salt = got[4:].split(b"\x00", 2)[1][:20]
        c.send(packet(got[3] + 1, scramble(c.password, salt)))
        c.drain()
    c.query("SELECT USER()")


def stored_block_cursor(c):
    # The block's own cursor leaves SERVER_STATUS_CURSOR_EXISTS on an ordinary text result.
    c.query("BEGIN NOT ATOMIC DECLARE v INT; DECLARE cur CURSOR FOR SELECT 7; OPEN cur; "
            "FETCH cur INTO v; CLOSE cur; SELECT v; END")
    c.query("SELECT 'after'")


def stored_procedure_cursor(c):
    c.query("DROP PROCEDURE IF EXISTS rec_cur")
    c.query("CREATE PROCEDURE rec_cur() BEGIN DECLARE v INT; DECLARE cur CURSOR FOR SELECT 7; "
            "OPEN cur; FETCH cur INTO v; SELECT v; SELECT v + 1 AS w; CLOSE cur; END")
    c.query("CALL rec_cur()")
    # The same procedure called through a prepared statement, without and with a cursor asked for.
    sid = prepare(c, "CALL rec_cur()")
    c.command(stmt(0x17, sid, b"\x00\x01\x00\x00\x00"))
    c.drain()
    c.command(stmt(0x17, sid, b"\x01\x01\x00\x00\x00"))
    c.drain()
    c.command(stmt(0x19, sid))
    c.query("SELECT 'after'")


def cursor_for_loop(c):
    c.query("FOR rec IN (SELECT COLLATION_NAME FROM INFORMATION_SCHEMA.COLLATION_CHARACTER_SET_APPLICABILITY "
            "WHERE CHARACTER_SET_NAME='utf8mb4' AND COLLATION_NAME RLIKE 'uca1400_ai' ORDER BY ID LIMIT 3) DO "
            "SET NAMES utf8mb4; SET character_set_results=NULL; "
            "EXECUTE IMMEDIATE CONCAT('SELECT CONVERT(\\'\\' USING utf8mb4) COLLATE ', rec.COLLATION_NAME, "
            "' AS ', rec.COLLATION_NAME, ' LIMIT 0'); END FOR")
    c.query("SET NAMES utf8mb4")


def signal_in_procedure(c):
    c.query("DROP PROCEDURE IF EXISTS rec_sig")
    c.query("CREATE PROCEDURE rec_sig() BEGIN SELECT 1 AS a; "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'rec failed', MYSQL_ERRNO = 1644; END")
    c.query("CALL rec_sig()")
    sid = prepare(c, "CALL rec_sig()")
    c.command(stmt(0x17, sid, b"\x00\x01\x00\x00\x00"))
    c.drain()
    c.command(stmt(0x19, sid))
    c.query("SELECT 'after'")


def prepared_call_out(c):
    c.query("DROP PROCEDURE IF EXISTS rec_out")
    c.query("CREATE PROCEDURE rec_out(IN a INT, OUT b INT, INOUT d VARCHAR(10)) "
            "BEGIN SELECT a AS got; SET b = a * 2; SET d = CONCAT(d, '!'); END")
    sid = prepare(c, "CALL rec_out(?, ?, ?)")
    # Three parameters: bitmap 0 (no NULLs), new types: LONG, LONG, VAR_STRING.
    params = b"\x00" + b"\x01" + b"\x03\x00\x03\x00\xfd\x00"
    params += struct.pack("<i", 21) + struct.pack("<i", 0) + b"\x02hi"
    c.command(stmt(0x17, sid, b"\x00\x01\x00\x00\x00" + params))
    c.drain()
    c.command(stmt(0x19, sid))
    c.query("SELECT 'after'")


def pipelined_direct_execute(c):
    # MariaDB's direct execute: PREPARE, EXECUTE and CLOSE of "the last prepared" (0xFFFFFFFF) in one write.
    last = 0xFFFFFFFF
    data = packet(0, b"\x16SELECT ? + 1 AS n")
    data += packet(0, stmt(0x17, last, b"\x00\x01\x00\x00\x00" + b"\x00\x01\x03\x00" + struct.pack("<i", 41)))
    data += packet(0, stmt(0x19, last))
    data += packet(0, b"\x03SELECT 'after'")
    c.send(data)
    c.drain()
    # Long data, execute, reset, execute and close of the last prepared, then a query, all at once.
    data = packet(0, b"\x16SELECT ? AS m")
    data += packet(0, stmt(0x18, last, b"\x00\x00" + b"xy"))
    data += packet(0, stmt(0x17, last, b"\x00\x01\x00\x00\x00" + b"\x00\x01\xfe\x00"))
    data += packet(0, stmt(0x1a, last))
    data += packet(0, stmt(0x17, last, b"\x00\x01\x00\x00\x00" + b"\x00\x01\xfd\x00" + b"\x02ab"))
    data += packet(0, stmt(0x19, last))
    data += packet(0, b"\x03SELECT 'end'")
    c.send(data)
    c.drain()
    # After a failed prepare, and after closing the last prepared, "the last prepared" names nothing.
    data = packet(0, b"\x16SELEC oops")
    data += packet(0, stmt(0x17, last, b"\x00\x01\x00\x00\x00"))
    data += packet(0, b"\x16SELECT 5")
    data += packet(0, stmt(0x19, last))
    data += packet(0, stmt(0x17, last, b"\x00\x01\x00\x00\x00"))
    c.send(data)
    c.drain()


def cache_metadata(c):
    # MariaDB's metadata cache: every column count carries a "metadata follows" byte.
    c.query("SELECT 1 AS a; SELECT 'b' AS b")
    sid = prepare(c, "SELECT seq, 'x' AS s FROM seq_1_to_3")
    for _ in range(2):  # the second execute skips the definitions (flag 0)
        c.command(stmt(0x17, sid, b"\x00\x01\x00\x00\x00"))
        c.drain()
    # A cursor, its metadata skipped, then its rows fetched.
    c.command(stmt(0x17, sid, b"\x01\x01\x00\x00\x00"))
    c.drain()
    c.command(stmt(0x1C, sid, struct.pack("<I", 5)))
    c.drain()
    # SELECT ?: the metadata changes with the parameter types, and is re-sent when it does.
    x = prepare(c, "SELECT ? AS x")
    c.command(stmt(0x17, x, b"\x00\x01\x00\x00\x00" + b"\x00\x01\x08\x00" + struct.pack("<q", 5)))
    c.drain()
    c.command(stmt(0x17, x, b"\x00\x01\x00\x00\x00" + b"\x00\x00" + struct.pack("<q", 6)))
    c.drain()
    c.command(stmt(0x17, x, b"\x00\x01\x00\x00\x00" + b"\x00\x01\xfd\x00" + b"\x03abc"))
    c.drain()
    # A procedure's results always come with their metadata.
    c.query("DROP PROCEDURE IF EXISTS rec_p")
    c.query("CREATE PROCEDURE rec_p() BEGIN SELECT 1 AS a; SELECT 'x' AS b, 2 AS c; END")
    p = prepare(c, "CALL rec_p()")
    for _ in range(2):
        c.command(stmt(0x17, p, b"\x00\x01\x00\x00\x00"))
        c.drain()
    for s in (sid, x, p):
        c.command(stmt(0x19, s))
    c.query("PREPARE t FROM 'SELECT 3 AS t'")
    c.query("EXECUTE t")
    c.query("EXECUTE t")
    c.query("SELECT 'after'")


# Scenarios whose client asks for MariaDB extended capabilities.
MARIADB_CAPS = {"cache_metadata": CACHE_METADATA}

SCENARIOS = [other_commands, multi_statement_error, procedure_two_results, cursor_fetch, local_infile,
             send_long_data, long_result, state_items, stored_block_cursor, stored_procedure_cursor,
             cursor_for_loop, signal_in_procedure, prepared_call_out, pipelined_direct_execute,
             cache_metadata]


def main():
    host, port, user, password, out = sys.argv[1:6]
    only = set(sys.argv[6:])
    setup = Conn(host, int(port), user, password, True)
    setup.log = []
    for sql in ["CREATE TABLE IF NOT EXISTS rec_t (a INT)",
                "CREATE TABLE IF NOT EXISTS rec_blob (b BLOB)",
                "DELETE FROM rec_blob"]:
        setup.query(sql)
    for scenario in SCENARIOS:
        if only and scenario.__name__ not in only:
            continue
        for deprecate in (True, False):
            c = Conn(host, int(port), user, password, deprecate,
                     MARIADB_CAPS.get(scenario.__name__, 0))
            c.log = []
            for sql in SETUP:
                c.query(sql)
            scenario(c)
            c.command(b"\x01")
            time.sleep(0.05)
            name = scenario.__name__ + ("" if deprecate else "-eof")
            with open(os.path.join(out, name + ".trace"), "w") as f:
                f.write("# %s, recorded from a real server by record.py\n" % name)
                f.write("caps 0x%08x\n" % c.caps)
                if c.mariadb:
                    f.write("mariadb 0x%08x\n" % c.mariadb)
                f.write("\n".join(c.log) + "\n")


if __name__ == "__main__":
    main()
