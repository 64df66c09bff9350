"""The TPM backend's own promises, end to end on swtpm (skipped on PKCS#11):
a TPM reset while the daemon runs and a daemon restart lose no key; a Ke is
never released; the daemon says it needs the TPM to itself without a
resource manager; 200 keys used at random by 16 clients fit through its 3
object slots."""
import base64
import hashlib
import hmac
import os
import random
import subprocess
import threading
import unittest

from vaultlib import DAEMON, Daemon, VaultError, b64, check_value, openssl_verify, tpm_only

MEF = "mef.example.com"
KPSA = bytes.fromhex("1a2b3c4d5e6f7a8b")
KE = bytes(range(32))
KM_LABEL = b"oneM2M Enrolment Key to Master Credential derivation"
KPSA_LABEL = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"


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


def key_id16(tag: str) -> str:
    """A 16-byte identifier (Ke, Kc), base64, unique per tag."""
    return base64.b64encode(hashlib.sha256(tag.encode()).digest()[:16]).decode()


@tpm_only("the object slots of a TPM without a resource manager")
class SlotExhaustionTest(unittest.TestCase):
    """Issue 6: swtpm behind no resource manager holds 3 transient objects
    (the primary takes one); 200 keys of every kind the daemon keeps in the
    TPM, used in random order by 16 clients at once, must all work — each
    operation loads its key, evicting another, while other threads wait on
    the same TPM."""

    KINDS_IN_ORDER = ("signing", "signing", "kpsa", "kc", "ke", "kpsa-derived", "km-derived", "kpm")
    CLIENTS = 16
    OPERATIONS_PER_CLIENT = 40

    def setUp(self):
        self.daemon = Daemon().start()
        self.addCleanup(self.daemon.cleanup)

    def create_keys(self, conn, count):
        """`count` keys, the kinds in KINDS_IN_ORDER round robin; returns
        what each must give back, computed here, not by the vault."""
        keys = []
        ke = None  # the latest Ke: the parent of the derived keys after it
        for i in range(count):
            kind = self.KINDS_IN_ORDER[i % len(self.KINDS_IN_ORDER)]
            name = f"slot-{i:03d}"
            value = hashlib.sha256(b"slot key %d" % i).digest()
            if kind == "signing":
                conn.call("key.generate", kind="signing", name=name)
                keys.append({"name": name, "kind": kind, "pem": conn.call("key.public", key=name)["pem"]})
            elif kind in ("kpsa", "kc", "kpm"):
                key_id = f"{key_id16(name)}@in.provider.com" if kind == "kc" else f"{name}@in.provider.com"
                conn.call("key.import", kind=kind, id=key_id, name=name, entity=f"AE-{i}", value=b64(value))
                keys.append({"name": name, "kind": kind, "value": value})
            elif kind == "ke":
                conn.call("key.import", kind="ke", id=f"{key_id16(name)}@{MEF}", name=name, value=b64(value))
                ke = {"name": name, "kind": kind, "value": value}
                keys.append(ke)
            elif kind == "kpsa-derived":
                enrolee = f"enrolee-{i}.example.com"
                created = conn.call("key.derive", derivation="kpsa", ke=ke["name"], enrolee_b_id=enrolee,
                                    name=name, id=f"{name}@{MEF}")
                derived = hmac.new(ke["value"], KPSA_LABEL + enrolee.encode(), hashlib.sha256).digest()
                self.assertEqual(created["check_value"], check_value(derived))
                keys.append({"name": name, "kind": kind, "value": derived})
            else:  # km-derived
                maf = f"maf-{i}.example.com"
                created = conn.call("key.derive", derivation="km", ke=ke["name"], maf_id=maf, name=name,
                                    id=f"{name}@{MEF}")
                derived = hmac.new(ke["value"], KM_LABEL + maf.encode(), hashlib.sha256).digest()
                self.assertEqual(created["check_value"], check_value(derived))
                keys.append({"name": name, "kind": kind, "value": derived})
        return keys

    def use_at_random(self, keys, client, signatures, failures):
        """One client: OPERATIONS_PER_CLIENT operations on random keys, each
        answer checked against what this test computed; signatures are kept
        for verification after the run."""
        chance = random.Random(client)  # reproducible per client
        conn = self.daemon.connect()
        try:
            for n in range(self.OPERATIONS_PER_CLIENT):
                key = chance.choice(keys)
                try:
                    if key["kind"] == "signing":
                        message = f"client {client} operation {n}".encode()
                        result = conn.call("sign", key=key["name"], scheme="ecdsa",
                                           digest=b64(hashlib.sha256(message).digest()))
                        signatures.append((key, message, base64.b64decode(result["signature"])))
                    elif key["kind"] in ("kpsa", "kc", "kpsa-derived"):
                        released = conn.call("psk.release", key=key["name"])  # TPM2_Unseal
                        if base64.b64decode(released["value"]) != key["value"]:
                            failures.append(f"{key['name']}: psk.release gave another value")
                    elif key["kind"] == "ke" and n % 2 == 0:
                        maf = f"maf-{client}-{n}.example.com"  # TPM2_HMAC, then TPM2_Create
                        created = conn.call("key.derive", derivation="km", ke=key["name"], maf_id=maf,
                                            id=f"km-{client}-{n}@{MEF}")
                        expected = hmac.new(key["value"], KM_LABEL + maf.encode(), hashlib.sha256).digest()
                        if created["check_value"] != check_value(expected):
                            failures.append(f"{key['name']}: derived Km has another check value")
                    else:  # a Ke (TPM2_HMAC) or a sealed Km/Kpm (unseal, HMAC in software)
                        checked = conn.call("key.check", key=key["name"])
                        if not checked["matches"] or checked["check_value"] != check_value(key["value"]):
                            failures.append(f"{key['name']}: key.check {checked}")
                except (VaultError, OSError) as error:
                    failures.append(f"{key['name']} ({key['kind']}), client {client}, operation {n}: {error}")
        finally:
            conn.close()

    def test_two_hundred_mixed_keys_used_at_random_by_sixteen_clients_all_succeed(self):
        self.assertIn("needs exclusive use of this TPM", self.daemon.read_log())  # no resource manager
        conn = self.daemon.connect()
        keys = self.create_keys(conn, 200)
        conn.close()
        self.assertEqual({k["kind"] for k in keys}, set(self.KINDS_IN_ORDER))

        signatures, failures = [], []  # list.append is atomic under the GIL
        clients = [threading.Thread(target=self.use_at_random, args=(keys, c, signatures, failures))
                   for c in range(self.CLIENTS)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        self.assertEqual(failures, [])
        self.assertIsNone(self.daemon.proc.poll())

        # Checked after the run, so the openssl processes do not pace the clients.
        self.assertGreater(len(signatures), 50)
        for key, message, signature in signatures:
            verified = openssl_verify(key["pem"], message, signature)
            self.assertEqual(verified.returncode, 0, f"{key['name']}: {verified.stdout + verified.stderr}")


if __name__ == "__main__":
    unittest.main()
