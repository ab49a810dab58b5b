"""Rendering a page: the Jinja environment (package templates, autoescaping, strict undefined) and
`page()`, which gives every template the request's language, translator and signed-in user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from litestar import Request
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.template.config import TemplateConfig

from labeval.web.i18n import LANG_COOKIE, LANGS, Translator, negotiate, translator

TEMPLATE_DIR = Path(__file__).parent / "templates"


def request_translator(request: Request) -> Translator:
    """The request's language: cached on the request so a page and its parts agree."""
    t = request.scope.get("state", {}).get("translator")
    if t is None:
        t = translator(negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")))
        request.scope.setdefault("state", {})["translator"] = t
    return t


@pass_context
def _fmt_number(ctx: Context, value: Any, digits: int | None = None) -> str:
    return ctx["t"].number(value, digits)


@pass_context
def _fmt_percent(ctx: Context, value: Any, digits: int = 1) -> str:
    return ctx["t"].percent(value, digits)


@pass_context
def _fmt_date(ctx: Context, value: Any) -> str:
    return ctx["t"].date(value)


@pass_context
def _fmt_datetime(ctx: Context, value: Any) -> str:
    return ctx["t"].datetime(value)


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(("html", "svg", "xml"), default_for_string=True),
        # A misspelt variable is an error in tests, not an empty cell on a page.
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt_number=_fmt_number, fmt_percent=_fmt_percent, fmt_date=_fmt_date,
                       fmt_datetime=_fmt_datetime)
    env.globals["LANGS"] = LANGS
    return env


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment()))


def page(request: Request, name: str, *, status_code: int = 200, headers: dict[str, str] | None = None,
         **context: Any) -> Template:
    """A page rendered with the request's translator (`_`, `ngettext`, `t`), language and user."""
    t = request_translator(request)
    user = request.scope.get("user")
    return Template(
        template_name=name,
        context={"_": t, "ngettext": t.ngettext, "t": t, "lang": t.lang, "user": user if hasattr(user, "username") else None,
                 "path": request.url.path, "query": request.url.query, **context},
        status_code=status_code,
        headers=headers,
    )
