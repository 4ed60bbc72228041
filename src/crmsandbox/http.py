"""Tiny request/response types shared by the REST handlers (no framework: the server is a lean ASGI app)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from crmsandbox.errors import ApiError

JSON_CT = "application/json;charset=UTF-8"


@dataclass
class Request:
    method: str
    path: str  # path below the API root for API routes, full path otherwise
    query_string: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    _query: dict[str, str] | None = None
    _json: Any = None
    _json_loaded: bool = False

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    def json(self) -> Any:
        """The body as JSON; malformed → 400 JSON_PARSER_ERROR."""
        if not self._json_loaded:
            self._json = parse_json(self.body)
            self._json_loaded = True
        return self._json


def parse_json(body: bytes) -> Any:
    if not body or not body.strip():
        raise ApiError(400, "JSON_PARSER_ERROR",
                       "No content to map due to end-of-input at [line:1, column:0]")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "JSON_PARSER_ERROR", "Invalid UTF-8 in request body") from None
    except json.JSONDecodeError as e:
        ch = e.doc[e.pos] if e.pos < len(e.doc) else ""
        what = f"Unexpected character ('{ch}' (code {ord(ch)}))" if ch else "Unexpected end-of-input"
        raise ApiError(400, "JSON_PARSER_ERROR",
                       f"{what}: {e.msg} at [line:{e.lineno}, column:{e.colno}]") from None


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-serialisable, or bytes (raw), or None (no body)
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON_CT

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode()


def error_response(err: ApiError) -> Response:
    return Response(err.status, err.body(), dict(err.headers))
