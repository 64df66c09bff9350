"""No key byte appears in the daemon's log or in any error message."""
import base64
import os
import unittest

from vaultlib import Daemon, b64


class NoSecretInLogsTest(unittest.TestCase):
    def test_imported_key_never_reaches_log_or_errors(self):
        daemon = Daemon().start(extra=["--log-level", "trace"])
        self.addCleanup(daemon.cleanup)
        secret = os.urandom(32)
        outputs = []

        def run(*args, **kw):
            p = daemon.cli(*args, **kw)
            outputs.append(p.stdout + p.stderr)
            return p

        kid = "leak-test@in.provider.com"
        self.assertEqual(run("key", "import", "--kind", "kpsa", "--id", kid, "--hex", secret.hex()).returncode, 0)
        # Failures that carry the value: duplicate, bad identifier, bad kind, past expiry, too long.
        run("key", "import", "--kind", "kpsa", "--id", kid, "--hex", secret.hex())
        run("key", "import", "--kind", "kpsa", "--id", "bad id@x", "--hex", secret.hex())
        run("key", "import", "--kind", "nope", "--id", "x@y.com", "--hex", secret.hex())
        run("key", "import", "--kind", "kpsa", "--id", "old@in.provider.com", "--hex", secret.hex(),
            "--expires", "2000-01-01T00:00:00Z")
        run("key", "import", "--kind", "kpsa", "--id", "long@in.provider.com", "--hex", (secret * 40).hex())
        run("key", "import", "--kind", "ke", "--id", "/xXYTj441pdLDrPlYGyF/g==@mef.example.com", "--hex", secret.hex())
        for verb in ("show", "check", "delete"):
            run("key", verb, kid, "--json")
        conn = daemon.connect()
        for bad in ({"kind": "kpsa", "id": "z@in.provider.com", "value": b64(secret)[:-2]},
                    {"kind": "kpsa", "id": 17, "value": b64(secret)}):
            conn.send("key.import", **bad)
            outputs.append(repr(conn.receive()).encode())
        conn.close()
        daemon.stop()

        forms = {secret.hex(), secret.hex().upper(), b64(secret), b64(secret)[:20],
                 base64.b64encode(secret[:15]).decode()}
        log = daemon.read_log()
        self.assertIn("key.import", log)  # the trace log did record the requests
        for form in forms:
            self.assertNotIn(form, log)
            for out in outputs:
                self.assertNotIn(form.encode(), out)
        with open(daemon.log, "rb") as f:
            self.assertNotIn(secret, f.read())


if __name__ == "__main__":
    unittest.main()
