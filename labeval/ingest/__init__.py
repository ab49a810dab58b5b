"""Data intake: CSV / XLSX / Parquet / JSON into reference, result and indicator tables.

See docs/intake.md for the columns of each kind and the Chinese header aliases.
"""

from labeval.ingest.errors import IngestError, MissingColumn, UnknownKind, UnreadableFile
from labeval.ingest.kinds import SPECS
from labeval.ingest.pipeline import ingest_frame, ingest_path
from labeval.ingest.report import ImportReport, Reject, render, report_json

KINDS = tuple(SPECS)

__all__ = [
    "KINDS",
    "ImportReport",
    "IngestError",
    "MissingColumn",
    "Reject",
    "UnknownKind",
    "UnreadableFile",
    "ingest_frame",
    "ingest_path",
    "render",
    "report_json",
]
