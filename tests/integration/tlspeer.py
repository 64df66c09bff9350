"""TLS peers for integration tests: the stock `openssl` CLI on loopback.

Independent of the C++ code on purpose: the other end of every TLS session is
`openssl s_server` or `openssl s_client`, the PKI is made with `openssl req`
and `openssl ca`, and the RFC 5705 keying material is read from what the CLI
prints (-keymatexport). Python 3 stdlib only.

oneM2M context:
  * TS-0003 10.3.1: the 48 bytes exported with label EXPORTER-oneM2M-Bootstrap
    (or EXPORTER-oneM2M-Connection) are split into a 16-byte relative key ID
    and a 32-byte key; the key ID is base64(first16) "@" FQDN.
  * TR-0038 Annex B: a test CA, CSE certificates whose subjectAltName carries
    the CSE-ID as "DNS:my.m2mprovider.org/in-cse".

Notes on OpenSSL 3.0's s_server / s_client (checked against 3.0.x):
  * s_server reads its stdin during a connection and, unless -quiet/-brief,
    hangs up ("DONE") on stdin EOF -- even with -ign_eof. So SServer gives it
    a pipe that stays open; hang_up() closes the pipe to make it disconnect.
  * s_server -psk_identity only *warns* on a different client identity
    ("PSK warning: client identity not what we expected") and the handshake
    still succeeds. Use SServer.client_psk_identity() to check it.
  * s_server -Verify / s_client -verify ignore verification errors unless
    -verify_return_error is also given; both classes pass it by default.
  * s_server -accept 127.0.0.1:0 prints "ACCEPT 127.0.0.1:<port>", so the port
    is race-free. Never probe the port by connecting: with -naccept 1 the probe
    would be the one accepted connection.
"""
import atexit
import base64
import datetime
import hashlib
import hmac
import os
import re
import secrets
import shutil
import socket
import signal
import subprocess
import tempfile
import threading
import time

OPENSSL = os.environ.get("OPENSSL", "openssl")

BOOTSTRAP_LABEL = "EXPORTER-oneM2M-Bootstrap"
CONNECTION_LABEL = "EXPORTER-oneM2M-Connection"
PSK_CIPHER = "PSK-AES128-CBC-SHA256"
CERT_CIPHER = "ECDHE-ECDSA-AES128-SHA256"
KEYMAT_LEN = 48

# Validity of expired=True certificates: entirely in the past.
EXPIRED_START = "20200101000000Z"
EXPIRED_END = "20210101000000Z"
# CAs start here so that expired leaves still lie inside their issuer's validity.
CA_START = "20190101000000Z"


class PeerError(AssertionError):
    """An openssl command or peer did not do what the test needed."""


def stop_process(proc, sig=signal.SIGTERM, timeout=10):
    """Send `sig` to `proc` if it still runs, wait up to `timeout` s, then kill it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def openssl(*args, input=None, check=True, timeout=60) -> subprocess.CompletedProcess:
    """Run `openssl ARGS...` non-interactively; raise PeerError on failure."""
    p = subprocess.run([OPENSSL, *args], input=input, capture_output=True, timeout=timeout,
                       stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise PeerError(f"openssl {' '.join(args)} failed ({p.returncode}):\n"
                        f"{p.stdout.decode(errors='replace')}{p.stderr.decode(errors='replace')}")
    return p


# ---------------------------------------------------------------------------
# Keying material (TS-0003 10.3.1)

def keymat_split(km: bytes):
    """48 bytes of exported keying material -> (relative_id16, key32)."""
    if len(km) != KEYMAT_LEN:
        raise ValueError(f"keying material must be {KEYMAT_LEN} bytes, got {len(km)}")
    return km[:16], km[16:]


def expected_id(km: bytes, fqdn: str, fmt: str = "base64") -> str:
    """The key ID the vault should assign: base64 (standard, padded) or lowercase
    hex of the first 16 bytes, then "@" and the FQDN."""
    rel, _ = keymat_split(km)
    if fmt == "base64":
        text = base64.b64encode(rel).decode()
    elif fmt == "hex":
        text = rel.hex()
    else:
        raise ValueError(f"unknown id format {fmt!r}")
    return f"{text}@{fqdn}"


def check_value(key32: bytes) -> str:
    """The key check value, computed independently of the vault."""
    return hmac.new(key32, b"m2mvault key check value", hashlib.sha256).hexdigest()[:16]


# ---------------------------------------------------------------------------
# PKI

def _pem_kind(data: bytes) -> str:
    m = re.search(rb"-----BEGIN ([A-Z0-9 ]+)-----", data)
    if not m:
        raise PeerError("not a PEM file")
    return m.group(1).decode()


def spki_der(pem) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate, CSR, public or private key.
    `pem` is a path, or PEM text (str/bytes containing "-----BEGIN")."""
    if isinstance(pem, str) and "-----BEGIN" not in pem:
        with open(pem, "rb") as f:
            data = f.read()
    else:
        data = pem.encode() if isinstance(pem, str) else pem
    kind = _pem_kind(data)
    if kind in ("CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE"):
        pub = openssl("x509", "-pubkey", "-noout", input=data).stdout
    elif kind in ("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"):
        pub = openssl("req", "-pubkey", "-noout", input=data).stdout
    elif kind == "PUBLIC KEY":
        pub = data
    elif "PRIVATE KEY" in kind:
        pub = openssl("pkey", "-pubout", input=data).stdout
    else:
        raise PeerError(f"cannot take a public key from a PEM {kind}")
    return openssl("pkey", "-pubin", "-outform", "DER", input=pub).stdout


def spki_sha256(cert_or_pubkey_pem_path) -> str:
    """SHA-256 over the DER SubjectPublicKeyInfo, lowercase hex: the oneM2M
    Root of Trust key hash (RFC 6920 style)."""
    return hashlib.sha256(spki_der(cert_or_pubkey_pem_path)).hexdigest()


def _conf_value(v: str) -> str:
    """Escape a value for an OpenSSL config file ($, #, \\ are special)."""
    return re.sub(r'([\\$#"\'])', r"\\\1", v)


def _gentime(dt: datetime.datetime) -> str:
    return dt.astimezone(datetime.timezone.utc).strftime("%Y%m%d%H%M%SZ")


def _validity(days, expired, start=None):
    if expired:
        return EXPIRED_START, EXPIRED_END
    now = datetime.datetime.now(datetime.timezone.utc)
    # A minute of slack so that "now" on the verifying side is never before notBefore.
    return start or _gentime(now - datetime.timedelta(minutes=1)), _gentime(now + datetime.timedelta(days=days))


class Pki:
    """Keys and certificates made with the openssl CLI in `directory`.

    Files: <name>.key (EC P-256, PKCS#8 PEM), <name>.csr, <name>.pem (cert).
    Each CA keeps an `openssl ca` database in <ca>.db/."""

    LEAF_EXT = ["keyUsage = critical,digitalSignature", "basicConstraints = CA:FALSE",
                "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid:always"]

    def __init__(self, directory):
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.cas = {}  # name -> (key_path, cert_path)

    def path(self, name, suffix):
        return os.path.join(self.dir, name + suffix)

    def make_key(self, name):
        key = self.path(name, ".key")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-pkeyopt", "ec_param_enc:named_curve", "-out", key)
        return key

    def make_csr(self, name, subject, key_path):
        csr = self.path(name, ".csr")
        openssl("req", "-new", "-batch", "-key", key_path, "-subj", subject, "-sha256", "-out", csr)
        return csr

    def _ca_config(self, ca, copy_extensions):
        db = self.path(ca, ".db")
        if not os.path.isdir(db):
            os.makedirs(os.path.join(db, "newcerts"))
            open(os.path.join(db, "index.txt"), "w").close()
            with open(os.path.join(db, "serial"), "w") as f:
                f.write("10" + secrets.token_hex(7) + "\n")
        cnf = os.path.join(db, "ca.cnf")
        with open(cnf, "w") as f:
            f.write("[ ca ]\ndefault_ca = ca_section\n[ ca_section ]\n"
                    f"database = {_conf_value(os.path.join(db, 'index.txt'))}\n"
                    f"new_certs_dir = {_conf_value(os.path.join(db, 'newcerts'))}\n"
                    f"serial = {_conf_value(os.path.join(db, 'serial'))}\n"
                    "default_md = sha256\npolicy = policy_section\nunique_subject = no\n"
                    f"email_in_dn = no\ncopy_extensions = {copy_extensions}\n"
                    # With -preserveDN fields missing from the policy are kept, in request order.
                    "[ policy_section ]\ncommonName = optional\n")
        return cnf

    def _ca_sign(self, csr, cert, ca, ext_lines, start, end, copy_extensions="none", selfsign_key=None):
        cnf = self._ca_config(ca, copy_extensions)
        ext = cert + ".ext.cnf"
        with open(ext, "w") as f:
            f.write("[ ext ]\n" + "".join(line + "\n" for line in ext_lines))
        args = ["ca", "-batch", "-notext", "-preserveDN", "-config", cnf, "-in", csr, "-out", cert,
                "-startdate", start, "-enddate", end, "-extfile", ext, "-extensions", "ext"]
        if selfsign_key:
            args += ["-selfsign", "-keyfile", selfsign_key]
        else:
            if ca not in self.cas:
                raise PeerError(f"no CA named {ca!r}; call make_ca first")
            ca_key, ca_cert = self.cas[ca]
            args += ["-cert", ca_cert, "-keyfile", ca_key]
        openssl(*args)
        return cert

    def make_ca(self, name="ca", subject="/C=DE/O=oneM2M Test CA/CN=Test Root CA", days=3650):
        """A self-signed root: EC P-256, basicConstraints=critical,CA:TRUE,
        keyUsage=critical,keyCertSign,cRLSign, ecdsa-with-SHA256. notBefore is
        2019-01-01 so that expired leaves nest inside it. -> (key, cert)."""
        key = self.make_key(name)
        csr = self.make_csr(name, subject, key)
        start, end = _validity(days, False, start=CA_START)
        cert = self._ca_sign(csr, self.path(name, ".pem"), name,
                             ["basicConstraints = critical,CA:TRUE", "keyUsage = critical,keyCertSign,cRLSign",
                              "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid:always"],
                             start, end, selfsign_key=key)
        self.cas[name] = (key, cert)
        return key, cert

    @staticmethod
    def _san_line(san):
        if isinstance(san, (list, tuple)):
            san = ", ".join(san)
        return "subjectAltName = " + _conf_value(san)

    def make_leaf(self, name, subject, san, ca="ca", days=365, expired=False, key_path=None, ext=()):
        """An EE certificate signed by CA `ca`: EC P-256 (a new key, or key_path),
        subjectAltName=san (str like "DNS:my.m2mprovider.org/in-cse", or a list),
        keyUsage=critical,digitalSignature, basicConstraints=CA:FALSE, plus any
        `ext` config lines. expired=True: 2020-01-01 .. 2021-01-01.
        -> (key, cert)."""
        key = key_path or self.make_key(name)
        csr = self.make_csr(name, subject, key)
        cert = self.sign_csr(csr, name, ca=ca, san=san, days=days, expired=expired, ext=ext)
        return key, cert

    def sign_csr(self, csr_path, name, ca="ca", san=None, days=365, expired=False, ext=()):
        """Certify a CSR made elsewhere (e.g. by the vault, key in its token).
        With `san` the CSR's extensions are ignored; with san=None they are
        copied (ours -- keyUsage, basicConstraints -- take precedence).
        -> cert path <name>.pem."""
        lines = list(self.LEAF_EXT) + list(ext)
        if san is not None:
            lines.append(self._san_line(san))
        start, end = _validity(days, expired)
        return self._ca_sign(csr_path, self.path(name, ".pem"), ca, lines, start, end,
                             copy_extensions="none" if san is not None else "copy")

    def self_signed(self, name, subject, san, days=365, key_path=None):
        """A self-signed EE certificate (no CA), e.g. for pinning by key hash.
        -> (key, cert)."""
        key = key_path or self.make_key(name)
        cert = self.path(name, ".pem")
        openssl("req", "-x509", "-new", "-batch", "-key", key, "-subj", subject, "-days", str(days), "-sha256",
                "-addext", self._san_line(san).replace(" = ", "=", 1),
                "-addext", "keyUsage=critical,digitalSignature", "-addext", "basicConstraints=critical,CA:FALSE",
                "-out", cert)
        return key, cert


# ---------------------------------------------------------------------------
# Peers

_live = set()
_live_lock = threading.Lock()


@atexit.register
def _kill_leftovers():
    with _live_lock:
        peers = list(_live)
    for p in peers:
        p.close()


_HEX_RE = re.compile(r"[0-9A-Fa-f]*")


class _Peer:
    """An openssl s_server/s_client process with stdout and stderr in files
    (no pipe can fill up), killed on close()."""

    kind = "peer"
    env = None  # environment of the openssl process (None: inherit)

    def __init__(self, label, keymat_len):
        self.label = label
        self.keymat_len = keymat_len
        self.proc = None
        self.args = None
        self._new_files()

    def _new_files(self):
        self._dir = tempfile.mkdtemp(prefix=f"tlspeer-{self.kind}-")
        self._out_path = os.path.join(self._dir, "stdout")
        self._err_path = os.path.join(self._dir, "stderr")
        self._saved = None  # (stdout, stderr) once the files are gone

    # -- process --------------------------------------------------------------
    def _spawn(self, args, stdin):
        self.args = [OPENSSL, *args]
        with open(self._out_path, "wb") as out, open(self._err_path, "wb") as err:
            self.proc = subprocess.Popen(self.args, stdin=stdin, stdout=out, stderr=err, env=self.env)
        with _live_lock:
            _live.add(self)

    @property
    def returncode(self):
        return None if self.proc is None else self.proc.poll()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout=10):
        """Wait for the process to exit; returns its exit status."""
        if self.proc is None:
            raise PeerError(f"{self.kind} was never started")
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self.kind} still running after {timeout}s\n{self._describe()}") from None

    def close(self):
        """Stop the process (if still running) and remove the temp files.
        output() keeps working afterwards."""
        if self.proc is not None:
            if self.proc.stdin:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
            stop_process(self.proc, timeout=3)
        if self._saved is None and os.path.isdir(self._dir):
            self._saved = (self._read(self._out_path), self._read(self._err_path))
            shutil.rmtree(self._dir, ignore_errors=True)
        with _live_lock:
            _live.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- output ---------------------------------------------------------------
    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        return self._saved[0] if self._saved else self._read(self._out_path)

    def stderr(self):
        return self._saved[1] if self._saved else self._read(self._err_path)

    def output(self):
        """Everything the process printed so far: stdout, then stderr."""
        return self.stdout() + self.stderr()

    def _describe(self):
        return (f"command: {' '.join(self.args or [])}\nreturncode: {self.returncode}\n"
                f"--- stdout ---\n{self.stdout()}\n--- stderr ---\n{self.stderr()}")

    def wait_for(self, pattern, timeout=10):
        """Wait until `pattern` (regex) matches stdout+stderr; returns the match.
        Raises PeerError if the process exits or time runs out first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc is None or self.proc.poll() is not None
            m = rx.search(self.output())
            if m:
                return m
            if exited:
                raise PeerError(f"{self.kind} exited without printing /{pattern}/\n{self._describe()}")
            if time.monotonic() > deadline:
                raise PeerError(f"{self.kind}: no /{pattern}/ within {timeout}s\n{self._describe()}")
            time.sleep(0.02)

    def _parse_keymat(self, text):
        """The exported bytes if a complete "Keying material: HEX" is in text,
        else None. The hex may be wrapped over several (complete) lines."""
        lines = text.split("\n")
        for i, line in enumerate(lines):
            head, sep, rest = line.partition("Keying material:")
            if not sep:
                continue
            want = 2 * self.keymat_len
            hexchars = rest.strip()
            if not _HEX_RE.fullmatch(hexchars):
                raise PeerError(f"{self.kind}: unreadable keying material {rest!r}\n{self._describe()}")
            j = i + 1
            while len(hexchars) < want and j < len(lines) - 1 and _HEX_RE.fullmatch(lines[j].strip() or "-"):
                hexchars += lines[j].strip()
                j += 1
            if len(hexchars) > want:
                raise PeerError(f"{self.kind}: more keying material than {self.keymat_len} bytes\n"
                                f"{self._describe()}")
            return bytes.fromhex(hexchars) if len(hexchars) == want else None
        return None

    def keying_material(self, timeout=10) -> bytes:
        """The RFC 5705 keying material the peer printed: waits until it is
        complete, or the process exits (PeerError with the whole output), or
        `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc is None or self.proc.poll() is not None
            km = self._parse_keymat(self.stdout())
            if km is not None:
                if not self._handshake_completed():
                    raise PeerError(f"{self.kind} printed keying material but the handshake did not complete\n"
                                    f"{self._describe()}")
                return km
            if exited:
                raise PeerError(f"{self.kind} printed no keying material for {self.label!r}\n{self._describe()}")
            if time.monotonic() > deadline:
                raise PeerError(f"{self.kind}: no keying material within {timeout}s\n{self._describe()}")
            time.sleep(0.02)

    def handshake_ok(self) -> bool:
        """True once the handshake completed and the keying material was
        printed. Does not wait."""
        return self._parse_keymat(self.stdout()) is not None and self._handshake_completed()

    def _handshake_completed(self):
        return True

    def peer_certificate(self):
        """The peer's certificate (PEM text) as printed, or None."""
        m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n?", self.stdout(), re.S)
        return m.group(0) if m else None


def _common_args(label, keymat_len, psk_hex, psk_identity, key, cert, ca_file, cipher, tickets,
                 verify_return_error):
    args = ["-tls1_2", "-keymatexport", label, "-keymatexportlen", str(keymat_len)]
    if psk_hex is not None:
        args += ["-psk", psk_hex]
        if psk_identity is not None:
            args += ["-psk_identity", psk_identity]
    if key is not None:
        args += ["-key", key]
    if cert is not None:
        args += ["-cert", cert]
    if ca_file is not None:
        args += ["-CAfile", ca_file]
    args += ["-cipher", cipher or (PSK_CIPHER if psk_hex is not None else CERT_CIPHER)]
    if not tickets:
        args.append("-no_ticket")
    if verify_return_error:
        args.append("-verify_return_error")
    return args


class SServer(_Peer):
    """`openssl s_server` on 127.0.0.1 for one connection (-naccept 1), TLS 1.2,
    printing the keying material exported with `label`.

    PSK mode: psk_hex (+ psk_identity expected, psk_hint); -nocert,
    PSK-AES128-CBC-SHA256. s_server only warns on another identity: check
    client_psk_identity().
    Cert mode: key, cert, ca_file; verify_client=True -> -Verify 1 (client
    certificate required); ECDHE-ECDSA-AES128-SHA256.
    `extra`: more s_server arguments. port=None: an ephemeral port, read back
    from s_server's "ACCEPT" line (self.port).

        with SServer(label=BOOTSTRAP_LABEL, psk_hex=..., psk_identity=...) as srv:
            ... make the vault connect to srv.port ...
            km = srv.keying_material()
    """

    kind = "s_server"

    def __init__(self, *, label, psk_hex=None, psk_identity=None, psk_hint=None, key=None, cert=None,
                 ca_file=None, verify_client=False, verify_depth=1, cipher=None, port=None,
                 keymat_len=KEYMAT_LEN, tickets=True, verify_return_error=True, extra=(), start_timeout=10):
        super().__init__(label, keymat_len)
        if (psk_hex is None) == (cert is None):
            raise ValueError("give either psk_hex (PSK mode) or key/cert (certificate mode)")
        self.requested_port = port
        self.port = None
        self.start_timeout = start_timeout
        args = _common_args(label, keymat_len, psk_hex, psk_identity, key, cert, ca_file, cipher, tickets,
                            verify_return_error)
        if psk_hex is not None:
            args.append("-nocert")
            if psk_hint is not None:
                args += ["-psk_hint", psk_hint]
        if verify_client:
            args += ["-Verify", str(verify_depth)]
        self._args = args + ["-naccept", "1", *extra]

    def start(self):
        port = 0 if self.requested_port is None else self.requested_port
        self._spawn(["s_server", "-accept", f"127.0.0.1:{port}", *self._args], stdin=subprocess.PIPE)
        m = self.wait_for(r"(?m)^ACCEPT(?:[ \t]+\S*?:(\d+))?[ \t]*$", timeout=self.start_timeout)
        if port:
            self.port = port
        elif m.group(1):
            self.port = int(m.group(1))
        else:
            # An openssl that does not say which port it got: retry on a probed free port.
            self.close()
            self._new_files()
            self.requested_port = free_port()
            return self.start()
        return self

    def __enter__(self):
        if self.proc is None:
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def hang_up(self):
        """Close s_server's stdin: it drops the connection ("DONE") and, with
        -naccept 1, exits. s_server reads stdin only while a client is
        connected: before that, the next connection is dropped at once."""
        if self.proc is not None and self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def client_psk_identity(self):
        """The PSK identity the client sent, read from the session s_server
        printed (None before the handshake)."""
        m = re.search(r"-----BEGIN SSL SESSION PARAMETERS-----.*?-----END SSL SESSION PARAMETERS-----\n?",
                      self.stdout(), re.S)
        if not m:
            return None
        text = openssl("sess_id", "-noout", "-text", input=m.group(0).encode()).stdout.decode()
        ident = re.search(r"^\s*PSK identity: (.*)$", text, re.M)
        return None if ident is None or ident.group(1) == "None" else ident.group(1)

    def cipher(self):
        m = re.search(r"^CIPHER is (\S+)", self.stdout(), re.M)
        return m.group(1) if m else None


class SClient(_Peer):
    """`openssl s_client` to 127.0.0.1:port, TLS 1.2, -ign_eof with stdin from
    /dev/null (it stays until the server closes), printing the keying material
    exported with `label`. Started at construction, in the background.

    PSK mode: psk_hex, psk_identity; PSK-AES128-CBC-SHA256.
    Cert mode: key/cert (client certificate, optional), ca_file (server
    verified, -verify_return_error); ECDHE-ECDSA-AES128-SHA256.
    servername: SNI (none by default: s_client sends none for an IP address).
    """

    kind = "s_client"

    def __init__(self, port, *, label, psk_hex=None, psk_identity=None, key=None, cert=None, ca_file=None,
                 servername=None, host="127.0.0.1", cipher=None, keymat_len=KEYMAT_LEN, tickets=True,
                 verify_return_error=True, verify_depth=4, extra=(), start=True):
        super().__init__(label, keymat_len)
        self.port = port
        args = ["s_client", "-connect", f"{host}:{port}", "-ign_eof", "-state"]
        if servername is not None:
            args += ["-servername", servername]
        args += _common_args(label, keymat_len, psk_hex, psk_identity, key, cert, ca_file, cipher, tickets,
                             verify_return_error)
        if ca_file is not None:
            args += ["-verify", str(verify_depth)]
        self._args = args + list(extra)
        if start:
            self.start()

    def start(self):
        self._spawn(self._args, stdin=subprocess.DEVNULL)
        return self

    def _handshake_completed(self):
        # s_client prints the session, keying material included, also when the
        # handshake fails after the key exchange (e.g. the server rejects the
        # client's Finished or certificate). -state shows whether the server's
        # Finished was read and checked ("read finished" is logged as the state
        # left once it was processed).
        return re.search(r"^SSL_connect:SSLv3/TLS read finished$", self.stderr(), re.M) is not None

    def cipher(self):
        m = re.search(r"Cipher is (\S+)", self.stdout())
        return m.group(1) if m else None

    def verify_result(self):
        """(code, text) of "Verify return code: ..." or None."""
        m = re.search(r"Verify return code: (\d+) \((.*)\)", self.stdout())
        return (int(m.group(1)), m.group(2)) if m else None
