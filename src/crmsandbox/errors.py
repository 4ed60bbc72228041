"""Error types shared by the storage layer and the HTTP layer."""

from __future__ import annotations

from typing import Any


class RecordError(Exception):
    """One record-level error (``statusCode`` in collections, ``errorCode`` in single-record answers)."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or []
        self.status = status
        self.record_id: str | None = None  # the record a collection item failed on, when known

    def as_api(self) -> dict[str, Any]:
        d: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields:
            d["fields"] = self.fields
        return d

    def as_collection(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}


class RecordErrors(Exception):
    """Several record-level errors raised together (e.g. a required field and a bad email)."""

    def __init__(self, errors: list[RecordError]):
        super().__init__("; ".join(e.message for e in errors))
        self.errors = errors
        self.record_id: str | None = None  # the record a collection item failed on, when known

    @property
    def status(self) -> int:
        return self.errors[0].status


class ApiError(Exception):
    """A request-level error answered as ``[{"message", "errorCode"}]`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields
        self.headers = headers or {}

    def body(self) -> list[dict[str, Any]]:
        d: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            d["fields"] = self.fields
        return [d]


def not_found() -> ApiError:
    return ApiError(404, "NOT_FOUND", "The requested resource does not exist")
