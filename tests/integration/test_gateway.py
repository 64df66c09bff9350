"""m2mvault-gateway and libm2mvault-tls with the real daemon and stock
`openssl` peers: TR-0038 7.1.2 / A.2 made to work as the seeds wished.

The MN-CSE's psk-lookup-table (table 7.1.2-2) lives in the vault; the
gateway terminates TLS for a "CSE" that is a plain TCP server here, and
logs which AE each session belongs to. The AEs are `openssl s_client`
holding (KpsaId, Kpsa) as in table 7.1.2-1, or the C program of tests/tls
taking its Kpsa from the vault.
"""
import json
import os
import queue
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import tlspeer
from tlspeer import Pki
from vaultlib import BUILD, CLOCK_AE1, CLOCK_AE2, Daemon, DaemonTestCase

GATEWAY = os.path.join(BUILD, "engine", "gateway", "m2mvault-gateway")
TLS_CLIENT = os.environ.get("M2MVAULT_TLS_CLIENT", os.path.join(BUILD, "tests", "tls", "m2mvault-tls-client"))
PROVIDER_DIR = os.path.join(BUILD, "engine", "provider")
PSK_CIPHER = "PSK-AES128-CBC-SHA256"
CERT_CIPHER = "ECDHE-ECDSA-AES128-SHA256"
UNKNOWN_ID = "AE999999999999-Lock@in.provider.com"


class Cse:
    """The CSE behind the gateway: reads one line, answers `CSE got: <line>`
    and closes, counting the connections it saw."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lines = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            conn.settimeout(10)
            data = b""
            try:
                while b"\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                line = data.split(b"\n", 1)[0]
                self.lines.append(line)
                conn.sendall(b"CSE got: " + line + b"\n")
            except OSError:
                pass

    def close(self):
        self.sock.close()


def parse_fields(line):
    """`session peer=... entity="a b" ...` -> dict."""
    fields = {}
    for token in shlex.split(line)[1:]:
        key, _, value = token.partition("=")
        fields[key] = value
    return fields


class Gateway:
    """A running m2mvault-gateway; its stdout is collected line by line."""

    def __init__(self, daemon, forward_port, *extra, env=None, prefix=()):
        args = [*prefix, GATEWAY, "--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{forward_port}",
                "--socket", daemon.socket, *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        self.lines = queue.Queue()
        self.all_lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        first = self.next_line(timeout=20)
        if "listening on" not in first:
            raise AssertionError(f"gateway did not start: {first}{self.drain_text()}")
        self.port = int(first.split("listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.all_lines.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self, timeout=20):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no line from the gateway in time")
        if line is None:
            raise AssertionError(f"the gateway exited ({self.proc.wait()}): {self.drain_text()}")
        return line

    def next_record(self, prefix="session", timeout=20):
        while True:
            line = self.next_line(timeout)
            if line.startswith(prefix + " "):
                return parse_fields(line)

    def discard_pending(self):
        """Forgets lines not read yet (a failed test's)."""
        while True:
            try:
                if self.lines.get_nowait() is None:
                    self.lines.put(None)
                    return
            except queue.Empty:
                return

    def drain_text(self):
        return "\n".join(self.all_lines)

    def stop(self):
        tlspeer.stop_process(self.proc, timeout=30)
        self.reader.join(timeout=10)
        if not self.reader.is_alive():
            self.proc.stdout.close()
        return self.proc.returncode


def s_client(port, *args, data=b"hello CSE\n", timeout=30):
    """Stock `openssl s_client`: sends `data`, reads until the gateway closes."""
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *args],
                          input=data, capture_output=True, timeout=timeout)


def psk_client(port, entity_row, version="-tls1_2", psk=None, identity=None):
    _, kpsa_id, kpsa_hex = entity_row
    args = [version, "-psk_identity", identity or kpsa_id, "-psk", psk or kpsa_hex]
    if version == "-tls1_2":
        args += ["-cipher", PSK_CIPHER]
    return s_client(port, *args)


def output(p):
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def audit_records(daemon):
    text = daemon.cli("audit", "show", "--json", check=True).stdout.decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class GatewayPskTest(DaemonTestCase):
    """TR-0038 A.2 against the gateway: the MN-CSE's TLS server looks the
    psk_identity up in the vault and associates the session with the AE-ID."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for entity, kpsa_id, kpsa_hex in (CLOCK_AE1, CLOCK_AE2):
            cls.daemon.cli("key", "import", "--kind", "kpsa", "--id", kpsa_id, "--entity", entity,
                           "--hex", kpsa_hex, check=True)
        cls.cse = Cse()
        cls.gateway = Gateway(cls.daemon, cls.cse.port, "--psk")

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.cse.close()
        super().tearDownClass()

    def setUp(self):
        self.gateway.discard_pending()

    def assert_session_ok(self, p, entity, kpsa_id, protocol, cipher=None):
        text = output(p)
        self.assertEqual(p.returncode, 0, text)
        self.assertIn("CSE got: hello CSE", text)
        record = self.gateway.next_record()
        self.assertEqual(record["outcome"], "closed", record)
        self.assertEqual(record["entity"], entity)
        self.assertEqual(record["kpsa_id"], kpsa_id)
        self.assertEqual(record["protocol"], protocol)
        if cipher:
            self.assertEqual(record["cipher"], cipher)
        self.assertEqual(record["bytes_in"], str(len(b"hello CSE\n")))
        self.assertEqual(record["bytes_out"], str(len(b"CSE got: hello CSE\n")))
        self.assertTrue(record["peer"].startswith("127.0.0.1:"))
        return record

    # A.2 steps 1-2: the AE offers TLS_PSK_WITH_AES_128_CBC_SHA256 (0x00ae)
    # and the MN-CSE selects it.
    def test_a2_tls12_clock_ae1_with_exactly_the_psk_suite(self):
        p = psk_client(self.gateway.port, CLOCK_AE1)
        self.assertIn(f"Cipher is {PSK_CIPHER}", output(p))
        self.assertIn("Protocol  : TLSv1.2", output(p))
        self.assert_session_ok(p, "Clock-AE1", CLOCK_AE1[1], "TLSv1.2", PSK_CIPHER)

    # 7.1.2 table 7.1.2-2, second row.
    def test_a2_second_ae_maps_to_clock_ae2(self):
        p = psk_client(self.gateway.port, CLOCK_AE2)
        self.assert_session_ok(p, "Clock-AE2", CLOCK_AE2[1], "TLSv1.2", PSK_CIPHER)

    # A.2 step 4: the server validates the client's Finished with Kpsa.
    def test_a2_wrong_psk_fails(self):
        p = psk_client(self.gateway.port, CLOCK_AE1, psk=CLOCK_AE2[2])
        self.assertNotEqual(p.returncode, 0)
        self.assertNotIn("CSE got", output(p))
        record = self.gateway.next_record()
        self.assertEqual(record["outcome"], "handshake_failed")
        self.assertEqual(record["entity"], "-")

    def test_a2_unknown_identity_fails_and_is_audited(self):
        p = psk_client(self.gateway.port, CLOCK_AE1, identity=UNKNOWN_ID)
        self.assertNotEqual(p.returncode, 0)
        record = self.gateway.next_record()
        self.assertEqual(record["outcome"], "handshake_failed")
        self.assertTrue(record["reason"].startswith("not_found: "), record)
        self.assertIn(UNKNOWN_ID, record["reason"])
        looked_up = [r for r in audit_records(self.daemon) if r["op"] == "psk.release" and r["key"] == UNKNOWN_ID]
        self.assertEqual([(r["result"], r["error"]) for r in looked_up], [("error", "not_found")])

    # RFC 8446 external PSK: stock s_client -tls1_3 -psk.
    def test_tls13_external_psk(self):
        p = psk_client(self.gateway.port, CLOCK_AE1, version="-tls1_3")
        self.assertIn("TLSv1.3, Cipher is", output(p))
        record = self.assert_session_ok(p, "Clock-AE1", CLOCK_AE1[1], "TLSv1.3")
        self.assertTrue(record["cipher"].endswith("_SHA256"), record)

    def test_tls13_unknown_identity_and_wrong_psk_fail(self):
        p = psk_client(self.gateway.port, CLOCK_AE1, version="-tls1_3", identity=UNKNOWN_ID)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(self.gateway.next_record()["outcome"], "handshake_failed")
        p = psk_client(self.gateway.port, CLOCK_AE2, version="-tls1_3", psk=CLOCK_AE1[2])
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(self.gateway.next_record()["outcome"], "handshake_failed")

    # Every session is authenticated against the vault: no resumption.
    def test_each_session_is_a_released_and_audited_lookup(self):
        before = sum(1 for r in audit_records(self.daemon) if r["op"] == "psk.release")
        for _ in range(3):
            self.assert_session_ok(psk_client(self.gateway.port, CLOCK_AE2), "Clock-AE2", CLOCK_AE2[1], "TLSv1.2")
        released = [r for r in audit_records(self.daemon) if r["op"] == "psk.release"][before:]
        self.assertEqual([(r["key"], r["result"]) for r in released], [(CLOCK_AE2[1], "ok")] * 3)

    def test_z_no_key_bytes_in_the_gateway_log(self):
        text = self.gateway.drain_text()
        for _, _, kpsa_hex in (CLOCK_AE1, CLOCK_AE2):
            self.assertNotIn(kpsa_hex, text.lower())
            self.assertNotIn(bytes.fromhex(kpsa_hex).hex(":"), text.lower())


class GatewayLimitsTest(DaemonTestCase):
    """Bounded connections, handshake timeouts, a CSE that is down, SIGTERM."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        entity, kpsa_id, kpsa_hex = CLOCK_AE1
        cls.daemon.cli("key", "import", "--kind", "kpsa", "--id", kpsa_id, "--entity", entity, "--hex", kpsa_hex,
                       check=True)
        cls.cse = Cse()

    @classmethod
    def tearDownClass(cls):
        cls.cse.close()
        super().tearDownClass()

    def gateway(self, *extra, forward=None):
        g = Gateway(self.daemon, forward or self.cse.port, "--psk", *extra)
        self.addCleanup(g.stop)
        return g

    def test_silent_client_times_out_in_the_handshake(self):
        g = self.gateway("--handshake-timeout", "1")
        with socket.create_connection(("127.0.0.1", g.port)):
            record = g.next_record(timeout=10)
        self.assertEqual(record["outcome"], "timeout")
        self.assertIn("handshake", record["reason"])

    def test_connections_beyond_the_limit_are_refused(self):
        g = self.gateway("--max-connections", "1", "--handshake-timeout", "5")
        with socket.create_connection(("127.0.0.1", g.port)):
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", g.port)) as second:
                second.settimeout(5)
                self.assertEqual(second.recv(1), b"")  # closed at once
            refused = g.next_record(prefix="refused")
            self.assertIn("too many connections", refused["reason"])
        # The slot is free again once the first one has gone.
        self.assertEqual(g.next_record()["outcome"], "handshake_failed")
        self.assertEqual(psk_client(g.port, CLOCK_AE1).returncode, 0)
        self.assertEqual(g.next_record()["entity"], "Clock-AE1")

    def test_cse_down_is_forward_failed(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead_port = s.getsockname()[1]
        g = self.gateway(forward=dead_port)
        p = psk_client(g.port, CLOCK_AE1)
        self.assertNotIn("CSE got", output(p))
        record = g.next_record()
        self.assertEqual(record["outcome"], "forward_failed")
        self.assertEqual(record["entity"], "Clock-AE1")  # authenticated, then nowhere to go

    def test_sigterm_ends_sessions_and_exits_cleanly(self):
        g = self.gateway("--handshake-timeout", "60")
        held = socket.create_connection(("127.0.0.1", g.port))  # a session in its handshake
        self.addCleanup(held.close)
        time.sleep(0.3)
        started = time.time()
        self.assertEqual(g.stop(), 0)
        self.assertLess(time.time() - started, 10)
        self.assertIn("outcome=shutdown", g.drain_text())
        self.assertTrue(g.all_lines[-1].startswith("m2mvault-gateway: stopped"), g.drain_text())

    def test_bad_arguments_fail_with_a_clear_message(self):
        p = subprocess.run([GATEWAY, "--listen", "127.0.0.1:0", "--forward", "nowhere", "--psk"],
                           capture_output=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("invalid_argument: address 'nowhere' is not host:port", p.stderr.decode())
        p = subprocess.run([GATEWAY, "--listen", "127.0.0.1:0", "--forward", "127.0.0.1:1"],
                           capture_output=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("choose --psk", p.stderr.decode())

    def test_daemon_down_fails_the_handshake_with_backend_unavailable(self):
        g = Gateway(Daemon(), self.cse.port, "--psk")  # a socket nobody serves
        self.addCleanup(g.stop)
        p = psk_client(g.port, CLOCK_AE1)
        self.assertNotEqual(p.returncode, 0)
        record = g.next_record()
        self.assertEqual(record["outcome"], "handshake_failed")
        self.assertTrue(record["reason"].startswith("backend_unavailable: "), record)


class ClientLibraryTest(DaemonTestCase):
    """TR-0038 7.1.2 "Operation of ADN-AE1": an AE's TLS client, in C, takes
    its Kpsa from the vault by KpsaId and talks to stock s_server."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        entity, kpsa_id, kpsa_hex = CLOCK_AE1
        # On the AE's vault the Kpsa is bound to the MN-CSE it is shared with.
        cls.daemon.cli("key", "import", "--kind", "kpsa", "--id", kpsa_id, "--entity", "mn-cse-123456", "--hex",
                       kpsa_hex, check=True)

    def s_server(self, version):
        _, kpsa_id, kpsa_hex = CLOCK_AE1
        args = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-nocert", "-rev",
                "-psk_identity", kpsa_id, "-psk", kpsa_hex, version]
        if version == "-tls1_2":
            args += ["-cipher", PSK_CIPHER]
        out = tempfile.NamedTemporaryFile(prefix="s_server-", delete=False)
        self.addCleanup(os.unlink, out.name)
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
        out.close()
        self.addCleanup(proc.stdin.close)
        self.addCleanup(lambda: (proc.kill(), proc.wait()))
        deadline = time.time() + 20
        while time.time() < deadline:
            with open(out.name) as f:
                text = f.read()
            if "ACCEPT 127.0.0.1:" in text:
                return proc, out.name, int(text.split("ACCEPT 127.0.0.1:", 1)[1].split()[0])
            time.sleep(0.05)
        raise AssertionError("s_server did not start")

    def run_client(self, version, key=CLOCK_AE1[1]):
        proc, log, port = self.s_server("-tls1_2" if version == "1.2" else "-tls1_3")
        p = subprocess.run([TLS_CLIENT, self.daemon.socket, key, f"127.0.0.1:{port}", version, "hello from Clock-AE1"],
                           capture_output=True, timeout=30)
        proc.wait(timeout=10)
        with open(log) as f:
            return p, f.read()

    def test_tls12_psk_suite_with_the_kpsa_from_the_vault(self):
        p, server_log = self.run_client("1.2")
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        lines = dict(line.split("=", 1) for line in p.stdout.decode().splitlines())
        self.assertEqual(lines["protocol"], "TLSv1.2")
        self.assertEqual(lines["cipher"], PSK_CIPHER)
        self.assertEqual(lines["psk_id"], CLOCK_AE1[1])
        self.assertEqual(lines["entity"], "mn-cse-123456")
        self.assertEqual(lines["reply"], "1EA-kcolC morf olleh")  # s_server -rev
        self.assertNotIn("PSK warning", server_log)  # s_server got the identity it expects

    def test_tls13_external_psk_with_the_kpsa_from_the_vault(self):
        p, server_log = self.run_client("1.3")
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        lines = dict(line.split("=", 1) for line in p.stdout.decode().splitlines())
        self.assertEqual(lines["protocol"], "TLSv1.3")
        self.assertEqual(lines["reply"], "1EA-kcolC morf olleh")
        self.assertNotIn("PSK warning", server_log)

    def test_unknown_kpsa_id_fails_with_not_found(self):
        proc, _, port = self.s_server("-tls1_2")
        p = subprocess.run([TLS_CLIENT, self.daemon.socket, UNKNOWN_ID, f"127.0.0.1:{port}", "1.2", "x"],
                           capture_output=True, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn("not_found: ", p.stderr.decode())


NOBODY = 65534


@unittest.skipUnless(os.getuid() == 0, "needs root (to run the gateway as nobody)")
class GatewayPolicyTest(unittest.TestCase):
    """The gateway runs as an unprivileged principal whose policy grants
    psk.release on Clock-AE2's Kpsa only: Clock-AE1's handshake is denied by
    the vault, and the denial is audited."""

    @classmethod
    def setUpClass(cls):
        cls.base = tempfile.mkdtemp(prefix="m2mvault-gw-policy-")
        os.chmod(cls.base, 0o755)  # the socket's directory must be reachable by nobody
        policy = os.path.join(cls.base, "policy.toml")
        with open(policy, "w") as f:
            f.write('[[rule]]\nname = "gateway"\nuids = [%d]\ngrants = ["psk.release"]\n'
                    'keys = ["%s"]\n' % (NOBODY, CLOCK_AE2[1]))
        os.chmod(policy, 0o644)
        root = os.path.join(cls.base, "vault")
        os.mkdir(root)
        os.chmod(root, 0o755)
        cls.daemon = Daemon(root=root).start(extra=("--policy", policy))
        for entity, kpsa_id, kpsa_hex in (CLOCK_AE1, CLOCK_AE2):
            cls.daemon.cli("key", "import", "--kind", "kpsa", "--id", kpsa_id, "--entity", entity,
                           "--hex", kpsa_hex, check=True)
        cls.cse = Cse()
        cls.gateway = Gateway(cls.daemon, cls.cse.port, "--psk",
                              prefix=["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"])

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.cse.close()
        cls.daemon.cleanup()
        shutil.rmtree(cls.base, ignore_errors=True)

    def test_granted_key_authenticates(self):
        p = psk_client(self.gateway.port, CLOCK_AE2)
        self.assertEqual(p.returncode, 0, output(p))
        self.assertEqual(self.gateway.next_record()["entity"], "Clock-AE2")

    def test_key_without_grant_is_denied_and_audited(self):
        p = psk_client(self.gateway.port, CLOCK_AE1)
        self.assertNotEqual(p.returncode, 0)
        record = self.gateway.next_record()
        self.assertEqual(record["outcome"], "handshake_failed")
        self.assertTrue(record["reason"].startswith("denied: "), record)
        denied = [r for r in audit_records(self.daemon)
                  if r["op"] == "psk.release" and r["key"] == CLOCK_AE1[1] and r["uid"] == NOBODY]
        self.assertEqual(len(denied), 1, denied)
        self.assertIn("denied", (denied[0]["result"], denied[0]["error"]))


def provider_module():
    return os.path.join(PROVIDER_DIR, "m2mvault.so")


class GatewayCertificateTest(DaemonTestCase):
    """TS-0003 10.2.3 / TR-0038 7.1.3: the gateway's certificate key is a
    vault key (generated in the token, used through the provider); stock
    s_client completes ECDHE-ECDSA-AES128-SHA256."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="m2mvault-gw-pki-")
        cls.pki = Pki(cls.tmp)
        cls.pki.make_ca()
        cls.daemon.cli("key", "generate", "--name", "in-cse", "--entity", "in-cse", check=True)
        csr = os.path.join(cls.tmp, "in-cse.csr")
        cls.daemon.cli("cert", "csr", "--key", "in-cse", "--subject", "/O=Provider/CN=in-cse", "--san",
                       "DNS:my.m2mprovider.org/in-cse", "--out", csr, check=True)
        cls.cert = cls.pki.sign_csr(csr, "in-cse", san="DNS:my.m2mprovider.org/in-cse")
        for entity, kpsa_id, kpsa_hex in (CLOCK_AE1,):
            cls.daemon.cli("key", "import", "--kind", "kpsa", "--id", kpsa_id, "--entity", entity, "--hex", kpsa_hex,
                           check=True)
        cls.cse = Cse()
        cls.gateway = Gateway(cls.daemon, cls.cse.port, "--key", "in-cse", "--cert", cls.cert, "--psk",
                              "--provider-dir", PROVIDER_DIR)

    @classmethod
    def tearDownClass(cls):
        cls.gateway.stop()
        cls.cse.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def test_tls12_ecdhe_ecdsa_with_the_vault_key(self):
        p = s_client(self.gateway.port, "-tls1_2", "-cipher", CERT_CIPHER, "-CAfile", self.pki.cas["ca"][1],
                     "-verify_return_error", "-verify_hostname", "my.m2mprovider.org/in-cse")
        text = output(p)
        self.assertEqual(p.returncode, 0, text)
        self.assertIn(f"Cipher is {CERT_CIPHER}", text)
        self.assertIn("Verify return code: 0 (ok)", text)
        self.assertIn("CSE got: hello CSE", text)
        record = self.gateway.next_record()
        self.assertEqual(record["outcome"], "closed")
        self.assertEqual(record["cipher"], CERT_CIPHER)

    def test_tls13_with_the_vault_key(self):
        p = s_client(self.gateway.port, "-tls1_3", "-CAfile", self.pki.cas["ca"][1], "-verify_return_error")
        self.assertEqual(p.returncode, 0, output(p))
        self.assertEqual(self.gateway.next_record()["protocol"], "TLSv1.3")

    def setUp(self):
        self.gateway.discard_pending()

    # TR-0038 7.1.3 / A.3: both ends authenticated by certificates; the
    # gateway logs the client's entity from its subjectAltName.
    def test_client_certificate_names_the_entity(self):
        g = Gateway(self.daemon, self.cse.port, "--key", "in-cse", "--cert", self.cert, "--provider-dir",
                    PROVIDER_DIR, "--client-ca", self.pki.cas["ca"][1])
        self.addCleanup(g.stop)
        key, cert = self.pki.make_leaf("mn-cse", "/O=Provider/CN=mn-cse-123456",
                                       "DNS:my.m2mprovider.org/mn-cse-123456")
        p = s_client(g.port, "-tls1_2", "-cipher", CERT_CIPHER, "-CAfile", self.pki.cas["ca"][1],
                     "-verify_return_error", "-key", key, "-cert", cert)
        self.assertEqual(p.returncode, 0, output(p))
        record = g.next_record()
        self.assertEqual(record["entity"], "my.m2mprovider.org/mn-cse-123456")
        self.assertIn("CN=mn-cse-123456", record["subject"])
        # Without a client certificate the handshake fails.
        p = s_client(g.port, "-tls1_2", "-cipher", CERT_CIPHER, "-CAfile", self.pki.cas["ca"][1])
        self.assertNotIn("CSE got", output(p))
        self.assertEqual(g.next_record()["outcome"], "handshake_failed")

    def test_psk_still_works_beside_the_certificate(self):
        p = psk_client(self.gateway.port, CLOCK_AE1)
        self.assertEqual(p.returncode, 0, output(p))
        record = self.gateway.next_record()
        self.assertEqual((record["entity"], record["cipher"]), ("Clock-AE1", PSK_CIPHER))


if __name__ == "__main__":
    unittest.main()
