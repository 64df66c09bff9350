"""The m2mvault OpenSSL 3 provider with real peers: the stock openssl CLI,
Debian's nginx and curl, on a real daemon and SoftHSM2 token.

Independent of the C++ code on purpose: certificates are made by an
openssl-CLI CA (tlspeer.Pki), key reference files are encoded here from the
format in docs/PROVIDER.md, and every signature the vault makes is checked by
stock openssl with the public key alone.

Environment: M2MVAULT_BUILD_DIR (daemon, CLI, module in engine/provider/,
test programs in tests/provider/). The module can be taken from elsewhere with
M2MVAULT_PROVIDER_DIR.
"""
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import tlspeer
import vaultlib

MODULES = os.environ.get("M2MVAULT_PROVIDER_DIR", os.path.join(vaultlib.BUILD, "engine", "provider"))
MODULE = os.path.join(MODULES, "m2mvault.so")
PROGRAMS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(MODULES))), "tests", "provider")
NGINX = "/usr/sbin/nginx"
CURL = shutil.which("curl") or "/usr/bin/curl"
OPENSSL = tlspeer.OPENSSL
PROVIDER_ARGS = ["-provider", "m2mvault", "-provider", "default"]

# The key reference format (docs/PROVIDER.md): PKCS#8 PrivateKeyInfo with the
# algorithm 2.25.325728113036865509850819109655992966607 whose privateKey is
# SEQUENCE { INTEGER 1, UTF8String name, UTF8String "EC" | "RSA" }.
REFERENCE_OID = bytes.fromhex("6983ea8cf9f8b6afc282859f84a0cedbe5d6bb4f")


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    elif n < 0x100:
        length = bytes([0x81, n])
    else:
        length = bytes([0x82, n >> 8, n & 0xFF])
    return bytes([tag]) + length + value


def key_reference(name: str, key_type: str) -> str:
    """The PEM key reference file for vault key `name` ("EC" or "RSA")."""
    inner = _tlv(0x30, _tlv(0x02, b"\x01") + _tlv(0x0C, name.encode()) + _tlv(0x0C, key_type.encode()))
    der = _tlv(0x30, _tlv(0x02, b"\x00") + _tlv(0x30, _tlv(0x06, REFERENCE_OID)) + _tlv(0x04, inner))
    body = base64.b64encode(der).decode()
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n"


def openssl_cnf(path, socket, first="m2mvault", prefer_m2mvault=False):
    """An openssl.cnf that activates m2mvault and default (in that order, or
    default first), optionally with default_properties = ?provider=m2mvault."""
    second = "default" if first == "m2mvault" else "m2mvault"
    props = "default_properties = ?provider=m2mvault\n" if prefer_m2mvault else ""
    with open(path, "w") as f:
        f.write("openssl_conf = openssl_init\n"
                "[openssl_init]\nproviders = provider_sect\nalg_section = evp_properties\n"
                f"[provider_sect]\n{first} = {first}_sect\n{second} = {second}_sect\n"
                f"[m2mvault_sect]\nmodule = {MODULE}\nsocket = {socket}\nactivate = 1\n"
                "[default_sect]\nactivate = 1\n"
                f"[evp_properties]\n{props}")
    return path


def clean_env(**extra):
    """The environment without any m2mvault or OpenSSL settings, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENSSL_CONF", "OPENSSL_MODULES", "M2MVAULT_SOCKET")}
    env.update(extra)
    return env


class Server:
    """`openssl s_server` on an ephemeral loopback port for one connection."""

    def __init__(self, args, env):
        self.dir = tempfile.mkdtemp(prefix="prov-srv-")
        self.out_path = os.path.join(self.dir, "out")
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen([OPENSSL, "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", *args],
                                         stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.port = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            m = re.search(r"(?m)^ACCEPT\s+\S*?:(\d+)", self.output())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                return
            time.sleep(0.02)

    def output(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode(errors="replace")

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        text = self.output()
        shutil.rmtree(self.dir, ignore_errors=True)
        return text


def s_client(port, args, env, timeout=30):
    return subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=timeout)


# The vault keys under test: the TPM backend has P-256 signing keys only.
VAULT_KEYS = [("in-cse", "EC")] + ([] if vaultlib.ON_TPM else [("rsa-cse", "RSA")])
NO_RSA_ON_TPM = unittest.skipIf(vaultlib.ON_TPM, "the TPM backend has P-256 signing keys only")


class ProviderTestCase(unittest.TestCase):
    """One daemon with an EC and an RSA signing key, each with a certificate
    from an openssl-CLI CA, and a peer (MN-CSE) with a file key."""

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(MODULE):
            raise RuntimeError(f"provider module not built: {MODULE}")
        # Class cleanups run even when setUpClass fails half-way (tearDownClass does not).
        cls.daemon = vaultlib.Daemon()
        cls.addClassCleanup(cls.daemon.cleanup)
        cls.daemon.start()
        cls.dir = tempfile.mkdtemp(prefix="prov-pki-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, ignore_errors=True)
        cls.pki = tlspeer.Pki(cls.dir)
        cls.ca_key, cls.ca = cls.pki.make_ca()
        cls.daemon.cli("key", "generate", "--name", "in-cse", check=True)
        if not vaultlib.ON_TPM:
            cls.daemon.cli("key", "generate", "--name", "rsa-cse", "--alg", "rsa-2048", check=True)
        cls.certs = {}
        cls.pubkeys = {}
        for name, _ in VAULT_KEYS:
            csr = os.path.join(cls.dir, name + ".csr")
            cls.daemon.cli("cert", "csr", "--key", name, "--subject", f"/O=oneM2M/CN={name}",
                           "--san", f"DNS:my.m2mprovider.org/{name}", "--out", csr, check=True)
            cls.certs[name] = cls.pki.sign_csr(csr, name, san=f"DNS:my.m2mprovider.org/{name}")
            pub = os.path.join(cls.dir, name + ".pub.pem")
            with open(pub, "wb") as f:
                f.write(cls.daemon.cli("key", "public", name, check=True).stdout)
            cls.pubkeys[name] = pub
        cls.peer_key, cls.peer_cert = cls.pki.make_leaf("mn-cse", "/O=oneM2M/CN=mn-cse",
                                                        "DNS:my.m2mprovider.org/mn-cse")
        cls.refs = {}
        for name, key_type in VAULT_KEYS:
            ref = os.path.join(cls.dir, name + ".ref.pem")
            with open(ref, "w") as f:
                f.write(key_reference(name, key_type))
            cls.refs[name] = ref

    def cli_env(self, **extra):
        """For `openssl -provider m2mvault`: the module dir and the socket."""
        return clean_env(OPENSSL_MODULES=MODULES, M2MVAULT_SOCKET=self.daemon.socket, **extra)

    def cnf_env(self, first="m2mvault", prefer_m2mvault=False):
        """openssl.cnf only: no OPENSSL_MODULES, no M2MVAULT_SOCKET."""
        suffix = f"{first}-{'prefer' if prefer_m2mvault else 'plain'}"
        cnf = openssl_cnf(os.path.join(self.dir, f"openssl-{suffix}.cnf"), self.daemon.socket, first,
                          prefer_m2mvault)
        return clean_env(OPENSSL_CONF=cnf)

    def handshake(self, server_args, server_env, version="-tls1_2", cipher=tlspeer.CERT_CIPHER,
                  client_args=(), client_env=None, cert="in-cse"):
        """A mutually authenticated handshake: s_server with `server_args`
        (its key) and the vault key's certificate, requiring a client
        certificate; s_client with the MN-CSE's file key. Returns (client
        stdout, server output)."""
        args = [*server_args, "-cert", self.certs[cert], "-CAfile", self.ca, "-Verify", "1",
                "-verify_return_error", version]
        if version == "-tls1_2":
            args += ["-cipher", cipher]
        server = Server(args, server_env)
        try:
            self.assertIsNotNone(server.port, server.output())
            cargs = ["-key", self.peer_key, "-cert", self.peer_cert, "-CAfile", self.ca, "-verify_return_error",
                     version, *client_args]
            if version == "-tls1_2":
                cargs += ["-cipher", cipher]
            client = s_client(server.port, cargs, client_env or clean_env())
            out = client.stdout.decode(errors="replace") + client.stderr.decode(errors="replace")
        finally:
            server_out = server.close()
        return out, server_out

    def assert_handshake(self, out, server_out, version="-tls1_2", cipher=tlspeer.CERT_CIPHER):
        if version == "-tls1_2":
            self.assertRegex(out, rf"New, TLSv1\.2, Cipher is {re.escape(cipher)}", out + server_out)
        else:
            self.assertRegex(out, r"New, TLSv1\.3, Cipher is TLS_", out + server_out)
        self.assertIn("Verify return code: 0 (ok)", out)
        # The server verified the client certificate and saw our CSE's peer.
        self.assertIn("CN = mn-cse", server_out)


class TestTlsWithVaultKey(ProviderTestCase):
    """TR-0038 A.3 with the IN-CSE key in the vault."""

    def test_a3_tls12_ecdhe_ecdsa_mutual_auth(self):
        # P-256: the ephemeral key goes through our EC keymgmt. (TLS 1.2 needs
        # the certificate's curve among the client's groups.)
        for groups in ("P-256", "X25519:P-256"):
            with self.subTest(groups=groups):
                out, srv = self.handshake([*PROVIDER_ARGS, "-key", "m2mvault:in-cse"], self.cli_env(),
                                          client_args=["-groups", groups])
                self.assert_handshake(out, srv)

    def test_a3_tls13_mutual_auth(self):
        out, srv = self.handshake([*PROVIDER_ARGS, "-key", "m2mvault:in-cse"], self.cli_env(), version="-tls1_3",
                                  client_args=["-groups", "P-256"])
        self.assert_handshake(out, srv, version="-tls1_3")

    def test_a3_both_provider_load_orders(self):
        for order in (["-provider", "m2mvault", "-provider", "default"],
                      ["-provider", "default", "-provider", "m2mvault"]):
            for version in ("-tls1_2", "-tls1_3"):
                with self.subTest(order=order, version=version):
                    out, srv = self.handshake([*order, "-key", "m2mvault:in-cse"], self.cli_env(), version=version,
                                              client_args=["-groups", "P-256"])
                    self.assert_handshake(out, srv, version=version)

    def test_a3_uri_with_percent_escapes(self):
        # %XX escapes in the URI are decoded: %2D is '-'.
        out, srv = self.handshake([*PROVIDER_ARGS, "-key", "m2mvault:in%2Dcse"], self.cli_env())
        self.assert_handshake(out, srv)

    @NO_RSA_ON_TPM
    def test_rsa_vault_key_tls12_pss_and_pkcs1_and_tls13(self):
        # The client's list also covers its own (ECDSA) CertificateVerify.
        cases = [("-tls1_2", ["-sigalgs", "rsa_pss_rsae_sha256:ECDSA+SHA256"]),
                 ("-tls1_2", ["-sigalgs", "RSA+SHA256:ECDSA+SHA256"]),
                 ("-tls1_2", ["-sigalgs", "RSA+SHA384:ECDSA+SHA256"]),
                 ("-tls1_3", [])]
        for version, extra in cases:
            with self.subTest(version=version, sigalgs=extra):
                out, srv = self.handshake([*PROVIDER_ARGS, "-key", "m2mvault:rsa-cse"], self.cli_env(),
                                          version=version, cipher="ECDHE-RSA-AES128-GCM-SHA256",
                                          client_args=extra, cert="rsa-cse")
                self.assert_handshake(out, srv, version=version, cipher="ECDHE-RSA-AES128-GCM-SHA256")


class TestOpensslCnfOnly(ProviderTestCase):
    """A key reference file, the provider activated by openssl.cnf alone:
    both load orders, with and without default_properties = ?provider=m2mvault.
    The client runs under the same openssl.cnf, so its ephemeral keys, its
    file key and its verification of our certificate also meet our keymgmt."""

    def test_key_reference_file_with_s_server(self):
        for first in ("m2mvault", "default"):
            for prefer in (False, True):
                env = self.cnf_env(first, prefer)
                for version in ("-tls1_2", "-tls1_3"):
                    with self.subTest(first=first, prefer_m2mvault=prefer, version=version):
                        out, srv = self.handshake(["-key", self.refs["in-cse"]], env, version=version,
                                                  client_args=["-groups", "P-256"], client_env=env)
                        self.assert_handshake(out, srv, version=version)

    def test_cli_writes_the_reference_this_test_encodes(self):
        """`m2mvault key reference` against the encoding written out above
        (the comment line before the PEM block is free text)."""
        for name, key_type in VAULT_KEYS:
            out = self.daemon.cli("key", "reference", name, check=True).stdout.decode()
            self.assertEqual(out[out.index("-----BEGIN"):], key_reference(name, key_type))
        ref = os.path.join(self.dir, "cli.ref.pem")
        self.daemon.cli("key", "reference", "in-cse", "--out", ref, check=True)
        env = self.cnf_env("m2mvault", True)
        out, srv = self.handshake(["-key", ref], env, client_args=["-groups", "P-256"], client_env=env)
        self.assert_handshake(out, srv)
        self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "ref@in.provider.com", "--hex", "00",
                        check=True)
        p = self.daemon.cli("key", "reference", "ref@in.provider.com")
        self.assertEqual(p.returncode, 10, p.stderr)

    @NO_RSA_ON_TPM
    def test_rsa_key_reference_file(self):
        env = self.cnf_env("m2mvault", True)
        out, srv = self.handshake(["-key", self.refs["rsa-cse"]], env, cipher="ECDHE-RSA-AES128-GCM-SHA256",
                                  cert="rsa-cse", client_env=env)
        self.assert_handshake(out, srv, cipher="ECDHE-RSA-AES128-GCM-SHA256")

    def test_software_keys_still_work_under_the_config(self):
        # Ordinary keys made and used under the config: our keymgmt serves them in software.
        env = self.cnf_env("m2mvault", True)
        key = os.path.join(self.dir, "soft.key")
        subprocess.run([OPENSSL, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key],
                       check=True, env=env, capture_output=True)
        msg = os.path.join(self.dir, "soft.msg")
        with open(msg, "wb") as f:
            f.write(b"software key under m2mvault")
        sig = os.path.join(self.dir, "soft.sig")
        subprocess.run([OPENSSL, "dgst", "-sha256", "-sign", key, "-out", sig, msg], check=True, env=env,
                       capture_output=True)
        pub = subprocess.run([OPENSSL, "pkey", "-in", key, "-pubout"], check=True, env=clean_env(),
                             capture_output=True).stdout
        with open(msg, "rb") as f:
            data = f.read()
        with open(sig, "rb") as f:
            signature = f.read()
        self.assertEqual(vaultlib.openssl_verify(pub, data, signature).returncode, 0)


class TestOpensslTools(ProviderTestCase):
    """openssl req and pkeyutl with a vault key, checked by stock openssl."""

    def test_req_makes_a_csr_that_verifies(self):
        for name, _ in VAULT_KEYS:
            with self.subTest(key=name):
                csr = os.path.join(self.dir, f"req-{name}.csr")
                p = subprocess.run([OPENSSL, "req", *PROVIDER_ARGS, "-new", "-key", f"m2mvault:{name}",
                                    "-subj", f"/O=oneM2M/CN={name}", "-sha256", "-out", csr],
                                   capture_output=True, env=self.cli_env())
                self.assertEqual(p.returncode, 0, p.stderr.decode())
                v = subprocess.run([OPENSSL, "req", "-verify", "-in", csr, "-noout"], capture_output=True,
                                   env=clean_env())
                self.assertEqual(v.returncode, 0, v.stderr.decode())
                self.assertIn("verify OK", (v.stdout + v.stderr).decode())
                self.assertEqual(tlspeer.spki_der(csr), tlspeer.spki_der(self.pubkeys[name]))

    def _pkeyutl_sign(self, key_uri, digest, *opts):
        d = tempfile.mkdtemp(dir=self.dir)
        dgst = os.path.join(d, "dgst")
        with open(dgst, "wb") as f:
            f.write(digest)
        sig = os.path.join(d, "sig")
        p = subprocess.run([OPENSSL, "pkeyutl", *PROVIDER_ARGS, "-sign", "-inkey", key_uri, "-in", dgst,
                            "-out", sig, *opts], capture_output=True, env=self.cli_env())
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return dgst, sig

    def _pkeyutl_verify(self, pub, dgst, sig, *opts):
        v = subprocess.run([OPENSSL, "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-in", dgst, "-sigfile", sig,
                            *opts], capture_output=True, env=clean_env())
        self.assertEqual(v.returncode, 0, (v.stdout + v.stderr).decode())
        self.assertIn("Signature Verified Successfully", v.stdout.decode())

    def test_pkeyutl_ecdsa_sha256_sha384_sha512(self):
        for algo in ("sha256", "sha384", "sha512"):
            with self.subTest(digest=algo):
                digest = hashlib.new(algo, f"TR-0038 {algo}".encode()).digest()
                dgst, sig = self._pkeyutl_sign("m2mvault:in-cse", digest)
                self._pkeyutl_verify(self.pubkeys["in-cse"], dgst, sig)

    @NO_RSA_ON_TPM
    def test_pkeyutl_rsa_pkcs1_and_pss(self):
        digest = hashlib.sha256(b"rsa in the vault").digest()
        dgst, sig = self._pkeyutl_sign("m2mvault:rsa-cse", digest, "-pkeyopt", "digest:sha256")
        self._pkeyutl_verify(self.pubkeys["rsa-cse"], dgst, sig, "-pkeyopt", "digest:sha256")
        pss = ["-pkeyopt", "digest:sha256", "-pkeyopt", "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:digest"]
        dgst, sig = self._pkeyutl_sign("m2mvault:rsa-cse", digest, *pss)
        self._pkeyutl_verify(self.pubkeys["rsa-cse"], dgst, sig, *pss)

    @NO_RSA_ON_TPM
    def test_pss_salt_the_daemon_cannot_make_is_refused(self):
        digest = hashlib.sha256(b"x").digest()
        d = tempfile.mkdtemp(dir=self.dir)
        dgst = os.path.join(d, "dgst")
        with open(dgst, "wb") as f:
            f.write(digest)
        p = subprocess.run([OPENSSL, "pkeyutl", *PROVIDER_ARGS, "-sign", "-inkey", "m2mvault:rsa-cse", "-in", dgst,
                            "-out", os.path.join(d, "sig"), "-pkeyopt", "digest:sha256", "-pkeyopt",
                            "rsa_padding_mode:pss", "-pkeyopt", "rsa_pss_saltlen:20"],
                           capture_output=True, env=self.cli_env())
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("salt length", p.stderr.decode())

    def test_public_key_is_served_locally(self):
        p = subprocess.run([OPENSSL, "pkey", *PROVIDER_ARGS, "-in", "m2mvault:in-cse", "-pubout"],
                           capture_output=True, env=self.cli_env())
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        self.assertEqual(tlspeer.spki_der(p.stdout), tlspeer.spki_der(self.pubkeys["in-cse"]))

    def test_private_key_never_leaves(self):
        p = subprocess.run([OPENSSL, "pkey", *PROVIDER_ARGS, "-in", "m2mvault:in-cse"], capture_output=True,
                           env=self.cli_env())
        self.assertNotIn(b"BEGIN PRIVATE KEY", p.stdout)
        self.assertNotIn(b"BEGIN EC PRIVATE KEY", p.stdout)


class TestErrors(ProviderTestCase):

    def test_daemon_down_names_the_socket(self):
        missing = os.path.join(self.dir, "no-daemon", "m2mvault.sock")
        env = clean_env(OPENSSL_MODULES=MODULES, M2MVAULT_SOCKET=missing)
        server = Server([*PROVIDER_ARGS, "-key", "m2mvault:in-cse", "-cert", self.certs["in-cse"]], env)
        server.proc.wait(timeout=30)
        out = server.close()
        self.assertNotEqual(server.proc.returncode, 0)
        self.assertIn(f"daemon not reachable at {missing}", out)

    def test_unknown_key_is_not_found(self):
        server = Server([*PROVIDER_ARGS, "-key", "m2mvault:no-such-key", "-cert", self.certs["in-cse"]],
                        self.cli_env())
        server.proc.wait(timeout=30)
        out = server.close()
        self.assertNotEqual(server.proc.returncode, 0)
        self.assertIn("key not found: no-such-key", out)

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("setpriv"), "needs root and setpriv")
    def test_principal_without_grants_is_denied(self):
        # uid nobody holds no grant (no policy file): the daemon refuses, and
        # the error says so.
        os.chmod(self.daemon.root, 0o755)  # let nobody reach the socket
        dgst = os.path.join(self.dir, "denied.dgst")
        with open(dgst, "wb") as f:
            f.write(hashlib.sha256(b"denied").digest())
        os.chmod(dgst, 0o644)
        p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", OPENSSL, "pkeyutl",
                            *PROVIDER_ARGS, "-sign", "-inkey", "m2mvault:in-cse", "-in", dgst, "-out", os.devnull],
                           capture_output=True, env=self.cli_env())
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("denied: operation 'key.show' denied", p.stderr.decode())

    def test_unavailable_answer_is_not_retried(self):
        # The daemon signs, counts the use, then cannot write the audit record
        # (its log was unlinked) and answers backend_unavailable. Sending the
        # request again would sign and count again: the provider must not.
        self.daemon.cli("key", "generate", "--name", "counted", "--max-uses", "100", check=True)
        csr = os.path.join(self.dir, "counted.csr")
        self.daemon.cli("cert", "csr", "--key", "counted", "--subject", "/CN=counted", "--out", csr, check=True)
        cert = self.pki.sign_csr(csr, "counted")
        def uses():
            return json.loads(self.daemon.cli("key", "show", "counted", "--json", check=True).stdout)["uses"]

        before = uses()  # the CSR counted one
        server = Server([*PROVIDER_ARGS, "-key", "m2mvault:counted", "-cert", cert, "-tls1_2",
                         "-cipher", tlspeer.CERT_CIPHER], self.cli_env())
        log = os.path.join(self.daemon.state, "audit", "audit.log")
        saved = log + ".saved"
        try:
            self.assertIsNotNone(server.port, server.output())
            os.rename(log, saved)  # the open log is no longer at its path
            client = s_client(server.port, ["-tls1_2", "-cipher", tlspeer.CERT_CIPHER], clean_env())
            self.assertNotIn("Cipher is " + tlspeer.CERT_CIPHER, client.stdout.decode(errors="replace"))
        finally:
            out = server.close()
            os.rename(saved, log)
        self.assertIn("is unavailable: audit log", out)
        self.assertEqual(uses(), before + 1, out)

    def test_reference_to_unknown_key_fails(self):
        # OpenSSL 3.0's file: store replaces decoder errors by "unsupported";
        # PEM_read_bio_PrivateKey (nginx, curl) keeps ours: see TestNginx.
        ref = os.path.join(self.dir, "ghost.ref.pem")
        with open(ref, "w") as f:
            f.write(key_reference("ghost", "EC"))
        p = subprocess.run([OPENSSL, "pkey", "-in", ref, "-pubout"], capture_output=True,
                           env=self.cnf_env("m2mvault", False))
        self.assertNotEqual(p.returncode, 0)
        self.assertNotIn(b"BEGIN PUBLIC KEY", p.stdout)


def _nginx_ok():
    return os.path.exists(NGINX) and os.path.exists(CURL)


@unittest.skipUnless(_nginx_ok(), "nginx or curl not installed")
class TestNginx(ProviderTestCase):
    """Unmodified Debian nginx serving HTTPS with a key reference file,
    configured only through openssl.cnf; stock curl fetches a page."""

    def run_nginx(self, env, key_file, cert, master_process, verify_client=False):
        root = tempfile.mkdtemp(prefix="prov-nginx-", dir=self.dir)
        os.makedirs(os.path.join(root, "html"))
        with open(os.path.join(root, "html", "index.html"), "w") as f:
            f.write("served by nginx with a vault key\n")
        port = tlspeer.free_port()
        conf = os.path.join(root, "nginx.conf")
        client_auth = f"ssl_client_certificate {self.ca}; ssl_verify_client on;" if verify_client else ""
        with open(conf, "w") as f:
            f.write(f"""daemon off;
master_process {'on' if master_process else 'off'};
worker_processes 2;
user root;
error_log {root}/error.log info;
pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log {root}/access.log;
  client_body_temp_path {root}/client_body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key_file};
    ssl_protocols TLSv1.2 TLSv1.3;
    {client_auth}
    root {root}/html;
    location = /whoami {{ return 200 "$ssl_client_s_dn\\n"; }}
  }}
}}
""")
        proc = subprocess.Popen([NGINX, "-p", root, "-e", os.path.join(root, "error.log"), "-c", conf],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
        return proc, root, port

    def test_nginx_names_an_unknown_key(self):
        ref = os.path.join(self.dir, "ghost-nginx.ref.pem")
        with open(ref, "w") as f:
            f.write(key_reference("ghost", "EC"))
        proc, root, port = self.run_nginx(self.cnf_env("m2mvault", False), ref, self.certs["in-cse"], False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.fail("nginx started with a reference to an unknown key")
        with open(os.path.join(root, "error.log")) as f:
            log = f.read()
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("key not found: ghost", log)

    def test_curl_client_key_reference_against_nginx(self):
        # Both ends hold their keys in the vault: nginx's server key and
        # curl's client key, each through a reference file and openssl.cnf.
        env = self.cnf_env("m2mvault", True)
        proc, root, port = self.run_nginx(env, self.refs["in-cse"], self.web_cert, True, verify_client=True)
        try:
            p = self.fetch(port, "--cert", self.client_cert, "--key", self.client_ref, path="/whoami", env=env)
            self.assertEqual(p.returncode, 0, p.stderr.decode())
            self.assertIn(b"CN=ae-client", p.stdout)
            p = self.fetch(port, path="/whoami")  # no client certificate: refused
            self.assertIn(b"400", p.stdout)
        finally:
            tlspeer.stop_process(proc, signal.SIGQUIT)

    def fetch(self, port, *extra, path="/", env=None):
        deadline = time.monotonic() + 20
        while True:
            p = subprocess.run([CURL, "-sS", "--cacert", self.ca, *extra, f"https://127.0.0.1:{port}{path}"],
                               capture_output=True, timeout=30, env=env or clean_env())
            if p.returncode != 7 or time.monotonic() > deadline:  # 7: not listening yet
                return p
            time.sleep(0.1)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # A web server certificate for the same vault key: curl checks the name.
        csr = os.path.join(cls.dir, "web.csr")
        cls.daemon.cli("cert", "csr", "--key", "in-cse", "--subject", "/O=oneM2M/CN=localhost", "--san",
                       "IP:127.0.0.1", "--san", "DNS:localhost", "--out", csr, check=True)
        cls.web_cert = cls.pki.sign_csr(csr, "web", san="IP:127.0.0.1, DNS:localhost")
        # A client (an AE) whose key is in the vault too.
        cls.daemon.cli("key", "generate", "--name", "ae-client", check=True)
        csr = os.path.join(cls.dir, "ae-client.csr")
        cls.daemon.cli("cert", "csr", "--key", "ae-client", "--subject", "/O=oneM2M/CN=ae-client", "--out", csr,
                       check=True)
        cls.client_cert = cls.pki.sign_csr(csr, "ae-client", san="DNS:ae-client")
        cls.client_ref = os.path.join(cls.dir, "ae-client.ref.pem")
        with open(cls.client_ref, "w") as f:
            f.write(key_reference("ae-client", "EC"))

    def test_nginx_serves_https_with_a_key_reference(self):
        for first, prefer, master in (("m2mvault", True, True), ("default", False, False),
                                      ("m2mvault", False, True)):
            with self.subTest(first=first, prefer_m2mvault=prefer, master_process=master):
                proc, root, port = self.run_nginx(self.cnf_env(first, prefer), self.refs["in-cse"],
                                                  self.web_cert, master)
                try:
                    for version in ("--tlsv1.2", "--tlsv1.3"):
                        p = self.fetch(port, version, "--tls-max", version[6:])
                        err = ""
                        if os.path.exists(os.path.join(root, "error.log")):
                            with open(os.path.join(root, "error.log")) as f:
                                err = f.read()
                        self.assertEqual(p.returncode, 0, p.stderr.decode() + err)
                        self.assertEqual(p.stdout, b"served by nginx with a vault key\n")
                finally:
                    tlspeer.stop_process(proc, signal.SIGQUIT if master else signal.SIGTERM)


@unittest.skipUnless(os.path.exists(os.path.join(PROGRAMS, "provider_stress")), "provider_stress not built")
class TestThreadsAndFork(ProviderTestCase):
    """8 threads and forked children sign at once through one provider
    instance, every signature verified in software with the public key; the
    daemon restarts while they run."""

    def stress(self, seconds, restart_at=None):
        cmd = [os.path.join(PROGRAMS, "provider_stress"), "--modules", MODULES, "--socket", self.daemon.socket,
               "--key", "in-cse", "--public", self.pubkeys["in-cse"], "--threads", "8", "--children", "4",
               "--seconds", str(seconds)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
        if restart_at is not None:
            time.sleep(restart_at)
            self.daemon.restart()
        out, err = proc.communicate(timeout=seconds + 60)
        return proc.returncode, out.decode(), err.decode()

    def test_threads_and_children_sign_at_once(self):
        rc, out, err = self.stress(3)
        self.assertEqual(rc, 0, out + err)
        m = re.search(r"verified (\d+) signatures, (\d+) failures", out)
        self.assertIsNotNone(m, out + err)
        self.assertGreater(int(m.group(1)), 100)
        self.assertEqual(int(m.group(2)), 0)

    def test_signing_continues_across_a_daemon_restart(self):
        old_pid = self.daemon.proc.pid
        rc, out, err = self.stress(8, restart_at=2)
        self.assertNotEqual(self.daemon.proc.pid, old_pid)
        self.assertEqual(rc, 0, out + err)
        m = re.search(r"verified (\d+) signatures, (\d+) failures", out)
        self.assertIsNotNone(m, out + err)
        self.assertEqual(int(m.group(2)), 0, out + err)
        # Signing went on with the new daemon: progress in the last seconds.
        progress = {int(s): int(n) for s, n in re.findall(r"at (\d+)s: verified (\d+)", out)}
        self.assertGreater(progress[8], progress[6], out)


if __name__ == "__main__":
    unittest.main()
