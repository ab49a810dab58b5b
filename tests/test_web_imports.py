"""The imports pages against real PostgreSQL: the upload form through intake, one import's counts
and rejects, the rejects as CSV, the import log, who may upload, and the form's errors."""

from __future__ import annotations

import csv
import io
import re

import pytest
from litestar.testing import AsyncTestClient
from test_web_a11y import problems

from labeval.app import create_app
from labeval.config import Settings
from labeval.db.imports import rejects_csv
from labeval.db.pool import connect

from web_client import csrf_token, make_user, sign_in

HTML = {"Accept": "text/html"}

# One good category and one whose required name is empty: row 3 (the header is row 1).
ONE_BAD_ROW = "category_code,name\nBT-1,浏览器测试类别\nBT-2,\n".encode()


@pytest.fixture
async def site(db_url: str, app_settings: Settings):
    conn = await connect(db_url)
    try:
        for role in ("officer", "grader", "viewer"):
            await make_user(conn, f"{role}.one", role)
    finally:
        await conn.close()
    async with AsyncTestClient(create_app(app_settings)) as client:
        client.follow_redirects = False
        yield client


async def upload(client: AsyncTestClient, kind: str, name: str, content: bytes, *, token: bool = True):
    """The upload form as a browser sends it: multipart, with the page's CSRF token."""
    form = await client.get("/imports", headers=HTML)
    data = {"kind": kind, **({"_csrf_token": csrf_token(form.text)} if token else {})}
    return await client.post("/imports", data=data, files={"file": (name, content, "text/csv")}, headers=HTML)


def cell(html: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}">([^<]*)<', html)
    assert m, element_id
    return m.group(1)


async def test_an_upload_goes_through_intake_and_shows_its_rejects(site: AsyncTestClient, db_url: str) -> None:
    await sign_in(site, "grader.one")
    r = await upload(site, "categories", "cats.csv", ONE_BAD_ROW)
    assert r.status_code == 303
    import_id = int(r.headers["location"].removeprefix("/imports/"))
    conn = await connect(db_url)
    try:
        record = await conn.fetchrow(
            "SELECT kind, source, user_name, file_name, status, rows, accepted, rejected FROM imports WHERE import_id = $1",
            import_id)
        stored = await conn.fetch("SELECT category_code, name FROM product_categories WHERE category_code LIKE 'BT-%'")
        reject = await conn.fetchrow("SELECT row_number, column_name, reason FROM import_rejects WHERE import_id = $1",
                                     import_id)
        user_id = await conn.fetchval("SELECT user_id FROM users WHERE username = 'grader.one'")
        audit = await conn.fetchrow("SELECT actor, action, status FROM audit_log ORDER BY id DESC LIMIT 1")
        csv_bytes = await rejects_csv(conn, import_id)
    finally:
        await conn.close()
    assert dict(record) == {"kind": "categories", "source": "web", "user_name": f"user:{user_id}:grader.one",
                            "file_name": "cats.csv", "status": "completed", "rows": 2, "accepted": 1, "rejected": 1}
    # Only the good row was loaded; the bad one is kept aside with its column.
    assert [tuple(s) for s in stored] == [("BT-1", "浏览器测试类别")]
    assert (reject["row_number"], reject["column_name"]) == (3, "name")
    assert dict(audit) == {"actor": f"user:{user_id}:grader.one", "action": "POST /imports", "status": 303}

    page = await site.get(f"/imports/{import_id}", headers=HTML)
    assert page.status_code == 200
    assert (cell(page.text, "accepted-count"), cell(page.text, "rejected-count")) == ("1", "1")
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>",
                      page.text.split('id="rejects"')[1])
    assert rows == [("3", "name", "—", reject["reason"])]
    assert f'id="rejects-csv" href="/imports/{import_id}/rejects.csv"' in page.text

    download = await site.get(f"/imports/{import_id}/rejects.csv")
    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert f'filename="import-{import_id}-rejects.csv"' in download.headers["content-disposition"]
    assert download.content == csv_bytes
    lines = list(csv.reader(io.StringIO(download.content.decode("utf-8-sig"))))
    assert lines[0] == ["row", "column", "value", "reason", "raw"]
    assert lines[1][:2] == ["3", "name"] and lines[1][3] == reject["reason"]


async def test_the_log_lists_imports_newest_first_with_their_counts(site: AsyncTestClient) -> None:
    await sign_in(site, "officer.one")
    first = await upload(site, "categories", "one.csv", "category_code,name\nBT-1,一\n".encode())
    second = await upload(site, "categories", "two.csv", ONE_BAD_ROW)
    ids = [int(r.headers["location"].rsplit("/", 1)[1]) for r in (first, second)]
    log = (await site.get("/imports", headers=HTML)).text
    table = log.split('id="imports"')[1]
    assert table.index(f'href="/imports/{ids[1]}"') < table.index(f'href="/imports/{ids[0]}"')
    row = table.split(f'href="/imports/{ids[1]}"')[1].split("</tr>")[0]
    # rows, accepted, rejected (the rejected count is emphasised when there are rejects)
    assert re.findall(r'class="num">(?:<strong>)?(\d+)', row) == ["2", "1", "1"]
    # The second import re-sent BT-1 unchanged: a duplicate, neither accepted nor rejected again.
    assert "two.csv" in row and "one.csv" in table


async def test_only_importers_see_and_may_submit_the_form(site: AsyncTestClient) -> None:
    await sign_in(site, "viewer.one")
    log = await site.get("/imports", headers=HTML)
    assert log.status_code == 200 and 'id="upload"' not in log.text
    r = await site.post("/imports", data={"kind": "categories", "_csrf_token": csrf_token(log.text)},
                        files={"file": ("c.csv", ONE_BAD_ROW, "text/csv")}, headers=HTML)
    assert r.status_code == 403
    await site.post("/signout", data={"_csrf_token": csrf_token(log.text)}, headers=HTML)
    await sign_in(site, "grader.one")
    form = (await site.get("/imports", headers=HTML)).text
    assert '<form id="upload" method="post" action="/imports" enctype="multipart/form-data"' in form
    assert '<input id="file" name="file" type="file"' in form
    assert all(f'<option value="{k}"' in form for k in ("categories", "labs", "results", "report_findings"))


async def test_an_upload_without_the_csrf_token_is_refused(site: AsyncTestClient, db_url: str) -> None:
    await sign_in(site, "officer.one")
    r = await upload(site, "categories", "c.csv", ONE_BAD_ROW, token=False)
    assert r.status_code == 403
    conn = await connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM imports") == 0
    finally:
        await conn.close()


async def test_form_errors_are_shown_in_the_form(site: AsyncTestClient, db_url: str) -> None:
    await sign_in(site, "officer.one")
    # Not a table at all: the failed import stays in the log with its error.
    r = await upload(site, "categories", "notes.csv", b"just one line of prose\n")
    assert r.status_code == 400
    assert 'id="upload-error"' in r.text and "The file could not be read as a table" in r.text
    assert 'id="upload"' in r.text
    conn = await connect(db_url)
    try:
        failed = await conn.fetchrow("SELECT status, source, error FROM imports")
    finally:
        await conn.close()
    assert failed["status"] == "failed" and failed["source"] == "web" and failed["error"]
    # No file chosen: the browser sends an empty part without a name.
    form = await site.get("/imports", headers=HTML)
    empty = await site.post("/imports", data={"kind": "labs", "_csrf_token": csrf_token(form.text)},
                            files={"file": ("", b"", "application/octet-stream")}, headers=HTML)
    assert empty.status_code == 400 and "Choose a file to upload." in empty.text
    # The kind chosen stays chosen.
    assert '<option value="labs" selected>' in empty.text
    odd = await upload(site, "nonsense", "c.csv", ONE_BAD_ROW)
    assert odd.status_code == 400 and "Choose what the file holds." in odd.text


async def test_the_pages_in_chinese_and_an_unknown_import(site: AsyncTestClient) -> None:
    await sign_in(site, "officer.one")
    r = await upload(site, "categories", "c.csv", ONE_BAD_ROW)
    zh = {**HTML, "Accept-Language": "zh-CN"}
    detail = await site.get(r.headers["location"], headers=zh)
    assert '<html lang="zh-CN">' in detail.text
    for text in ("被拒收的行", "已接受", "下载全部被拒收的行（CSV）", "产品类别"):
        assert text in detail.text
    # The reject's reason too, the column kept (stored as "name: required, empty").
    assert "<td>name：必填，但为空</td>" in detail.text
    log = await site.get("/imports", headers=zh)
    assert "上传并导入" in log.text and "检验结果 (results)" in log.text
    missing = await site.get("/imports/999999", headers=HTML)
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert (await site.get("/imports/999999/rejects.csv", headers=HTML)).status_code == 404


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
async def test_the_imports_pages_meet_the_accessibility_basics(site: AsyncTestClient, lang: str) -> None:
    await sign_in(site, "officer.one")
    r = await upload(site, "categories", "c.csv", ONE_BAD_ROW)
    headers = {**HTML, "Accept-Language": lang}
    for path in ("/imports", r.headers["location"]):
        answer = await site.get(path, headers=headers)
        assert answer.status_code == 200 and problems(answer.text) == [], path
