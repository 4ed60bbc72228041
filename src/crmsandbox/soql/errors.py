"""SOQL errors, shaped like Salesforce's REST error bodies."""

from __future__ import annotations


class SoqlError(Exception):
    """A query error. ``error_code`` / ``message`` go straight into the REST error body
    ``[{"message": message, "errorCode": error_code}]`` (HTTP 400).

    ``detail`` is the bare reason (e.g. ``unexpected token: 'FROMM'``); ``message`` is what Salesforce sends:
    for errors tied to a position, the offending query line is echoed with a caret and
    ``ERROR at Row:<r>:Column:<c>`` (1-based) before the detail.
    """

    def __init__(
        self,
        error_code: str,
        message: str,
        *,
        detail: str | None = None,
        row: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.detail = detail if detail is not None else message
        self.row = row
        self.column = column

    def __str__(self) -> str:
        return f"{self.error_code}: {self.message}"

    def to_json(self) -> list[dict]:
        return [{"message": self.message, "errorCode": self.error_code}]


def located_error(error_code: str, detail: str, text: str | None, pos: int | None) -> SoqlError:
    """Build an error whose message echoes the query line at ``pos`` the way Salesforce does."""
    if text is None or pos is None:
        return SoqlError(error_code, detail, detail=detail)
    pos = max(0, min(pos, len(text)))
    line_start = text.rfind("\n", 0, pos) + 1
    line_end = text.find("\n", pos)
    if line_end < 0:
        line_end = len(text)
    row = text.count("\n", 0, pos) + 1
    col = pos - line_start + 1
    line = text[line_start:line_end]
    message = f"\n{line}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{detail}"
    return SoqlError(error_code, message, detail=detail, row=row, column=col)
