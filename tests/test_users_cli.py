"""`labeval user …` against real PostgreSQL: accounts with argon2id hashes, weak passwords
refused, a new password closing sessions, disabled accounts unable to sign in."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from click.testing import CliRunner

from labeval.cli import main
from labeval.db import users
from labeval.db.pool import connect
from labeval.passwords import check_new, token_digest, verify

GOOD = "Tr0ub4dor&3-long"


def run(db_url: str, *args: str, stdin: str | None = None):
    return CliRunner().invoke(main, ["--database-url", db_url, *args], input=stdin, catch_exceptions=False)


def _fetch(db_url: str, sql: str, *args):
    async def go():
        c = await connect(db_url)
        try:
            return await c.fetch(sql, *args)
        finally:
            await c.close()
    return asyncio.run(go())


def test_user_create_stores_an_argon2id_hash_and_audits(db_url: str) -> None:
    r = run(db_url, "user", "create", "zhang.wei", "--role", "officer", "--name", "张伟", "--password-stdin",
            "--json", stdin=GOOD + "\n")
    assert r.exit_code == 0, r.output
    made = json.loads(r.output)
    assert made["username"] == "zhang.wei" and made["role"] == "officer" and made["display_name"] == "张伟"
    (row,) = _fetch(db_url, "SELECT password_hash FROM users WHERE user_id = $1", made["id"])
    assert row["password_hash"].startswith("$argon2id$v=19$")
    assert GOOD not in row["password_hash"]
    assert verify(row["password_hash"], GOOD) and not verify(row["password_hash"], GOOD + "x")
    (audit,) = _fetch(db_url, "SELECT action, target FROM audit_log WHERE action = 'user.create'")
    assert audit["target"]["username"] == "zhang.wei"
    # The same name in another case is the same person.
    again = run(db_url, "user", "create", "Zhang.Wei", "--role", "viewer", "--password-stdin", stdin=GOOD + "\n")
    assert again.exit_code == 2 and "exists already" in again.output


def test_weak_passwords_and_bad_names_are_refused(db_url: str) -> None:
    short = run(db_url, "user", "create", "li.na", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.exit_code == 2 and "at least 10 characters" in short.output
    named = run(db_url, "user", "create", "li.na", "--role", "viewer", "--password-stdin", stdin="li.na-2026-pass\n")
    assert named.exit_code == 2 and "may not contain the username" in named.output
    bad = run(db_url, "user", "create", "-x y", "--role", "viewer", "--password-stdin", stdin=GOOD + "\n")
    assert bad.exit_code == 2
    assert _fetch(db_url, "SELECT count(*) AS n FROM users")[0]["n"] == 0


def test_a_new_password_and_disabling_close_the_sessions(db_url: str) -> None:
    assert run(db_url, "user", "create", "wang.fang", "--role", "viewer", "--password-stdin",
               stdin=GOOD + "\n").exit_code == 0

    async def open_one() -> bytes:
        c = await connect(db_url)
        try:
            found = await users.credentials(c, "wang.fang")
            digest = token_digest("cookie-value")
            await users.open_session(c, found.user.id, digest, idle=timedelta(hours=1), absolute=timedelta(hours=8))
            return digest
        finally:
            await c.close()

    asyncio.run(open_one())
    assert len(_fetch(db_url, "SELECT 1 FROM web_sessions")) == 1
    assert run(db_url, "user", "password", "wang.fang", "--password-stdin", stdin="another-Good-one\n").exit_code == 0
    assert _fetch(db_url, "SELECT 1 FROM web_sessions") == []
    asyncio.run(open_one())
    assert run(db_url, "user", "disable", "wang.fang").exit_code == 0
    assert _fetch(db_url, "SELECT 1 FROM web_sessions") == []
    listed = json.loads(run(db_url, "user", "list", "--json").output)
    assert listed[0]["disabled_at"] is not None


def test_password_rules() -> None:
    check_new("a-long-enough-one", "someone")
    for bad in ("aaaaaaaaaaaa", "short1!", "x" * 1025):
        try:
            check_new(bad, "someone")
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")
