"""Compile an email once per send, then merge it per recipient fast ([M23], [M24]).

Compile (once): MJML -> HTML (mrml), CSS inlined (css-inline), http(s) links rewritten to tracked-link slots, the
open pixel and the BU's postal address added, a text part generated (inscriptis) unless written. Merge fields are
Jinja2 in a ``SandboxedEnvironment``: only the data we pass is reachable, HTML output is escaped by default, unknown
fields are errors. Jinja tags are swapped for inert tokens while the HTML tools run, so they never mangle them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import css_inline
import jinja2
import mrml
import nh3
from inscriptis import get_text
from inscriptis.model.config import ParserConfig
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from loopline.prospects.models import STANDARD_FIELDS

PROSPECT_FIELDS = (*tuple(f for f in STANDARD_FIELDS), "id", "full_name", "score", "grade")
ACCOUNT_FIELDS = ("name", "website", "industry", "annual_revenue", "employees")
USER_FIELDS = ("first_name", "last_name", "full_name", "email", "phone")
BU_FIELDS = ("name", "postal_address", "website")
REQUIRED_MARKETING_VARS = ("unsubscribe_url", "preferences_url")
TOP_LEVEL = {"prospect", "account", "user", "bu", "unsubscribe_url", "preferences_url", "dynamic", "_links",
             "_open_url"}

_JINJA_RE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_TOKEN_RE = re.compile(r"LLJ(\d+)Z")
_LINK_TOKEN_RE = re.compile(r"LLK(\d+)Z")
_HREF_RE = re.compile(r"""href\s*=\s*(["'])(https?://[^"'\s<>]+)\1""", re.I)
_BODY_END_RE = re.compile(r"</body\s*>", re.I)
_INLINER = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
_TEXT_CONFIG = ParserConfig(display_links=True)


class RenderError(ValueError):
    """The email cannot be rendered: a syntax error, an unknown field, a missing required link..."""


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _env(autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(autoescape=autoescape, undefined=jinja2.StrictUndefined, finalize=_finalize,
                               auto_reload=False, cache_size=0)
    return env


HTML_ENV = _env(True)
TEXT_ENV = _env(False)


@dataclass
class Compiled:
    subject: str
    html: str
    text: str
    links: list[str] = field(default_factory=list)

    def as_snapshot(self) -> dict:
        return {"subject": self.subject, "html": self.html, "text": self.text, "links": self.links}

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> Compiled:
        return cls(subject=data["subject"], html=data["html"], text=data["text"], links=list(data.get("links", [])))


def sanitize_html(html: str) -> str:
    """Untrusted HTML (dynamic content variations, anything pasted from outside) cleaned with nh3."""
    return nh3.clean(html, attributes={"*": {"style", "class", "align", "width", "height", "title"},
                                       "a": {"href", "title", "target"}, "img": {"src", "alt", "width", "height"}},
                     url_schemes={"http", "https", "mailto"})


def _protect(source: str) -> tuple[str, list[str]]:
    saved: list[str] = []

    def keep(match: re.Match) -> str:
        saved.append(match.group(0))
        return f"LLJ{len(saved) - 1}Z"

    return _JINJA_RE.sub(keep, source), saved


def _restore(text: str, saved: list[str]) -> str:
    text = _TOKEN_RE.sub(lambda m: saved[int(m.group(1))] if int(m.group(1)) < len(saved) else m.group(0), text)
    return _LINK_TOKEN_RE.sub(lambda m: "{{ _links[" + str(int(m.group(1))) + "] }}", text)


def compile_email(*, subject: str, body: str, body_format: str, text_body: str = "", marketing: bool = True,
                  track: bool = True) -> Compiled:
    """Turn an authored email into Jinja sources for subject, HTML and text. Raises RenderError."""
    if not subject.strip():
        raise RenderError("The subject is empty.")
    protected, saved = _protect(body)
    if body_format == "mjml":
        try:
            html = mrml.to_html(protected).content
        except Exception as exc:  # mrml raises its own error types
            raise RenderError(f"The MJML is not valid: {exc}") from None
    else:
        html = protected
    try:
        html = _INLINER.inline(html)
    except Exception as exc:
        raise RenderError(f"The HTML could not be processed: {exc}") from None
    links: list[str] = []

    def slot(match: re.Match) -> str:
        url = match.group(2).replace("&amp;", "&")
        if not track:
            return match.group(0)
        links.append(url)
        return f'href="LLK{len(links)}Z"'

    html = _HREF_RE.sub(slot, html)
    footer = ""
    if marketing and "bu.postal_address" not in body:
        footer = ('<div style="font-size:12px;color:#666;text-align:center;padding:16px">'
                  "{{ bu.name }} · {{ bu.postal_address }}</div>")
    pixel = '<img src="{{ _open_url }}" width="1" height="1" alt="" style="display:block;border:0">' if track else ""
    if text_body.strip():
        text = text_body
    else:
        text = _restore(get_text(html, _TEXT_CONFIG).strip() + "\n", saved)
        if footer:
            text += "\n{{ bu.name }} · {{ bu.postal_address }}\n"
    html_out = _restore(html, saved)
    if _BODY_END_RE.search(html_out):
        html_out = _BODY_END_RE.sub(lambda m: footer + pixel + m.group(0), html_out, count=1)
    else:
        html_out += footer + pixel
    compiled = Compiled(subject=subject, html=html_out, text=text, links=links)
    check(compiled, marketing=marketing)
    return compiled


def _template(env: SandboxedEnvironment, source: str, what: str) -> jinja2.Template:
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{what}: {exc.message} (line {exc.lineno})") from None


_ALLOWED_ATTRS = {"prospect": set(PROSPECT_FIELDS), "account": set(ACCOUNT_FIELDS), "user": set(USER_FIELDS),
                  "bu": set(BU_FIELDS)}


def check(compiled: Compiled, *, marketing: bool, custom_fields: Iterable[str] = (),
          dynamic_keys: Iterable[str] | None = None) -> None:
    """Static checks on the merge fields: syntax, unknown names or fields, required links ([M24], [M27])."""
    allowed = {k: set(v) for k, v in _ALLOWED_ATTRS.items()}
    allowed["prospect"] |= set(custom_fields)
    used: set[str] = set()
    for what, source in (("Subject", compiled.subject), ("HTML", compiled.html), ("Text", compiled.text)):
        env = HTML_ENV if what == "HTML" else TEXT_ENV
        try:
            ast = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(f"{what}: {exc.message} (line {exc.lineno})") from None
        names = meta.find_undeclared_variables(ast)
        unknown = names - TOP_LEVEL
        if unknown:
            raise RenderError(f"{what}: unknown merge field {sorted(unknown)[0]!r}. Use prospect.*, account.*, "
                              "user.*, bu.*, unsubscribe_url, preferences_url.")
        used |= names
        for node in ast.find_all(nodes.Getattr):
            if isinstance(node.node, nodes.Name) and node.node.name in allowed and node.attr not in allowed[
                    node.node.name]:
                raise RenderError(f"{what}: unknown field {node.node.name}.{node.attr}")
        if dynamic_keys is not None:
            for call in ast.find_all(nodes.Call):
                if isinstance(call.node, nodes.Name) and call.node.name == "dynamic":
                    arg = call.args[0] if call.args else None
                    if not isinstance(arg, nodes.Const) or arg.value not in set(dynamic_keys):
                        raise RenderError(f"{what}: unknown dynamic content block {getattr(arg, 'value', '?')!r}")
    if marketing:
        missing = [v for v in REQUIRED_MARKETING_VARS if v not in used]
        if missing:
            raise RenderError("A marketing email needs an unsubscribe link and a preference-center link: add "
                              + " and ".join(f"{{{{ {m} }}}}" for m in missing) + ".")


# --- Per-recipient context ---------------------------------------------------------------------------------------


def prospect_context(row: Mapping[str, Any], custom_defaults: Mapping[str, str]) -> dict[str, Any]:
    data = {name: ("" if row.get(name) is None else row.get(name)) for name in PROSPECT_FIELDS if name in row}
    data.setdefault("id", row.get("id"))
    data["full_name"] = f"{row.get('first_name') or ''} {row.get('last_name') or ''}".strip()
    custom = row.get("custom") or {}
    for key, default in custom_defaults.items():
        value = custom.get(key)
        data[key] = default if value in (None, "", []) else value
    return data


def account_context(p: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": p.get("company", ""), "website": p.get("website", ""), "industry": p.get("industry", ""),
            "annual_revenue": p.get("annual_revenue", ""), "employees": p.get("employees", "")}


def user_context(user: Any) -> dict[str, Any]:
    if user is None:
        return dict.fromkeys(USER_FIELDS, "")
    get = (user.get if isinstance(user, Mapping) else lambda k, d="": getattr(user, k, d))
    first, last = get("first_name", "") or "", get("last_name", "") or ""
    return {"first_name": first, "last_name": last, "full_name": f"{first} {last}".strip(),
            "email": get("email", "") or "", "phone": get("phone", "") or ""}


def sample_prospect() -> dict[str, Any]:
    data: dict[str, Any] = dict.fromkeys(PROSPECT_FIELDS, "")
    data.update(id=0, email="jane.doe@example.com", first_name="Jane", last_name="Doe", company="Example Corp",
                full_name="Jane Doe", score=0, grade="D")
    return data


class Renderer:
    """Jinja templates compiled once; ``render`` merges one recipient (a few tens of microseconds)."""

    def __init__(self, compiled: Compiled, *, bu: Mapping[str, Any], dynamic_blocks: Mapping[str, Any] | None = None):
        self.compiled = compiled
        self.subject = _template(TEXT_ENV, compiled.subject, "Subject")
        self.html = _template(HTML_ENV, compiled.html, "HTML")
        self.text = _template(TEXT_ENV, compiled.text, "Text")
        self.bu = dict(bu)
        self.dynamic_blocks = dynamic_blocks or {}

    def _dynamic(self, prospect: Mapping[str, Any], html: bool) -> Callable[[str], Any]:
        def pick(key: str) -> Any:
            block = self.dynamic_blocks.get(key)
            if block is None:
                return ""
            value = str(prospect.get(block["field"], "") or "").strip().lower()
            chosen = block["variations"].get(value, block["default"])
            # Variations are sanitised with nh3 when loaded (dynamic_blocks), so they are safe to mark up.
            return Markup(chosen) if html else _strip_tags(chosen)  # noqa: S704

        return pick

    def render(self, *, prospect: Mapping[str, Any], user: Mapping[str, Any], unsubscribe_url: str,
               preferences_url: str, link: Callable[[int], str], open_url: str) -> tuple[str, str, str]:
        # Each tracked link is signed once per recipient and shared by the HTML and text parts.
        links = [""] + [link(i) for i in range(1, len(self.compiled.links) + 1)]
        base = {"prospect": prospect, "account": account_context(prospect), "user": user, "bu": self.bu,
                "unsubscribe_url": unsubscribe_url, "preferences_url": preferences_url, "_links": links,
                "_open_url": open_url}
        try:
            subject = self.subject.render(base, dynamic=self._dynamic(prospect, False))
            html = self.html.render(base, dynamic=self._dynamic(prospect, True))
            text = self.text.render(base, dynamic=self._dynamic(prospect, False))
        except jinja2.TemplateError as exc:
            raise RenderError(f"Could not merge: {exc}") from None
        return " ".join(subject.split()), html, text


def _strip_tags(html: str) -> str:
    return get_text(html).strip()


def dynamic_blocks(bu_id: int) -> dict[str, dict]:
    from .models import DynamicContent

    blocks = {}
    for dc in DynamicContent.objects.filter(bu_id=bu_id):
        variations = {str(v.get("value", "")).strip().lower(): sanitize_html(str(v.get("html", "")))
                      for v in dc.variations or [] if isinstance(v, dict)}
        blocks[dc.key] = {"field": dc.field, "variations": variations, "default": sanitize_html(dc.default_html)}
    return blocks
