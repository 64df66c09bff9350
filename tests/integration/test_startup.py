"""Start-up: first initialization, refusal to start on a broken token or a
foreign directory, one daemon per state directory, adopted token keys."""
import base64
import hashlib
import os
import subprocess
import unittest

from vaultlib import DAEMON, SOFTHSM2, Daemon, VaultError, b64, make_vendor_token_key, openssl_verify, pkcs11_only, tpm_only


def tree_digest(root):
    """A digest of every file under root (names and contents), except the
    daemon's lock file and SoftHSM2's token.object, where the token itself
    counts failed logins (CKF_USER_PIN_COUNT_LOW), as a real HSM does."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(filenames):
            if name in ("lock", "token.object"):
                continue
            path = os.path.join(dirpath, name)
            h.update(path.encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def run_daemon(state, socket, timeout=30):
    return subprocess.run([DAEMON, "--state-dir", state, "--socket", socket], capture_output=True, text=True,
                          timeout=timeout)


class StartupTest(unittest.TestCase):
    def setUp(self):
        self.daemon = Daemon()
        self.addCleanup(self.daemon.cleanup)

    def initialized(self):
        self.daemon.start()
        self.daemon.connect().call("key.import", kind="kpsa", id="AE1@in.provider.com", value=b64(b"k" * 16))
        self.daemon.stop()

    @pkcs11_only("the embedded SoftHSM2 token's files (test_first_start_on_a_tpm_makes_the_audit_key_file)")
    def test_first_start_creates_token_pins_and_marker(self):
        self.initialized()
        state = self.daemon.state
        for name in ("m2mvault-state", "catalog.db", "softhsm2.conf", "user-pin", "so-pin"):
            self.assertTrue(os.path.exists(os.path.join(state, name)), name)
        for name in ("user-pin", "so-pin"):
            self.assertEqual(os.stat(os.path.join(state, name)).st_mode & 0o777, 0o600, name)
        with open(os.path.join(state, "user-pin")) as a, open(os.path.join(state, "so-pin")) as b:
            self.assertNotEqual(a.read(), b.read())
        self.assertIn("so-pin", self.daemon.read_log())
        self.assertEqual([n for n in os.listdir(self.daemon.root) if "staging" in n], [])

    @tpm_only("the TPM backend's state directory")
    def test_first_start_on_a_tpm_makes_the_audit_key_file(self):
        self.initialized()
        state = self.daemon.state
        for name in ("m2mvault-state", "catalog.db", "backend", "tpm2-audit-key"):
            self.assertTrue(os.path.exists(os.path.join(state, name)), name)
        self.assertEqual(os.stat(os.path.join(state, "tpm2-audit-key")).st_mode & 0o777, 0o600)
        for name in ("softhsm2.conf", "user-pin", "so-pin", "tokens"):
            self.assertFalse(os.path.exists(os.path.join(state, name)), name)
        with open(os.path.join(state, "backend")) as f:
            self.assertEqual(f.read(), "tpm2\n")

    @pkcs11_only("the token's user PIN")
    def test_wrong_pin_refuses_to_start_and_touches_nothing(self):
        self.initialized()
        with open(os.path.join(self.daemon.state, "user-pin"), "w") as f:
            f.write("not-the-pin\n")
        before = tree_digest(self.daemon.state)
        p = run_daemon(self.daemon.state, self.daemon.socket)
        self.assertEqual(p.returncode, 1)
        self.assertIn("PIN", p.stderr)
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        self.assertEqual(tree_digest(self.daemon.state), before)

    @pkcs11_only("the SoftHSM2 token directory")
    def test_missing_token_refuses_to_start(self):
        self.initialized()
        subprocess.run(["rm", "-rf", os.path.join(self.daemon.state, "tokens")], check=True)
        os.mkdir(os.path.join(self.daemon.state, "tokens"))
        before = tree_digest(self.daemon.state)
        p = run_daemon(self.daemon.state, self.daemon.socket)
        self.assertEqual(p.returncode, 1)
        self.assertIn("m2mvault", p.stderr)  # names the token label
        self.assertEqual(tree_digest(self.daemon.state), before)

    @pkcs11_only("the token's KEK, deleted with pkcs11-tool")
    def test_missing_kek_refuses_to_start(self):
        self.initialized()
        env = dict(os.environ, SOFTHSM2_CONF=os.path.join(self.daemon.state, "softhsm2.conf"))
        with open(os.path.join(self.daemon.state, "user-pin")) as f:
            pin = f.read().strip()
        subprocess.run(["pkcs11-tool", "--module", SOFTHSM2, "--token-label", "m2mvault", "--login", "--pin", pin,
                        "--delete-object", "--type", "secrkey", "--label", "m2mvault-kek"],
                       check=True, capture_output=True, env=env)
        p = run_daemon(self.daemon.state, self.daemon.socket)
        self.assertEqual(p.returncode, 1)
        self.assertIn("KEK", p.stderr)

    def test_foreign_non_empty_directory_is_refused_untouched(self):
        os.makedirs(self.daemon.state)
        with open(os.path.join(self.daemon.state, "precious.txt"), "w") as f:
            f.write("do not touch")
        p = run_daemon(self.daemon.state, self.daemon.socket)
        self.assertEqual(p.returncode, 1)
        self.assertIn("not empty", p.stderr)
        self.assertEqual(os.listdir(self.daemon.state), ["precious.txt"])

    def test_stale_staging_directory_is_cleared_by_the_next_initialization(self):
        stale = os.path.join(self.daemon.root, ".state.staging-99999")
        os.makedirs(os.path.join(stale, "tokens"))
        self.daemon.start()
        self.assertFalse(os.path.exists(stale))

    def test_second_daemon_on_the_same_state_directory_is_refused(self):
        self.daemon.start()
        other_socket = os.path.join(self.daemon.root, "other.sock")
        p = run_daemon(self.daemon.state, other_socket)
        self.assertEqual(p.returncode, 1)
        self.assertIn("another m2mvaultd", p.stderr)
        self.assertEqual(self.daemon.connect().call("ping"), {})

    def test_second_daemon_on_the_same_socket_is_refused(self):
        self.daemon.start()
        other = Daemon()
        self.addCleanup(other.cleanup)
        p = run_daemon(other.state, self.daemon.socket)
        self.assertEqual(p.returncode, 1)
        self.assertIn("another daemon is listening", p.stderr)


@pkcs11_only("adopting a vendor token's key (on a TPM, key.adopt is unsupported: AdoptOnTpmTest)")
class AdoptTest(unittest.TestCase):
    """A manufacturer's key pair in its own token, referenced in place."""

    def test_adopted_key_signs_and_is_never_destroyed(self):
        daemon = Daemon()
        self.addCleanup(daemon.cleanup)
        daemon.start()
        daemon.stop()
        # The vault logs in to an adopted key's token with its own user PIN.
        env, pin = make_vendor_token_key(daemon)
        daemon.start()
        shown = daemon.cli_json("key", "adopt", "--kind", "signing", "--name", "device", "--token-label", "vendor",
                                "--object", "device-key")
        self.assertEqual(shown["storage"], "adopted")
        self.assertEqual(shown["object_id"], "0a0b")
        pem = daemon.cli("key", "public", "device", check=True).stdout
        message = b"adopted key test"
        conn = daemon.connect()
        sig = base64.b64decode(conn.call("sign", key="device", digest=b64(hashlib.sha256(message).digest()))["signature"])
        v = openssl_verify(pem, message, sig)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        with self.assertRaises(VaultError) as e:
            conn.call("key.adopt", name="ghost", token_label="vendor", object="no-such-key")
        self.assertEqual(e.exception.code, "not_found")
        daemon.cli("key", "delete", "device", check=True)
        daemon.stop()
        listed = subprocess.run(["pkcs11-tool", "--module", SOFTHSM2, "--token-label", "vendor", "--login", "--pin",
                                 pin, "--list-objects"], capture_output=True, text=True, env=env)
        self.assertEqual(listed.stdout.count("device-key"), 2, listed.stdout)  # private and public remain


@tpm_only("adoption on the TPM backend")
class AdoptOnTpmTest(unittest.TestCase):
    def test_adopting_is_unsupported_with_a_clear_error(self):
        daemon = Daemon().start()
        self.addCleanup(daemon.cleanup)
        with self.assertRaises(VaultError) as caught:
            daemon.connect().call("key.adopt", name="device", token_label="vendor", object="device-key")
        self.assertEqual(caught.exception.code, "unsupported")
        self.assertIn("PKCS#11", caught.exception.message)


if __name__ == "__main__":
    unittest.main()
