#!/usr/bin/env python3
"""Benchmark of the m2mvault OpenSSL provider against the libp11 engine on
the same SoftHSM2 token and against a key in a file.

  M2MVAULT_BUILD_DIR=build/default tests/bench/provider_bench.py [--seconds 10]

1. ECDSA P-256 signatures per second, in-process, one thread
   (tests/provider/provider_bench): the provider (one `sign` request to the
   daemon per signature), the libp11 engine loaded in the process on the
   daemon's token, and a file key.
2. Full TLS 1.2 ECDHE-ECDSA-AES128-SHA256 handshakes per second:
   `openssl s_time -new` against `openssl s_server -www` with the same key
   through the provider (command-line -provider, and openssl.cnf with
   default_properties = ?provider=m2mvault), the libp11 engine, and a file.

Starts its own daemon on a fresh embedded SoftHSM2 token in a temp
directory. Prints a table; --json for machine-readable output.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import tlspeer  # noqa: E402
import vaultlib  # noqa: E402

MODULES = os.environ.get("M2MVAULT_PROVIDER_DIR", os.path.join(vaultlib.BUILD, "engine", "provider"))
PROGRAMS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(MODULES))), "tests", "provider")
ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"
CIPHER = "ECDHE-ECDSA-AES128-SHA256"


def ec_private_key_id(daemon):
    """CKA_ID (hex) of the one EC private key in the daemon's token."""
    env = dict(os.environ, SOFTHSM2_CONF=os.path.join(daemon.state, "softhsm2.conf"))
    p = subprocess.run(["pkcs11-tool", "--module", vaultlib.SOFTHSM2, "--token-label", "m2mvault", "--login",
                        "--pin", pin_of(daemon), "--list-objects", "--type", "privkey"],
                       capture_output=True, text=True, env=env, check=True)
    m = re.search(r"Private Key Object; EC.*?ID:\s+([0-9a-f]+)", p.stdout, re.S)
    if not m:
        raise SystemExit(f"no EC private key in the token:\n{p.stdout}")
    return m.group(1)


def pin_of(daemon):
    with open(os.path.join(daemon.state, "user-pin")) as f:
        return f.read().strip()


def engine_uri(key_id, pin=None):
    pct = "".join(f"%{key_id[i:i + 2]}" for i in range(0, len(key_id), 2))
    uri = f"pkcs11:token=m2mvault;id={pct};type=private"
    return uri + (f";pin-value={pin}" if pin else "")


TLS12 = ("-cipher", CIPHER, "-tls1_2")  # the oneM2M suite; ("-tls1_3",) for TLS 1.3


def s_time(port, seconds, tls=TLS12):
    p = subprocess.run([tlspeer.OPENSSL, "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds),
                        *tls], capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"(\d+) connections in ([\d.]+) real seconds", p.stdout)
    if not m:
        raise RuntimeError(f"s_time printed no result:\n{p.stdout}{p.stderr}")
    return int(m.group(1)) / float(m.group(2))


def handshakes(name, server_args, env, cert, seconds, tls=TLS12):
    """Full handshakes per second, `openssl s_time -new` against an
    `openssl s_server -www` with `server_args` (its key); a RuntimeError
    carries the server's own words (e.g. "no shared cipher")."""
    port = tlspeer.free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([tlspeer.OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-www",
                             "-cert", cert, *tls, *server_args],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
    failure = None
    try:
        time.sleep(1.0)
        if proc.poll() is not None:
            failure = f"{name}: s_server exited"
        else:
            try:
                rate = s_time(port, seconds, tls)
            except RuntimeError as error:
                failure = f"{name}: {error}"
    finally:
        proc.terminate()
        proc.wait()
        log.seek(0)
        said = log.read().decode(errors="replace")[-2000:]  # read after it exited: its last words are in
        log.close()
    if failure:
        raise RuntimeError(f"{failure}\ns_server said:\n{said}")
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternate the variants this many times; report medians (the VM is noisy)")
    ap.add_argument("--no-audit", action="store_true",
                    help="run the daemon with [audit] enabled = false, to see what auditing each sign costs")
    ap.add_argument("--threads", type=int, help="the daemon's handlers running at once (its default when not given)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    root = tempfile.mkdtemp(prefix="m2mvault-provider-bench-")
    daemon = vaultlib.Daemon(root=os.path.join(root, "vault"))
    os.makedirs(daemon.root)
    results = {"signatures_per_second": {}, "handshakes_per_second": {}}
    try:
        extra = []
        if args.no_audit or args.threads:
            config = os.path.join(root, "m2mvaultd.toml")
            with open(config, "w") as f:
                if args.threads:
                    f.write(f"threads = {args.threads}\n")
                if args.no_audit:
                    f.write("[audit]\nenabled = false\n")
            extra = ["--config", config]
        daemon.start(extra=extra)
        daemon.cli("key", "generate", "--name", "bench-ec", check=True)
        pki = tlspeer.Pki(os.path.join(root, "pki"))
        pki.make_ca()
        csr = os.path.join(root, "bench-ec.csr")
        daemon.cli("cert", "csr", "--key", "bench-ec", "--subject", "/CN=bench-ec", "--out", csr, check=True)
        vault_cert = pki.sign_csr(csr, "bench-ec", san="DNS:localhost")
        file_key, file_cert = pki.make_leaf("file", "/CN=file", "DNS:localhost")
        key_id = ec_private_key_id(daemon)
        pin = pin_of(daemon)
        softhsm_env = dict(os.environ, SOFTHSM2_CONF=os.path.join(daemon.state, "softhsm2.conf"))

        print(f"ECDSA P-256 signatures per second, one thread, {args.seconds} s each, "
              f"median of {args.rounds}:", flush=True)
        samples = {}
        for _ in range(args.rounds):
            p = subprocess.run([os.path.join(PROGRAMS, "provider_bench"), "--seconds", str(args.seconds),
                                "--modules", MODULES, "--socket", daemon.socket, "--key", "bench-ec",
                                "--engine-key", engine_uri(key_id), "--engine-module", vaultlib.SOFTHSM2,
                                "--pin", pin, "--file-key", file_key], capture_output=True, text=True,
                               env=softhsm_env)
            if p.returncode != 0:
                print(p.stderr, file=sys.stderr)
            for what, rate in re.findall(r"^(.+): (\d+) sign/s$", p.stdout, re.M):
                samples.setdefault(what, []).append(int(rate))
        for what, rates in samples.items():
            results["signatures_per_second"][what] = statistics.median(rates)
            print(f"  {what:50s} {statistics.median(rates):8.0f} sign/s   {rates}", flush=True)

        print(f"TLS 1.2 {CIPHER} full handshakes per second (s_time -new), {args.seconds} s each, "
              f"median of {args.rounds}:", flush=True)
        provider_env = dict(os.environ, OPENSSL_MODULES=MODULES, M2MVAULT_SOCKET=daemon.socket)
        cnf = os.path.join(root, "provider.cnf")
        with open(cnf, "w") as f:
            f.write("openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n"
                    "alg_section = evp_properties\n[provider_sect]\nm2mvault = m2mvault_sect\n"
                    f"default = default_sect\n[m2mvault_sect]\nmodule = {os.path.join(MODULES, 'm2mvault.so')}\n"
                    f"socket = {daemon.socket}\nactivate = 1\n[default_sect]\nactivate = 1\n"
                    "[evp_properties]\ndefault_properties = ?provider=m2mvault\n")
        reference = os.path.join(root, "bench-ec.ref.pem")
        sys.path.insert(0, os.path.join(HERE, "..", "integration"))
        from test_provider import key_reference
        with open(reference, "w") as f:
            f.write(key_reference("bench-ec", "EC"))
        engine_cnf = os.path.join(root, "engine.cnf")
        with open(engine_cnf, "w") as f:
            f.write("openssl_conf = openssl_init\n[openssl_init]\nengines = engine_sect\n"
                    "[engine_sect]\npkcs11 = pkcs11_sect\n[pkcs11_sect]\nengine_id = pkcs11\n"
                    f"dynamic_path = {ENGINE}\nMODULE_PATH = {vaultlib.SOFTHSM2}\ninit = 0\n")
        runs = [
            ("file key", ["-key", file_key], dict(os.environ), file_cert),
            ("libp11 engine (same token, in-process)",
             ["-engine", "pkcs11", "-keyform", "engine", "-key", engine_uri(key_id, pin)],
             dict(softhsm_env, OPENSSL_CONF=engine_cnf), vault_cert),
            ("m2mvault provider (-provider, m2mvault:URI)",
             ["-provider", "m2mvault", "-provider", "default", "-key", "m2mvault:bench-ec"], provider_env,
             vault_cert),
            ("m2mvault provider (openssl.cnf, ?provider=m2mvault)", ["-key", reference],
             dict(os.environ, OPENSSL_CONF=cnf), vault_cert),
        ]
        samples = {}
        for _ in range(args.rounds):
            for name, server_args, env, cert in runs:
                samples.setdefault(name, []).append(round(handshakes(name, server_args, env, cert, args.seconds)))
        for name, rates in samples.items():
            results["handshakes_per_second"][name] = statistics.median(rates)
            print(f"  {name:50s} {statistics.median(rates):8.0f} handshakes/s   {rates}", flush=True)
        engine = "libp11 engine (same token, in-process)"
        engine_rate = results["handshakes_per_second"][engine]
        results["percent_of_engine"] = {}
        for name, rate in results["handshakes_per_second"].items():
            if name.startswith("m2mvault"):
                # Also paired: each round's provider run against the engine
                # run just before it, which a slow drift of the VM moves alike.
                paired = [100.0 * p / e for p, e in zip(samples[name], samples[engine])]
                results["percent_of_engine"][name] = statistics.median(paired)
                print(f"  {name}: {100.0 * rate / engine_rate:.0f}% of the libp11 engine "
                      f"(median of the rounds' own ratios {statistics.median(paired):.0f}%: "
                      f"{', '.join(f'{r:.0f}' for r in paired)})")
        if args.json:
            print(json.dumps(results, indent=2))
    finally:
        daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
