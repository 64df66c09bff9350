"""Default deny: the daemon's uid and root administer; any other local user
may connect (the socket is 0666) but is refused everything but ping."""
import json
import os
import subprocess
import unittest

from vaultlib import CLOCK_AE1, Daemon

NOBODY = 65534

# Runs as another uid: speaks the protocol with nothing but the stdlib.
PROBE = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
out = {}
for i, (op, params) in enumerate([("ping", {}), ("key.list", {}), ("key.show", {"key": sys.argv[2]}),
                                  ("sign", {"key": "mn", "digest": "AAAA"}),
                                  ("key.import", {"kind": "kpsa", "id": "x@y.com", "value": "AAAA"})]):
    body = json.dumps({"v": 1, "id": i, "op": op, "params": params}).encode()
    s.sendall(struct.pack(">I", len(body)) + body)
    n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
    out[op] = json.loads(s.recv(n, socket.MSG_WAITALL))
print(json.dumps(out))
"""


class DefaultPolicyTest(unittest.TestCase):
    def test_other_uid_is_denied_everything_but_ping(self):
        daemon = Daemon()
        self.addCleanup(daemon.cleanup)
        os.chmod(daemon.root, 0o755)  # let the other user reach the socket directory
        daemon.start()
        entity, kid, value = CLOCK_AE1
        daemon.cli("key", "import", "--kind", "kpsa", "--id", kid, "--entity", entity, "--hex", value, check=True)
        # Debian's interpreter: one under root's home is not readable by nobody.
        p = subprocess.run(["/usr/bin/python3", "-c", PROBE, daemon.socket, kid], capture_output=True, text=True,
                           user=NOBODY, group=NOBODY, extra_groups=[], timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        answers = json.loads(p.stdout)
        self.assertEqual(answers["ping"]["result"], {})
        for op in ("key.list", "key.show", "sign", "key.import"):
            self.assertEqual(answers[op]["error"]["code"], "denied", answers[op])
            self.assertIn(str(NOBODY), answers[op]["error"]["message"])
            self.assertNotIn("result", answers[op])
        # Root (the test) still administers, and nothing was created.
        keys = daemon.connect().list_keys()
        self.assertEqual([k["name"] for k in keys], [kid])
        daemon.stop()
        self.assertIn("denied op=key.show", daemon.read_log())


if __name__ == "__main__":
    unittest.main()
