"""People's passwords: argon2id hashes (argon2-cffi, the maintained binding of the reference
implementation), the rules a new password must meet, and the tokens of sign-in sessions.

Unlike API keys (labeval.keys), a password is chosen by a person and may be guessable, so it is
stored with a deliberately slow, memory-hard hash: each guess against a stolen table costs the
attacker the same memory and time it costs the server at sign-in.
"""

from __future__ import annotations

import hashlib
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 10
MAX_LENGTH = 1024

# argon2-cffi's defaults follow RFC 9106's second recommended option (t=3, m=64 MiB, p=4).
_HASHER = PasswordHasher()


@cache
def _dummy() -> str:
    """Verified when the username is unknown, so that an unknown name and a wrong password take
    the same time (the answer does not tell which names exist). Made at the first sign-in, not at
    import: every command imports this module, and a hash costs what a sign-in costs."""
    return _HASHER.hash(secrets.token_urlsafe(16))


class WeakPassword(ValueError):
    """A new password that does not meet the rules (the message says which)."""


def check_new(password: str, username: str) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password may have at most {MAX_LENGTH} characters")
    if username.lower() in password.lower():
        raise WeakPassword("a password may not contain the username")
    if len(set(password)) < 4:
        raise WeakPassword("a password needs at least 4 different characters")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify(stored: str | None, password: str) -> bool:
    """True when `password` matches `stored`; with stored None (no such user) a dummy hash is
    checked and False returned, in the same time."""
    try:
        return _HASHER.verify(stored if stored is not None else _dummy(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """The hash was made with weaker parameters than today's."""
    return _HASHER.check_needs_rehash(stored)


def new_session_token() -> str:
    """256 random bits, URL-safe: the value of the session cookie."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> bytes:
    """What the database keeps of a session token. A plain SHA-256 suffices: the token is random
    (nothing to guess), the digest only keeps a table dump from being replayed as cookies."""
    return hashlib.sha256(token.encode()).digest()


def new_password() -> str:
    """A random password for accounts made by the demo (about 120 bits)."""
    return secrets.token_urlsafe(15)
