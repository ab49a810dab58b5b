"""Signing in and out, and the language switch."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Redirect, Template

from labeval.config import Settings
from labeval.db import users
from labeval.passwords import hash_password, needs_rehash, new_session_token, token_digest, verify
from labeval.web.i18n import LANG_COOKIE, LANGS
from labeval.web.session import SESSION_COOKIE, absolute_timeout, clear_session_cookie, idle_timeout, session_cookie
from labeval.web.templating import page

PUBLIC = {"public": True}
_FORM = Body(media_type=RequestEncodingType.URL_ENCODED)


class SignInForm(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    username: Annotated[str, msgspec.Meta(max_length=200)] = ""
    password: Annotated[str, msgspec.Meta(max_length=1024)] = ""
    next: Annotated[str, msgspec.Meta(max_length=2000)] = "/"


def local_path(target: str | None) -> str:
    """Only a path on this site may be a redirect target (no open redirect to another host)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def client_address(request: Request) -> str:
    # The direct peer: X-Forwarded-For is not trusted here (anyone could spread guesses over
    # made-up addresses); behind a proxy, the username limit still holds.
    return request.client.host if request.client else "unknown"


class SignInController(Controller):
    path = "/"
    include_in_schema = False

    @get("/signin", opt=PUBLIC)
    async def form(self, request: Request) -> Template:
        return page(request, "signin.html", next=local_path(request.query_params.get("next")), error=None,
                    username="")

    @post("/signin", opt=PUBLIC, status_code=303)
    async def signin(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection],
                     data: Annotated[SignInForm, _FORM]) -> Response:
        settings: Settings = state.settings
        nxt = local_path(data.next)
        client = client_address(request)
        window = timedelta(minutes=settings.signin_window_minutes)
        recent = await users.recent_failures(conn, data.username, client, window)
        over = [oldest for count, limit, oldest in (
            (recent.by_username, settings.signin_failures_per_user, recent.oldest_username),
            (recent.by_client, settings.signin_failures_per_client, recent.oldest_client),
        ) if count >= limit and oldest is not None]
        if over:
            wait = max(1, math.ceil((min(over) + window - datetime.now(UTC)).total_seconds()))
            return page(request, "signin.html", status_code=429, headers={"Retry-After": str(wait)},
                        next=nxt, username=data.username, error="too_many", retry_minutes=math.ceil(wait / 60))
        found = await users.credentials(conn, data.username) if data.username else None
        # argon2 is deliberately slow and memory-hard: off the event loop, so one sign-in does not
        # hold up every other request of this process.
        ok = await asyncio.to_thread(verify, found.password_hash if found else None, data.password)
        await users.record_attempt(conn, data.username, client, ok, window)
        if not ok or found is None:
            return page(request, "signin.html", status_code=401, next=nxt, username=data.username, error="wrong")
        if needs_rehash(found.password_hash):
            await users.set_password(conn, found.user.id, await asyncio.to_thread(hash_password, data.password))
        token = new_session_token()
        await users.open_session(conn, found.user.id, token_digest(token), idle=idle_timeout(settings),
                                 absolute=absolute_timeout(settings))
        max_age = int(absolute_timeout(settings).total_seconds())
        return Redirect(nxt, status_code=303, cookies=[session_cookie(settings, request, token, max_age)])

    @post("/signout", opt=PUBLIC, status_code=303)
    async def signout(self, request: Request, conn: NamedDependency[asyncpg.Connection]) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await users.close_session(conn, token_digest(token))
        response = Redirect("/signin", status_code=303)
        clear_session_cookie(response)
        return response

    @get("/lang/{lang:str}", opt=PUBLIC, status_code=303)
    async def switch_language(self, request: Request, lang: FromPath[str]) -> Response:
        target = local_path(request.query_params.get("next"))
        response = Redirect(target, status_code=303)
        if lang in LANGS:
            response.set_cookie(Cookie(key=LANG_COOKIE, value=lang, max_age=365 * 24 * 3600, path="/",
                                       samesite="lax", httponly=True))
        return response
