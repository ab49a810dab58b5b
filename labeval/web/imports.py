"""The imports pages: the import log, uploading a file through intake, one import's counts and
rejected rows, and the rejects as CSV.

An upload goes through the same path as the API's (labeval.api.imports.ingest_upload: copied in
chunks to a temporary file, read by labeval.ingest, counted in the metrics); the page adds only
the form, its errors and the redirect to the new import."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, Parameter
from litestar.response import Redirect, Template

from labeval.api.imports import CSV_MEDIA_TYPE, ingest_upload
from labeval.db.imports import first_coded_rejects, get_import, list_imports, rejects_csv
from labeval.ingest import KINDS, UnreadableFile
from labeval.web.i18n import Translator
from labeval.web.rejects import reject_reason
from labeval.web.session import IMPORT, VIEW, may
from labeval.web.templating import page, request_translator

PAGE_SIZE = 50
# Reject lines shown on an import's page; the CSV holds every one.
REJECTS_SHOWN = 500


def kind_labels(t: Translator) -> dict[str, str]:
    """What each kind of file holds, in the reader's language (the kind's own name follows it)."""
    return {
        "categories": t("Product categories"),
        "labs": t("Labs"),
        "items": t("Test items"),
        "samples": t("Sample records"),
        "results": t("Test results"),
        "pt": t("Proficiency testing results"),
        "timeliness": t("Report timeliness"),
        "complaints": t("Complaints against labs"),
        "audit_findings": t("Audit findings"),
        "report_findings": t("Report review findings"),
    }


def status_labels(t: Translator) -> dict[str, str]:
    return {"running": t("in progress"), "completed": t("completed"), "failed": t("failed")}


def source_labels(t: Translator) -> dict[str, str]:
    return {"cli": t("command line"), "api": t("API"), "web": t("web page"), "demo": t("demo data")}


class ImportPagesController(Controller):
    path = "/imports"
    include_in_schema = False

    @get("/", opt={"session_roles": VIEW})
    async def index(
        self, request: Request, conn: NamedDependency[asyncpg.Connection],
        after: FromQuery[Annotated[int | None, Parameter(ge=1)]] = None,
    ) -> Template:
        """The import log, newest first, and the upload form for those who may import."""
        return await self._index(request, conn, after=after)

    async def _index(self, request: Request, conn: asyncpg.Connection, *, after: int | None = None,
                     error: str | None = None, kind: str | None = None, status_code: int = 200) -> Template:
        t = request_translator(request)
        rows = await list_imports(conn, limit=PAGE_SIZE + 1, before=after)
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        return page(
            request, "imports.html", status_code=status_code, imports=rows, after=after,
            next_after=rows[-1].import_id if more else None, kinds=KINDS, kind_labels=kind_labels(t),
            status_labels=status_labels(t), source_labels=source_labels(t), may_import=may(request, IMPORT),
            error=error, chosen_kind=kind,
        )

    @post("/", opt={"session_roles": IMPORT}, status_code=303)
    async def upload(self, request: Request, state: State, conn: NamedDependency[asyncpg.Connection]) -> Response:
        """Import the uploaded file; on success go to its page, else show the form with the reason."""
        t = request_translator(request)
        form = await request.form()
        kind = form.get("kind")
        upload = form.get("file")
        if not isinstance(kind, str) or kind not in KINDS:
            return await self._index(request, conn, error=t("Choose what the file holds."), status_code=400)
        # A form sent with no file chosen carries an empty part with no name.
        if not isinstance(upload, UploadFile) or not upload.filename:
            return await self._index(request, conn, error=t("Choose a file to upload."), kind=kind, status_code=400)
        try:
            report = await ingest_upload(state, kind, upload, user=request.user.actor, source="web")
        except UnreadableFile as exc:
            return await self._index(
                request, conn, kind=kind, status_code=400,
                error=t("The file could not be read as a table: {problem}", problem=exc.problem),
            )
        return Redirect(f"/imports/{report.import_id}", status_code=303)

    @get("/{import_id:int}", opt={"session_roles": VIEW})
    async def detail(self, request: Request, conn: NamedDependency[asyncpg.Connection],
                     import_id: FromPath[int]) -> Template:
        t = request_translator(request)
        record = await get_import(conn, import_id)  # NotFound: the 404 page
        rejects = await first_coded_rejects(conn, import_id, REJECTS_SHOWN)
        return page(request, "import.html", record=record, rejects=rejects, shown_limit=REJECTS_SHOWN,
                    reject_reason=reject_reason,
                    kind_labels=kind_labels(t), status_labels=status_labels(t), source_labels=source_labels(t))

    @get("/{import_id:int}/rejects.csv", opt={"session_roles": VIEW})
    async def rejects_file(self, conn: NamedDependency[asyncpg.Connection], import_id: FromPath[int]) -> Response[bytes]:
        await get_import(conn, import_id)
        return Response(
            await rejects_csv(conn, import_id), media_type=CSV_MEDIA_TYPE,
            headers={"content-disposition": f'attachment; filename="import-{import_id}-rejects.csv"'},
        )
