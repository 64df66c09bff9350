"""PSKs for TLS stacks: psk.release (`m2mvault key psk`), usage limits, and
the psk-look-up-table of TR-0038 7.1.2 as a file (`m2mvault psk-table`).

Values are checked against what the test itself imported and against
Python's hmac for check values, never against the vault's own answers.
"""
import base64
import os
import secrets
import subprocess
import tempfile
import time
import unittest

import vaultlib
from vaultlib import CLOCK_AE1, CLOCK_AE2, Daemon, DaemonTestCase, VaultError, check_value

INVALID, NOT_FOUND, EXPIRED, UNSUPPORTED = 10, 11, 14, 15

TR0038_TABLE = f"""AE-ID/CSE-ID,KpsaID,Kpsa
{CLOCK_AE1[0]},{CLOCK_AE1[1]},{CLOCK_AE1[2]}
{CLOCK_AE2[0]},{CLOCK_AE2[1]},{CLOCK_AE2[2]}
"""


def write(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


class PskReleaseTest(DaemonTestCase):
    """TR-0038 7.1.2 "Operation of MN-CSE": a psk_identity resolves to the
    Kpsa and the AE-ID it is bound to."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        for entity, kpsa_id, value in (CLOCK_AE1, CLOCK_AE2):
            cls.daemon.cli("key", "import", "--kind", "kpsa", "--id", kpsa_id, "--entity", entity, "--hex",
                           value, check=True)

    def test_lookup_by_psk_identity_returns_the_bound_ae_id(self):
        for entity, kpsa_id, value in (CLOCK_AE1, CLOCK_AE2):
            r = self.daemon.connect().call("psk.release", id=kpsa_id)
            self.assertEqual(base64.b64decode(r["value"]).hex(), value)
            self.assertEqual((r["entity"], r["id"], r["kind"]), (entity, kpsa_id, "kpsa"))
            self.assertEqual(set(r), {"name", "kind", "id", "entity", "value"})

    def test_key_psk_prints_the_value_as_hex(self):
        p = self.daemon.cli("key", "psk", CLOCK_AE1[1], check=True)
        self.assertEqual(p.stdout.decode().strip(), CLOCK_AE1[2])
        j = self.daemon.cli_json("key", "psk", CLOCK_AE2[1])
        self.assertEqual((j["psk"], j["entity"]), (CLOCK_AE2[2], "Clock-AE2"))

    def test_an_identity_lookup_never_matches_a_name(self):
        self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "named@in.provider.com", "--name", "alias",
                        "--entity", "X", "--hex", "00112233", check=True)
        with self.assertRaises(VaultError) as e:
            self.daemon.connect().call("psk.release", id="alias")
        self.assertEqual(e.exception.code, "not_found")
        # By `key`, a name is fine.
        r = self.daemon.connect().call("psk.release", key="alias")
        self.assertEqual(r["id"], "named@in.provider.com")

    def test_an_unknown_identity_is_not_found_and_audited(self):
        p = self.daemon.cli("key", "psk", "AE000000000000-Nobody@in.provider.com")
        self.assertEqual(p.returncode, NOT_FOUND, p.stderr)
        records = self.daemon.cli("audit", "show", "--json", "--op", "psk.release", check=True).stdout.decode()
        self.assertIn('"AE000000000000-Nobody@in.provider.com"', records)
        self.assertIn('"not_found"', records)

    def test_keys_that_are_not_tls_psks_are_refused(self):
        ke_id = base64.b64encode(secrets.token_bytes(16)).decode() + "@mef.example.com"
        self.daemon.cli("key", "import", "--kind", "ke", "--id", ke_id, "--hex", secrets.token_hex(32), check=True)
        self.daemon.cli("key", "import", "--kind", "kpm", "--id", "kpm1@mef.example.com", "--hex",
                        secrets.token_hex(16), check=True)
        for key in (ke_id, "kpm1@mef.example.com"):
            p = self.daemon.cli("key", "psk", key)
            self.assertEqual(p.returncode, UNSUPPORTED, p.stderr)
            self.assertEqual(p.stdout, b"")

    def test_expired_psk_is_refused(self):
        soon = time.time() + 2
        self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "old@in.provider.com", "--hex", "0011",
                        "--expires", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon + 1)), check=True)
        self.daemon.cli("key", "psk", "old@in.provider.com", check=True)
        time.sleep(max(0, soon + 1.5 - time.time()))
        p = self.daemon.cli("key", "psk", "old@in.provider.com")
        self.assertEqual(p.returncode, EXPIRED, p.stderr)
        self.assertEqual(p.stdout, b"")

    def test_the_release_is_in_the_audit_log_without_the_value(self):
        self.daemon.cli("key", "psk", CLOCK_AE1[1], check=True)
        log = ""
        audit_dir = os.path.join(self.daemon.state, "audit")
        for name in os.listdir(audit_dir):
            with open(os.path.join(audit_dir, name), errors="replace") as f:
                log += f.read()
        self.assertIn(CLOCK_AE1[1], log)
        for secret in (CLOCK_AE1[2], base64.b64encode(bytes.fromhex(CLOCK_AE1[2])).decode()):
            self.assertNotIn(secret, log)
            self.assertNotIn(secret, self.daemon.read_log())


class UsageLimitTest(DaemonTestCase):
    """Optional usage counters: a key refuses use number max_uses + 1."""

    def test_psk_release_stops_at_the_limit_and_the_count_survives_a_restart(self):
        self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "lim@in.provider.com", "--hex", "a1b2",
                        "--max-uses", "3", check=True)
        self.daemon.cli("key", "psk", "lim@in.provider.com", check=True)
        self.daemon.cli("key", "psk", "lim@in.provider.com", check=True)
        self.daemon.restart()
        k = self.daemon.cli_json("key", "show", "lim@in.provider.com")
        self.assertEqual((k["uses"], k["max_uses"]), (2, 3))
        self.daemon.cli("key", "psk", "lim@in.provider.com", check=True)
        p = self.daemon.cli("key", "psk", "lim@in.provider.com")
        self.assertEqual(p.returncode, EXPIRED, p.stderr)
        self.assertIn(b"usage limit of 3", p.stderr)
        self.assertEqual(p.stdout, b"")

    def test_signatures_count_against_the_limit(self):
        self.daemon.cli("key", "generate", "--name", "one-shot", "--max-uses", "1", check=True)
        c = self.daemon.connect()
        digest = vaultlib.b64(b"\x01" * 32)
        c.call("sign", key="one-shot", digest=digest)
        with self.assertRaises(VaultError) as e:
            c.call("sign", key="one-shot", digest=digest)
        self.assertEqual(e.exception.code, "expired")
        # A malformed request is not a use: a fresh key still has its one.
        self.daemon.cli("key", "generate", "--name", "one-more", "--max-uses", "1", check=True)
        with self.assertRaises(VaultError):
            c.call("sign", key="one-more", digest=vaultlib.b64(b"\x01" * 5))
        c.call("sign", key="one-more", digest=digest)

    def test_derivations_count_against_the_enrolment_keys_limit(self):
        ke_id = base64.b64encode(secrets.token_bytes(16)).decode() + "@mef.example.com"
        self.daemon.cli("key", "import", "--kind", "ke", "--id", ke_id, "--hex", secrets.token_hex(32),
                        "--max-uses", "1", check=True)
        self.daemon.cli("derive", "kpsa", "--ke", ke_id, "--enrolee-b-id", "C1", "--kpsa-id", "d1@mef.example.com",
                        check=True)
        p = self.daemon.cli("derive", "kpsa", "--ke", ke_id, "--enrolee-b-id", "C2", "--kpsa-id",
                            "d2@mef.example.com")
        self.assertEqual(p.returncode, EXPIRED, p.stderr)

    def test_a_limit_must_be_positive(self):
        p = self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "z@in.provider.com", "--hex", "00",
                            "--max-uses", "0")
        self.assertNotEqual(p.returncode, 0)
        with self.assertRaises(VaultError) as e:
            self.daemon.connect().call("key.import", kind="kpsa", id="z@in.provider.com",
                                       value=vaultlib.b64(b"\x00"), max_uses=-1)
        self.assertEqual(e.exception.code, "invalid_argument")


class PskTableTest(unittest.TestCase):
    """`m2mvault psk-table import|export`: TR-0038 table 7.1.2-2 as a file."""

    def setUp(self):
        self.daemon = Daemon().start()
        self.addCleanup(self.daemon.cleanup)
        self.dir = tempfile.mkdtemp(prefix="m2mvault-psktable-")
        self.addCleanup(subprocess.run, ["rm", "-rf", self.dir])

    def keys(self):
        return {k["name"]: k for k in self.daemon.cli_json("key", "list")}

    def test_tr0038_table_imports_and_each_psk_maps_to_its_ae(self):
        path = write(self.dir, "table.csv", TR0038_TABLE)
        p = self.daemon.cli("psk-table", "import", path, check=True)
        self.assertIn(b"imported 2", p.stdout)
        keys = self.keys()
        for entity, kpsa_id, value in (CLOCK_AE1, CLOCK_AE2):
            self.assertEqual(keys[kpsa_id]["entity"], entity)
            self.assertEqual(keys[kpsa_id]["check_value"], check_value(bytes.fromhex(value)))
            r = self.daemon.connect().call("psk.release", id=kpsa_id)
            self.assertEqual(base64.b64decode(r["value"]).hex(), value)

    def test_toml_rows(self):
        path = write(self.dir, "table.toml", f"""
[[psk]]
entity = "{CLOCK_AE1[0]}"
id = "{CLOCK_AE1[1]}"
psk = "{CLOCK_AE1[2]}"
max_uses = 5

[[psk]]
entity = "{CLOCK_AE2[0]}"
id = "{CLOCK_AE2[1]}"
psk = "{CLOCK_AE2[2]}"
expires = "2099-01-01T00:00:00Z"
""")
        self.daemon.cli("psk-table", "import", path, check=True)
        keys = self.keys()
        self.assertEqual(keys[CLOCK_AE1[1]]["max_uses"], 5)
        self.assertEqual(keys[CLOCK_AE2[1]]["expires"], "2099-01-01T00:00:00Z")

    def test_every_bad_row_is_reported_by_line_and_nothing_is_imported(self):
        self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "taken@in.provider.com", "--hex", "00",
                        check=True)
        path = write(self.dir, "bad.csv", "\n".join([
            "# a comment, then the header",
            "entity,id,psk",
            "Good-AE,good1@in.provider.com,00112233",        # 3: fine
            "Bad-AE,bad id,00112233",                        # 4: invalid identifier
            "Hex-AE,hex@in.provider.com,0g",                 # 5: not hex
            "Dup-AE,taken@in.provider.com,0011",             # 6: clashes with a key
            "Good-AE2,good2@in.provider.com,0011",           # 7: fine
            "Twice-AE,good1@IN.provider.com,0011",           # 8: clashes with line 3
            "Short-AE,short@in.provider.com",                # 9: a field missing
            "",
        ]))
        p = self.daemon.cli("psk-table", "import", path)
        self.assertEqual(p.returncode, INVALID, p.stderr)
        err = p.stderr.decode()
        for line in (4, 5, 6, 8, 9):
            self.assertIn(f"bad.csv:{line}:", err)
        for line in (1, 2, 3, 7):
            self.assertNotIn(f"bad.csv:{line}:", err)
        self.assertIn("5 bad row(s)", err)
        self.assertNotIn("00112233", err)
        self.assertEqual(set(self.keys()), {"taken@in.provider.com"})
        # The rows that were fine are not reserved: they import now.
        good = write(self.dir, "good.csv", "entity,id,psk\nGood-AE,good1@in.provider.com,00112233\n")
        self.daemon.cli("psk-table", "import", good, check=True)

    def test_a_header_without_the_required_columns_is_refused(self):
        path = write(self.dir, "nohdr.csv", "Clock-AE1,AE1@in.provider.com,0011\n")
        p = self.daemon.cli("psk-table", "import", path)
        self.assertEqual(p.returncode, INVALID)
        self.assertIn(b"line 1", p.stderr)

    def test_a_large_table_imports_whole(self):
        n = 2500  # five chunks on the wire
        rows = ["entity,id,psk"] + [f"AE{i:06d},AE{i:06d}-dev@gw.example.net,{secrets.token_hex(16)}" for i in range(n)]
        path = write(self.dir, "large.csv", "\n".join(rows) + "\n")
        p = self.daemon.cli("psk-table", "import", path, check=True)
        self.assertIn(f"imported {n}".encode(), p.stdout)
        self.assertEqual(self.daemon.connect().call("status")["keys"], n)
        # A bad last row: all 2500 are refused.
        rows[-1] = rows[-1].rsplit(",", 1)[0] + ",xyz"
        rows = [rows[0]] + [r.replace("-dev@", "-two@") for r in rows[1:]]
        path = write(self.dir, "large-bad.csv", "\n".join(rows) + "\n")
        p = self.daemon.cli("psk-table", "import", path)
        self.assertEqual(p.returncode, INVALID)
        self.assertIn(f"large-bad.csv:{n + 1}:".encode(), p.stderr)
        self.assertEqual(self.daemon.connect().call("status")["keys"], n)

    def test_a_crash_mid_import_leaves_nothing(self):
        c = self.daemon.connect()
        r = c.call("key.import_batch", rows=[
            {"kind": "kpsa", "id": "staged@in.provider.com", "entity": "S", "value": vaultlib.b64(b"\x01\x02")}])
        self.assertEqual((r["staged"], r["committed"], r["problems"]), (1, False, []))
        # Staged, not yet a key.
        with self.assertRaises(VaultError):
            c.call("key.show", key="staged@in.provider.com")
        self.daemon.kill()
        self.daemon.start()
        self.assertEqual(self.daemon.connect().call("status")["keys"], 0)
        # Its name was not left reserved.
        self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "staged@in.provider.com", "--hex", "0102",
                        check=True)

    def test_a_batch_belongs_to_its_connection_owner_and_commits_once(self):
        c = self.daemon.connect()
        r = c.call("key.import_batch", rows=[
            {"kind": "kpsa", "id": "b1@in.provider.com", "value": vaultlib.b64(b"\x01")}])
        done = c.call("key.import_batch", batch=r["batch"], commit=True)
        self.assertTrue(done["committed"])
        with self.assertRaises(VaultError) as e:
            c.call("key.import_batch", batch=r["batch"], commit=True)
        self.assertEqual(e.exception.code, "not_found")

    def test_export_writes_the_table_without_values(self):
        self.daemon.cli("psk-table", "import", write(self.dir, "t.csv", TR0038_TABLE), check=True)
        out = self.daemon.cli("psk-table", "export", check=True).stdout.decode()
        lines = out.strip().splitlines()
        self.assertEqual(lines[0], "entity,id,kind,name,check_value,expires")
        self.assertEqual(len(lines), 3)
        self.assertIn(f"{CLOCK_AE1[0]},{CLOCK_AE1[1]},kpsa,", out)
        for _, _, value in (CLOCK_AE1, CLOCK_AE2):
            self.assertNotIn(value, out)
        # What export writes is no import: it has no psk column.
        p = self.daemon.cli("psk-table", "import", write(self.dir, "exported.csv", out))
        self.assertEqual(p.returncode, INVALID)


if __name__ == "__main__":
    unittest.main()
