"""Self-test of tlspeer.py: openssl on both ends, no vault.

If these fail, the vault's TLS tests cannot be trusted either: they use the
same peers, PKI and keying-material parsing."""
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tlspeer  # noqa: E402
from tlspeer import (BOOTSTRAP_LABEL, CONNECTION_LABEL, Pki, SClient, SServer, check_value,  # noqa: E402
                     expected_id, keymat_split, spki_sha256)

PSK = "1a2b3c4d5e6f7a8b1a2b3c4d5e6f7a8b"
PSK_ID = "AE123456789012-Lock@in.provider.com"
IN_CSE_SAN = "DNS:my.m2mprovider.org/in-cse"
MN_CSE_SAN = "DNS:my.m2mprovider.org/mn-cse"

# TR-0038 A.4.
TR0038_KM = ("FF15D84E3E38D6974B0EB3E5606C85FE37F61D5A7FEA1E9CFD8DB76D"
             "2F8B6230130EF8A84F9F9F967DA385867984EED0")


class PeerCase(unittest.TestCase):
    def tearDown(self):
        # No openssl process may outlive a test.
        self.assertEqual([p.args for p in tlspeer._live if p.running()], [])


class PskTest(PeerCase):
    def test_sserver_and_raw_s_client_agree(self):
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=PSK, psk_identity=PSK_ID) as srv:
            self.assertGreater(srv.port, 0)
            cli = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}", "-tls1_2", "-psk", PSK,
                 "-psk_identity", PSK_ID, "-cipher", "PSK-AES128-CBC-SHA256", "-keymatexport", BOOTSTRAP_LABEL,
                 "-keymatexportlen", "48"],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)
            m = re.search(r"Keying material: ([0-9A-F]+)", cli.stdout)
            self.assertIsNotNone(m, cli.stdout + cli.stderr)
            server_km = srv.keying_material(timeout=10)
            self.assertEqual(len(server_km), 48)
            self.assertEqual(server_km, bytes.fromhex(m.group(1)))
            self.assertTrue(srv.handshake_ok())
            self.assertEqual(srv.cipher(), "PSK-AES128-CBC-SHA256")
            self.assertEqual(srv.client_psk_identity(), PSK_ID)
            self.assertEqual(srv.wait(timeout=10), 0)  # -naccept 1: gone after the client left

    def test_sclient_and_sserver_agree(self):
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=PSK, psk_identity=PSK_ID) as srv, \
                SClient(srv.port, label=BOOTSTRAP_LABEL, psk_hex=PSK, psk_identity=PSK_ID,
                        servername="in.provider.com") as cli:
            km = cli.keying_material(timeout=10)
            self.assertEqual(km, srv.keying_material(timeout=10))
            self.assertTrue(cli.handshake_ok())
            # -ign_eof: the client stays until the server hangs up.
            self.assertIsNone(cli.returncode)
            srv.hang_up()
            cli.wait(timeout=10)
            srv.wait(timeout=10)

    def test_s_server_only_warns_on_another_identity(self):
        """s_server -psk_identity is not enforced: check client_psk_identity()."""
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=PSK, psk_identity=PSK_ID) as srv, \
                SClient(srv.port, label=BOOTSTRAP_LABEL, psk_hex=PSK, psk_identity="someone-else") as cli:
            self.assertEqual(cli.keying_material(), srv.keying_material())
            self.assertEqual(srv.client_psk_identity(), "someone-else")
            self.assertIn("PSK warning", srv.output())

    def test_wrong_psk_fails_the_handshake(self):
        with SServer(label=BOOTSTRAP_LABEL, psk_hex=PSK, psk_identity=PSK_ID) as srv, \
                SClient(srv.port, label=BOOTSTRAP_LABEL, psk_hex="00" * 16, psk_identity=PSK_ID) as cli:
            srv.wait(timeout=10)
            cli.wait(timeout=10)
            self.assertFalse(srv.handshake_ok())
            self.assertFalse(cli.handshake_ok())
            with self.assertRaises(tlspeer.PeerError) as e:
                srv.keying_material(timeout=1)
            self.assertIn("--- stdout ---", str(e.exception))
            # s_client prints keying material even for this failed handshake;
            # SClient must not hand it out.
            self.assertIn("Keying material: ", cli.stdout())
            with self.assertRaises(tlspeer.PeerError):
                cli.keying_material(timeout=1)


class CertTest(PeerCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="tlspeer-pki-")
        cls.pki = Pki(cls.dir)
        cls.ca_key, cls.ca = cls.pki.make_ca()
        cls.in_key, cls.in_cert = cls.pki.make_leaf("in-cse", "/C=DE/O=oneM2M Test/CN=in-cse", IN_CSE_SAN)
        cls.mn_key, cls.mn_cert = cls.pki.make_leaf("mn-cse", "/C=DE/O=oneM2M Test/CN=mn-cse", MN_CSE_SAN)
        cls.old_key, cls.old_cert = cls.pki.make_leaf("mn-old", "/C=DE/O=oneM2M Test/CN=mn-old", MN_CSE_SAN,
                                                      expired=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def x509(self, cert, *args):
        return subprocess.run(["openssl", "x509", "-in", cert, "-noout", *args], capture_output=True, text=True,
                              timeout=10)

    def test_pki_shape(self):
        ca = self.x509(self.ca, "-text").stdout
        self.assertRegex(ca, r"Basic Constraints: critical\s+CA:TRUE")
        self.assertRegex(ca, r"Key Usage: critical\s+Certificate Sign, CRL Sign")
        self.assertIn("ecdsa-with-SHA256", ca)
        self.assertIn("prime256v1", ca)
        leaf = self.x509(self.in_cert, "-text").stdout
        self.assertRegex(leaf, r"Subject Alternative Name: \s+DNS:my\.m2mprovider\.org/in-cse\n")
        self.assertRegex(leaf, r"Key Usage: critical\s+Digital Signature\n")
        self.assertRegex(leaf, r"Basic Constraints: \s+CA:FALSE")
        self.assertIn("Issuer: C = DE, O = oneM2M Test CA, CN = Test Root CA", leaf)
        self.assertIn("Subject: C = DE, O = oneM2M Test, CN = in-cse", leaf)
        ok = subprocess.run(["openssl", "verify", "-CAfile", self.ca, self.in_cert, self.mn_cert],
                            capture_output=True, text=True, timeout=10)
        self.assertEqual(ok.returncode, 0, ok.stderr)

    def test_expired_leaf_is_in_the_past(self):
        self.assertNotEqual(self.x509(self.old_cert, "-checkend", "0").returncode, 0)
        self.assertEqual(self.x509(self.mn_cert, "-checkend", "0").returncode, 0)
        self.assertIn("notAfter=Jan  1 00:00:00 2021 GMT", self.x509(self.old_cert, "-enddate").stdout)
        v = subprocess.run(["openssl", "verify", "-CAfile", self.ca, self.old_cert], capture_output=True, text=True,
                           timeout=10)
        self.assertIn("certificate has expired", v.stdout + v.stderr)

    def test_sign_csr_takes_san_from_the_caller(self):
        csr = os.path.join(self.dir, "outside.csr")
        subprocess.run(["openssl", "req", "-new", "-key", self.mn_key, "-subj", "/CN=outside", "-addext",
                        "subjectAltName=DNS:from.the.csr", "-addext", "basicConstraints=critical,CA:TRUE",
                        "-out", csr], check=True, capture_output=True, timeout=10)
        given = self.x509(self.pki.sign_csr(csr, "outside-given", san=MN_CSE_SAN), "-text").stdout
        self.assertIn("DNS:my.m2mprovider.org/mn-cse", given)
        self.assertNotIn("from.the.csr", given)
        self.assertNotIn("CA:TRUE", given)
        copied = self.x509(self.pki.sign_csr(csr, "outside-copied"), "-text").stdout
        self.assertIn("DNS:from.the.csr", copied)
        self.assertNotIn("CA:TRUE", copied)
        self.assertEqual(spki_sha256(csr), spki_sha256(self.mn_cert))

    def test_spki_sha256_is_hash_of_der_spki(self):
        pub = subprocess.run(["openssl", "x509", "-in", self.in_cert, "-pubkey", "-noout"], capture_output=True,
                             check=True, timeout=10).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub, capture_output=True,
                             check=True, timeout=10).stdout
        self.assertEqual(der[0], 0x30)
        want = hashlib.sha256(der).hexdigest()
        self.assertEqual(spki_sha256(self.in_cert), want)
        self.assertEqual(spki_sha256(self.in_key), want)
        pub_path = os.path.join(self.dir, "in-cse.pub.pem")
        with open(pub_path, "wb") as f:
            f.write(pub)
        self.assertEqual(spki_sha256(pub_path), want)
        self.assertRegex(want, r"^[0-9a-f]{64}$")
        self.assertNotEqual(spki_sha256(self.mn_cert), want)

    def test_self_signed(self):
        key, cert = self.pki.self_signed("alone", "/CN=alone", MN_CSE_SAN)
        text = self.x509(cert, "-text").stdout
        self.assertIn("Issuer: CN = alone", text)
        self.assertIn("DNS:my.m2mprovider.org/mn-cse", text)
        self.assertEqual(spki_sha256(cert), spki_sha256(key))

    def mutual(self, client_cert, client_key):
        srv = SServer(label=CONNECTION_LABEL, key=self.in_key, cert=self.in_cert, ca_file=self.ca,
                      verify_client=True)
        return srv, lambda port: SClient(port, label=CONNECTION_LABEL, key=client_key, cert=client_cert,
                                         ca_file=self.ca, servername="my.m2mprovider.org")

    def test_mutual_auth_keying_material(self):
        srv, client = self.mutual(self.mn_cert, self.mn_key)
        with srv, client(srv.port) as cli:
            km = cli.keying_material(timeout=10)
            self.assertEqual(len(km), 48)
            self.assertEqual(srv.keying_material(timeout=10), km)
            self.assertEqual(cli.cipher(), "ECDHE-ECDSA-AES128-SHA256")
            self.assertEqual(srv.cipher(), "ECDHE-ECDSA-AES128-SHA256")
            self.assertEqual(cli.verify_result(), (0, "ok"))
            # Each side saw the other's certificate.
            self.assertEqual(spki_sha256(srv.peer_certificate()), spki_sha256(self.mn_cert))
            self.assertEqual(spki_sha256(cli.peer_certificate()), spki_sha256(self.in_cert))

    def test_expired_client_certificate_is_refused(self):
        srv, client = self.mutual(self.old_cert, self.old_key)
        with srv, client(srv.port) as cli:
            srv.wait(timeout=10)
            cli.wait(timeout=10)
            self.assertFalse(srv.handshake_ok())
            self.assertFalse(cli.handshake_ok())
            self.assertIn("certificate has expired", srv.output())

    def test_client_certificate_is_required(self):
        srv, _ = self.mutual(None, None)
        with srv, SClient(srv.port, label=CONNECTION_LABEL, ca_file=self.ca) as cli:
            srv.wait(timeout=10)
            cli.wait(timeout=10)
            self.assertFalse(srv.handshake_ok())


class KeymatTest(unittest.TestCase):
    def test_tr0038_a4_example(self):
        km = bytes.fromhex(TR0038_KM)
        rel, key = keymat_split(km)
        self.assertEqual(rel, bytes.fromhex("FF15D84E3E38D6974B0EB3E5606C85FE"))
        self.assertEqual(key, bytes.fromhex("37F61D5A7FEA1E9CFD8DB76D2F8B6230130EF8A84F9F9F967DA385867984EED0"))
        # base64 of the 16 bytes, not of their hex text.
        self.assertEqual(expected_id(km, "myMAF.provider.org"), "/xXYTj441pdLDrPlYGyF/g==@myMAF.provider.org")
        self.assertEqual(expected_id(km, "myMAF.provider.org"),
                         base64.b64encode(rel).decode() + "@myMAF.provider.org")
        self.assertEqual(expected_id(km, "myMAF.provider.org", fmt="hex"),
                         "ff15d84e3e38d6974b0eb3e5606c85fe@myMAF.provider.org")
        self.assertRegex(check_value(key), r"^[0-9a-f]{16}$")
        with self.assertRaises(ValueError):
            keymat_split(km[:47])
        with self.assertRaises(ValueError):
            expected_id(km, "x", fmt="base32")

    def test_parser_handles_wrapping_and_partial_output(self):
        peer = tlspeer._Peer("L", 48)
        try:
            hexs = TR0038_KM
            self.assertEqual(peer._parse_keymat(f"    Keying material: {hexs}\n---\n"), bytes.fromhex(hexs))
            self.assertEqual(peer._parse_keymat(f"    Keying material: {hexs}\nDONE\n"), bytes.fromhex(hexs))
            wrapped = f"    Keying material: {hexs[:40]}\n    {hexs[40:80]}\n    {hexs[80:]}\nDONE\n"
            self.assertEqual(peer._parse_keymat(wrapped), bytes.fromhex(hexs))
            self.assertIsNone(peer._parse_keymat(f"    Keying material: {hexs[:50]}"))
            self.assertIsNone(peer._parse_keymat("Keying material exporter:\n    Error\n"))
        finally:
            peer.close()


if __name__ == "__main__":
    unittest.main()
