"""Visual builder (GrapesJS + grapesjs-mjml) server side: the page loads the builder from the vendored npm packages,
MJML saved from the builder keeps its merge fields, and the server still refuses what cannot render ([M23], [M24])."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db



def _form(body: str, **extra) -> dict:
    data = {
        "name": "Builder email",
        "purpose": "marketing",
        "subject": "Hi {{ prospect.first_name }}",
        "sender": "fixed",
        "from_email": "news@acme.test",
        "body_format": "mjml",
        "body": body,
        "editor": "builder",
    }
    data.update(extra)
    return data


# What the browser's serialiser does to merge fields in attributes: quotes and ampersands become entities.
ESCAPED = """<mjml><mj-body><mj-section><mj-column>
<mj-text>Hello {{ prospect.first_name|default(&quot;there&quot;, true) }} &amp; welcome
{% if prospect.company != &#039;&#039; and prospect.score &gt;= 0 %}from {{ account.name }}{% endif %}</mj-text>
<mj-button href="https://example.com/?a=1&amp;b=2">Go</mj-button>
<mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a> <a href="{{ preferences_url }}">Preferences</a></mj-text>
</mj-column></mj-section></mj-body></mjml>"""


def test_merge_fields_are_restored_but_text_entities_are_kept():
    from loopline.emails import services

    out = services.mjml_from_builder(ESCAPED)
    assert (
        '{{ prospect.first_name|default("there", true) }} &amp; welcome' in out
    )  # text outside tags untouched
    assert "{% if prospect.company != '' and prospect.score >= 0 %}" in out
    assert "https://example.com/?a=1&amp;b=2" in out


def test_saving_from_the_builder_restores_merge_fields_and_renders(bu, client_as, make_prospects):
    from loopline.emails import services
    from loopline.emails.models import Email

    response = client_as.post("/emails/new/", _form(ESCAPED, then="edit"))
    email = Email.objects.get(bu=bu, name="Builder email")
    assert response.status_code == 302 and response["Location"] == f"/emails/{email.pk}/?editor=builder"
    assert '{{ prospect.first_name|default("there", true) }}' in email.body
    (p,) = make_prospects(1, company="Initech")
    subject, html, _text = services.preview(None, email, p)
    assert subject == "Hi P0" and "Hello P0 &amp; welcome" in html and "from Initech" in html
    # Reopened in builder mode.
    page = client_as.get(response["Location"])
    assert b'data-editor="builder"' in page.content


def test_code_editor_saves_the_body_as_written(bu, client_as):
    from loopline.emails.models import Email

    # Only the builder's output is un-escaped; a body from the code editor is stored exactly as written, so an
    # entity inside a merge field stays (and here makes the template invalid).
    response = client_as.post("/emails/new/", _form(ESCAPED, editor="code"))
    assert response.status_code == 200 and not Email.objects.exists()
    written = ESCAPED.replace("&quot;", '"').replace("&#039;", "'").replace("&gt;", ">")
    client_as.post("/emails/new/", _form(written, editor="code"))
    assert Email.objects.get(bu=bu).body == written.strip()


def test_builder_save_that_cannot_render_is_refused_with_the_error(bu, client_as):
    from loopline.emails.models import Email

    broken = (
        "<mjml><mj-body><mj-section><mj-column><mj-text>{{ prospect.shoe_size }}</mj-text>"
        "</mj-column></mj-section></mj-body></mjml>"
    )
    response = client_as.post("/emails/new/", _form(broken))
    assert response.status_code == 200
    content = response.content.decode()
    assert "unknown field prospect.shoe_size" in content
    assert 'data-editor="builder"' in content  # the builder stays open with the posted MJML
    assert "prospect.shoe_size" in content
    missing_links = (
        "<mjml><mj-body><mj-section><mj-column><mj-text>Hi</mj-text></mj-column></mj-section>"
        "</mj-body></mjml>"
    )
    response = client_as.post("/emails/new/", _form(missing_links))
    assert "needs an unsubscribe link" in response.content.decode()
    assert not Email.objects.exists()


def test_edit_page_loads_builder_assets_from_npm_packages(bu, client_as):
    page = client_as.get("/emails/new/").content.decode()
    for asset in (
        "/static/vendor/grapesjs/dist/grapes.min.js",
        "/static/vendor/grapesjs-mjml/dist/index.js",
        "/static/vendor/grapesjs/dist/css/grapes.min.css",
        "/static/emails/builder.js",
    ):
        assert asset in page
    # No inline script other than JSON data blocks (a CSP without 'unsafe-inline' keeps the editor working).
    import re

    for tag in re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page):
        assert 'type="application/json"' in tag, tag
    node_modules = Path(settings.NODE_MODULES_DIR)
    if node_modules.exists():  # installed by scripts/bootstrap.sh from package-lock.json
        assert (node_modules / "grapesjs" / "dist" / "grapes.min.js").exists()
        assert (node_modules / "grapesjs-mjml" / "dist" / "index.js").exists()
