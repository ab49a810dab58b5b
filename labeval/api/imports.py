"""Imports over HTTP: upload a file (multipart) or post a JSON array; read the import log,
rejects (JSON or CSV), reference-data changes and a result's version history."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import asyncpg
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, NotFoundException, SerializationException
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.status_codes import HTTP_201_CREATED

from labeval.api.auth import IMPORT, READ_WITH_GRADER
from labeval.api.paging import After, Limit, cut
from labeval.db.imports import (
    ChangeRecord,
    ImportPage,
    ImportRecord,
    RejectRecord,
    get_import,
    list_changes,
    list_imports,
    list_rejects,
    rejects_csv,
)
from labeval.db.results import ResultVersion, result_history
from labeval.ingest.errors import UnknownKind, UnreadableFile
from labeval.ingest.kinds import resolve_kind
from labeval.ingest.pipeline import ingest_frame, ingest_path
from labeval.ingest.report import ImportReport
from labeval.metrics import Metrics

_CHUNK = 1 << 20


CSV_MEDIA_TYPE = "text/csv; charset=utf-8"
RejectFormat = Literal["json", "csv"]


@dataclass
class RejectsOperation(Operation):
    """The rejects route answers JSON or, with ?format=csv, CSV: both in its OpenAPI entry."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse) and ok.content is not None:
            ok.content[CSV_MEDIA_TYPE] = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))


class ImportController(Controller):
    path = "/api/v1/imports"
    tags = ["imports"]

    @post("/{kind:str}", status_code=HTTP_201_CREATED, opt={"roles": IMPORT})
    async def create(self, request: Request, state: State, kind: FromPath[str]) -> ImportReport:
        """Import rows of KIND: a multipart upload (field `file`: CSV, XLSX or Parquet) or a JSON
        array of objects whose keys are the column headers. 201 with the import report (which
        may list rejects); 400 when the input is not a readable table; 404 for an unknown kind.
        A failed import stays in the import log with its error."""
        try:
            # The canonical name labels the metrics (aliases and spellings map to one series).
            report_kind = resolve_kind(kind).kind
        except UnknownKind as e:
            raise NotFoundException(str(e)) from e
        # Who is importing: the API key that passed the guard.
        user = request.user.actor
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ClientException("multipart upload needs a `file` field")
            rows = None
        else:
            upload = None
            try:
                rows = await request.json()
            except SerializationException as e:
                raise ClientException(f"body is not JSON: {e}") from e
            if not isinstance(rows, list):
                raise ClientException("a JSON body must be an array of objects (one per row)")
        try:
            if upload is not None:
                return await ingest_upload(state, kind, upload, user=user, source="api")
            return await _counted(state, report_kind, lambda conn: ingest_frame(
                conn, kind, rows, file_name=None, source="api", user=user))
        except UnreadableFile as e:
            raise ClientException(str(e)) from e

    @get("/", opt={"roles": READ_WITH_GRADER})
    async def list_(
        self, conn: NamedDependency[asyncpg.Connection], kind: FromQuery[str | None] = None,
        limit: Limit = 50,
        after: After = None,
    ) -> ImportPage:
        """The import log, newest first; `after` is the `next` of the page before."""
        rows = await list_imports(conn, kind=kind, limit=limit + 1, before=after)
        items, nxt = cut(rows, limit, lambda r: r.import_id)
        return ImportPage(items=items, next=nxt)

    @get("/{import_id:int}", opt={"roles": READ_WITH_GRADER})
    async def detail(self, conn: NamedDependency[asyncpg.Connection], import_id: FromPath[int]) -> ImportRecord:
        return await get_import(conn, import_id)

    @get("/{import_id:int}/rejects", opt={"roles": READ_WITH_GRADER}, operation_class=RejectsOperation)
    async def rejects(
        self, conn: NamedDependency[asyncpg.Connection], import_id: FromPath[int],
        format: FromQuery[RejectFormat] = "json", limit: FromQuery[Limit | None] = None,
        offset: FromQuery[Annotated[int, QueryParameter(ge=0)]] = 0,
    ) -> Response[list[RejectRecord]]:
        """Every rejected row with its reasons; ?format=csv for a CSV download."""
        await get_import(conn, import_id)  # NotFound: 404
        if format == "csv":
            return Response(
                await rejects_csv(conn, import_id),
                media_type=CSV_MEDIA_TYPE,
                headers={"content-disposition": f'attachment; filename="import-{import_id}-rejects.csv"'},
            )
        return Response(await list_rejects(conn, import_id, limit=limit, offset=offset))

    @get("/{import_id:int}/changes", opt={"roles": READ_WITH_GRADER})
    async def changes(self, conn: NamedDependency[asyncpg.Connection], import_id: FromPath[int]) -> list[ChangeRecord]:
        """Reference-data rows this import changed in place (before and after)."""
        return await list_changes(conn, import_id)

    @get("/results/history", opt={"roles": READ_WITH_GRADER})
    async def history(
        self, conn: NamedDependency[asyncpg.Connection], sample_code: FromQuery[str], item_code: FromQuery[str],
        role: FromQuery[str], lab_code: FromQuery[str],
    ) -> list[ResultVersion]:
        """Every version of one result, oldest first."""
        return await result_history(conn, sample_code, item_code, role, lab_code)


async def ingest_upload(state: State, kind: str, upload: UploadFile, *, user: str | None, source: str) -> ImportReport:
    """An uploaded file through intake, as the API and the imports page take one: copied in
    chunks to a temporary file (never whole in memory), read by ingest_path, counted in the
    metrics. Raises UnknownKind and UnreadableFile (the failed import stays in the log)."""
    report_kind = resolve_kind(kind).kind
    name = upload.filename or "upload"

    async def work(conn: asyncpg.Connection) -> ImportReport:
        # Keep the suffix: it helps tell CSV from XLSX/Parquet (content is sniffed too).
        fd, tmp = tempfile.mkstemp(suffix=Path(name).suffix[:16], prefix="labeval-upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := await upload.read(_CHUNK):
                    out.write(chunk)
            return await ingest_path(conn, kind, tmp, source=source, user=user, file_name=name)
        finally:
            Path(tmp).unlink(missing_ok=True)
            await upload.close()

    return await _counted(state, report_kind, work)


async def _counted(state: State, report_kind: str,
                   work: Callable[[asyncpg.Connection], Awaitable[ImportReport]]) -> ImportReport:
    # The import is its own unit of work on a connection of its own, not the per-request
    # transaction: a failure rolls the import back but must keep its `failed` record.
    metrics: Metrics = state.metrics
    async with state.pool.acquire() as conn:
        try:
            report = await work(conn)
        except BaseException:
            metrics.import_failed(report_kind)
            raise
    metrics.import_done(report_kind, accepted=report.accepted, rejected=report.rejected,
                        duplicates=report.duplicates)
    return report
