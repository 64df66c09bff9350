"""Handshakes per second inside the vault: ESCertKE (TLS 1.2,
ECDHE-ECDSA-AES128-SHA256, mutual certificates, key export) between two
daemons, each on its own SoftHSM2 token, the four messages carried over the
socket API (message mode). Each exchange makes two ECDSA signatures in each
token, two ECDHE key agreements, and stores a pairwiseE2EKey at both ends.

    python3 tests/bench/handshake_bench.py [--seconds S] [--clients 1,4]

Not run by ctest; results in tests/bench/README.md.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from tlspeer import Pki, spki_sha256  # noqa: E402
from vaultlib import Daemon  # noqa: E402


def enrol(daemon, pki, name, san, directory, ca_cert):
    daemon.cli("key", "generate", "--name", name, check=True)
    csr = os.path.join(directory, f"{name}.csr")
    daemon.cli("cert", "csr", "--key", name, "--subject", f"/CN={name}", "--san", san, "--out", csr, check=True)
    chain = os.path.join(directory, f"{name}-chain.pem")
    with open(chain, "w") as out:
        for path in (pki.sign_csr(csr, name, san=san), ca_cert):
            with open(path) as f:
                out.write(f.read())
    daemon.cli("cert", "import", "--key", name, chain, check=True)


def run(a, b, rot, seconds, clients):
    latencies = []
    lock = threading.Lock()
    deadline = time.time() + seconds

    def worker():
        ca, cb = a.connect(), b.connect()
        mine = []
        while time.time() < deadline:
            t0 = time.perf_counter()
            m1 = ca.call("handshake.start", procedure="escertke-initiate", key="ae", peer_name="b.example.com",
                         root_of_trust=rot)
            m2 = cb.call("handshake.start", procedure="escertke-respond", key="cse", peer_name="a.example.com",
                         root_of_trust=rot, input=m1["output"])
            m3 = ca.call("handshake.step", session=m1["session"], input=m2["output"])
            m4 = cb.call("handshake.step", session=m2["session"], input=m3["output"])
            end = ca.call("handshake.step", session=m1["session"], input=m4["output"])
            assert end["done"] and end["key"]["check_value"] == m4["key"]["check_value"]
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "exchanges": len(latencies),
        "per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--clients", default="1,4")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="m2mvault-hsbench-")
    for side in ("a", "b"):
        os.makedirs(os.path.join(directory, side))
    a = Daemon(os.path.join(directory, "a"))
    b = Daemon(os.path.join(directory, "b"))
    config = os.path.join(directory, "m2mvaultd.toml")
    with open(config, "w") as f:
        f.write("log_level = \"warn\"\n[handshake]\nper_principal = 64\n")
    try:
        a.start(extra=("--config", config))
        b.start(extra=("--config", config))
        pki = Pki(directory)
        _, ca_cert = pki.make_ca()
        enrol(a, pki, "ae", "DNS:a.example.com", directory, ca_cert)
        enrol(b, pki, "cse", "DNS:b.example.com", directory, ca_cert)
        rot = spki_sha256(ca_cert)
        run(a, b, rot, 0.5, 1)  # warm-up: libp11 key handles, unwrap caches
        print("| clients | exchanges | exchanges/s | p50 (ms) | p99 (ms) |")
        print("|---:|---:|---:|---:|---:|")
        for clients in (int(c) for c in args.clients.split(",")):
            r = run(a, b, rot, args.seconds, clients)
            print(f"| {r['clients']} | {r['exchanges']} | {r['per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    finally:
        a.cleanup()
        b.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
