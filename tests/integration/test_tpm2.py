"""The TPM backend's own promises, end to end on swtpm (skipped on PKCS#11):
a TPM reset while the daemon runs and a daemon restart lose no key; a Ke is
never released; the daemon says it needs the TPM to itself without a
resource manager."""
import base64
import hashlib
import hmac
import os
import subprocess
import unittest

from vaultlib import DAEMON, Daemon, VaultError, b64, check_value, openssl_verify, tpm_only

MEF = "mef.example.com"
KPSA = bytes.fromhex("1a2b3c4d5e6f7a8b")
KE = bytes(range(32))
KM_LABEL = b"oneM2M Enrolment Key to Master Credential derivation"


@tpm_only("swtpm resets and the TPM backend's files")
class TpmResetTest(unittest.TestCase):
    def setUp(self):
        self.daemon = Daemon().start()
        c = self.daemon.connect()
        c.call("key.import", kind="kpsa", id="kpsa-1@in.provider.com", entity="Clock-AE1", value=b64(KPSA))
        c.call("key.import", kind="ke", id="AAAAAAAAAAAAAAAAAAAAAA==@" + MEF, name="ke-1", value=b64(KE))
        c.call("key.generate", kind="signing", name="mn-cse")
        self.pem = c.call("key.public", key="mn-cse")["pem"]
        c.close()

    def tearDown(self):
        self.daemon.cleanup()

    def assert_every_key_usable(self, round_):
        c = self.daemon.connect()
        try:
            released = c.call("psk.release", id="kpsa-1@in.provider.com")
            self.assertEqual(base64.b64decode(released["value"]), KPSA)
            self.assertTrue(c.call("key.check", key="kpsa-1@in.provider.com")["matches"])
            self.assertTrue(c.call("key.check", key="ke-1")["matches"])
            km = c.call("key.derive", derivation="km", ke="ke-1", maf_id="maf.example.com",
                        id=f"km-{round_}@maf.example.com")
            expected = hmac.new(KE, KM_LABEL + b"maf.example.com", hashlib.sha256).digest()
            self.assertEqual(km["check_value"], check_value(expected))
            message = f"after round {round_}".encode()
            signature = c.call("sign", key="mn-cse", scheme="ecdsa", digest=b64(hashlib.sha256(message).digest()))
            ok = openssl_verify(self.pem, message, base64.b64decode(signature["signature"]))
            self.assertEqual(ok.returncode, 0, ok.stdout + ok.stderr)
            self.assertTrue(c.call("audit.verify")["intact"])
        finally:
            c.close()

    def test_every_key_stays_usable_across_tpm_resets_without_restarting_the_daemon(self):
        self.assert_every_key_usable(0)
        pid = self.daemon.proc.pid
        for round_ in (1, 2):
            self.daemon.swtpm.restart()  # TPM reset + TPM2_Startup(CLEAR)
            self.assert_every_key_usable(round_)
        self.assertEqual(self.daemon.proc.pid, pid)
        self.assertIsNone(self.daemon.proc.poll())

    def test_every_key_stays_usable_across_a_daemon_restart(self):
        self.assert_every_key_usable(0)
        self.daemon.restart()
        self.assert_every_key_usable(1)
        self.daemon.stop()
        self.daemon.swtpm.restart()
        self.daemon.start()
        self.assert_every_key_usable(2)

    def test_a_ke_is_never_released(self):
        c = self.daemon.connect()
        with self.assertRaises(VaultError) as caught:
            c.call("psk.release", key="ke-1")
        self.assertEqual(caught.exception.code, "unsupported")
        c.close()

    def test_status_names_the_tpm_and_the_log_the_exclusive_use(self):
        status = self.daemon.cli_json("status")
        self.assertEqual(status["backend"], "tpm2")
        self.assertEqual(status["module"], self.daemon.swtpm.tcti)
        self.assertTrue(status["token_model"])
        self.assertIn("needs exclusive use of this TPM", self.daemon.read_log())

    def test_audit_key_file_is_private_and_holds_no_key_bytes_in_clear(self):
        path = os.path.join(self.daemon.state, "tpm2-audit-key")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_a_state_directory_of_one_backend_is_refused_by_the_other(self):
        self.daemon.stop()
        p = subprocess.run([DAEMON, "--state-dir", self.daemon.state, "--socket", self.daemon.socket],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("holds the keys of backend tpm2", p.stderr)
        self.daemon.start()

if __name__ == "__main__":
    unittest.main()
