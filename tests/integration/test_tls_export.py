"""TLS key export run by the daemon (TS-0003 10.3.1, 8.3.2, 8.2.2.3, 8.7.2.2).

The peer is always the stock openssl CLI (or a second vault). Expected
identifiers and check values are computed here from the keying material
openssl prints with -keymatexport, never from the vault's own answers.
"""
import base64
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import tlspeer
from tlspeer import (BOOTSTRAP_LABEL, CERT_CIPHER, CONNECTION_LABEL, PSK_CIPHER, Pki, SClient, SServer,
                     expected_id, keymat_split, spki_sha256)
from vaultlib import CLI, Daemon, DaemonTestCase, b64, make_vendor_token_key, pkcs11_only

ESCERTKE_LABEL = "EXPORTER-oneM2M-ESCertKE"
MEF = "mef.provider.org"
MAF = "myMAF.provider.org"
IN_CSE = "my.m2mprovider.org/in-cse"
MN_CSE = "my.m2mprovider.org/mn-cse"
HANDSHAKE_FAILED = 18


def rfc3339(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


class ExportChecks:
    """Comparisons shared by the test classes."""

    def assert_stored(self, key, km, fqdn, kind, fmt="base64"):
        id16, key32 = keymat_split(km)
        want_id = expected_id(km, fqdn, fmt) if fqdn else expected_id(km, "x", fmt).split("@")[0]
        self.assertEqual(key["id"], want_id)
        self.assertEqual(key["check_value"], tlspeer.check_value(key32))
        self.assertEqual(key["kind"], kind)
        self.assertEqual(key["length"], 32)
        # The token recomputes the same value from what it stored.
        check = self.daemon.connect().call("key.check", key=key["name"])
        self.assertTrue(check["matches"])
        self.assertEqual(check["check_value"], tlspeer.check_value(key32))

    def key_count(self):
        return self.daemon.connect().call("status")["keys"]

    def run_cli(self, *args, daemon=None):
        return (daemon or self.daemon).cli(*args)

    def cli_key(self, *args):
        p = self.daemon.cli(*args, "--json")
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return json.loads(p.stdout)


class PskHandshakeTest(ExportChecks, DaemonTestCase):
    """PSK variants: the vault as Enrolee (Kpm) and as Entity A (Km)."""

    def import_psk(self, kind, key_id, value, **extra):
        args = ["key", "import", "--kind", kind, "--id", key_id, "--hex", value.hex()]
        for k, v in extra.items():
            args += [f"--{k}", v]
        return self.daemon.cli_json(*args)

    def test_enrolment_with_kpm_stores_the_ke_openssl_exports(self):
        kpm = os.urandom(32)
        self.import_psk("kpm", "enrolee-0001@mef.provider.org", kpm)
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=kpm.hex(), psk_identity="enrolee-0001@mef.provider.org") as srv:
            key = self.cli_key("enrol", "--mef", f"127.0.0.1:{srv.port}", "--mef-fqdn", MEF,
                               "--kpm", "enrolee-0001@mef.provider.org")
            km = srv.keying_material()
            self.assertEqual(srv.client_psk_identity(), "enrolee-0001@mef.provider.org")
        self.assert_stored(key, km, MEF, "ke")
        self.assertEqual(key["storage"], "token")  # a Ke never leaves the token
        self.assertEqual(key["peer"], MEF)
        self.assertEqual(key["cipher"], PSK_CIPHER)

        # The stored Ke is the one openssl exported: a Km derived from it in
        # the token equals Python's HMAC over the exported bytes.
        _, ke = keymat_split(km)
        import hashlib
        import hmac
        km_value = hmac.new(ke, b"oneM2M Enrolment Key to Master Credential derivation" + b"maf.provider.org",
                            hashlib.sha256).digest()
        derived = self.daemon.cli_json("derive", "km", "--ke", key["id"], "--maf-id", "maf.provider.org")
        self.assertEqual(derived["check_value"], tlspeer.check_value(km_value))

    def test_enrolment_hex_id_format(self):
        kpm = os.urandom(16)
        self.import_psk("kpm", "enrolee-0002@mef.provider.org", kpm)
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=kpm.hex()) as srv:
            key = self.cli_key("enrol", "--mef", f"127.0.0.1:{srv.port}", "--mef-fqdn", MEF,
                               "--kpm", "enrolee-0002@mef.provider.org", "--id-format", "hex",
                               "--name", "ke-hex")
            km = srv.keying_material()
        self.assert_stored(key, km, MEF, "ke", fmt="hex")
        self.assertEqual(key["name"], "ke-hex")

    def test_maf_handshake_with_km_stores_the_kc_openssl_exports(self):
        km_value = os.urandom(32)
        km_expiry = int(time.time()) + 3600
        self.import_psk("km", "km-0001@mymaf.provider.org", km_value, expires=rfc3339(km_expiry), name="km-1")
        with SServer(label=CONNECTION_LABEL, psk_hex=km_value.hex()) as srv:
            # Asked to outlive its Km, the Kc is clamped to it (TS-0003 10.7).
            key = self.cli_key("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF,
                               "--km", "km-1", "--target", "CAE-device-42",
                               "--expires", rfc3339(km_expiry + 86400))
            km = srv.keying_material()
            self.assertEqual(srv.client_psk_identity(), "km-0001@mymaf.provider.org")
        self.assert_stored(key, km, MAF, "kc")
        self.assertEqual(key["storage"], "wrapped")
        self.assertEqual(key["peer"], "CAE-device-42")
        self.assertEqual(key["parent"], "km-1")
        self.assertEqual(parse_time(key["expires"]), km_expiry)

    def test_default_kc_lifetime_is_30_days(self):
        km_value = os.urandom(32)
        self.import_psk("km", "km-0002@mymaf.provider.org", km_value)
        before = time.time()
        with SServer(label=CONNECTION_LABEL, psk_hex=km_value.hex()) as srv:
            key = self.cli_key("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF,
                               "--km", "km-0002@mymaf.provider.org")
            srv.keying_material()
        self.assertAlmostEqual(parse_time(key["expires"]), before + 30 * 86400, delta=120)

    def test_wrong_psk_fails_and_stores_nothing(self):
        self.import_psk("kpm", "enrolee-0003@mef.provider.org", os.urandom(32))
        before = self.key_count()
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=os.urandom(32).hex()) as srv:
            p = self.run_cli("enrol", "--mef", f"127.0.0.1:{srv.port}", "--mef-fqdn", MEF,
                             "--kpm", "enrolee-0003@mef.provider.org")
        self.assertEqual(p.returncode, HANDSHAKE_FAILED, p.stderr.decode())
        self.assertIn("handshake_failed", p.stderr.decode())
        self.assertEqual(self.key_count(), before)

    def test_a_cipher_list_with_a_certificate_suite_is_refused(self):
        # Otherwise a server knowing no PSK could pick the certificate suite.
        self.import_psk("kpm", "enrolee-0006@mef.provider.org", os.urandom(32))
        for ciphers in ("PSK-AES128-CBC-SHA256:ECDHE-ECDSA-AES128-SHA256", "DEFAULT"):
            p = self.run_cli("enrol", "--mef", "127.0.0.1:9", "--mef-fqdn", MEF,
                             "--kpm", "enrolee-0006@mef.provider.org", "--ciphers", ciphers)
            self.assertEqual(p.returncode, 10, p.stderr.decode())
            self.assertIn("does not authenticate with the PSK", p.stderr.decode())

    def test_key_export_needs_the_extended_master_secret(self):
        # RFC 7627 5.4: a peer without it is refused, nothing stored.
        kpm = os.urandom(32)
        self.import_psk("kpm", "enrolee-0007@mef.provider.org", kpm)
        before = self.key_count()
        conf = os.path.join(self.daemon.root, "no-ems.cnf")
        with open(conf, "w") as f:
            f.write("openssl_conf = conf\n[conf]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n"
                    "[sys]\nOptions = -ExtendedMasterSecret\n")
        srv = SServer(label=BOOTSTRAP_LABEL, psk_hex=kpm.hex())
        srv.env = dict(os.environ, OPENSSL_CONF=conf)
        with srv:
            p = self.run_cli("enrol", "--mef", f"127.0.0.1:{srv.port}", "--mef-fqdn", MEF,
                             "--kpm", "enrolee-0007@mef.provider.org")
        self.assertEqual(p.returncode, HANDSHAKE_FAILED, p.stderr.decode())
        self.assertIn("extended master secret", p.stderr.decode())
        self.assertEqual(self.key_count(), before)

    def test_credential_of_the_wrong_kind_is_refused(self):
        self.import_psk("kpsa", "AE-x@in.provider.org", os.urandom(16))
        p = self.run_cli("enrol", "--mef", "127.0.0.1:9", "--mef-fqdn", MEF, "--kpm", "AE-x@in.provider.org")
        self.assertEqual(p.returncode, 10, p.stderr.decode())
        self.assertIn("kpsa", p.stderr.decode())

    def test_unknown_credential_is_not_found(self):
        p = self.run_cli("enrol", "--mef", "127.0.0.1:9", "--mef-fqdn", MEF, "--kpm", "nobody@mef.provider.org")
        self.assertEqual(p.returncode, 11, p.stderr.decode())

    def test_expired_credential_is_refused(self):
        conn = self.daemon.connect()
        conn.call("key.import", kind="kpm", id="enrolee-0004@mef.provider.org", value=b64(os.urandom(32)),
                  expires=rfc3339(int(time.time()) + 2))
        time.sleep(2.5)
        p = self.run_cli("enrol", "--mef", "127.0.0.1:9", "--mef-fqdn", MEF, "--kpm", "enrolee-0004@mef.provider.org")
        self.assertEqual(p.returncode, 14, p.stderr.decode())

    def test_peer_refusing_the_suite_fails_cleanly(self):
        self.import_psk("kpm", "enrolee-0005@mef.provider.org", os.urandom(32))
        before = self.key_count()
        with SServer(label=BOOTSTRAP_LABEL, psk_hex="00" * 32, cipher="ECDHE-ECDSA-AES128-SHA256") as srv:
            p = self.run_cli("enrol", "--mef", f"127.0.0.1:{srv.port}", "--mef-fqdn", MEF,
                             "--kpm", "enrolee-0005@mef.provider.org")
        self.assertEqual(p.returncode, HANDSHAKE_FAILED, p.stderr.decode())
        self.assertIn("alert", p.stderr.decode())
        self.assertEqual(self.key_count(), before)
        self.assertEqual(self.daemon.connect().call("status")["keys"], before)


class CertificateHandshakeTest(ExportChecks, unittest.TestCase):
    """TR-0038 Annex B: a CA, the IN-CSE's certificate on file, and the
    MN-CSE's key generated inside the vault, certified through a CSR."""

    @classmethod
    def setUpClass(cls):
        cls.daemon = Daemon().start()
        cls.dir = tempfile.mkdtemp(prefix="m2mvault-pki-")
        cls.pki = Pki(cls.dir)
        cls.ca_key, cls.ca_cert = cls.pki.make_ca()
        cls.root_of_trust = spki_sha256(cls.ca_cert)
        cls.in_key, cls.in_cert = cls.pki.make_leaf("in-cse", "/C=DE/O=Provider/CN=in-cse", f"DNS:{IN_CSE}")
        cls.pki.make_ca("other-ca", subject="/C=DE/O=Elsewhere/CN=Other Root CA")
        cls.foreign_key, cls.foreign_cert = cls.pki.make_leaf(
            "foreign-in-cse", "/C=DE/O=Provider/CN=in-cse", f"DNS:{IN_CSE}", ca="other-ca")
        cls.expired_key, cls.expired_cert = cls.pki.make_leaf(
            "expired-in-cse", "/C=DE/O=Provider/CN=in-cse", f"DNS:{IN_CSE}", expired=True)

        cls.daemon.cli("key", "generate", "--name", "mn-cse", check=True)
        cls.csr = os.path.join(cls.dir, "mn-cse.csr")
        cls.daemon.cli("cert", "csr", "--key", "mn-cse", "--subject", "/C=DE/O=Provider/CN=mn-cse",
                       "--san", f"DNS:{MN_CSE}", "--out", cls.csr, check=True)
        cls.mn_cert = cls.pki.sign_csr(cls.csr, "mn-cse", san=f"DNS:{MN_CSE}")
        cls.mn_chain = os.path.join(cls.dir, "mn-cse-chain.pem")
        with open(cls.mn_chain, "w") as out:
            for path in (cls.mn_cert, cls.ca_cert):
                with open(path) as f:
                    out.write(f.read())
        cls.daemon.cli("cert", "import", "--key", "mn-cse", cls.mn_chain, check=True)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.cleanup()
        import shutil
        shutil.rmtree(cls.dir, ignore_errors=True)

    def in_cse_server(self, label, key=None, cert=None):
        return SServer(label=label, key=key or self.in_key, cert=cert or self.in_cert, ca_file=self.ca_cert,
                       verify_client=True)

    def cert_args(self, peer_name=IN_CSE, root_of_trust=None):
        return ["--key", "mn-cse", "--peer-name", peer_name, "--root-of-trust", root_of_trust or self.root_of_trust]

    # --- certificates --------------------------------------------------

    def test_csr_is_signed_by_the_vault_key(self):
        p = subprocess.run(["openssl", "req", "-in", self.csr, "-noout", "-verify", "-text"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("verify OK", p.stdout + p.stderr)
        self.assertIn(f"DNS:{MN_CSE}", p.stdout)
        self.assertIn("Digital Signature", p.stdout)
        public = self.daemon.cli("key", "public", "mn-cse", check=True).stdout
        self.assertEqual(tlspeer.spki_der(public), tlspeer.spki_der(self.csr))

    def test_key_show_shows_the_certificate(self):
        key = self.daemon.cli_json("key", "show", "mn-cse")
        cert = key["certificate"]
        self.assertIn("CN=mn-cse", cert["subject"])
        self.assertIn("CN=Test Root CA", cert["issuer"])
        self.assertEqual(cert["san"], [f"DNS:{MN_CSE}"])
        self.assertEqual(cert["chain_length"], 2)
        human = self.daemon.cli("key", "show", "mn-cse", check=True).stdout.decode()
        self.assertIn("certificate:", human)

    def test_certificate_of_another_key_is_refused(self):
        p = self.daemon.cli("cert", "import", "--key", "mn-cse", self.in_cert)
        self.assertEqual(p.returncode, 10, p.stderr.decode())
        self.assertIn("does not certify", p.stderr.decode())

    def test_chain_out_of_order_is_refused(self):
        self.daemon.cli("key", "generate", "--name", "order-test", check=True)
        csr = os.path.join(self.dir, "order.csr")
        self.daemon.cli("cert", "csr", "--key", "order-test", "--subject", "CN=order-test", "--out", csr, check=True)
        leaf = self.pki.sign_csr(csr, "order-test", san="DNS:order.example.com")
        bad = os.path.join(self.dir, "bad-chain.pem")
        with open(bad, "w") as out:
            for path in (leaf, self.in_cert):  # the IN-CSE did not issue the leaf
                with open(path) as f:
                    out.write(f.read())
        p = self.daemon.cli("cert", "import", "--key", "order-test", bad)
        self.assertEqual(p.returncode, 10, p.stderr.decode())
        self.assertIn("not the issuer", p.stderr.decode())

    def test_handshake_needs_a_certificate(self):
        self.daemon.cli("key", "generate", "--name", "no-cert", check=True)
        p = self.daemon.cli("maf-handshake", "--maf", "127.0.0.1:9", "--maf-fqdn", MAF, "--key", "no-cert",
                            "--peer-name", IN_CSE, "--root-of-trust", self.root_of_trust)
        self.assertEqual(p.returncode, 10, p.stderr.decode())
        self.assertIn("cert import", p.stderr.decode())

    # --- the three exports, certificate variant -----------------------

    def test_maf_handshake_with_certificates(self):
        with self.in_cse_server(CONNECTION_LABEL) as srv:
            key = self.cli_key("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF,
                               *self.cert_args())
            km = srv.keying_material()
            # s_server saw the vault's MN-CSE certificate, signed in the token.
            self.assertEqual(tlspeer.spki_der(srv.peer_certificate()), tlspeer.spki_der(self.mn_cert))
        self.assert_stored(key, km, MAF, "kc")
        self.assertEqual(key["cipher"], CERT_CIPHER)

    def test_enrolment_with_certificates(self):
        with self.in_cse_server(BOOTSTRAP_LABEL) as srv:
            key = self.cli_key("enrol", "--mef", f"127.0.0.1:{srv.port}", "--mef-fqdn", MEF, *self.cert_args())
            km = srv.keying_material()
        self.assert_stored(key, km, MEF, "ke")
        self.assertEqual(key["storage"], "token")

    def test_escertke_initiate_over_tcp(self):
        with self.in_cse_server(ESCERTKE_LABEL) as srv:
            key = self.cli_key("escertke", "initiate", "--connect", f"127.0.0.1:{srv.port}",
                               "--peer", "/in-cse-id", *self.cert_args())
            km = srv.keying_material()
        self.assert_stored(key, km, None, "e2e")
        self.assertEqual(key["peer"], "/in-cse-id")

    def test_escertke_respond_over_tcp(self):
        port = tlspeer.free_port()
        env = dict(os.environ, M2MVAULT_SOCKET=self.daemon.socket)
        responder = subprocess.Popen(
            [CLI, "escertke", "respond", "--listen", f"127.0.0.1:{port}", "--json", *self.cert_args()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            deadline = time.time() + 10
            while time.time() < deadline:  # wait for the listener
                with open("/proc/net/tcp") as f:
                    if f":{port:04X} " in f.read():
                        break
                time.sleep(0.05)
            client = SClient(port, label=ESCERTKE_LABEL, key=self.in_key, cert=self.in_cert, ca_file=self.ca_cert)
            km = client.keying_material()
            out, err = responder.communicate(timeout=30)
            client.close()
        finally:
            if responder.poll() is None:
                responder.kill()
        self.assertEqual(responder.returncode, 0, err.decode())
        key = json.loads(out)
        self.assert_stored(key, km, None, "e2e")
        self.assertEqual(key["peer"], IN_CSE)  # no --peer: the Certificate Name

    def test_self_signed_peer_named_by_its_own_key(self):
        key_path, cert_path = self.pki.self_signed("self-in-cse", "/CN=in-cse", f"DNS:{IN_CSE}")
        with SServer(label=CONNECTION_LABEL, key=key_path, cert=cert_path, ca_file=self.ca_cert,
                     verify_client=True) as srv:
            key = self.cli_key("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF,
                               *self.cert_args(root_of_trust=spki_sha256(cert_path)))
            km = srv.keying_material()
        self.assert_stored(key, km, MAF, "kc")

    # --- refusals: nothing stored, a clear reason ---------------------

    def refused(self, reason, peer_name=IN_CSE, root_of_trust=None, key=None, cert=None):
        before = self.key_count()
        with self.in_cse_server(CONNECTION_LABEL, key=key, cert=cert) as srv:
            p = self.daemon.cli("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF,
                                *self.cert_args(peer_name, root_of_trust))
            self.assertFalse(srv.handshake_ok())
        self.assertEqual(p.returncode, HANDSHAKE_FAILED, p.stderr.decode())
        self.assertIn(reason, p.stderr.decode())
        self.assertEqual(self.key_count(), before)

    def test_wrong_certificate_name_is_refused(self):
        self.refused("Certificate Name", peer_name="my.m2mprovider.org/other-cse")

    def test_wrong_root_of_trust_is_refused(self):
        self.refused("Root of Trust", root_of_trust="ab" * 32)

    def test_expired_peer_certificate_is_refused(self):
        self.refused("expired", key=self.expired_key, cert=self.expired_cert)

    def test_peer_not_chained_to_the_root_is_refused(self):
        self.refused("does not verify", key=self.foreign_key, cert=self.foreign_cert)

    def test_subject_cn_does_not_count_when_the_certificate_has_sans(self):
        # CN claims the IN-CSE, the SAN says MN-CSE: the SAN decides.
        key, cert = self.pki.make_leaf("cn-trick", "/C=DE/O=Provider/CN=" + IN_CSE.replace("/", "\\/"),
                                       f"DNS:{MN_CSE}")
        self.refused("Certificate Name", key=key, cert=cert)

    def test_anonymous_suites_are_refused(self):
        p = self.daemon.cli("maf-handshake", "--maf", "127.0.0.1:9", "--maf-fqdn", MAF, *self.cert_args(),
                            "--ciphers", "aNULL:@SECLEVEL=0")
        self.assertEqual(p.returncode, 10, p.stderr.decode())

    def leaf_only_key(self):
        """A vault key whose certificate chain holds no root: the root must
        come from the peer."""
        if not getattr(type(self), "_leaf_only", None):
            self.daemon.cli("key", "generate", "--name", "leaf-only", check=True)
            csr = os.path.join(self.dir, "leaf-only.csr")
            self.daemon.cli("cert", "csr", "--key", "leaf-only", "--subject", "/CN=leaf-only", "--out", csr,
                            check=True)
            self.daemon.cli("cert", "import", "--key", "leaf-only",
                            self.pki.sign_csr(csr, "leaf-only", san=f"DNS:{MN_CSE}"), check=True)
            type(self)._leaf_only = True
        return ["--key", "leaf-only", "--peer-name", IN_CSE, "--root-of-trust", self.root_of_trust]

    def test_a_self_signed_root_sent_by_the_peer_anchors_the_chain(self):
        args = self.leaf_only_key()
        with SServer(label=CONNECTION_LABEL, key=self.in_key, cert=self.in_cert, ca_file=self.ca_cert,
                     verify_client=True, extra=("-cert_chain", self.ca_cert)) as srv:
            key = self.cli_key("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF, *args)
            km = srv.keying_material()
        self.assert_stored(key, km, MAF, "kc")

    def test_a_forged_root_sent_by_the_peer_is_no_anchor(self):
        # The real root's name and key, signed by someone else: its dates and
        # constraints would be the forger's, so it may not anchor the chain.
        self.pki.make_ca("evil-ca", subject="/C=DE/O=oneM2M Test CA/CN=Test Root CA")
        csr = os.path.join(self.dir, "forged-root.csr")
        tlspeer.openssl("req", "-new", "-key", self.ca_key, "-subj", "/C=DE/O=oneM2M Test CA/CN=Test Root CA",
                        "-out", csr)
        forged = self.pki.sign_csr(csr, "forged-root", ca="evil-ca", san="DNS:forged.example.com")
        self.assertEqual(spki_sha256(forged), self.root_of_trust)
        args = self.leaf_only_key()
        before = self.key_count()
        with SServer(label=CONNECTION_LABEL, key=self.in_key, cert=self.in_cert, ca_file=self.ca_cert,
                     verify_client=True, extra=("-cert_chain", forged)) as srv:
            p = self.daemon.cli("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF, *args)
        self.assertEqual(p.returncode, HANDSHAKE_FAILED, p.stderr.decode())
        self.assertIn("Root of Trust", p.stderr.decode())
        self.assertEqual(self.key_count(), before)

    def test_unknown_san_types_are_refused_and_the_daemon_survives(self):
        for san in ("dirName:foo", "otherName:1.2.3;UTF8:x", "DNS:", "nocolon"):
            p = self.daemon.cli("cert", "csr", "--key", "mn-cse", "--subject", "/CN=x", "--san", san)
            self.assertEqual(p.returncode, 10, f"{san}: {p.stderr.decode()}")
        self.assertEqual(self.daemon.cli("status").returncode, 0)

    def test_kc_never_outlives_the_peer_certificate(self):
        key_path, cert_path = self.pki.make_leaf("short-in-cse", "/CN=in-cse", f"DNS:{IN_CSE}", days=2)
        not_after = subprocess.run(["openssl", "x509", "-in", cert_path, "-noout", "-enddate"],
                                   capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
        end = datetime.datetime.strptime(not_after, "%b %d %H:%M:%S %Y %Z").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        with self.in_cse_server(CONNECTION_LABEL, key=key_path, cert=cert_path) as srv:
            key = self.cli_key("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF,
                               *self.cert_args())
            srv.keying_material()
        self.assertEqual(parse_time(key["expires"]), end)

    # --- message mode: two vaults carry the four ESCertKE messages ----

    def test_escertke_message_mode_between_two_vaults(self):
        other = Daemon().start()
        try:
            other.cli("key", "generate", "--name", "asn-ae", check=True)
            csr = os.path.join(self.dir, "asn-ae.csr")
            other.cli("cert", "csr", "--key", "asn-ae", "--subject", "/CN=asn-ae", "--san",
                      "URI:urn:example:CAE-asn-ae", "--out", csr, check=True)
            cert = self.pki.sign_csr(csr, "asn-ae", san="URI:urn:example:CAE-asn-ae")
            other.cli("cert", "import", "--key", "asn-ae", cert, check=True)

            def call(daemon, *args):
                p = daemon.cli(*args, "--json")
                self.assertEqual(p.returncode, 0, p.stderr.decode())
                return json.loads(p.stdout)

            m1 = call(self.daemon, "escertke", "initiate", "--message-mode", *self.cert_args(
                peer_name="urn:example:CAE-asn-ae"), "--peer", "CAE-asn-ae")
            m2 = call(other, "escertke", "respond", "--message", m1["output"], "--key", "asn-ae",
                      "--peer-name", MN_CSE, "--root-of-trust", self.root_of_trust, "--ca", self.ca_cert)
            m3 = call(self.daemon, "escertke", "process", "--session", m1["session"], "--message", m2["output"])
            m4 = call(other, "escertke", "process", "--session", m2["session"], "--message", m3["output"])
            self.assertTrue(m4["done"])
            end = call(self.daemon, "escertke", "process", "--session", m1["session"], "--message", m4["output"])
            self.assertTrue(end["done"])
            self.assertEqual(end["output"], "")  # four messages, no fifth
            for m in (m1, m2, m3):
                self.assertFalse(m["done"])
                self.assertTrue(m["output"])
            a, b = end["key"], m4["key"]
            self.assertEqual(a["id"], b["id"])
            self.assertEqual(a["check_value"], b["check_value"])
            self.assertEqual(a["peer"], "CAE-asn-ae")
            self.assertEqual(b["peer"], MN_CSE)
            # The finished session is gone.
            p = self.daemon.cli("escertke", "process", "--session", m1["session"], "--message", m4["output"])
            self.assertEqual(p.returncode, 11, p.stderr.decode())
        finally:
            other.cleanup()

    def test_sessions_are_bounded_per_principal(self):
        sessions = []
        try:
            for _ in range(8):
                m = self.daemon.cli_json("escertke", "initiate", "--message-mode", *self.cert_args())
                sessions.append(m["session"])
            p = self.daemon.cli("escertke", "initiate", "--message-mode", *self.cert_args())
            self.assertEqual(p.returncode, 16, p.stderr.decode())
            self.assertIn("unfinished handshakes", p.stderr.decode())
        finally:
            for s in sessions:
                self.daemon.cli("escertke", "abort", "--session", s, check=True)
        p = self.daemon.cli("escertke", "abort", "--session", sessions[0])
        self.assertEqual(p.returncode, 11)


@pkcs11_only("a vendor token's adopted key (the TPM backend adopts nothing)")
class AdoptedKeyHandshakeTest(ExportChecks, unittest.TestCase):
    """A pre-provisioned device key in its manufacturer's token, adopted in
    place, authenticates a handshake through libp11 like a vault key."""

    def test_adopted_key_completes_a_certificate_handshake(self):
        self.daemon = Daemon()
        self.addCleanup(self.daemon.cleanup)
        self.daemon.start()
        self.daemon.stop()
        make_vendor_token_key(self.daemon, key_id="0c0d")
        self.daemon.start()
        self.daemon.cli("key", "adopt", "--kind", "signing", "--name", "device", "--token-label", "vendor",
                        "--object", "device-key", check=True)
        pki_dir = tempfile.mkdtemp(prefix="m2mvault-pki-")
        self.addCleanup(shutil.rmtree, pki_dir, True)
        pki = Pki(pki_dir)
        _, ca_cert = pki.make_ca()
        in_key, in_cert = pki.make_leaf("in-cse", "/CN=in-cse", f"DNS:{IN_CSE}")
        csr = os.path.join(pki_dir, "device.csr")
        self.daemon.cli("cert", "csr", "--key", "device", "--subject", "/CN=device", "--san",
                        "URI:urn:example:CAE-device", "--out", csr, check=True)
        self.daemon.cli("cert", "import", "--key", "device", pki.sign_csr(csr, "device"), check=True)
        with SServer(label=CONNECTION_LABEL, key=in_key, cert=in_cert, ca_file=ca_cert, verify_client=True) as srv:
            key = self.cli_key("maf-handshake", "--maf", f"127.0.0.1:{srv.port}", "--maf-fqdn", MAF,
                               "--key", "device", "--peer-name", IN_CSE, "--root-of-trust", spki_sha256(ca_cert),
                               "--ca", ca_cert)
            km = srv.keying_material()
        self.assert_stored(key, km, MAF, "kc")


class NoSecretInHandshakesTest(ExportChecks, unittest.TestCase):
    """Neither the PSK nor the exported key reaches the log (at trace level)
    or any CLI output, on success or failure."""

    def test_psk_and_exported_key_never_reach_log_or_output(self):
        self.daemon = Daemon().start(extra=["--log-level", "trace"])
        self.addCleanup(self.daemon.cleanup)
        kpm = os.urandom(32)
        outputs = []
        self.daemon.cli("key", "import", "--kind", "kpm", "--id", "leak@mef.provider.org", "--hex", kpm.hex(),
                        check=True)
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=kpm.hex()) as srv:
            p = self.daemon.cli("enrol", "--mef", f"127.0.0.1:{srv.port}", "--mef-fqdn", MEF,
                                "--kpm", "leak@mef.provider.org", "--json")
            outputs.append(p.stdout + p.stderr)
            km = srv.keying_material()
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=os.urandom(32).hex()) as srv:
            p = self.daemon.cli("enrol", "--mef", f"127.0.0.1:{srv.port}", "--mef-fqdn", MEF,
                                "--kpm", "leak@mef.provider.org")
            outputs.append(p.stdout + p.stderr)
        self.assertEqual(p.returncode, HANDSHAKE_FAILED)
        self.daemon.stop()
        _, ke = keymat_split(km)
        log = self.daemon.read_log()
        self.assertIn("handshake", log)
        for secret in (kpm, ke, km):
            for form in (secret.hex(), secret.hex().upper(), b64(secret)):
                self.assertNotIn(form, log)
                for out in outputs:
                    self.assertNotIn(form.encode(), out)
            with open(self.daemon.log, "rb") as f:
                self.assertNotIn(secret, f.read())


class SessionExpiryTest(unittest.TestCase):
    """An unfinished handshake expires (timeout_s in [handshake])."""

    def test_an_unfinished_session_expires(self):
        root = tempfile.mkdtemp(prefix="m2mvault-it-")
        config = os.path.join(root, "m2mvaultd.toml")
        with open(config, "w") as f:
            f.write("[handshake]\ntimeout_s = 1\n")
        daemon = Daemon(root).start(extra=("--config", config))
        try:
            daemon.cli("key", "import", "--kind", "km", "--id", "km-9@mymaf.provider.org", "--hex", "11" * 32,
                       check=True)
            conn = daemon.connect()
            start = conn.call("handshake.start", procedure="maf", psk_key="km-9@mymaf.provider.org",
                              fqdn=MAF)
            self.assertFalse(start["done"])
            client_hello = base64.b64decode(start["output"])
            self.assertEqual(client_hello[0], 0x16)  # a handshake record ...
            self.assertIn(MAF.encode(), client_hello)  # ... naming the MAF in SNI (TS-0003 10.2)
            time.sleep(1.5)
            with self.assertRaises(Exception) as ctx:
                conn.call("handshake.step", session=start["session"], input=b64(b"\x16\x03\x03\x00\x00"))
            self.assertEqual(getattr(ctx.exception, "code", None), "not_found")
        finally:
            daemon.cleanup()


if __name__ == "__main__":
    unittest.main()
