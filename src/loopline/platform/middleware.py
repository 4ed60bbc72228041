from __future__ import annotations

import time
import uuid

import structlog
from prometheus_client import Counter, Histogram

from .logging import get_logger

log = get_logger("loopline.request")

HTTP_REQUESTS = Counter("loopline_http_requests_total", "HTTP requests", ["method", "status"])
HTTP_LATENCY = Histogram(
    "loopline_http_request_seconds",
    "HTTP request duration",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RequestLogMiddleware:
    """Binds a request id to every log line and records request metrics."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        HTTP_REQUESTS.labels(request.method, str(response.status_code)).inc()
        HTTP_LATENCY.observe(elapsed)
        response["X-Request-Id"] = request_id
        if response.status_code >= 500:
            log.error("request failed", path=request.path, status=response.status_code, ms=round(elapsed * 1000, 1))
        return response
