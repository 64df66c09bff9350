"""TS-0003 10.3 derivations inside the token, checked against test vectors
computed independently with Python's hmac, hashlib and unicodedata."""
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import unicodedata
import unittest

from vaultlib import ON_TPM, Daemon, DaemonTestCase, VaultError, b64, check_value

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "vectors"))
import derivation_vectors  # noqa: E402

MEF = "mef.example.com"


def ke_id(ke: bytes) -> str:
    return base64.b64encode(hashlib.sha256(b"KeId" + ke).digest()[:16]).decode() + "@" + MEF


TPM_MAX_HMAC_INPUT = 1024
LABELS = {"km": b"oneM2M Enrolment Key to Master Credential derivation",
          "kpsa": b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation",
          "usage": b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"}


def tpm_hmac_input_length(v):
    """Bytes of the HMAC input the vector makes: label, SUID octet, NFKC subject."""
    subject = unicodedata.normalize("NFKC", v["subject"]).encode()
    return len(LABELS[v["derivation"]]) + (1 if v["derivation"] == "usage" else 0) + len(subject)


class DerivationVectorsTest(DaemonTestCase):
    """Every vector of tests/vectors/derivation_vectors.py, through the API."""

    def test_every_vector_matches_python(self):
        vectors = derivation_vectors.vectors()
        conn = self.daemon.connect()
        imported = set()
        for v in vectors:
            ke = bytes.fromhex(v["ke"])
            if v["ke"] not in imported:
                conn.call("key.import", kind="ke", id=ke_id(ke), name="ke-" + v["ke_name"], value=b64(ke))
                imported.add(v["ke"])
        self.assertTrue(any(v["nfkc_changes"] for v in vectors))
        for n, v in enumerate(vectors):
            params = {"derivation": v["derivation"], "ke": "ke-" + v["ke_name"], "name": f"derived-{n}",
                      "id": f"derived-{n}@maf.example.com"}
            params[{"km": "maf_id", "kpsa": "enrolee_b_id", "usage": "target"}[v["derivation"]]] = v["subject"]
            if v["derivation"] == "usage":
                params["suid"] = v["suid"]
            if ON_TPM and tpm_hmac_input_length(v) > TPM_MAX_HMAC_INPUT:
                # One TPM2_HMAC takes 1024 bytes; a hash sequence is the follow-up.
                with self.assertRaises(VaultError) as caught:
                    conn.call("key.derive", **params)
                self.assertEqual(caught.exception.code, "invalid_argument")
                self.assertIn("more than 1024", caught.exception.message)
                continue
            key = conn.call("key.derive", **params)
            self.assertEqual(key["check_value"], v["check_value"],
                             f"{v['derivation']} of {v['subject_name']} from Ke {v['ke_name']}")
            self.assertEqual(key["kind"], {"km": "km", "kpsa": "kpsa", "usage": "usage"}[v["derivation"]])
            self.assertEqual(key["parent"], "ke-" + v["ke_name"])
            self.assertEqual(key["storage"], "wrapped")
        # The token recomputes the same check values later.
        for n in range(0, len(vectors), 7):
            if ON_TPM and tpm_hmac_input_length(vectors[n]) > TPM_MAX_HMAC_INPUT:
                continue
            self.assertTrue(conn.call("key.check", key=f"derived-{n}")["matches"])

    def test_nfkc_equivalent_ids_derive_the_same_key(self):
        conn = self.daemon.connect()
        ke = os.urandom(32)
        conn.call("key.import", kind="ke", id=ke_id(ke), name="ke-nfkc", value=b64(ke))
        a = conn.call("key.derive", derivation="km", ke="ke-nfkc", maf_id="\uff2d\uff21\uff26.example.com",
                      id="a@maf.example.com")
        b = conn.call("key.derive", derivation="km", ke="ke-nfkc", maf_id="MAF.example.com", id="b@maf.example.com")
        self.assertEqual(a["check_value"], b["check_value"])


class DerivationCliTest(DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ke = bytes(range(32))
        cls.ke_id = "/xXYTj441pdLDrPlYGyF/g==@" + MEF
        cls.daemon.cli("key", "import", "--kind", "ke", "--id", cls.ke_id, "--hex", cls.ke.hex(),
                       "--expires", "2099-01-01T00:00:00Z", check=True)

    def expected(self, derivation, subject, suid=0):
        return check_value(derivation_vectors.derive(self.ke, derivation, subject, suid))

    def test_derive_km_prints_identifier_and_check_value(self):
        p = self.daemon.cli("derive", "km", "--ke", self.ke_id, "--maf-id", "maf.example.com", "--km-id",
                            "km-1@maf.example.com", check=True)
        out = p.stdout.decode()
        self.assertIn("km-1@maf.example.com", out)
        self.assertIn(self.expected("km", "maf.example.com"), out)

    def test_km_without_km_id_gets_the_local_rule_and_can_be_renamed(self):
        key = self.daemon.cli_json("derive", "km", "--ke", self.ke_id, "--maf-id", "MAF2.example.com")
        cv = self.expected("km", "MAF2.example.com")
        self.assertEqual(key["id"], f"km-{cv}@MAF2.example.com")
        renamed = self.daemon.cli_json("key", "set-id", key["id"], "--id", "assigned-by-maf@maf2.example.com")
        self.assertEqual(renamed["id"], "assigned-by-maf@maf2.example.com")
        self.assertEqual(self.daemon.cli_json("key", "show", "assigned-by-maf@MAF2.example.com")["check_value"], cv)

    def test_km_local_rule_needs_an_fqdn_maf_id(self):
        p = self.daemon.cli("derive", "km", "--ke", self.ke_id, "--maf-id", "not an fqdn")
        self.assertEqual(p.returncode, 10, p.stderr)
        self.assertIn(b"--km-id", p.stderr)

    def test_derive_kpsa_binds_enrolee_b(self):
        key = self.daemon.cli_json("derive", "kpsa", "--ke", self.ke_id, "--enrolee-b-id", "C1234567890abcdef")
        cv = self.expected("kpsa", "C1234567890abcdef")
        self.assertEqual(key["check_value"], cv)
        self.assertEqual(key["entity"], "C1234567890abcdef")
        self.assertEqual(key["id"], f"kpsa-{cv}@{MEF}")
        self.assertEqual(key["expires"], "2099-01-01T00:00:00Z")  # inherits the Ke's lifetime

    def test_derive_usage_key_encodes_the_suid_as_one_octet(self):
        key = self.daemon.cli_json("derive", "usage-key", "--ke", self.ke_id, "--suid", "21", "--target",
                                   "in-cse.example.com")
        self.assertEqual(key["check_value"], self.expected("usage", "in-cse.example.com", 21))
        self.assertEqual(key["kind"], "usage")
        help_text = self.daemon.cli("derive", "usage-key", "--help").stdout.decode()
        self.assertIn("ONE OCTET", help_text)

    def test_derived_key_never_outlives_its_parent(self):
        key = self.daemon.cli_json("derive", "kpsa", "--ke", self.ke_id, "--enrolee-b-id", "longlived",
                                   "--expires", "2150-01-01T00:00:00Z")
        self.assertEqual(key["expires"], "2099-01-01T00:00:00Z")
        key = self.daemon.cli_json("derive", "kpsa", "--ke", self.ke_id, "--enrolee-b-id", "shortlived",
                                   "--expires", "2050-01-01T00:00:00Z")
        self.assertEqual(key["expires"], "2050-01-01T00:00:00Z")


class DerivationErrorsTest(DaemonTestCase):
    def count(self):
        return self.daemon.connect().call("status")["keys"]

    def assert_nothing_created(self, args, status, text):
        before = self.count()
        p = self.daemon.cli(*args)
        self.assertEqual(p.returncode, status, p.stderr)
        self.assertIn(text.encode(), p.stderr)
        self.assertEqual(len(p.stderr.strip().splitlines()), 1)
        self.assertEqual(self.count(), before)

    def test_missing_parent(self):
        self.assert_nothing_created(["derive", "km", "--ke", "no-such-ke", "--maf-id", "maf.example.com"], 11,
                                    "no-such-ke")

    def test_parent_of_the_wrong_kind(self):
        self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "AE1-Lock@in.provider.com", "--hex",
                        "1a2b3c4d5e6f7a8b", check=True)
        self.assert_nothing_created(["derive", "kpsa", "--ke", "AE1-Lock@in.provider.com", "--enrolee-b-id", "x"],
                                    10, "kpsa")

    def test_expired_parent(self):
        conn = self.daemon.connect()
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
        conn.call("key.import", kind="ke", id="AAAAAAAAAAAAAAAAAAAAAA==@" + MEF, name="short-ke",
                  value=b64(os.urandom(32)), expires=soon)
        time.sleep(3)
        self.assert_nothing_created(["derive", "km", "--ke", "short-ke", "--maf-id", "maf.example.com"], 14,
                                    "expired")

    def test_invalid_utf8(self):
        conn = self.daemon.connect()
        conn.call("key.import", kind="ke", id="AQEBAQEBAQEBAQEBAQEBAQ==@" + MEF, name="utf8-ke", value=b64(os.urandom(32)))
        before = self.count()
        # Through the CLI: argv bytes that are not UTF-8.
        p = subprocess.run([self.daemon_cli_path(), "derive", "km", "--ke", "utf8-ke", "--maf-id", b"maf\xff.example.com",
                            "--km-id", "k@maf.example.com"], capture_output=True,
                           env=dict(os.environ, M2MVAULT_SOCKET=self.daemon.socket))
        self.assertEqual(p.returncode, 10, p.stderr)
        self.assertIn(b"UTF-8", p.stderr)
        # Through the API: a frame whose JSON string holds an invalid byte.
        body = b'{"v":1,"id":1,"op":"key.derive","params":{"derivation":"km","ke":"utf8-ke","maf_id":"m\xc3\x28"}}'
        conn.send_raw(len(body).to_bytes(4, "big") + body)
        resp = conn.receive()
        self.assertEqual(resp["error"]["code"], "invalid_argument")
        self.assertEqual(self.count(), before)

    def daemon_cli_path(self):
        from vaultlib import CLI
        return CLI

    def test_suid_out_of_range(self):
        conn = self.daemon.connect()
        conn.call("key.import", kind="ke", id="AgICAgICAgICAgICAgICAg==@" + MEF, name="suid-ke", value=b64(os.urandom(32)))
        with self.assertRaises(VaultError) as e:
            conn.call("key.derive", derivation="usage", ke="suid-ke", target="t.example.com", suid=256)
        self.assertEqual(e.exception.code, "invalid_argument")


class NoDerivedValueLeavesTest(unittest.TestCase):
    """Every operation that could return a derived key value is tried; none does."""

    def test_no_operation_returns_a_derived_value(self):
        daemon = Daemon().start(extra=["--log-level", "trace"])
        self.addCleanup(daemon.cleanup)
        ke = os.urandom(32)
        conn = daemon.connect()
        conn.call("key.import", kind="ke", id=ke_id(ke), name="ke", value=b64(ke))
        km = derivation_vectors.derive(ke, "km", "maf.example.com")
        kpsa = derivation_vectors.derive(ke, "kpsa", "AE-leak")
        conn.call("key.derive", derivation="km", ke="ke", maf_id="maf.example.com", name="km")
        conn.call("key.derive", derivation="kpsa", ke="ke", enrolee_b_id="AE-leak", name="kpsa")
        seen = []
        for op, params in (("key.show", {"key": "km"}), ("key.show", {"key": "kpsa"}), ("key.list", {}),
                           ("key.check", {"key": "km"}), ("key.public", {"key": "km"}),
                           ("sign", {"key": "kpsa", "digest": b64(bytes(32))}), ("status", {}),
                           ("key.derive", {"derivation": "km", "ke": "km", "maf_id": "x.example.com"}),
                           ("key.set_id", {"key": "km", "id": "renamed@maf.example.com"}),
                           ("key.delete", {"key": "kpsa"})):
            conn.send(op, **params)
            seen.append(json.dumps(conn.receive()))
        for verb in (["key", "list", "--json"], ["key", "show", "km", "--json"], ["key", "check", "km"]):
            p = daemon.cli(*verb)
            seen.append((p.stdout + p.stderr).decode(errors="replace"))
        daemon.stop()
        seen.append(daemon.read_log())
        for secret in (km, kpsa, ke):
            for form in (secret.hex(), base64.b64encode(secret).decode(), secret.hex().upper()):
                for text in seen:
                    self.assertNotIn(form, text)


if __name__ == "__main__":
    unittest.main()
