#!/usr/bin/env python3
"""A lying path to the TPM, for the tcti-cmd TCTI ("cmd:tamper_proxy.py PORT N...").

Reads TPM commands on stdin, forwards each to the swtpm server on
127.0.0.1:PORT, and writes its response to stdout, except that the response
to the N-th TPM2_Sign (counted from 1, for each N given) gets one bit of its
signature flipped: what a man in the middle on the TPM interface could do.
"""
import socket
import struct
import sys

TPM2_CC_SIGN = 0x0000015D
HEADER = 10  # tag (2), size (4), command or response code (4)


def read_exactly(read, size):
    data = b""
    while len(data) < size:
        chunk = read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(read):
    header = read_exactly(read, HEADER)
    if header is None:
        return None
    _, size, code = struct.unpack(">HII", header)
    rest = read_exactly(read, size - HEADER)
    return None if rest is None else (code, header + rest)


def main():
    port = int(sys.argv[1])
    tamper = {int(n) for n in sys.argv[2:]}
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    tpm = socket.create_connection(("127.0.0.1", port))
    signs = 0
    while True:
        command = read_frame(stdin.read)
        if command is None:
            return
        code, frame = command
        tpm.sendall(frame)
        rc, response = read_frame(tpm.recv)
        if code == TPM2_CC_SIGN and rc == 0:
            signs += 1
            if signs in tamper:
                # header, parameterSize (4), sigAlg (2), hashAlg (2), r.size (2): r's first byte
                at = HEADER + 4 + 6
                response = response[:at] + bytes([response[at] ^ 0x01]) + response[at + 1:]
        stdout.write(response)
        stdout.flush()


if __name__ == "__main__":
    main()
