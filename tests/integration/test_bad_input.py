"""Bad input gets a clear error and the daemon keeps serving."""
import json
import struct
import unittest

from vaultlib import CLOCK_AE1, DaemonTestCase, VaultError, b64


class ProtocolBadInputTest(DaemonTestCase):
    def error_of(self, conn):
        resp = conn.receive()
        self.assertIn("error", resp, resp)
        self.assertTrue(resp["error"]["message"])
        return resp["error"]["code"]

    def assert_still_serving(self, conn=None):
        conn = conn or self.daemon.connect()
        self.assertEqual(conn.call("ping"), {})

    def test_malformed_frame(self):
        conn = self.daemon.connect()
        body = b"\x00\xff\xfe not json at all"
        conn.send_raw(struct.pack(">I", len(body)) + body)
        self.assertEqual(self.error_of(conn), "invalid_argument")
        self.assert_still_serving(conn)

    def test_truncated_json(self):
        conn = self.daemon.connect()
        body = b'{"v":1,"id":7,"op":"key.sh'
        conn.send_raw(struct.pack(">I", len(body)) + body)
        self.assertEqual(self.error_of(conn), "invalid_argument")
        self.assert_still_serving(conn)

    def test_oversized_frame_closes_only_that_connection(self):
        conn = self.daemon.connect()
        conn.send_raw(struct.pack(">I", 0x7FFFFFFF) + b"{")
        resp = conn.receive()
        self.assertEqual(resp["error"]["code"], "invalid_argument")
        with self.assertRaises((ConnectionError, OSError)):
            conn.receive()
        self.assert_still_serving()

    def test_frame_just_over_the_limit(self):
        conn = self.daemon.connect()
        conn.send_raw(struct.pack(">I", (1 << 20) + 1))
        self.assertEqual(self.error_of(conn), "invalid_argument")
        self.assert_still_serving()

    def test_unknown_op(self):
        conn = self.daemon.connect()
        with self.assertRaises(VaultError) as e:
            conn.call("key.steal")
        self.assertEqual(e.exception.code, "unsupported")
        self.assertIn("key.steal", e.exception.message)
        self.assert_still_serving(conn)

    def test_wrong_protocol_version(self):
        conn = self.daemon.connect()
        body = json.dumps({"v": 99, "id": 1, "op": "ping"}).encode()
        conn.send_raw(struct.pack(">I", len(body)) + body)
        self.assertEqual(self.error_of(conn), "unsupported")
        self.assert_still_serving(conn)

    def test_missing_and_mistyped_parameters(self):
        conn = self.daemon.connect()
        for op, params in (("key.import", {"kind": "kpsa"}),
                           ("key.import", {"kind": "kpsa", "id": 5, "value": b64(b"x" * 16)}),
                           ("key.show", {}),
                           ("key.list", {"limit": 0}),
                           ("key.list", {"limit": 1001}),
                           ("key.list", {"limit": "ten"}),
                           ("key.import", {"kind": "wizard", "id": "a@b.c", "value": b64(b"x" * 16)})):
            with self.assertRaises(VaultError) as e:
                conn.call(op, **params)
            self.assertEqual(e.exception.code, "invalid_argument", (op, params))
        self.assert_still_serving(conn)

    def test_bad_base64_value(self):
        conn = self.daemon.connect()
        with self.assertRaises(VaultError) as e:
            conn.call("key.import", kind="kpsa", id="b64@in.provider.com", value="not base64!")
        self.assertEqual(e.exception.code, "invalid_argument")
        self.assert_still_serving(conn)


class CliBadInputTest(DaemonTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        entity, kid, value = CLOCK_AE1
        cls.daemon.cli("key", "import", "--kind", "kpsa", "--id", kid, "--entity", entity, "--hex", value, check=True)

    def assert_clear_error(self, p, status, code, names=None):
        err = p.stderr.decode()
        self.assertEqual(p.returncode, status, err)
        lines = err.strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertTrue(lines[0].startswith(f"m2mvault: {code}: "), err)
        if names:
            self.assertIn(names, lines[0])
        self.assertEqual(self.daemon.cli("status").returncode, 0)

    def test_bad_hex(self):
        p = self.daemon.cli("key", "import", "--kind", "kpsa", "--id", "hex@in.provider.com", "--hex", "1a2g")
        self.assert_clear_error(p, 10, "invalid_argument", "--hex")

    def test_invalid_kpsa_ids(self):
        for bad in ("AE123456789012-Lock", "AE1@", "@in.provider.com", "AE 1@in.provider.com",
                    "AE1@in..provider.com", "AE1@a@b.com", "AE1@-bad.example.com"):
            p = self.daemon.cli("key", "import", "--kind", "kpsa", "--id", bad, "--hex", "00" * 16)
            self.assert_clear_error(p, 10, "invalid_argument", bad)

    def test_duplicate_identifier(self):
        _, kid, _ = CLOCK_AE1
        p = self.daemon.cli("key", "import", "--kind", "kpsa", "--id", kid, "--hex", "ab" * 16)
        self.assert_clear_error(p, 13, "conflict", kid)
        upper = kid.split("@")[0] + "@" + kid.split("@")[1].upper()
        p = self.daemon.cli("key", "import", "--kind", "kpsa", "--id", upper, "--hex", "ab" * 16)
        self.assert_clear_error(p, 13, "conflict")

    def test_name_clashing_with_an_identifier(self):
        _, kid, _ = CLOCK_AE1
        p = self.daemon.cli("key", "generate", "--kind", "signing", "--name", kid)
        self.assert_clear_error(p, 13, "conflict")

    def test_unknown_key_name(self):
        for verb in ("show", "public", "delete", "check"):
            p = self.daemon.cli("key", verb, "no-such-key")
            self.assert_clear_error(p, 11, "not_found", "no-such-key")

    def test_public_key_of_a_psk_is_refused(self):
        _, kid, _ = CLOCK_AE1
        p = self.daemon.cli("key", "public", kid)
        self.assert_clear_error(p, 10, "invalid_argument", kid)

    def test_daemon_not_running(self):
        import os
        env_socket = os.path.join(self.daemon.root, "nowhere.sock")
        p = self.daemon.cli("--socket", env_socket, "status")
        self.assertEqual(p.returncode, 16)
        self.assertIn(b"backend_unavailable", p.stderr)
        self.assertIn(env_socket.encode(), p.stderr)

    def test_usage_error(self):
        p = self.daemon.cli("key", "import", "--kind", "kpsa")
        self.assertEqual(p.returncode, 2)


if __name__ == "__main__":
    unittest.main()
