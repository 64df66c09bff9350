#!/usr/bin/env python3
"""Test vectors for the TS-0003 clause 10.3 derivations, computed with
Python's hmac, hashlib and unicodedata only — independently of m2mvault.

Each vector names a Ke (hex), a derivation, its inputs, and the expected
key check value of the derived key: the first 8 bytes, as hex, of
HMAC-SHA-256(derived key, "m2mvault key check value"). The vault never
reveals a derived key, so tests compare check values.

  python3 derivation_vectors.py            # print the vectors as JSON
"""
import hashlib
import hmac
import json
import sys
import unicodedata

LABEL_KM = b"oneM2M Enrolment Key to Master Credential derivation"
LABEL_KPSA = b"oneM2M Enrolment Key to Provisioned Secure Connection Key derivation"
LABEL_USAGE = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"
CHECK_LABEL = b"m2mvault key check value"


def identity(text: str) -> bytes:
    """UTF-8 after NFKC (TS-0003 10.3.2, 10.3.3)."""
    return unicodedata.normalize("NFKC", text).encode("utf-8")


def derive(ke: bytes, derivation: str, subject: str, suid: int = 0) -> bytes:
    if derivation == "km":
        data = LABEL_KM + identity(subject)
    elif derivation == "kpsa":
        data = LABEL_KPSA + identity(subject)
    elif derivation == "usage":
        # m2mvault's SUID encoding: one octet (SUID values are 10..45).
        data = LABEL_USAGE + bytes([suid]) + identity(subject)
    else:
        raise ValueError(derivation)
    return hmac.new(ke, data, hashlib.sha256).digest()


def check_value(key: bytes) -> str:
    return hmac.new(key, CHECK_LABEL, hashlib.sha256).hexdigest()[:16]


KE_A = bytes.fromhex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
# A second, unrelated Ke.
KE_B = hashlib.sha256(b"m2mvault test Ke B").digest()

SUBJECTS = {
    "ascii-maf": "maf.example.com",
    "ascii-ae": "C1234567890abcdef",
    "ascii-cse": "/mn-cse-123456",
    "fullwidth": "\uff2d\uff21\uff26\uff11.example.com",      # ＭＡＦ１ -> MAF1
    "ligature": "\ufb01eld-device",                             # ﬁ -> fi
    "circled-digit": "gateway-\u2460",                          # ① -> 1
    "compat-unit": "\u3392-sensor",                              # ㎒ -> MHz
    "combining": "cafe\u0301",                                  # e + acute -> é (composed)
    "superscript": "x\u00b2",                                   # ² -> 2
    "empty": "",
    "long": "ae-" + "0123456789abcdef" * 256,                   # 4099 characters
}


def vectors():
    out = []
    for ke_name, ke in (("A", KE_A), ("B", KE_B)):
        for name, subject in SUBJECTS.items():
            for derivation in ("km", "kpsa"):
                out.append({"ke": ke.hex(), "ke_name": ke_name, "derivation": derivation, "subject_name": name,
                            "subject": subject, "nfkc_changes": identity(subject) != subject.encode("utf-8"),
                            "check_value": check_value(derive(ke, derivation, subject))})
            for suid in (10, 21, 45):
                out.append({"ke": ke.hex(), "ke_name": ke_name, "derivation": "usage", "suid": suid,
                            "subject_name": name, "subject": subject,
                            "nfkc_changes": identity(subject) != subject.encode("utf-8"),
                            "check_value": check_value(derive(ke, "usage", subject, suid))})
    return out


if __name__ == "__main__":
    json.dump(vectors(), sys.stdout, indent=1, ensure_ascii=False)
    print()
