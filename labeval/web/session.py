"""Who is signed in: the session cookie, the guard of every page, and the roles pages declare.

A page handler declares `opt={"session_roles": (…)}` (admin may open every page). `signed_in` is
the app-wide guard for those handlers (API routes are left to labeval.api.auth): no live session
→ SignInRequired (answered by a redirect to the sign-in page), a role that may not open the page
→ PageForbidden (answered by a 403 page).
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.handlers import BaseRouteHandler

from labeval.config import Settings
from labeval.db import users
from labeval.passwords import token_digest

SESSION_COOKIE = "labeval_session"

# Who may open a page, by what it does (admin opens every page).
VIEW = ("officer", "viewer", "grader")
OFFICER = ("officer",)
IMPORT = ("officer", "grader")
START_RUN = ("officer", "grader")


class SignInRequired(Exception):
    """No live session: the answer sends the browser to the sign-in page, then back."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in first")
        self.next_path = next_path


class PageForbidden(Exception):
    """A signed-in person whose role may not open or submit this page."""


def idle_timeout(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.session_idle_minutes)


def absolute_timeout(settings: Settings) -> timedelta:
    return timedelta(hours=settings.session_hours)


def secure_cookies(settings: Settings, request: ASGIConnection) -> bool:
    """Secure cookies when served over TLS: directly (https) or, with LABEVAL_SECURE_COOKIES=auto,
    behind a proxy that says so; `on` forces them (e.g. a TLS proxy that sends no header)."""
    if settings.secure_cookies == "on":
        return True
    if settings.secure_cookies == "off":
        return False
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def session_cookie(settings: Settings, request: Request, token: str, max_age: int) -> Cookie:
    return Cookie(key=SESSION_COOKIE, value=token, max_age=max_age, path="/", httponly=True, samesite="lax",
                  secure=secure_cookies(settings, request))


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def allowed(role: str | None, roles: tuple[str, ...]) -> bool:
    """The one rule of who may: a listed role, or admin (who may everything)."""
    return role == "admin" or role in roles


def may(request: ASGIConnection, roles: tuple[str, ...]) -> bool:
    """Whether the signed-in person may do what `roles` guard (e.g. to show a form or not)."""
    return allowed(getattr(request.scope.get("user"), "role", None), roles)


def _safe_next(path: str, query: str) -> str:
    return path + (f"?{query}" if query else "")


async def signed_in(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The guard of every page that declares session_roles."""
    roles = handler.opt.get("session_roles")
    if roles is None:
        return
    token = connection.cookies.get(SESSION_COOKIE)
    user = None
    if token:
        state = connection.app.state
        pool: asyncpg.Pool = state.pool
        async with pool.acquire() as conn:
            user = await users.session_user(conn, token_digest(token), idle=idle_timeout(state.settings))
    if user is None:
        raise SignInRequired(_safe_next(connection.url.path, connection.url.query))
    connection.scope["user"] = user
    if not allowed(user.role, roles):
        raise PageForbidden(user.role)
