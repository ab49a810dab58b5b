"""Read CSV / XLSX / Parquet files and in-memory rows into batches of string columns.

Every cell is read as text: typing is validation's job, so that "001" stays "001" and a bad
number becomes a reject naming its row rather than a reader error. Each batch carries `_row`,
the row number as a spreadsheet shows it (the header is row 1, the first data row is row 2).

CSV: UTF-8 (with or without BOM) or GB18030, comma or tab separated (sniffed from the header
line). The file is streamed once to compute its SHA-256 and to check the encoding; a GB18030
file is transcoded to a temporary UTF-8 copy in chunks, so memory stays flat. Batches come from
polars' streaming CSV reader.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import polars as pl

from labeval.ingest.errors import MissingColumn, UnreadableFile
from labeval.ingest.spec import Spec, canonical_header

ROW = "_row"
# Spreadsheet numbering: header is row 1.
FIRST_DATA_ROW = 2
_CHUNK = 4 << 20


@dataclass
class Source:
    file_name: str
    format: str
    encoding: str | None
    checksum: str
    # canonical column -> header as written in the file
    columns: dict[str, str]
    # every header of the file, in order (renamed to canonical where recognised)
    all_columns: list[str]
    # original header of every column kept in the batches (for the raw row of a reject)
    raw_names: dict[str, str]
    estimated_rows: int | None
    _batches: object = None
    _cleanup: list[Path] = field(default_factory=list)

    def batches(self) -> Iterator[pl.DataFrame]:
        """Batches with canonical column names, every column String, plus `_row` (Int64)."""
        yield from self._batches()  # type: ignore[operator]

    def close(self) -> None:
        for p in self._cleanup:
            with contextlib.suppress(OSError):
                p.unlink()
        self._cleanup.clear()


def map_headers(headers: Sequence[str], spec: Spec, file_name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Return (rename original->canonical, canonical->original) for the kind's columns.

    Unknown headers are kept under their own name (extra columns are allowed). Two headers that
    mean the same column make the file ambiguous, so it is refused.
    """
    wanted = set(spec.names)
    rename: dict[str, str] = {}
    found: dict[str, str] = {}
    for h in headers:
        if h == ROW:
            raise UnreadableFile(file_name, f"column name {ROW!r} is reserved")
        c = canonical_header(h)
        if c is None or c not in wanted:
            continue
        if c in found:
            raise UnreadableFile(
                file_name, f"columns {found[c]!r} and {h!r} both mean {c!r}; keep one of them"
            )
        found[c] = h
        rename[h] = c
    missing = [c.name for c in spec.columns if c.needs_header and c.name not in found]
    if missing:
        raise MissingColumn(file_name, spec.kind, missing)
    return rename, found


def _detect_format(path: Path, head: bytes) -> str:
    ext = path.suffix.lower()
    if head.startswith(b"PK\x03\x04"):
        return "xlsx"
    if head.startswith(b"PAR1"):
        return "parquet"
    if ext in (".xlsx", ".xlsm", ".xls"):
        return "xlsx"
    if ext in (".parquet", ".pq"):
        return "parquet"
    return "csv"


def _scan_text(path: Path, name: str) -> tuple[str, str, int]:
    """One streaming pass: (sha256, encoding, line count). Raises UnreadableFile."""
    digest = hashlib.sha256()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    ok_utf8 = True
    lines = 0
    with path.open("rb") as f:
        first = True
        while chunk := f.read(_CHUNK):
            if first and b"\x00" in chunk[:65536]:
                raise UnreadableFile(name, "binary content: not a CSV text table")
            first = False
            digest.update(chunk)
            lines += chunk.count(b"\n")
            if ok_utf8:
                try:
                    utf8.decode(chunk)
                except UnicodeDecodeError:
                    ok_utf8 = False
        if ok_utf8:
            try:
                utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                ok_utf8 = False
    if ok_utf8:
        return digest.hexdigest(), "utf-8", lines
    # Not UTF-8: the only other encoding Chinese spreadsheets commonly export is GB18030
    # (a superset of GBK / GB2312). Check it decodes entirely before trusting it.
    gb = codecs.getincrementaldecoder("gb18030")()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                gb.decode(chunk)
            gb.decode(b"", final=True)
    except UnicodeDecodeError:
        raise UnreadableFile(name, "unknown text encoding (neither UTF-8 nor GB18030)") from None
    return digest.hexdigest(), "gb18030", lines


def _transcode(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(suffix=".csv", prefix="labeval-ingest-")
    dec = codecs.getincrementaldecoder("gb18030")()
    with os.fdopen(fd, "wb") as out, path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            out.write(dec.decode(chunk).encode("utf-8"))
        out.write(dec.decode(b"", final=True).encode("utf-8"))
    return Path(tmp)


def _sniff_separator(path: Path) -> str:
    with path.open("rb") as f:
        head = f.readline(1 << 20).decode("utf-8", errors="replace")
    return "\t" if head.count("\t") > head.count(",") else ","


def _drop_blank(df: pl.DataFrame) -> pl.DataFrame:
    data = [c for c in df.columns if c != ROW]
    if not data:
        return df
    return df.filter(~pl.all_horizontal([pl.col(c).is_null() for c in data]))


def _as_strings(lf: pl.LazyFrame, schema: pl.Schema) -> pl.LazyFrame:
    exprs = []
    for name, dtype in schema.items():
        if name == ROW:
            exprs.append(pl.col(ROW).cast(pl.Int64))
        elif dtype == pl.String:
            exprs.append(pl.col(name))
        elif dtype == pl.Datetime or dtype == pl.Date:
            # ISO text; validation parses the date part.
            exprs.append(pl.col(name).cast(pl.String))
        else:
            exprs.append(pl.col(name).cast(pl.String))
    return lf.select(exprs)


def _make_source(
    *,
    name: str,
    fmt: str,
    encoding: str | None,
    checksum: str,
    headers: list[str],
    spec: Spec,
    estimated: int | None,
    batches,
    cleanup: list[Path] | None = None,
) -> Source:
    rename, found = map_headers(headers, spec, name)
    all_columns = [rename.get(h, h) for h in headers]
    raw_names = {rename.get(h, h): h for h in headers}

    def gen() -> Iterator[pl.DataFrame]:
        try:
            for df in batches():
                df = df.rename(rename) if rename else df
                df = _drop_blank(df)
                if df.height:
                    yield df
        except (pl.exceptions.ComputeError, pl.exceptions.PolarsError, OSError) as e:
            raise UnreadableFile(name, f"not a well-formed {fmt.upper()} table: {e}") from e

    return Source(
        file_name=name,
        format=fmt,
        encoding=encoding,
        checksum=checksum,
        columns=found,
        all_columns=all_columns,
        raw_names=raw_names,
        estimated_rows=estimated,
        _batches=gen,
        _cleanup=cleanup or [],
    )


def _in_memory_source(
    df: pl.DataFrame, *, name: str, fmt: str, checksum: str | None, spec: Spec, batch_size: int, first_row: int
) -> Source:
    """A source over a table already in memory (a workbook sheet, a posted frame or JSON array)."""
    headers = list(df.columns)
    df = df.with_row_index(ROW, offset=first_row).with_columns(pl.col(ROW).cast(pl.Int64))
    df = _as_strings(df.lazy(), df.schema).collect()

    def batches() -> Iterator[pl.DataFrame]:
        for start in range(0, df.height, batch_size):
            yield df.slice(start, batch_size)

    return _make_source(
        name=name, fmt=fmt, encoding=None, checksum=checksum, headers=headers, spec=spec,
        estimated=df.height, batches=batches,
    )


def open_path(path: str | Path, spec: Spec, *, batch_size: int = 100_000, file_name: str | None = None) -> Source:
    """Open a file for reading; raises UnreadableFile (naming the file) when it is not a table."""
    path = Path(path)
    name = file_name or str(path)
    if not path.exists():
        raise UnreadableFile(name, "file not found")
    if not path.is_file():
        raise UnreadableFile(name, "not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise UnreadableFile(name, f"cannot open: {e.strerror}") from e
    if not head:
        raise UnreadableFile(name, "empty file (no header row)")
    fmt = _detect_format(path, head)
    if fmt == "csv":
        return _open_csv(path, name, spec, batch_size)
    if fmt == "xlsx":
        return _open_xlsx(path, name, spec, batch_size)
    return _open_parquet(path, name, spec, batch_size)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _open_csv(path: Path, name: str, spec: Spec, batch_size: int) -> Source:
    checksum, encoding, lines = _scan_text(path, name)
    cleanup: list[Path] = []
    read_path = path
    if encoding != "utf-8":
        read_path = _transcode(path)
        cleanup.append(read_path)
    sep = _sniff_separator(read_path)

    def scan() -> pl.LazyFrame:
        return pl.scan_csv(
            read_path,
            separator=sep,
            infer_schema=False,
            row_index_name=ROW,
            row_index_offset=FIRST_DATA_ROW,
            truncate_ragged_lines=False,
        )

    try:
        headers = [h for h in scan().collect_schema().names() if h != ROW]
    except pl.exceptions.PolarsError as e:
        for p in cleanup:
            p.unlink(missing_ok=True)
        raise UnreadableFile(name, f"not a CSV table: {e}") from e
    if not headers or headers == [""]:
        raise UnreadableFile(name, "no header row")

    def batches() -> Iterator[pl.DataFrame]:
        lf = scan().with_columns(pl.col(ROW).cast(pl.Int64))
        yield from lf.collect_batches(chunk_size=batch_size)

    try:
        return _make_source(
            name=name, fmt="csv", encoding=encoding, checksum=checksum, headers=headers, spec=spec,
            estimated=max(lines - 1, 0), batches=batches, cleanup=cleanup,
        )
    except Exception:
        for p in cleanup:
            p.unlink(missing_ok=True)
        raise


def _open_xlsx(path: Path, name: str, spec: Spec, batch_size: int) -> Source:
    try:
        # The first sheet; every cell as text (infer_schema_length=0), keeping empty rows so
        # that row numbers match what the user sees in the spreadsheet.
        df = pl.read_excel(
            path, engine="calamine", infer_schema_length=0, drop_empty_rows=False, drop_empty_cols=False,
            raise_if_empty=False,
        )
    except Exception as e:  # fastexcel raises its own exception types
        raise UnreadableFile(name, f"not a readable XLSX workbook: {e}") from e
    return _in_memory_source(df, name=name, fmt="xlsx", checksum=_file_sha256(path), spec=spec,
                             batch_size=batch_size, first_row=FIRST_DATA_ROW)


def _open_parquet(path: Path, name: str, spec: Spec, batch_size: int) -> Source:
    try:
        lf = pl.scan_parquet(path, row_index_name=ROW, row_index_offset=FIRST_DATA_ROW)
        schema = lf.collect_schema()
        n = pl.scan_parquet(path).select(pl.len()).collect().item()
    except Exception as e:
        raise UnreadableFile(name, f"not a readable Parquet file: {e}") from e
    headers = [h for h in schema.names() if h != ROW]

    def batches() -> Iterator[pl.DataFrame]:
        yield from _as_strings(lf, schema).collect_batches(chunk_size=batch_size)

    return _make_source(
        name=name, fmt="parquet", encoding=None, checksum=_file_sha256(path), headers=headers, spec=spec,
        estimated=n, batches=batches,
    )


def open_frame(
    frame_or_rows: pl.DataFrame | pl.LazyFrame | list[dict], spec: Spec, *, file_name: str | None,
    batch_size: int = 100_000,
) -> Source:
    """In-memory input: a polars frame or a list of JSON objects (the API's JSON body)."""
    name = file_name or "<json>"
    if isinstance(frame_or_rows, pl.LazyFrame):
        frame_or_rows = frame_or_rows.collect()
    if isinstance(frame_or_rows, pl.DataFrame):
        df = frame_or_rows
        fmt = "frame"
        checksum = hashlib.sha256(df.write_csv().encode("utf-8")).hexdigest()
    elif isinstance(frame_or_rows, list):
        rows = frame_or_rows
        if not all(isinstance(r, dict) for r in rows):
            raise UnreadableFile(name, "a JSON body must be an array of objects (one per row)")
        fmt = "json"
        checksum = hashlib.sha256(msgspec.json.encode(rows, order="sorted")).hexdigest()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        if not rows:
            df = pl.DataFrame(schema={k: pl.String for k in keys})
        else:
            try:
                df = pl.from_dicts(rows, schema={k: pl.String for k in keys}, strict=False)
            except Exception as e:
                raise UnreadableFile(name, f"rows cannot be read as a table: {e}") from e
    else:
        raise UnreadableFile(name, f"expected a table or a list of rows, got {type(frame_or_rows).__name__}")
    # A JSON array has no header line: its rows are numbered from 1 (the object's position).
    return _in_memory_source(df, name=name, fmt=fmt, checksum=checksum, spec=spec, batch_size=batch_size,
                             first_row=1 if fmt == "json" else FIRST_DATA_ROW)
