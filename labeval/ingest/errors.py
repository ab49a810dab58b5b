"""Errors raised by intake when a file cannot be read as a table at all."""

from __future__ import annotations


class IngestError(Exception):
    """Base class of intake errors."""


class UnreadableFile(IngestError):
    """The file cannot be read as a table: missing, not a table, unknown encoding, bad header.

    The message always names the file. Rows are never half-loaded when this is raised: it is
    raised before anything is written (or the import transaction is rolled back).
    """

    def __init__(self, file_name: str, problem: str) -> None:
        self.file_name = file_name
        self.problem = problem
        super().__init__(f"{file_name}: {problem}")


class MissingColumn(UnreadableFile):
    """A required column is absent from the header."""

    def __init__(self, file_name: str, kind: str, columns: list[str]) -> None:
        self.columns = columns
        names = ", ".join(columns)
        super().__init__(file_name, f"required column(s) missing for {kind}: {names}")


class UnknownKind(IngestError):
    def __init__(self, kind: str, known: list[str]) -> None:
        self.kind = kind
        super().__init__(f"unknown import kind {kind!r}; expected one of: {', '.join(known)}")
