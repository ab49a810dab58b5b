"""Helpers of the page tests: people in the test database, and a client that signs in and
submits forms with their CSRF token as a browser would."""

from __future__ import annotations

import re

import asyncpg
from litestar.testing import AsyncTestClient

from labeval.db import users
from labeval.passwords import hash_password

PASSWORD = "correct horse battery staple"
_TOKEN = re.compile(r'name="_csrf_token" value="([^"]+)"')


async def make_user(conn: asyncpg.Connection, username: str, role: str) -> users.User:
    return await users.create(conn, username=username, display_name=username.title(), role=role,
                              password_hash=hash_password(PASSWORD))


def csrf_token(html: str) -> str:
    m = _TOKEN.search(html)
    assert m, "the page has no CSRF field"
    return m.group(1)


async def submit(client: AsyncTestClient, form_page: str, action: str, data: dict[str, str], **kw):
    """GET the page holding the form (for its token), then POST the form as a browser does."""
    page = await client.get(form_page, headers={"Accept": "text/html"})
    return await client.post(action, data={**data, "_csrf_token": csrf_token(page.text)},
                             headers={"Accept": "text/html"}, **kw)


async def sign_in(client: AsyncTestClient, username: str, password: str = PASSWORD):
    return await submit(client, "/signin", "/signin", {"username": username, "password": password, "next": "/"})
