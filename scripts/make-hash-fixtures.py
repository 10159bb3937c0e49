#!/usr/bin/env python3
"""Writes tests/fixtures/hashes.json: password hashes made by implementations other than
authd's, for the tests of imported hashes (issue 25). Run it again only to change the set; the
tests read the committed file (CI does not run Python for this).

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install bcrypt argon2-cffi django
    /tmp/fx/bin/python scripts/make-hash-fixtures.py

- bcrypt: pyca/bcrypt, every cost 4..=14 with each prefix. pyca/bcrypt writes `$2b$`; the
  `$2a$` and `$2y$` spellings are that hash with the prefix rewritten, which is what other
  systems do when they move hashes between those names (PHP's `$2y$`, older `$2a$`): on
  passwords of at most 72 bytes the three are one algorithm.
- argon2id: argon2-cffi's `PasswordHasher` with its defaults (RFC 9106's low-memory profile,
  which Authelia also uses: m=65536, t=3, p=4) and with smaller parameters.
- pbkdf2_sha256: Django's `PBKDF2PasswordHasher` at its default iterations (through
  `make_password`) and at a few small counts (through `encode`, as an older Django wrote them).
"""

import importlib.metadata
import json
import pathlib
import sys

import argon2
import bcrypt
import django
from django.conf import settings

settings.configure(
    PASSWORD_HASHERS=["django.contrib.auth.hashers.PBKDF2PasswordHasher"],
    USE_TZ=True,
)
django.setup()

from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password  # noqa: E402

PASSWORD = "correct horse battery"
# Passwords the systems authd imports from accept and authd's own rules would not: a short
# one, one past bcrypt's 72 bytes, one with a control character. They log in on their
# imported hash but are not re-hashed to bcrypt.
UNUSUAL = ["short", "é" * 40, "tab\there too"]
WRONG = ["correct horse batterz", "Correct horse battery", "correct horse battery ", ""]


def bcrypt_hashes():
    for cost in range(4, 15):
        made = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=cost)).decode()
        assert made.startswith("$2b$"), made
        for prefix in ["$2a$", "$2b$", "$2y$"]:
            spelled = prefix + made[len("$2b$"):]
            assert bcrypt.checkpw(PASSWORD.encode(), spelled.encode())
            yield {"scheme": "bcrypt", "cost": cost, "password": PASSWORD, "hash": spelled}


def argon2_hashes():
    kinds = [
        ("argon2-cffi defaults", argon2.PasswordHasher()),
        ("small", argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)),
        ("small, 2 lanes, 16-byte tag", argon2.PasswordHasher(
            time_cost=2, memory_cost=2048, parallelism=2, hash_len=16, salt_len=8)),
    ]
    for label, hasher in kinds:
        for password in [PASSWORD] + (UNUSUAL if label == "small" else []):
            made = hasher.hash(password)
            assert hasher.verify(made, password)
            yield {"scheme": "argon2id", "params": label, "password": password, "hash": made}


def pbkdf2_hashes():
    made = make_password(PASSWORD)
    yield {"scheme": "pbkdf2_sha256", "params": "Django default",
           "password": PASSWORD, "hash": made}
    hasher = PBKDF2PasswordHasher()
    for iterations in [1, 1000]:
        for password in [PASSWORD] + (UNUSUAL if iterations == 1000 else []):
            made = hasher.encode(password, hasher.salt(), iterations)
            assert hasher.verify(password, made)
            yield {"scheme": "pbkdf2_sha256", "params": f"{iterations} iterations",
                   "password": password, "hash": made}


def main():
    out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hashes.json"
    fixtures = {
        "made_by": {
            name: importlib.metadata.version(name) for name in ["bcrypt", "argon2-cffi", "django"]
        } | {
            "python": sys.version.split()[0],
        },
        "wrong_passwords": WRONG,
        "hashes": [*bcrypt_hashes(), *argon2_hashes(), *pbkdf2_hashes()],
    }
    out.write_text(json.dumps(fixtures, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(fixtures['hashes'])} hashes to {out}")


if __name__ == "__main__":
    main()
