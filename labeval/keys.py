"""API keys: their format, the server's pepper and the keyed hash that is stored instead of them.

A key reads lbv_<prefix>_<secret>: the prefix (8 hex characters) is stored in clear to find the
row, the secret (32 random bytes, base64url) is stored only as HMAC-SHA256(pepper, secret).
Why not a slow KDF: the secret has 256 random bits, so no one can guess it whatever the hash; a
KDF would only spend CPU on every request. The pepper makes a stolen copy of the database
useless on its own (not even a candidate key can be checked against it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Literal

ROLES = ("admin", "officer", "grader", "feed", "viewer")
Role = Literal["admin", "officer", "grader", "feed", "viewer"]

_SCHEME = "lbv"
PEPPER_FILE = "key_pepper"
_MIN_PEPPER = 32


class PepperError(RuntimeError):
    """The pepper is missing, too short or readable by others."""


def new_key() -> tuple[str, str, str]:
    """(prefix, secret, key as shown once to its holder)."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    return prefix, secret, f"{_SCHEME}_{prefix}_{secret}"


def split_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None. The secret may itself contain '_'."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != _SCHEME or len(parts[1]) != 8 or not parts[2]:
        return None
    prefix = parts[1]
    if any(c not in "0123456789abcdef" for c in prefix):
        return None
    return prefix, parts[2]


def secret_hmac(pepper: bytes, secret: str) -> bytes:
    return hmac.new(pepper, secret.encode(), hashlib.sha256).digest()


def derived_secret(pepper: bytes, purpose: str) -> bytes:
    """A secret for another purpose (e.g. the pages' CSRF tokens) derived from the pepper, so a
    deployment keeps one secret and no purpose can learn another's."""
    return hmac.new(pepper, f"labeval:{purpose}".encode(), hashlib.sha256).digest()


def matches(pepper: bytes, secret: str, stored: bytes) -> bool:
    return hmac.compare_digest(secret_hmac(pepper, secret), stored)


def load_pepper(configured: str | None, data_dir: Path) -> bytes:
    """The pepper: LABEVAL_KEY_PEPPER when set (every replica of a deployment must share it),
    else <data dir>/key_pepper, created once with mode 0600. Never in the repository or the
    database: a database dump must not carry the key to its own hashes."""
    if configured:
        if len(configured) < _MIN_PEPPER:
            raise PepperError(f"LABEVAL_KEY_PEPPER must be at least {_MIN_PEPPER} characters")
        return configured.encode()
    path = data_dir / PEPPER_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        raise PepperError(f"{path} is readable by others; chmod 600 it")
    pepper = path.read_text().strip()
    if len(pepper) < _MIN_PEPPER:
        raise PepperError(f"{path} holds fewer than {_MIN_PEPPER} characters")
    return pepper.encode()
