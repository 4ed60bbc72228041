"""A tiny sample website (3 static pages with the tracker and an embedded form) served on its own port/origin, so the
tracker, cookies, CORS and form embedding can be seen working cross-origin. Used by ``loopline demo-site`` and the
browser tests."""

from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGES = {
    "/": ("Northwind Widgets", "Welcome to Northwind, makers of fine widgets.",
          '<p><a href="/pricing.html?utm_source=demo&utm_medium=site&utm_campaign=spring">See pricing</a></p>'),
    "/pricing.html": ("Pricing · Northwind", "Widgets from $9. Volume discounts available.",
                      '<p><a href="/contact.html">Talk to sales</a></p>'),
    "/contact.html": ("Contact · Northwind", "Tell us about your project and we will get back to you.", "{form}"),
}


def render_page(path: str, *, base_url: str, tracker_key: str, form_key: str | None) -> str | None:
    if path not in PAGES:
        return None
    title, text, extra = PAGES[path]
    form = (f'<script src="{html.escape(base_url)}/f/{html.escape(form_key)}/embed.js"></script>'
            if form_key else "<p>(No form configured.)</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#111827}}
nav a{{margin-right:1rem}}</style>
<!-- Loopline tracking snippet -->
<script async src="{html.escape(base_url)}/t/{html.escape(tracker_key)}/tracker.js"></script>
</head><body>
<nav><a href="/">Home</a><a href="/pricing.html">Pricing</a><a href="/contact.html">Contact</a></nav>
<h1>{html.escape(title.split(" · ")[0])}</h1><p>{html.escape(text)}</p>
{extra.replace("{form}", form)}
</body></html>"""


def make_server(port: int, *, base_url: str, tracker_key: str, form_key: str | None,
                host: str = "127.0.0.1") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = render_page(self.path.split("?")[0], base_url=base_url, tracker_key=tracker_key,
                               form_key=form_key)
            status = 200 if body is not None else 404
            data = (body or "Not found").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):
            pass

    return ThreadingHTTPServer((host, port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def ensure_demo_assets(bu, *, origin: str):
    """The BU's tracker (allowing ``origin``) and a demo contact form; returns (tracker config, form)."""
    from loopline.forms.models import Form, FormField

    from .services import clean_origins, tracker_config

    config = tracker_config(bu)
    if config.allowed_origins and origin not in config.allowed_origins:
        config.allowed_origins = clean_origins([*config.allowed_origins, origin])
        config.save(update_fields=["allowed_origins"])
    form = Form.objects.filter(bu=bu, name="Demo contact form").first()
    if form is None:
        form = Form.objects.create(bu=bu, name="Demo contact form", submit_label="Contact me",
                                   thank_you_content="Thanks! A Northwind specialist will be in touch.",
                                   actions=[{"type": "add_tag", "tag": "demo-site"}])
        FormField.objects.bulk_create([
            FormField(form=form, position=0, prospect_field="email", label="Work email", kind="email", required=True),
            FormField(form=form, position=1, prospect_field="first_name", label="First name", required=True),
            FormField(form=form, position=2, prospect_field="company", label="Company", progressive=True),
        ])
    return config, form
