#!/usr/bin/env python3
"""Benchmark of the m2mvault provider on the tpm2 backend against Debian's
tpm2-openssl provider with a key on the same swtpm, and against a key in a
file (issue 6).

  M2MVAULT_BUILD_DIR=build/default tests/bench/tpm2_bench.py [--seconds 5] [--rounds 2] [--clients 4]

Starts one swtpm (temporary state, loopback port; with --unix-socket its
command channel is a Unix socket, for every variant alike) and, one at a time, what
uses it: m2mvaultd (`--backend tpm2`, no resource manager) with
`[tpm2] password_auth_for_signing` off and on; tpm2-openssl through
tpm2-abrmd (on a private D-Bus session bus, `--flush-all`), as its
documentation requires; tpm2-openssl directly on swtpm. m2mvaultd and
tpm2-abrmd both expect the TPM to themselves, so they never run at once.

Each variant, in every round:
1. ECDSA P-256 signatures per second in-process (tests/provider/provider_bench):
   EVP_DigestSign of a message (what TLS calls; tpm2-openssl hashes inside
   the TPM there), EVP_PKEY_sign of a given digest (what pkeyutl calls), and
   EVP_DigestSign from --clients processes at once, summed over one window.
2. Full handshakes per second, `openssl s_time -new` against `openssl
   s_server -www` holding the key: TLS 1.2 ECDHE-ECDSA-AES128-SHA256 (the
   oneM2M suite) and TLS 1.3.

Needs swtpm, tpm2-tools, tpm2-openssl, tpm2-abrmd, libtss2-tcti-tabrmd0 and
dbus-daemon (`tools/install-deps --bench`). Prints a table (medians of the
rounds, every sample beside it) and which issue 6 targets are met; --json
for machine-readable output. Not run by ctest; results in README.md here.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

import provider_bench  # noqa: E402
import tlspeer  # noqa: E402
import vaultlib  # noqa: E402

KEY = "bench-ec"
TLS12 = provider_bench.TLS12
TLS13 = ("-tls1_3",)
TABRMD_TCTI = "tabrmd:bus_type=session"
COLUMNS = ("digest-sign", "sign", "digest-sign-clients", "tls12", "tls13")


def run_quietly(*args, env=None, timeout=60):
    """Runs a setup command; raises with its output if it fails."""
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout


class SessionBus:
    """A private D-Bus session bus for tpm2-abrmd --session: nothing is
    registered on a bus another user or run shares."""

    def __init__(self):
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            tlspeer.stop_process(self.proc)
            raise RuntimeError("dbus-daemon printed no address")

    def stop(self):
        tlspeer.stop_process(self.proc)


class Abrmd:
    """tpm2-abrmd in front of the swtpm, as tpm2-openssl's documentation
    runs it; `--flush-all` clears what others left in the TPM."""

    def __init__(self, bus, swtpm):
        self.bus = bus
        self.swtpm = swtpm
        self.proc = None

    @property
    def env(self):
        return dict(os.environ, DBUS_SESSION_BUS_ADDRESS=self.bus.address)

    def start(self):
        self.proc = subprocess.Popen(
            ["tpm2-abrmd", "--session", "--allow-root", "--flush-all", f"--tcti={self.swtpm.tcti}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=self.env,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tpm2-abrmd exited with {self.proc.returncode}")
            p = subprocess.run(["tpm2_getrandom", "-T", TABRMD_TCTI, "8"], capture_output=True, env=self.env)
            if p.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("tpm2-abrmd did not become ready")

    def stop(self):
        tlspeer.stop_process(self.proc)
        self.proc = None


def flush_tpm(tcti):
    """Flushes every transient object and session, as m2mvaultd and
    tpm2-abrmd --flush-all do at their start: an s_server stopped by a signal
    leaves its objects loaded, and without a resource manager they would
    fill the next variant's slots."""
    for what in ("--transient-object", "--loaded-session", "--saved-session"):
        run_quietly("tpm2_flushcontext", "-T", tcti, what)


class TpmDaemon(vaultlib.Daemon):
    """m2mvaultd on the benchmark's swtpm, directly (no resource manager)."""

    def __init__(self, root, swtpm):
        super().__init__(root=root)
        self.swtpm = swtpm

    def backend_args(self):
        return ["--backend", "tpm2", "--tcti", self.swtpm.tcti]


class Variant:
    """One way of holding the key: how to start and stop what it needs, the
    provider_bench options and the s_server key options."""

    def __init__(self, name, sign_args, server_args, env, cert, start=None, stop=None, before_each=None):
        self.name = name
        self.sign_args = sign_args
        self.server_args = server_args
        self.env = env
        self.cert = cert
        self.start = start or (lambda: None)
        self.stop = stop or (lambda: None)
        self.before_each = before_each or (lambda: None)


def signatures_per_second(variant, operation, clients, seconds):
    """Signatures per second of `clients` provider_bench processes measuring
    the same window (--start-at), summed."""
    program = os.path.join(provider_bench.PROGRAMS, "provider_bench")
    start_at = time.time() + 2.0 + 0.25 * clients  # room for every process to load its key and warm up
    procs = [
        subprocess.Popen(
            [
                program,
                "--seconds",
                str(seconds),
                "--operation",
                operation,
                "--start-at",
                f"{start_at:.3f}",
                *variant.sign_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=variant.env,
        )
        for _ in range(clients)
    ]
    total, problems = 0.0, []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=seconds + 120)
            m = re.search(r"^.+: (\d+) sign/s$", out, re.M)
            if proc.returncode != 0 or not m:
                problems.append(err.strip() or out.strip() or f"exit {proc.returncode}")
            else:
                total += int(m.group(1))
    finally:
        for proc in procs:
            tlspeer.stop_process(proc)
    if problems:
        raise RuntimeError(f"{len(problems)} of {clients} processes failed: {problems[0][-1500:]}")
    return total


def short_reason(text):
    """A few words for the table out of an OpenSSL or TSS error text."""
    for pattern, words in (
        (r"no shared cipher", "no shared cipher"),
        (r"0x0*902\b|object memory", "TPM out of object memory (0x902)"),
        (r"missing private key", "missing private key"),
        (r"handshake failure", "handshake failure"),
    ):
        if re.search(pattern, text, re.I):
            return words
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "failed")[:60]


def measure_variant(variant, args, samples, errors):
    """Every measurement of one variant, once; a failure is recorded, not raised."""

    def record(column, measure):
        variant.before_each()
        try:
            value = measure()
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            samples.setdefault((variant.name, column), []).append(None)
            errors.setdefault((variant.name, column), str(error))
            print(f"    {column:22s} FAILED: {short_reason(str(error))}", flush=True)
            return
        samples.setdefault((variant.name, column), []).append(value)
        print(f"    {column:22s} {value:8.0f}/s", flush=True)

    record("digest-sign", lambda: signatures_per_second(variant, "digest-sign", 1, args.seconds))
    record("sign", lambda: signatures_per_second(variant, "sign", 1, args.seconds))
    record("digest-sign-clients", lambda: signatures_per_second(variant, "digest-sign", args.clients, args.seconds))
    for column, tls in (("tls12", TLS12), ("tls13", TLS13)):
        record(
            column,
            lambda tls=tls: provider_bench.handshakes(
                variant.name, variant.server_args, variant.env, variant.cert, args.seconds, tls
            ),
        )


def versions():
    def package(name):
        p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
        return p.stdout.strip() or "?"

    return {
        "openssl": run_quietly(tlspeer.OPENSSL, "version").strip(),
        "swtpm": package("swtpm"),
        "libtpms": package("libtpms0"),
        "tpm2-tss (libtss2-esys)": package("libtss2-esys-3.0.2-0"),
        "tpm2-openssl": package("tpm2-openssl"),
        "tpm2-abrmd": package("tpm2-abrmd"),
    }


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Linux {platform.release()}"


def load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def cell(values):
    if not values:
        return "–"
    good = [v for v in values if v is not None]
    if len(good) < len(values):
        return "fails" if not good else f"{statistics.median(good):,.0f} ({len(values) - len(good)} failed)"
    return f"{statistics.median(good):,.0f}"


def median_or_none(values):
    good = [v for v in values if v is not None]
    return statistics.median(good) if good and len(good) == len(values) else None


def print_table(names, samples, errors, clients):
    headers = (
        "key",
        "EVP_DigestSign/s",
        "EVP_PKEY_sign/s",
        f"EVP_DigestSign/s, {clients} processes",
        "TLS 1.2 ECDHE-ECDSA-AES128-SHA256 hs/s",
        "TLS 1.3 hs/s",
    )
    print("| " + " | ".join(headers) + " |")
    print("|---|" + "---:|" * (len(headers) - 1))
    for name in names:
        print(f"| {name} | " + " | ".join(cell(samples.get((name, c), [])) for c in COLUMNS) + " |")
    print("\nSamples per round:")
    for name in names:
        for c in COLUMNS:
            values = ["fails" if v is None else f"{v:.0f}" for v in samples.get((name, c), [])]
            print(f"  {name:45s} {c:20s} {values}")
    if errors:
        print("\nWhy the failing cells fail (first error of each):")
        for (name, column), text in errors.items():
            print(f"  {name}, {column}: {short_reason(text)}")
            print("    " + "\n    ".join(text.strip().splitlines()[-6:]))


def print_targets(samples, vault_names, tpm2_openssl_names, file_name):
    """Issue 6's targets, against the best tpm2-openssl variant."""

    def best(names, column):
        rates = [median_or_none(samples.get((n, column), [])) for n in names]
        rates = [r for r in rates if r is not None]
        return max(rates) if rates else None

    print("\nIssue 6 targets (medians; tpm2-openssl: its best variant):")
    for name in vault_names:
        tls12 = median_or_none(samples.get((name, "tls12"), []))
        print(f"  {name}:")
        print(f"    TLS 1.2 oneM2M suite works: {'yes' if tls12 else 'NO'}")
        for column, what in (("digest-sign", "EVP_DigestSign"), ("sign", "EVP_PKEY_sign")):
            ours, theirs = median_or_none(samples.get((name, column), [])), best(tpm2_openssl_names, column)
            if ours and theirs:
                verdict = "met" if ours >= 1.5 * theirs else "not met"
                print(f"    {what}/s >= 1.5x tpm2-openssl: {ours / theirs:.2f}x, {verdict}")
        for column, what in (("tls12", "TLS 1.2"), ("tls13", "TLS 1.3")):
            ours = median_or_none(samples.get((name, column), []))
            theirs = best(tpm2_openssl_names, column)
            mine = median_or_none(samples.get((file_name, column), []))
            if ours and theirs:
                verdict = "met" if ours >= 20 * theirs else "not met"
                print(f"    {what} handshakes/s >= 20x tpm2-openssl: {ours / theirs:.0f}x, {verdict}")
            elif ours:
                print(f"    {what} handshakes/s >= 20x tpm2-openssl: tpm2-openssl completes none")
            if ours and mine:
                verdict = "met" if ours >= 0.5 * mine else "not met"
                print(f"    {what} handshakes/s >= half the file key's: {100 * ours / mine:.0f}%, {verdict}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5, help="per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="run every variant this many times, in turn")
    ap.add_argument("--clients", type=int, default=4, help="processes signing at once in the concurrent column")
    ap.add_argument("--unix-socket", action="store_true",
                    help="swtpm's channels on Unix sockets (swtpm:path=...) instead of loopback TCP")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for tool in ("swtpm", "tpm2-abrmd", "dbus-daemon", "tpm2_flushcontext", "tpm2_getrandom"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: tools/install-deps --bench")
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/ossl-modules/tpm2.so"):
        raise SystemExit("tpm2-openssl is missing: tools/install-deps --bench")

    print(f"machine: {machine()}")
    for what, version in versions().items():
        print(f"{what}: {version}")
    load_before = load()
    print(f"load before: {load_before}", flush=True)

    root = tempfile.mkdtemp(prefix="m2mvault-tpm2-bench-")
    swtpm = bus = abrmd = daemon = None
    try:
        swtpm = vaultlib.Swtpm(os.path.join(root, "swtpm"), unix_socket=args.unix_socket)
        print(f"swtpm: {swtpm.tcti}", flush=True)
        daemon = TpmDaemon(os.path.join(root, "vault"), swtpm)
        os.makedirs(daemon.root)
        configs = {}
        for setting in ("false", "true"):
            configs[setting] = os.path.join(root, f"password-auth-{setting}.toml")
            with open(configs[setting], "w") as f:
                f.write(f'log_level = "warn"\n[tpm2]\npassword_auth_for_signing = {setting}\n')

        pki = tlspeer.Pki(os.path.join(root, "pki"))
        pki.make_ca()
        file_key, file_cert = pki.make_leaf("file", "/CN=file", "DNS:localhost")

        daemon.start(extra=("--config", configs["false"]))
        daemon.cli("key", "generate", "--name", KEY, check=True)
        csr = os.path.join(root, f"{KEY}.csr")
        daemon.cli("cert", "csr", "--key", KEY, "--subject", f"/CN={KEY}", "--out", csr, check=True)
        vault_cert = pki.sign_csr(csr, KEY, san="DNS:localhost")
        daemon.stop()

        bus = SessionBus()
        abrmd = Abrmd(bus, swtpm)
        abrmd.start()
        abrmd_env = dict(abrmd.env, TPM2OPENSSL_TCTI=TABRMD_TCTI)
        tpm2_key = os.path.join(root, "tpm2-openssl.key.pem")
        run_quietly(
            tlspeer.OPENSSL,
            "genpkey",
            "-provider",
            "tpm2",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "group:P-256",
            "-out",
            tpm2_key,
            env=abrmd_env,
        )
        tpm2_csr = os.path.join(root, "tpm2-openssl.csr")
        run_quietly(
            tlspeer.OPENSSL,
            "req",
            "-provider",
            "tpm2",
            "-provider",
            "default",
            "-new",
            "-key",
            tpm2_key,
            "-subj",
            "/CN=tpm2-openssl",
            "-sha256",
            "-out",
            tpm2_csr,
            env=abrmd_env,
        )
        tpm2_cert = pki.sign_csr(tpm2_csr, "tpm2-openssl", san="DNS:localhost")
        abrmd.stop()

        vault_sign = ["--modules", provider_bench.MODULES, "--socket", daemon.socket, "--key", KEY]
        vault_server = ["-provider", "m2mvault", "-provider", "default", "-key", f"m2mvault:{KEY}"]
        vault_env = dict(os.environ, OPENSSL_MODULES=provider_bench.MODULES, M2MVAULT_SOCKET=daemon.socket)
        tpm2_sign = ["--store-key", tpm2_key, "--store-providers", "tpm2,default"]
        tpm2_server = ["-provider", "tpm2", "-provider", "default", "-key", tpm2_key]
        vault_names = (
            "m2mvault, sign in its own HMAC session (default)",
            "m2mvault, password_auth_for_signing = true",
        )
        tpm2_openssl_names = ("tpm2-openssl via tpm2-abrmd", "tpm2-openssl directly on swtpm")
        variants = [
            Variant(
                vault_names[0],
                vault_sign,
                vault_server,
                vault_env,
                vault_cert,
                start=lambda: daemon.start(extra=("--config", configs["false"])),
                stop=daemon.stop,
            ),
            Variant(
                vault_names[1],
                vault_sign,
                vault_server,
                vault_env,
                vault_cert,
                start=lambda: daemon.start(extra=("--config", configs["true"])),
                stop=daemon.stop,
            ),
            Variant(
                tpm2_openssl_names[0],
                tpm2_sign + ["--label", tpm2_openssl_names[0]],
                tpm2_server,
                abrmd_env,
                tpm2_cert,
                start=abrmd.start,
                stop=abrmd.stop,
            ),
            Variant(
                tpm2_openssl_names[1],
                tpm2_sign + ["--label", tpm2_openssl_names[1]],
                tpm2_server,
                dict(os.environ, TPM2OPENSSL_TCTI=swtpm.tcti),
                tpm2_cert,
                before_each=lambda: flush_tpm(swtpm.tcti),
                stop=lambda: flush_tpm(swtpm.tcti),
            ),
            Variant("file key", ["--file-key", file_key], ["-key", file_key], dict(os.environ), file_cert),
        ]

        samples, errors, loads = {}, {}, []
        for round_ in range(1, args.rounds + 1):
            loads.append(load())
            print(f"round {round_} of {args.rounds} (load {loads[-1]}):", flush=True)
            for variant in variants:
                print(f"  {variant.name}", flush=True)
                variant.start()
                try:
                    measure_variant(variant, args, samples, errors)
                finally:
                    variant.stop()
        load_after = load()
        print(f"load after: {load_after}\n")
        print(f"Medians of {args.rounds} rounds, {args.seconds} s each, per second:\n")
        names = [v.name for v in variants]
        print_table(names, samples, errors, args.clients)
        print_targets(samples, vault_names, tpm2_openssl_names, "file key")
        if args.json:
            print(
                json.dumps(
                    {
                        "machine": machine(),
                        "versions": versions(),
                        "load": {"before": load_before, "rounds": loads, "after": load_after},
                        "seconds": args.seconds,
                        "clients": args.clients,
                        "samples": {f"{n} / {c}": v for (n, c), v in samples.items()},
                        "errors": {f"{n} / {c}": short_reason(e) for (n, c), e in errors.items()},
                    },
                    indent=2,
                )
            )
    finally:
        for stop in (
            lambda: abrmd and abrmd.stop(),
            lambda: bus and bus.stop(),
            lambda: daemon and daemon.cleanup(),  # also stops the swtpm
            lambda: swtpm and swtpm.stop(),
        ):
            stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
