"""Test harness: a real m2mvaultd on a real SoftHSM2 token in a temp dir,
or, with M2MVAULT_TEST_BACKEND=tpm2, on its own swtpm (started here on free
loopback ports, its state in the daemon's temp dir, stopped at cleanup).

Independent of the C++ code on purpose: frames are built here, check values
are computed with Python's hmac, public keys are parsed by the openssl CLI.
"""
import atexit
import base64
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest

import tlspeer

BUILD = os.environ.get("M2MVAULT_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build/default"))
DAEMON = os.path.join(BUILD, "vault", "m2mvaultd")
CLI = os.path.join(BUILD, "tools", "m2mvault")
SOFTHSM2 = "/usr/lib/softhsm/libsofthsm2.so"
BACKEND = os.environ.get("M2MVAULT_TEST_BACKEND", "pkcs11")
ON_TPM = BACKEND == "tpm2"


def pkcs11_only(reason):
    """Skips a test of a PKCS#11 specific on the TPM backend."""
    return unittest.skipIf(ON_TPM, f"PKCS#11 only: {reason}")


def tpm_only(reason):
    return unittest.skipUnless(ON_TPM, f"TPM only: {reason}")


_running_swtpms = set()


@atexit.register
def _kill_leftover_swtpms():
    for tpm in list(_running_swtpms):
        tpm.stop()


def ephemeral_port_floor():
    """The lowest port the kernel hands out for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return max(int(f.read().split()[0]), 10004)
    except (OSError, ValueError, IndexError):
        return 32768


class Swtpm:
    """A private swtpm (TPM 2.0 simulator) on a free loopback port pair:
    server on P, control on P+1; or, with unix_socket, on Unix sockets in its
    state directory. startup-clear, so a restart is a TPM reset followed by
    TPM2_Startup(CLEAR)."""

    def __init__(self, state_dir, unix_socket=False):
        self.state_dir = state_dir
        os.makedirs(state_dir, exist_ok=True)
        self.proc = None
        self.unix_socket = unix_socket
        self.port = None if unix_socket else self._free_port_pair()
        self.start()

    @staticmethod
    def _port_free(port):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    @classmethod
    def _free_port_pair(cls):
        # Below the ephemeral range: the daemon keeps one connection, but
        # tpm2-tss's swtpm TCTI (tpm2-tools, tpm2-openssl, tpm2-abrmd in the
        # benchmarks) opens one per command, and the ephemeral ports those
        # leave in TIME_WAIT cannot be bound by a listener for a minute.
        low = ephemeral_port_floor()
        for _ in range(200):
            port = random.randrange(10000, low - 2)
            if cls._port_free(port) and cls._port_free(port + 1):
                return port
        raise RuntimeError("no free port pair for swtpm")

    @property
    def server_path(self):
        return os.path.join(self.state_dir, "server.sock")

    @property
    def tcti(self):
        if self.unix_socket:
            return f"swtpm:path={self.server_path}"
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def _channels(self):
        if self.unix_socket:
            return ["--server", f"type=unixio,path={self.server_path}",
                    "--ctrl", f"type=unixio,path={self.server_path}.ctrl"]
        return ["--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1"]

    def _accepts(self):
        try:
            if self.unix_socket:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1)
                    s.connect(self.server_path)
            else:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def start(self):
        self.proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}", *self._channels(),
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        _running_swtpms.add(self)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"swtpm exited with {self.proc.returncode}")
            if self._accepts():
                return
            time.sleep(0.05)
        raise RuntimeError("swtpm did not start")

    def stop(self):
        tlspeer.stop_process(self.proc)
        self.proc = None
        _running_swtpms.discard(self)

    def restart(self):
        """A TPM reset: the process and all it had loaded go, the state stays."""
        self.stop()
        self.start()

# TR-0038 table 7.1.2-2.
CLOCK_AE1 = ("Clock-AE1", "AE123456789012-Lock@in.provider.com", "1a2b3c4d5e6f7a8b")
CLOCK_AE2 = ("Clock-AE2", "AE123456789015-Lock@in.provider.com", "12345678abcdefab")


def check_value(key: bytes) -> str:
    """The key check value, computed independently of the vault."""
    return hmac.new(key, b"m2mvault key check value", hashlib.sha256).hexdigest()[:16]


def openssl_verify(pem, message: bytes, signature: bytes):
    """`openssl dgst -sha256 -verify` of a vault signature: the independent
    check. Returns the completed process (returncode 0 and "Verified OK")."""
    if isinstance(pem, str):
        pem = pem.encode()
    with tempfile.TemporaryDirectory() as d:
        for name, data in (("pub.pem", pem), ("msg", message), ("sig", signature)):
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        return subprocess.run(["openssl", "dgst", "-sha256", "-verify", f"{d}/pub.pem", "-signature", f"{d}/sig",
                               f"{d}/msg"], capture_output=True, timeout=60)


class VaultError(Exception):
    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Connection:
    """A raw protocol connection: 4-byte big-endian length + JSON."""

    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.next_id = 1

    def close(self):
        self.sock.close()

    def __del__(self):
        self.sock.close()

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send(self, op, **params):
        rid = self.next_id
        self.next_id += 1
        body = json.dumps({"v": 1, "id": rid, "op": op, "params": params}).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)
        return rid

    def _read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("connection closed by the daemon")
            buf += chunk
        return buf

    def receive(self):
        (n,) = struct.unpack(">I", self._read_exact(4))
        return json.loads(self._read_exact(n))

    def list_keys(self, **params):
        """Every key, following key.list's pages."""
        keys = []
        while True:
            page = self.call("key.list", **params)
            keys += page["keys"]
            if page.get("next") is None:
                return keys
            params["after"] = page["next"]

    def call(self, op, **params):
        rid = self.send(op, **params)
        resp = self.receive()
        assert resp.get("id") == rid, resp
        if "error" in resp:
            raise VaultError(resp["error"]["code"], resp["error"]["message"])
        return resp["result"]


class Daemon:
    """One m2mvaultd with its own state directory and socket."""

    def __init__(self, root=None):
        self.root = root or tempfile.mkdtemp(prefix="m2mvault-it-")
        self.state = os.path.join(self.root, "state")
        self.socket = os.path.join(self.root, "run", "m2mvault.sock")
        self.log = os.path.join(self.root, "m2mvaultd.log")
        self.proc = None
        self.swtpm = None

    def backend_args(self):
        """The options that put m2mvaultd on this test's backend: none for
        PKCS#11 (the embedded SoftHSM2 token); the swtpm, started on first
        use, for tpm2."""
        if not ON_TPM:
            return []
        if self.swtpm is None:
            self.swtpm = Swtpm(os.path.join(self.root, "swtpm"))
        return ["--backend", "tpm2", "--tcti", self.swtpm.tcti]

    def start(self, extra=(), wait=True):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [DAEMON, "--state-dir", self.state, "--socket", self.socket, *self.backend_args(), *extra],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        logf.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"m2mvaultd exited with {self.proc.returncode}: {self.read_log()[-2000:]}")
            try:
                c = Connection(self.socket, timeout=5)
                try:
                    c.call("ping")
                finally:
                    c.close()
                return
            except (OSError, ConnectionError, VaultError):
                time.sleep(0.05)
        raise RuntimeError("m2mvaultd did not become ready")

    def stop(self):
        tlspeer.stop_process(self.proc, timeout=30)
        self.proc = None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        self.stop()
        if self.swtpm:
            self.swtpm.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self):
        return Connection(self.socket)

    def cli(self, *args, input=None, check=False):
        env = dict(os.environ, M2MVAULT_SOCKET=self.socket)
        p = subprocess.run([CLI, *args], input=input, capture_output=True, env=env, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"m2mvault {' '.join(args)} failed ({p.returncode}): {p.stderr.decode()}")
        return p

    def cli_json(self, *args):
        return json.loads(self.cli(*args, "--json", check=True).stdout)

    def read_log(self):
        with open(self.log, "r", errors="replace") as f:
            return f.read()

    def token_objects(self):
        """Labels of the persistent objects in the embedded token, read with
        pkcs11-tool (the daemon must be stopped or idle). PKCS#11 only."""
        assert not ON_TPM, "token_objects() reads a PKCS#11 token"
        env = dict(os.environ, SOFTHSM2_CONF=os.path.join(self.state, "softhsm2.conf"))
        with open(os.path.join(self.state, "user-pin")) as f:
            pin = f.read().strip()
        p = subprocess.run(
            ["pkcs11-tool", "--module", SOFTHSM2, "--token-label", "m2mvault", "--login", "--pin", pin,
             "--list-objects"], capture_output=True, text=True, env=env, timeout=120)
        if p.returncode != 0:
            raise AssertionError(f"pkcs11-tool failed: {p.stderr}")
        labels = []
        for line in p.stdout.splitlines():
            line = line.strip()
            if line.startswith("label:"):
                labels.append(line.split(":", 1)[1].strip().strip("'"))  # data objects: quoted
        return labels


def make_vendor_token_key(daemon, label="vendor", key_label="device-key", key_id="0a0b"):
    """A manufacturer's token beside the vault's (same SoftHSM2 config,
    the vault's user PIN) holding one P-256 key pair; the daemon must be
    stopped."""
    env = dict(os.environ, SOFTHSM2_CONF=os.path.join(daemon.state, "softhsm2.conf"))
    with open(os.path.join(daemon.state, "user-pin")) as f:
        pin = f.read().strip()
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", "12345678",
                    "--pin", pin], check=True, capture_output=True, env=env)
    subprocess.run(["pkcs11-tool", "--module", SOFTHSM2, "--token-label", label, "--login", "--pin", pin,
                    "--keypairgen", "--key-type", "EC:prime256v1", "--label", key_label, "--id", key_id],
                   check=True, capture_output=True, env=env)
    return env, pin


class DaemonTestCase(unittest.TestCase):
    """A fresh daemon per test class."""

    @classmethod
    def setUpClass(cls):
        # A class cleanup, not tearDownClass: it also runs when a subclass's
        # setUpClass fails after this (no daemon or swtpm is left running).
        cls.daemon = Daemon()
        cls.addClassCleanup(cls.daemon.cleanup)
        cls.daemon.start()

    def import_kpsa(self, entity, kpsa_id, hex_value, **extra):
        args = ["key", "import", "--kind", "kpsa", "--id", kpsa_id, "--entity", entity, "--hex", hex_value]
        for k, v in extra.items():
            args += [f"--{k}", v]
        return self.daemon.cli_json(*args)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
