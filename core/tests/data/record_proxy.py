#!/usr/bin/env python3
"""Records one real client's conversation with a MariaDB server as a .trace file.

    record_proxy.py LISTEN_PORT SERVER_PORT OUT.trace NAME

Listens on 127.0.0.1:LISTEN_PORT, forwards each accepted connection to
127.0.0.1:SERVER_PORT and logs the chunks of the connection that exchanged the
most bytes after its login, in the format tracker_traces.rs reads: a `caps`
line (client and server capabilities ANDed, as ferry's tracker would see
them), then `C`/`S` lines of hex, one per chunk as it was read. Stops after
the first connection that carried commands closes.
"""
import selectors
import socket
import struct
import sys


def packets(buf):
    """Complete frames at the start of buf: list of (seq, payload), rest."""
    out = []
    while len(buf) >= 4:
        n = buf[0] | buf[1] << 8 | buf[2] << 16
        if len(buf) < 4 + n:
            break
        out.append((buf[3], buf[4:4 + n]))
        buf = buf[4 + n:]
    return out, buf


def without_mariadb_extensions(greeting):
    """The server's greeting with MariaDB's extended capabilities cleared, as
    ferry offers it, so the client negotiates what ferry's tracker follows."""
    b = bytearray(greeting)
    nul = b.index(0, 5)
    ext = nul + 1 + 4 + 9 + 2 + 1 + 2 + 2 + 1 + 6
    b[ext:ext + 4] = b"\0\0\0\0"
    return bytes(b)


def session(client, server):
    sel = selectors.DefaultSelector()
    sel.register(client, selectors.EVENT_READ, "C")
    sel.register(server, selectors.EVENT_READ, "S")
    chunks, caps = [], {"C": None, "S": None}
    logged_in, pending = False, {"C": b"", "S": b""}
    while True:
        for key, _ in sel.select():
            data = key.fileobj.recv(65536)
            if not data:
                return caps, chunks
            if key.data == "S" and caps["S"] is None:
                data = without_mariadb_extensions(data)
            (server if key.data == "C" else client).sendall(data)
            if logged_in:
                chunks.append((key.data, data))
                continue
            # Follow the login to learn the capabilities and where it ends.
            pending[key.data] += data
            frames, pending[key.data] = packets(pending[key.data])
            for seq, payload in frames:
                if key.data == "S" and caps["S"] is None:
                    nul = payload.index(0, 1)  # payload starts after the 4-byte header
                    lo = struct.unpack_from("<H", payload, nul + 1 + 4 + 9)[0]
                    hi = struct.unpack_from("<H", payload, nul + 1 + 4 + 9 + 2 + 1 + 2)[0]
                    caps["S"] = lo | hi << 16
                elif key.data == "C" and caps["C"] is None:
                    caps["C"] = struct.unpack_from("<I", payload, 0)[0]
                elif key.data == "S" and payload[:1] == b"\x00":
                    logged_in = True


def main():
    listen_port, server_port, out, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", listen_port))
    ls.listen(16)
    while True:
        client, _ = ls.accept()
        server = socket.create_connection(("127.0.0.1", server_port))
        caps, chunks = session(client, server)
        client.close()
        server.close()
        if sum(len(d) for _, d in chunks) > 10000:
            break
    with open(out, "w") as f:
        f.write(f"# {name}, recorded from a real server by record_proxy.py\n")
        f.write(f"caps 0x{caps['C'] & caps['S']:08x}\n")
        for tag, data in chunks:
            f.write(f"{tag} {data.hex()}\n")


if __name__ == "__main__":
    main()
