"""A short way through the middleware stack for tracking hits, the one endpoint that takes thousands of requests a
second ([M2], issue #6).

A hit is a cookie-less, CSRF-exempt JSON POST answered by ``views_public.hit``: sessions, users, CSRF, messages, htmx
and the business-unit lookup never apply to it, yet running them (and resolving the URL) was a large share of each
request's time. Placed after the security, static-file and request-log middleware, so hits keep their security
headers, HTTPS redirect, request id and metrics.
"""

from __future__ import annotations

from . import capture, views_public


class TrackingHitFastPath:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = request.path_info
        # /t/<key>/hit — the same shape as the URLconf's route (a key without slashes).
        if path.startswith("/t/") and path.endswith("/hit"):
            key = path[3:-4]
            if key and "/" not in key:
                # Announced to the group-commit writer: a commit about to start waits briefly for this request's rows.
                capture.writer.arrive()
                try:
                    response = views_public.hit(request, key)
                finally:
                    capture.writer.depart()
                # CommonMiddleware's job on the normal path: keep-alive clients need the length.
                response["Content-Length"] = str(len(response.content))
                return response
        return self.get_response(request)
