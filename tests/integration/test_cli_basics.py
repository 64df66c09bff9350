"""The walking skeleton end to end: the CLI against a real daemon and token."""
import base64
import hashlib
import os
import subprocess
import tempfile
import unittest

from vaultlib import CLOCK_AE1, CLOCK_AE2, ON_TPM, DaemonTestCase, b64, check_value, openssl_verify, pkcs11_only


def openssl(*args, input=None):
    return subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=60)


class TR0038TableTest(DaemonTestCase):
    """TR-0038 table 7.1.2-2 imported, a signing key generated, all listed."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for entity, kid, value in (CLOCK_AE1, CLOCK_AE2):
            cls.daemon.cli("key", "import", "--kind", "kpsa", "--id", kid, "--entity", entity, "--hex", value,
                           check=True)
        cls.daemon.cli("key", "generate", "--kind", "signing", "--name", "mn-cse-123456", check=True)

    def test_list_shows_kpsa_ids_with_their_ae_ids_and_the_signing_key(self):
        keys = {k["name"]: k for k in self.daemon.cli_json("key", "list")}
        for entity, kid, _ in (CLOCK_AE1, CLOCK_AE2):
            self.assertEqual(keys[kid]["kind"], "kpsa")
            self.assertEqual(keys[kid]["id"], kid)
            self.assertEqual(keys[kid]["entity"], entity)
            for field in ("name", "kind", "id", "entity", "created", "expires"):
                self.assertIn(field, keys[kid])
        self.assertEqual(keys["mn-cse-123456"]["kind"], "signing")
        self.assertEqual(keys["mn-cse-123456"]["algorithm"], "ec-p256")

    def test_table_output_names_the_ae_ids(self):
        out = self.daemon.cli("key", "list", check=True).stdout.decode()
        self.assertIn("AE123456789012-Lock@in.provider.com", out)
        self.assertIn("Clock-AE1", out)
        self.assertIn("Clock-AE2", out)
        self.assertIn("mn-cse-123456", out)

    def test_check_values_match_python_hmac(self):
        for _, kid, value in (CLOCK_AE1, CLOCK_AE2):
            shown = self.daemon.cli_json("key", "show", kid)
            self.assertEqual(shown["check_value"], check_value(bytes.fromhex(value)))
            checked = self.daemon.cli_json("key", "check", kid)
            self.assertTrue(checked["matches"])
            self.assertEqual(checked["check_value"], check_value(bytes.fromhex(value)))

    def test_show_by_identifier_in_any_fqdn_case(self):
        shown = self.daemon.cli_json("key", "show", "AE123456789012-Lock@IN.Provider.COM")
        self.assertEqual(shown["entity"], "Clock-AE1")
        # The relative part is compared exactly.
        p = self.daemon.cli("key", "show", "ae123456789012-lock@in.provider.com")
        self.assertEqual(p.returncode, 11, p.stderr)

    def test_public_key_is_a_p256_pem_openssl_parses(self):
        pem = self.daemon.cli("key", "public", "mn-cse-123456", check=True).stdout
        self.assertTrue(pem.startswith(b"-----BEGIN PUBLIC KEY-----\n"))
        p = openssl("pkey", "-pubin", "-noout", "-text", input=pem)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"prime256v1", p.stdout)

    def test_signature_made_in_the_token_verifies_with_openssl(self):
        pem = self.daemon.cli("key", "public", "mn-cse-123456", check=True).stdout
        message = b"oneM2M TR-0038 A.3 certificate-based SAE"
        digest = hashlib.sha256(message).digest()
        conn = self.daemon.connect()
        sig = conn.call("sign", key="mn-cse-123456", scheme="ecdsa", digest=b64(digest))["signature"]
        conn.close()
        ok = openssl_verify(pem, message, base64.b64decode(sig))
        self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
        self.assertIn(b"Verified OK", ok.stdout)
        bad = openssl_verify(pem, b"another message", base64.b64decode(sig))
        self.assertNotEqual(bad.returncode, 0)

    def test_status_names_the_backend(self):
        status = self.daemon.cli_json("status")
        if ON_TPM:
            self.assertEqual(status["backend"], "tpm2")
            self.assertEqual(status["module"], self.daemon.swtpm.tcti)
            self.assertTrue(status["token_model"])  # the TPM's manufacturer and vendor strings
        else:
            self.assertEqual(status["backend"], "pkcs11")
            self.assertEqual(status["token_label"], "m2mvault")
        self.assertGreaterEqual(status["keys"], 3)

    def test_keys_survive_a_restart(self):
        before = self.daemon.cli_json("key", "list")
        self.daemon.restart()
        after = self.daemon.cli_json("key", "list")
        self.assertEqual(before, after)
        for _, kid, value in (CLOCK_AE1, CLOCK_AE2):
            self.assertTrue(self.daemon.cli_json("key", "check", kid)["matches"])
        self.test_signature_made_in_the_token_verifies_with_openssl()


class KeyLifecycleTest(DaemonTestCase):
    def test_ke_is_imported_as_a_token_object_with_a_check_value(self):
        ke = bytes(range(32))
        shown = self.daemon.cli_json("key", "import", "--kind", "ke", "--id", "/xXYTj441pdLDrPlYGyF/g==@mef.example.com",
                                     "--hex", ke.hex())
        self.assertEqual(shown["storage"], "token")
        self.assertEqual(shown["check_value"], check_value(ke))
        self.assertTrue(self.daemon.cli_json("key", "check", shown["name"])["matches"])

    def test_import_from_a_file_and_from_stdin(self):
        value = os.urandom(32)
        with tempfile.NamedTemporaryFile() as f:
            f.write(value)
            f.flush()
            shown = self.daemon.cli_json("key", "import", "--kind", "km", "--id", "file-km@maf.example.com", "--in", f.name)
        self.assertEqual(shown["check_value"], check_value(value))
        p = self.daemon.cli("key", "import", "--kind", "kpm", "--id", "stdin-kpm@mef.example.com", "--in", "-", "--json",
                            input=value)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_delete_then_show_is_not_found(self):
        self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "gone@in.provider.com", "--hex", "00" * 16, check=True)
        self.daemon.cli("key", "delete", "gone@in.provider.com", check=True)
        p = self.daemon.cli("key", "show", "gone@in.provider.com")
        self.assertEqual(p.returncode, 11)
        self.assertIn(b"not_found", p.stderr)

    @pkcs11_only("counts token objects with pkcs11-tool; a TPM holds no per-key object (Tpm2Backend.NothingPersistsInTheTpm)")
    def test_deleted_signing_key_leaves_no_token_object_after_restart(self):
        self.daemon.cli("key", "generate", "--kind", "signing", "--name", "short-lived", check=True)
        self.daemon.cli("key", "delete", "short-lived", check=True)
        self.daemon.stop()
        try:
            labels = self.daemon.token_objects()
        finally:
            self.daemon.start()
        signing = [k for k in self.daemon.cli_json("key", "list") if k["storage"] == "token"]
        ke = [k for k in signing if k["kind"] == "ke"]
        pairs = [k for k in signing if k["kind"] == "signing"]
        self.assertEqual(labels.count("m2mvault-key"), len(ke) + 2 * len(pairs))

    def test_expiry_in_the_past_is_refused(self):
        p = self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "old@in.provider.com", "--hex", "11" * 16,
                            "--expires", "2001-01-01T00:00:00Z")
        self.assertEqual(p.returncode, 10, p.stderr)

    def test_expiry_is_shown_in_rfc3339(self):
        shown = self.daemon.cli_json("key", "import", "--kind", "kpsa", "--id", "dated@in.provider.com", "--hex",
                                     "22" * 16, "--expires", "2099-12-31T23:00:00+01:00")
        self.assertEqual(shown["expires"], "2099-12-31T22:00:00Z")

    def test_every_verb_has_help(self):
        for verb in (["status"], ["key", "import"], ["key", "generate"], ["key", "adopt"], ["key", "list"],
                     ["key", "show"], ["key", "public"], ["key", "delete"], ["key", "check"]):
            p = self.daemon.cli(*verb, "--help")
            self.assertEqual(p.returncode, 0, verb)
            self.assertIn(b"Usage", p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
