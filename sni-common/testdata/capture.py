#!/usr/bin/env python3
"""Capture the ClientHello a real TLS client sends, as the raw bytes of its first TLS records.

Used to refresh sni-common/testdata/*.bin:
    python3 capture.py OUT.bin -- CLIENT COMMAND (use {port} for the listening port)

Listens on 127.0.0.1 only, accepts one connection, reads until the records carry a whole
handshake message (or 5 s pass), writes the bytes and closes without answering, so the client
fails its handshake; its exit status is ignored.
"""
import socket
import subprocess
import sys
import time


def hello_complete(data: bytes) -> bool:
    # Gather handshake bytes from records; done once a whole handshake message is present.
    hs = b""
    i = 0
    while i + 5 <= len(data):
        length = int.from_bytes(data[i + 3:i + 5], "big")
        hs += data[i + 5:i + 5 + length]
        i += 5 + length
    return len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big")


def main() -> int:
    out = sys.argv[1]
    cmd = sys.argv[sys.argv.index("--") + 1:]
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    client = subprocess.Popen([c.replace("{port}", str(port)) for c in cmd],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    srv.settimeout(5)
    conn, _ = srv.accept()
    conn.settimeout(5)
    data = b""
    deadline = time.monotonic() + 5
    while not hello_complete(data) and time.monotonic() < deadline:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    conn.close()
    srv.close()
    try:
        client.wait(timeout=5)
    except subprocess.TimeoutExpired:
        client.kill()
        client.wait()
    if not hello_complete(data):
        print(f"incomplete ClientHello ({len(data)} bytes)", file=sys.stderr)
        return 1
    with open(out, "wb") as f:
        f.write(data)
    print(f"{out}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
