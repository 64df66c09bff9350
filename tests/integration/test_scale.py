"""10,000 Kpsa imported through the API are all usable after a restart, and
the token holds no persistent object per PSK-kind key."""
import hashlib
import json
import threading
import unittest

from vaultlib import Daemon, b64, check_value, ON_TPM

COUNT = 10_000
CLIENTS = 16


def value_of(i):
    return hashlib.sha256(b"kpsa-%d" % i).digest()[: 8 + i % 25]


class ScaleTest(unittest.TestCase):
    def test_ten_thousand_kpsa_survive_a_restart_without_token_objects(self):
        daemon = Daemon()
        self.addCleanup(daemon.cleanup)
        daemon.start()
        daemon.connect().call("key.generate", kind="signing", name="gateway-key")
        errors = []

        def importer(offset):
            conn = daemon.connect()
            ids = range(offset, COUNT, CLIENTS)
            for start in range(0, len(ids), 50):  # pipelined in batches of 50
                batch = ids[start:start + 50]
                for i in batch:
                    conn.send("key.import", kind="kpsa", id=f"AE{i:012d}-Dev@gw.example.com",
                              entity=f"AE-{i}", value=b64(value_of(i)))
                for _ in batch:
                    resp = conn.receive()
                    if "error" in resp:
                        errors.append(resp["error"])
            conn.close()

        threads = [threading.Thread(target=importer, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])

        daemon.restart()
        conn = daemon.connect()
        self.assertEqual(conn.call("status")["keys"], COUNT + 1)
        for start in range(0, COUNT, 200):
            batch = range(start, min(COUNT, start + 200))
            for i in batch:
                conn.send("key.check", key=f"AE{i:012d}-Dev@gw.example.com")
            for i in batch:
                resp = conn.receive()
                self.assertIn("result", resp, resp)
                self.assertTrue(resp["result"]["matches"])
                self.assertEqual(resp["result"]["check_value"], check_value(value_of(i)))
        # key.list pages: all 10,001 keys, each once, in name order.
        listed = conn.list_keys()
        self.assertEqual(len(listed), COUNT + 1)
        names = [k["name"] for k in listed]
        self.assertEqual(names, sorted(set(names)))
        self.assertEqual(len(conn.list_keys(kind="kpsa")), COUNT)
        cli = daemon.cli("key", "list", "--json", check=True)
        self.assertEqual(len(json.loads(cli.stdout)), COUNT + 1)
        shown = conn.call("key.show", key="AE000000004242-Dev@gw.example.com")
        self.assertEqual(shown["entity"], "AE-4242")
        conn.close()

        daemon.stop()
        if ON_TPM:
            return  # a TPM holds no per-key object at all (Tpm2Backend.NothingPersistsInTheTpm)
        labels = daemon.token_objects()
        # The KEK, the audit key and checkpoint, and the signing key pair;
        # nothing per Kpsa.
        self.assertEqual(sorted(labels), ["m2mvault-audit", "m2mvault-audit-checkpoint", "m2mvault-kek",
                                          "m2mvault-key", "m2mvault-key"])


if __name__ == "__main__":
    unittest.main()
