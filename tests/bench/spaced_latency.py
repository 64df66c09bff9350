#!/usr/bin/env python3
"""Latency of one daemon request when requests come back to back and when
they come a few milliseconds apart, as a TLS server's signatures do (one per
handshake).

  M2MVAULT_BUILD_DIR=build/default tests/bench/spaced_latency.py [--requests 400]

Between requests the client either sends at once or spins for the gap
(keeping its own CPU busy, as a server in a handshake is) or sleeps. Starts
its own daemon on a fresh SoftHSM2 token; prints p50 and p90 per case.
The client is Python: its own overhead is in every figure alike.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

import vaultlib  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=400, help="per case")
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="m2mvault-spaced-")
    daemon = vaultlib.Daemon(root=os.path.join(root, "vault"))
    os.makedirs(daemon.root)
    try:
        daemon.start()
        daemon.cli("key", "generate", "--name", "spaced", check=True)
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(daemon.socket)

        def call(op, params):
            body = json.dumps({"v": 1, "id": 1, "op": op, "params": params}).encode()
            conn.sendall(struct.pack(">I", len(body)) + body)
            header = b""
            while len(header) < 4:
                header += conn.recv(4 - len(header))
            n = struct.unpack(">I", header)[0]
            data = b""
            while len(data) < n:
                data += conn.recv(n - len(data))
            if b'"error"' in data:
                raise SystemExit(f"{op} failed: {data.decode(errors='replace')}")

        sign = {"key": "spaced", "digest": base64.b64encode(b"\1" * 32).decode(), "scheme": "ecdsa"}
        for op, params in (("ping", {}), ("sign", sign)):
            for label, gap, spin in (("back to back", 0.0, True), ("1 ms apart, spinning", 0.001, True),
                                     ("3 ms apart, spinning", 0.003, True), ("10 ms apart, spinning", 0.01, True),
                                     ("3 ms apart, sleeping", 0.003, False)):
                latencies = []
                for _ in range(args.requests):
                    if gap and spin:
                        until = time.perf_counter() + gap
                        while time.perf_counter() < until:
                            pass
                    elif gap:
                        time.sleep(gap)
                    start = time.perf_counter()
                    call(op, params)
                    latencies.append((time.perf_counter() - start) * 1e6)
                p90 = statistics.quantiles(latencies, n=10)[8]
                print(f"{op:5s} {label:22s} p50 {statistics.median(latencies):6.0f} us   p90 {p90:6.0f} us",
                      flush=True)
    finally:
        daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
