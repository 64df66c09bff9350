"""The audit log: every request recorded, tampering named by `audit verify`,
and fail-closed behaviour when a record cannot be written."""
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from vaultlib import DAEMON, Daemon, b64, ON_TPM, tpm_only

BROKEN = 13  # `m2mvault audit verify` when the chain is broken (conflict)


def audit_file(daemon):
    return os.path.join(daemon.state, "audit", "audit.log")


def read_lines(daemon):
    with open(audit_file(daemon), "rb") as f:
        return f.read().splitlines(keepends=True)


def write_lines(daemon, lines):
    with open(audit_file(daemon), "wb") as f:
        f.writelines(lines)


class AuditRecordsTest(unittest.TestCase):
    def test_every_request_is_recorded_without_key_bytes(self):
        daemon = Daemon().start()
        self.addCleanup(daemon.cleanup)
        secret = os.urandom(32)
        daemon.cli("key", "import", "--kind", "kpsa", "--id", "AE1@in.provider.com", "--entity", "AE1",
                   "--hex", secret.hex(), check=True)
        daemon.cli("key", "show", "AE1@in.provider.com", check=True)
        daemon.cli("key", "check", "AE1@in.provider.com", check=True)
        self.assertEqual(daemon.cli("key", "show", "nobody@in.provider.com").returncode, 11)
        daemon.cli("key", "delete", "AE1@in.provider.com", check=True)
        records = [json.loads(line) for line in
                   daemon.cli("audit", "show", "--json", check=True).stdout.decode().splitlines()]
        # The run's epoch record comes first: MAC'd by the token's audit key,
        # it names the nonce of the key that MACs the records after it.
        self.assertEqual(records[0]["op"], "audit.epoch")
        self.assertEqual(len(records[0]["key"]), 32)
        records = records[1:]
        # Key creation and deletion are recorded as started before they run.
        started = [(r["op"], r["key"]) for r in records if r["result"] == "started"]
        self.assertEqual(started, [("key.import", "AE1@in.provider.com"), ("key.delete", "AE1@in.provider.com")])
        seen = [(r["op"], r["key"], r["result"], r["error"]) for r in records if r["result"] != "started"]
        self.assertEqual(seen[:5], [
            ("key.import", "AE1@in.provider.com", "ok", ""),
            ("key.show", "AE1@in.provider.com", "ok", ""),
            ("key.check", "AE1@in.provider.com", "ok", ""),
            ("key.show", "nobody@in.provider.com", "error", "not_found"),
            ("key.delete", "AE1@in.provider.com", "ok", ""),
        ])
        for r in records:
            self.assertEqual(r["uid"], os.getuid())
            self.assertTrue(r["exe"].endswith("m2mvault"), r["exe"])
            self.assertEqual(len(r["tag"]), 64)
        self.assertEqual([r["seq"] for r in records], list(range(2, len(records) + 2)))
        with open(audit_file(daemon), "rb") as f:
            raw = f.read()
        for form in (secret.hex().encode(), b64(secret).encode(), secret):
            self.assertNotIn(form, raw)
        # Filters and stats.
        only = daemon.cli("audit", "show", "--op", "key.show", "--result", "error", "--json", check=True)
        self.assertEqual(len(only.stdout.decode().splitlines()), 1)
        stats = daemon.cli_json("audit", "stats")
        self.assertEqual(stats["keys"]["AE1@in.provider.com"]["uses"], 4)
        verified = daemon.cli("audit", "verify", check=True).stdout.decode()
        self.assertIn("intact", verified)

    def test_log_continues_across_restarts_and_the_token_holds_a_checkpoint(self):
        daemon = Daemon().start()
        self.addCleanup(daemon.cleanup)
        for _ in range(3):
            daemon.cli("status", check=True)
        daemon.restart()
        daemon.cli("status", check=True)
        records = [json.loads(line) for line in
                   daemon.cli("audit", "show", "--json", check=True).stdout.decode().splitlines()]
        self.assertEqual([r["seq"] for r in records], list(range(1, len(records) + 1)))
        # One epoch per run; verification crosses from one to the next.
        self.assertEqual([r["seq"] for r in records if r["op"] == "audit.epoch"], [1, 5])
        self.assertEqual(daemon.cli("audit", "verify").returncode, 0)
        daemon.stop()
        if ON_TPM:
            # In TPM NV (test_a_whole_state_directory_put_back_...), never a file.
            self.assertFalse(os.path.exists(os.path.join(daemon.state, "tpm2-audit-checkpoint")))
        else:
            self.assertIn("m2mvault-audit-checkpoint", daemon.token_objects())

    @tpm_only("the checkpoint in TPM NV outlives the state directory; the embedded token's does not")
    def test_a_whole_state_directory_put_back_from_an_earlier_copy_is_named_truncated(self):
        daemon = Daemon().start()
        self.addCleanup(daemon.cleanup)
        daemon.cli("status", check=True)
        daemon.stop()
        earlier = os.path.join(daemon.root, "earlier-state")
        shutil.copytree(daemon.state, earlier)
        daemon.start()
        for _ in range(6):
            daemon.cli("status", check=True)
        daemon.stop()
        # Log, catalog and every file rolled back together, as a disk image
        # or a backup put back would; the TPM (its own state here) is not.
        shutil.rmtree(daemon.state)
        shutil.copytree(earlier, daemon.state)
        daemon.start()
        self.assertIn("the log was cut", daemon.read_log())
        p = daemon.cli("audit", "verify")
        self.assertEqual(p.returncode, BROKEN, p.stdout.decode() + p.stderr.decode())
        self.assertIn("truncated", p.stderr.decode())
        # Stopping the daemon on the restored log does not move the
        # checkpoint back, so the evidence outlives the next restart.
        daemon.restart()
        self.assertIn("refusing to move the audit checkpoint", daemon.read_log())
        p = daemon.cli("audit", "verify")
        self.assertEqual(p.returncode, BROKEN, p.stdout.decode() + p.stderr.decode())
        self.assertIn("truncated", p.stderr.decode())


@tpm_only("the audit checkpoint in TPM NV")
@unittest.skipUnless(shutil.which("tpm2_nvwrite"), "needs tpm2-tools")
class TpmCheckpointRollbackTest(unittest.TestCase):
    def test_an_earlier_checkpoint_written_back_into_the_tpm_stops_the_daemon_with_the_reason(self):
        daemon = Daemon().start()
        self.addCleanup(daemon.cleanup)
        daemon.cli("status", check=True)
        daemon.stop()
        tools = dict(os.environ, TPM2TOOLS_TCTI=daemon.swtpm.tcti, TSS2_LOG="all+none")
        earlier = os.path.join(daemon.root, "earlier-checkpoint")
        subprocess.run(["tpm2_nvread", "0x01834D30", "-o", earlier], env=tools, check=True,
                       capture_output=True)
        daemon.start()
        daemon.cli("status", check=True)
        daemon.stop()
        # What anyone who can send commands to the TPM can do: the owner's
        # authorization is empty.
        subprocess.run(["tpm2_nvwrite", "-C", "o", "-i", earlier, "0x01834D30"], env=tools,
                       check=True, capture_output=True)
        p = subprocess.run([DAEMON, "--state-dir", daemon.state, "--socket", daemon.socket,
                            *daemon.backend_args()], capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("rolled back", p.stderr)
        self.assertIn("tpm2_nvundefine -C o 0x01834d30", p.stderr)


class TamperTest(unittest.TestCase):
    """Each kind of tampering, done while the daemon is stopped, is named by
    `m2mvault audit verify` after a restart (or by `m2mvaultd --verify-audit`
    when the daemon refuses to start on it)."""

    def setUp(self):
        self.daemon = Daemon().start()
        self.addCleanup(self.daemon.cleanup)
        for n in range(12):
            self.daemon.cli("key", "show", f"key-{n}")  # not_found: recorded all the same
        self.daemon.stop()
        self.lines = read_lines(self.daemon)
        self.assertEqual(len(self.lines), 13)  # this run's epoch record, then key-0 .. key-11

    def verify_after_restart(self):
        self.daemon.start()
        p = self.daemon.cli("audit", "verify")
        self.assertEqual(p.returncode, BROKEN, p.stdout.decode() + p.stderr.decode())
        return p.stderr.decode()

    def test_a_modified_byte_is_named(self):
        lines = list(self.lines)
        lines[5] = lines[5].replace(b'"key-4"', b'"key-X"')
        write_lines(self.daemon, lines)
        message = self.verify_after_restart()
        self.assertIn("record 6", message)
        self.assertIn("modified", message)

    def test_a_deleted_record_is_named(self):
        write_lines(self.daemon, self.lines[:5] + self.lines[6:])  # seq 6 (key-4) goes
        message = self.verify_after_restart()
        self.assertIn("record 6", message)
        self.assertIn("deleted", message)

    def test_swapped_records_are_named(self):
        lines = list(self.lines)
        lines[3], lines[4] = lines[4], lines[3]
        write_lines(self.daemon, lines)
        message = self.verify_after_restart()
        self.assertIn("record 4", message)
        self.assertIn("reordered", message)

    def test_a_truncated_tail_is_named_against_the_checkpoint(self):
        write_lines(self.daemon, self.lines[:9])
        message = self.verify_after_restart()
        self.assertIn("truncated", message)

    def test_a_log_rebuilt_with_a_plain_hash_chain_is_refused_and_named(self):
        # Whoever rewrites the file without the token's audit key.
        prev = "0" * 64
        forged = []
        for line in self.lines:
            record = json.loads(line)
            record["key"] = "innocent"
            record["prev"] = prev
            del record["tag"]
            canonical = json.dumps(record, separators=(",", ":"))
            record["tag"] = hashlib.sha256(bytes.fromhex(prev) + canonical.encode()).hexdigest()
            prev = record["tag"]
            forged.append((json.dumps(record, separators=(",", ":")) + "\n").encode())
        write_lines(self.daemon, forged)
        start = subprocess.run([DAEMON, "--state-dir", self.daemon.state, "--socket", self.daemon.socket,
                                *self.daemon.backend_args()], capture_output=True, text=True, timeout=60)
        self.assertNotEqual(start.returncode, 0)
        self.assertIn("--verify-audit", start.stderr)
        offline = subprocess.run([DAEMON, "--state-dir", self.daemon.state, "--verify-audit",
                                  *self.daemon.backend_args()],
                                 capture_output=True, text=True, timeout=60)
        self.assertEqual(offline.returncode, 3, offline.stdout + offline.stderr)
        report = json.loads(offline.stdout)
        self.assertFalse(report["intact"])
        self.assertEqual(report["problem"]["seq"], 1)


class FailClosedTest(unittest.TestCase):
    def test_a_full_device_refuses_requests(self):
        root = tempfile.mkdtemp(prefix="m2mvault-it-")
        config = os.path.join(root, "m2mvaultd.toml")
        with open(config, "w") as f:
            f.write('[audit]\nfile = "/dev/full"\n')
        daemon = Daemon(root).start(extra=("--config", config))
        self.addCleanup(daemon.cleanup)
        p = daemon.cli("key", "list")
        self.assertEqual(p.returncode, 16, p.stderr.decode())
        self.assertIn("audit log", p.stderr.decode())
        p = daemon.cli("key", "import", "--kind", "kpsa", "--id", "AE2@in.provider.com", "--hex", "00" * 16)
        self.assertEqual(p.returncode, 16)
        # Nothing was done unaudited.
        daemon.stop()
        self.assertNotIn("AE2", subprocess.run(["sqlite3", os.path.join(daemon.state, "catalog.db"),
                                                "SELECT name FROM keys"], capture_output=True,
                                               text=True).stdout)
        self.assertIn("audit log", daemon.read_log())

    def test_an_unlinked_log_refuses_requests_until_restored(self):
        daemon = Daemon().start()
        self.addCleanup(daemon.cleanup)
        daemon.cli("status", check=True)
        saved = read_lines(daemon)
        os.unlink(audit_file(daemon))
        p = daemon.cli("status")
        self.assertEqual(p.returncode, 16, p.stderr.decode())
        self.assertIn("audit log", p.stderr.decode())
        p = daemon.cli("key", "generate", "--name", "while-broken")
        self.assertEqual(p.returncode, 16)
        # The operator puts the log back: service resumes and the chain holds.
        write_lines(daemon, saved)
        os.chmod(audit_file(daemon), 0o600)
        daemon.cli("status", check=True)
        self.assertEqual(daemon.cli("audit", "verify").returncode, 0)
        self.assertEqual(daemon.cli("key", "show", "while-broken").returncode, 11)




class PolicyReloadTest(unittest.TestCase):
    """SIGHUP and `policy reload` swap the policy whole; a broken file is
    refused with its line and the old policy stays in force."""

    def check(self, daemon, uid, op, key):
        return daemon.cli_json("policy", "check", "--uid", str(uid), "--op", op, "--key", key)

    def test_reload_by_signal_and_by_command(self):
        root = tempfile.mkdtemp(prefix="m2mvault-it-")
        policy = os.path.join(root, "policy.toml")
        with open(policy, "w") as f:
            f.write('[[rule]]\nname = "first"\nuids = [4242]\ngrants = ["sign"]\nkeys = ["a-*"]\n')
        os.chmod(policy, 0o644)
        daemon = Daemon(root).start(extra=("--policy", policy))
        self.addCleanup(daemon.cleanup)
        self.assertTrue(self.check(daemon, 4242, "sign", "a-key")["allowed"])
        self.assertFalse(self.check(daemon, 4242, "sign", "b-key")["allowed"])

        with open(policy, "w") as f:
            f.write('[[rule]]\nname = "broken"\nuids = [4242]\ngrants = ["sing"]\n')
        daemon.proc.send_signal(1)  # SIGHUP
        deadline = time.time() + 10
        while "old one stays in force" not in daemon.read_log() and time.time() < deadline:
            time.sleep(0.05)
        p = daemon.cli("policy", "reload")
        self.assertEqual(p.returncode, 10, p.stderr.decode())
        self.assertIn("policy.toml:4", p.stderr.decode())  # the line of the bad grant
        self.assertIn("sing", p.stderr.decode())
        self.assertTrue(self.check(daemon, 4242, "sign", "a-key")["allowed"])  # old policy stays
        self.assertIn("old one stays in force", daemon.read_log())

        with open(policy, "w") as f:
            f.write('[[rule]]\nname = "second"\nuids = [4242]\ngrants = ["sign"]\nkeys = ["b-*"]\n')
        daemon.cli("policy", "reload", check=True)
        self.assertFalse(self.check(daemon, 4242, "sign", "a-key")["allowed"])
        decision = self.check(daemon, 4242, "sign", "b-key")
        self.assertTrue(decision["allowed"])
        self.assertIn("second", decision["reason"])
        reloads = [json.loads(line) for line in daemon.cli(
            "audit", "show", "--op", "policy.reload", "--json", check=True).stdout.decode().splitlines()]
        # The SIGHUP's failed reload (the daemon's own record), then the two commands.
        self.assertEqual([r["result"] for r in reloads], ["error", "started", "error", "started", "ok"])
        self.assertEqual(reloads[0]["key"], policy)


if __name__ == "__main__":
    unittest.main()
