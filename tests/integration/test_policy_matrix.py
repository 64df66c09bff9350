"""The policy file, end to end: real local users and groups, the CLI run as
each of them, an explicit table of what each may do, and the audit log's
account of every attempt.

Runs as root: it creates (and removes) two groups and three system users.
The CLI is copied to a directory every user can reach; the daemon's socket
is 0666 in a 0755 directory.
"""
import base64
import collections
import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
import unittest

import vaultlib
from vaultlib import Daemon

NOBODY = 65534
KPSA_ID = "AE1@in.provider.com"
KM_ID = "k1@maf.example.com"
OTHER_KPSA_ID = "AE9@in.other-provider.com"  # another gateway's device

# One attempt per row: a label, the CLI arguments, the wire operation the
# audit log names, and the key the audit record names ("" for none).
OPERATIONS = [
    ("status", ["status"], "status", ""),
    ("show-gw", ["key", "show", "gw-key"], "key.show", "gw-key"),
    ("show-other", ["key", "show", "other-key"], "key.show", "other-key"),
    ("show-kpsa", ["key", "show", KPSA_ID], "key.show", KPSA_ID),
    ("public-gw", ["key", "public", "gw-key"], "key.public", "gw-key"),
    ("generate-op", ["key", "generate", "--name", "op-new"], "key.generate", "op-new"),
    ("generate-gw", ["key", "generate", "--name", "gw-new"], "key.generate", "gw-new"),
    ("derive-km", ["derive", "km", "--ke", "op-ke", "--maf-id", "maf.example.com", "--km-id", KM_ID],
     "key.derive", None),  # the record's key: not asserted
    ("list", ["key", "list", "--json"], "key.list", ""),
    ("delete-op", ["key", "delete", "op-old"], "key.delete", "op-old"),
    ("csr-gw", ["cert", "csr", "--key", "gw-key", "--subject", "/CN=x"], "cert.csr", "gw-key"),
    ("csr-other", ["cert", "csr", "--key", "other-key", "--subject", "/CN=x"], "cert.csr", "other-key"),
    ("audit", ["audit", "show", "--json"], "audit.show", ""),
    ("reload", ["policy", "reload"], "policy.reload", ""),
    ("psk-kpsa", ["key", "psk", KPSA_ID], "psk.release", KPSA_ID),
    ("psk-other", ["key", "psk", OTHER_KPSA_ID], "psk.release", OTHER_KPSA_ID),
]

# The expectation, written out from the rules in POLICY below (not asked of
# the daemon). True: exit 0; False: exit 12, "denied".
#                 status show-gw show-other show-kpsa public-gw gen-op gen-gw derive list  delete csr-gw csr-oth audit reload psk psk-other
_T, _F = True, False
EXPECTED = {
    "gw":     dict(zip([o[0] for o in OPERATIONS], [_T, _T, _F, _T, _T, _F, _F, _F, _T, _F, _T, _F, _F, _F, _T, _F])),
    "aud":    dict(zip([o[0] for o in OPERATIONS], [_F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _T, _F, _F, _F])),
    "nobody": dict(zip([o[0] for o in OPERATIONS], [_F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F, _F])),
    "op":     dict(zip([o[0] for o in OPERATIONS], [_T, _F, _F, _F, _F, _T, _F, _T, _T, _T, _F, _F, _F, _F, _F, _F])),
}
# What `key list` shows each principal allowed to list: only keys it may key.read.
# op lists after its derive, so it sees the km; not its ke, op-new or op-old (kinds).
EXPECTED_LIST = {"gw": {"gw-key", KPSA_ID}, "op": {KM_ID}}
# The auditor again, without its supplementary groups: nothing.
EXPECTED_AUD_NO_GROUPS = {"audit": False, "list": False}
# Principals in the order they run: op last, so every denied delete or
# derive is refused on keys that exist.
ORDER = ["gw", "aud", "nobody", "op"]

POLICY = """
# gateway: signs with its own keys, releases the IN-CSE PSKs
[[rule]]
name = "gateway-sign"
groups = ["m2mgw-{sfx}"]
grants = ["key.read", "sign"]
keys = ["gw-*"]
kinds = ["signing"]

[[rule]]
name = "gateway-psk"
groups = ["m2mgw-{sfx}"]
grants = ["key.read", "psk.release"]
keys = ["*@in.provider.com"]
kinds = ["kpsa"]

# operator: provisions and derives op-* and MAF keys
[[rule]]
name = "maf-operator"
users = ["op-{sfx}"]
grants = ["key.create", "key.delete", "derive"]
keys = ["op-*", "*@maf.example.com"]

[[rule]]
name = "maf-operator-read"
users = ["op-{sfx}"]
grants = ["key.read"]
keys = ["*@maf.example.com"]
kinds = ["km"]

# auditor: the audit log, nothing else
[[rule]]
name = "auditor"
groups = ["m2maud-{sfx}"]
grants = ["audit.read"]
"""


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def _must(cmd):
    p = _run(cmd)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def _group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _public_dir(prefix):
    """A temp dir every user may traverse, holding a copy of the CLI."""
    base = tempfile.mkdtemp(prefix=prefix)
    os.chmod(base, 0o755)
    bindir = os.path.join(base, "bin")
    os.mkdir(bindir)
    os.chmod(bindir, 0o755)
    cli = os.path.join(bindir, "m2mvault")
    shutil.copy2(vaultlib.CLI, cli)
    os.chmod(cli, 0o755)
    return base, cli


def _write_policy(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)


def _start_daemon(base, policy):
    root = os.path.join(base, "vault")
    os.mkdir(root)
    os.chmod(root, 0o755)  # the socket's directory must be reachable
    daemon = Daemon(root=root)
    daemon.start(extra=("--policy", policy))
    return daemon


def _audit_records(daemon, *filters):
    """One record per request: a key-changing request's "started" record
    (written before it runs) is left out; its outcome follows it."""
    p = daemon.cli("audit", "show", "--json", *filters, check=True)
    records = [json.loads(line) for line in p.stdout.decode().splitlines() if line.strip()]
    return [r for r in records if r["result"] != "started"]


def _as_user(cli, socket, uid, gid, args, groups="init"):
    """Runs the CLI with another identity (setpriv), outside any private
    directory, with a minimal environment."""
    cmd = ["setpriv", "--reuid", str(uid), "--regid", str(gid)]
    cmd += ["--init-groups"] if groups == "init" else ["--clear-groups"]
    cmd += [cli, "--socket", socket, *args]
    return _run(cmd, cwd="/", env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


class PolicyMatrixTest(unittest.TestCase):
    """Four principals × sixteen CLI verbs against one policy file."""

    @classmethod
    def setUpClass(cls):
        cls.sfx = secrets.token_hex(3)
        cls.users, cls.groups = [], []
        cls.addClassCleanup(cls._remove_accounts)
        s = cls.sfx
        for g in (f"m2mgw-{s}", f"m2maud-{s}"):
            _must(["groupadd", "--system", g])
            cls.groups.append(g)
        for name, opts in ((f"gw-{s}", ["-g", f"m2mgw-{s}"]),
                           (f"op-{s}", ["-U"]),
                           (f"aud-{s}", ["-U", "-G", f"m2maud-{s}"])):
            _must(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", *opts, name])
            cls.users.append(name)
            if "-U" in opts:
                cls.groups.append(name)  # the user's private group
        cls.ids = {}
        for short in ("gw", "op", "aud"):
            pw = pwd.getpwnam(f"{short}-{s}")
            cls.ids[short] = (pw.pw_uid, pw.pw_gid)
        cls.ids["nobody"] = (NOBODY, pwd.getpwuid(NOBODY).pw_gid)

        cls.base, cls.cli = _public_dir("m2mvault-pm-")
        cls.addClassCleanup(shutil.rmtree, cls.base, ignore_errors=True)
        cls.policy = os.path.join(cls.base, "policy.toml")
        _write_policy(cls.policy, POLICY.format(sfx=s))
        cls.daemon = _start_daemon(cls.base, cls.policy)
        cls.addClassCleanup(cls.daemon.stop)

        d = cls.daemon
        d.cli("key", "generate", "--name", "gw-key", check=True)
        d.cli("key", "generate", "--name", "other-key", check=True)
        d.cli("key", "generate", "--name", "op-old", check=True)
        cls.kpsa_hex = secrets.token_hex(16)
        d.cli("key", "import", "--kind", "kpsa", "--id", KPSA_ID, "--entity", "Clock-AE1", "--hex", cls.kpsa_hex,
              check=True)
        d.cli("key", "import", "--kind", "kpsa", "--id", OTHER_KPSA_ID, "--entity", "Other-AE", "--hex",
              secrets.token_hex(16), check=True)
        cls.ke_id = base64.b64encode(secrets.token_bytes(16)).decode() + "@mef.example.com"
        d.cli("key", "import", "--kind", "ke", "--id", cls.ke_id, "--name", "op-ke", "--hex",
              secrets.token_hex(32), check=True)

    @classmethod
    def _remove_accounts(cls):
        problems = []
        for u in cls.users:
            if _user_exists(u):
                p = _run(["userdel", u])
                if p.returncode != 0:
                    problems.append(f"userdel {u}: {p.stderr.strip()}")
        for g in cls.groups:
            if _group_exists(g):  # userdel may have removed a private group already
                p = _run(["groupdel", g])
                if p.returncode != 0:
                    problems.append(f"groupdel {g}: {p.stderr.strip()}")
        if problems:
            raise RuntimeError("; ".join(problems))

    def run_as(self, who, args, groups="init"):
        uid, gid = self.ids[who]
        return _as_user(self.cli, self.daemon.socket, uid, gid, args, groups)

    def check_attempt(self, who, label, args, allowed, p):
        uid = self.ids[who][0]
        where = f"{who} (uid {uid}) {label}: m2mvault {' '.join(args)} -> {p.returncode}\n{p.stderr}"
        if allowed:
            self.assertEqual(p.returncode, 0, where)
        else:
            self.assertEqual(p.returncode, 12, where)
            self.assertIn("denied", p.stderr, where)
            self.assertIn(f"uid {uid}", p.stderr, where)
            self.assertEqual(p.stdout, "", where)

    def test_matrix_and_audit(self):
        expected_audit = collections.defaultdict(collections.Counter)  # uid -> (op, result) -> n
        expected_keys = collections.defaultdict(collections.Counter)   # uid -> (op, key, result) -> n
        attempts = 0
        for who in ORDER:
            uid = self.ids[who][0]
            for label, args, op, key in OPERATIONS:
                allowed = EXPECTED[who][label]
                p = self.run_as(who, args)
                attempts += 1
                with self.subTest(principal=who, op=label):
                    self.check_attempt(who, label, args, allowed, p)
                    if allowed and label == "list":
                        names = {k["name"] for k in json.loads(p.stdout)}
                        self.assertEqual(names, EXPECTED_LIST[who], f"{who}: key list")
                    if allowed and label == "public-gw":
                        self.assertIn("BEGIN PUBLIC KEY", p.stdout)
                    if allowed and label == "psk-kpsa":
                        self.assertEqual(p.stdout.strip(), self.kpsa_hex)  # the value imported
                    if allowed and label == "csr-gw":
                        self.assertIn("BEGIN CERTIFICATE REQUEST", p.stdout)
                    if allowed and label == "audit":
                        lines = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
                        self.assertTrue(any(r["uid"] == self.ids["gw"][0] for r in lines), "auditor sees gw")
                expected_audit[uid][(op, "ok" if allowed else "denied")] += 1
                if key is not None:
                    expected_keys[uid][(op, key, "ok" if allowed else "denied")] += 1
        # The auditor's group is a supplementary one: without it, nothing.
        aud_uid = self.ids["aud"][0]
        for label, args, op, key in OPERATIONS:
            if label not in EXPECTED_AUD_NO_GROUPS:
                continue
            p = self.run_as("aud", args, groups="clear")
            with self.subTest(principal="aud --clear-groups", op=label):
                self.check_attempt("aud", label + " (no groups)", args, EXPECTED_AUD_NO_GROUPS[label], p)
            expected_audit[aud_uid][(op, "ok" if EXPECTED_AUD_NO_GROUPS[label] else "denied")] += 1
            expected_keys[aud_uid][(op, key, "ok" if EXPECTED_AUD_NO_GROUPS[label] else "denied")] += 1

        # What the allowed attempts did.
        names = {k["name"] for k in self.daemon.cli_json("key", "list")}
        self.assertIn("op-new", names)
        self.assertNotIn("gw-new", names)
        self.assertNotIn("op-old", names)
        km = self.daemon.cli_json("key", "show", KM_ID)
        self.assertEqual((km["kind"], km.get("parent")), ("km", "op-ke"))

        # Every attempt is in the audit log, under its uid, op and result.
        records = _audit_records(self.daemon)
        by_uid = collections.defaultdict(list)
        for r in records:
            by_uid[r["uid"]].append(r)
        for who in ORDER:
            uid = self.ids[who][0]
            mine = by_uid.get(uid, [])
            with self.subTest(audit=who):
                got = collections.Counter((r["op"], r["result"]) for r in mine)
                self.assertEqual(dict(got), dict(expected_audit[uid]),
                                 f"audit records of {who} (uid {uid}) by (op, result)")
                got_keys = collections.Counter((r["op"], r["key"], r["result"]) for r in mine
                                               if r["op"] != "key.derive")
                self.assertEqual(dict(got_keys), dict(expected_keys[uid]),
                                 f"audit records of {who} (uid {uid}) by (op, key, result)")
                for r in mine:
                    self.assertEqual(r["count"], 1, r)  # nothing coalesced
                    self.assertEqual(r["exe"], self.cli, r)
                    self.assertEqual(r["error"], "denied" if r["result"] == "denied" else "", r)
        # The statistics agree.
        stats = self.daemon.cli_json("audit", "stats")
        for who in ORDER:
            uid = self.ids[who][0]
            denied = sum(n for (op, res), n in expected_audit[uid].items() if res == "denied")
            total = sum(expected_audit[uid].values())
            with self.subTest(stats=who):
                self.assertEqual(stats["principals"].get(str(uid)), {"requests": total, "denied": denied},
                                 f"audit stats of {who} (uid {uid})")

    def policy_check(self, uid, op, key=None):
        args = ["policy", "check", "--uid", str(uid), "--op", op]
        if key:
            args += ["--key", key]
        return self.daemon.cli_json(*args)

    def test_policy_check_explains(self):
        gw = self.ids["gw"][0]
        d = self.policy_check(gw, "sign", "gw-key")
        self.assertTrue(d["allowed"], d)
        self.assertEqual(d["grant"], "sign")
        self.assertIn("rule 'gateway-sign'", d["reason"])
        self.assertIn("gw-key", d["reason"])
        d = self.policy_check(gw, "sign", "other-key")
        self.assertFalse(d["allowed"], d)
        self.assertIn("default deny", d["reason"])
        self.assertIn(f"uid {gw}", d["reason"])
        # A supplementary group is found for a uid that is not connected.
        d = self.policy_check(self.ids["aud"][0], "audit.show")
        self.assertTrue(d["allowed"], d)
        self.assertIn("rule 'auditor'", d["reason"])
        d = self.policy_check(NOBODY, "audit.show")
        self.assertFalse(d["allowed"], d)
        self.assertIn("default deny", d["reason"])
        # The human form.
        p = self.daemon.cli("policy", "check", "--uid", str(gw), "--op", "sign", "--key", "gw-key")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.decode().startswith("allowed: "), p.stdout)

    def test_policy_check_psk_release(self):
        """`policy check` explains a psk.release decision by its rule."""
        gw = self.ids["gw"][0]
        p = self.daemon.cli("policy", "check", "--uid", str(gw), "--op", "psk.release", "--key", KPSA_ID, "--json")
        self.assertEqual(p.returncode, 0, f"policy check --op psk.release: {p.stderr.decode()}")
        d = json.loads(p.stdout)
        self.assertTrue(d["allowed"], d)
        self.assertIn("rule 'gateway-psk'", d["reason"])
        d = self.policy_check(NOBODY, "psk.release", KPSA_ID)
        self.assertFalse(d["allowed"], d)


FLOOD_POLICY = """
[limits]
denial_flood_threshold = 20
denial_flood_window_s = 5
"""
FLOOD_THRESHOLD = 20
FLOOD_WINDOW_S = 5

# Runs as nobody with Debian's interpreter: N key.show requests on one
# connection; prints how many were denied.
FLOOD = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
denied = 0
for i in range(int(sys.argv[2])):
    body = json.dumps({"v": 1, "id": i, "op": "key.show", "params": {"key": "flood-key"}}).encode()
    s.sendall(struct.pack(">I", len(body)) + body)
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    r = json.loads(s.recv(n, socket.MSG_WAITALL))
    denied += r.get("error", {}).get("code") == "denied"
print(denied)
"""


class DenialFloodTest(unittest.TestCase):
    """A flood of denials is coalesced in the audit log, and counted."""

    def setUp(self):
        self.base, _ = _public_dir("m2mvault-flood-")
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        policy = os.path.join(self.base, "policy.toml")
        _write_policy(policy, FLOOD_POLICY)
        self.daemon = _start_daemon(self.base, policy)
        self.addCleanup(self.daemon.stop)
        self.daemon.cli("key", "generate", "--name", "flood-key", check=True)

    def flood(self, n):
        start = time.monotonic()
        p = _run(["/usr/bin/python3", "-c", FLOOD, self.daemon.socket, str(n)], cwd="/",
                 env={"PATH": "/usr/bin:/bin"}, user=NOBODY, group=NOBODY, extra_groups=[])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(int(p.stdout), n)
        return time.monotonic() - start

    def nobody_records(self):
        return _audit_records(self.daemon, "--uid", str(NOBODY))

    def test_denial_flood_is_coalesced(self):
        # 1. The window ends while the daemon runs: the summary is written then.
        took = self.flood(120)
        deadline = time.monotonic() + 3 * FLOOD_WINDOW_S + 2  # generous: the default window is 10 s
        while True:
            records = self.nobody_records()
            if sum(r["count"] for r in records) >= 120 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.assertEqual(sum(r["count"] for r in records), 120, records[-3:])
        self.assertLess(len(records), 120)
        for r in records:
            self.assertEqual((r["op"], r["key"], r["result"], r["error"]), ("key.show", "flood-key", "denied", "denied"), r)
        first_singles = sum(1 for r in records if r["count"] == 1)
        stats = self.daemon.cli_json("audit", "stats")
        self.assertEqual(stats["principals"][str(NOBODY)]["denied"], 120, stats["principals"])
        self.assertEqual(stats["principals"][str(NOBODY)]["requests"], 120, stats["principals"])

        # 2. A flood still in its window when the daemon stops: the summary
        # is written at shutdown.
        took2 = self.flood(60)
        self.daemon.restart()
        records = self.nobody_records()
        self.assertEqual(sum(r["count"] for r in records), 180, records[-3:])
        self.assertLess(len(records), 180)
        stats = self.daemon.cli_json("audit", "stats")
        self.assertEqual(stats["principals"][str(NOBODY)]["denied"], 180, stats["principals"])
        second_singles = sum(1 for r in records if r["count"] == 1) - first_singles

        # 3. The policy's threshold is the one applied: each flood ran within
        # one window, so exactly `denial_flood_threshold` were written one by one.
        if took < FLOOD_WINDOW_S:
            self.assertEqual(first_singles, FLOOD_THRESHOLD,
                             f"first flood (120 in {took:.2f} s): {first_singles} single records, "
                             f"expected the policy's denial_flood_threshold {FLOOD_THRESHOLD}")
        if took2 < FLOOD_WINDOW_S:
            self.assertEqual(second_singles, FLOOD_THRESHOLD,
                             f"second flood (60 in {took2:.2f} s): {second_singles} single records")


if __name__ == "__main__":
    unittest.main()
