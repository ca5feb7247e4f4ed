"""Rendering model answers as safe HTML.

An answer is untrusted text: a model repeats whatever its prompt or its
training put in front of it. markdown-it-py renders CommonMark with tables
and fenced code blocks, with raw HTML turned off, so tags in an answer show
as text. nh3 then keeps only the tags and attributes listed here, which
removes event-handler attributes and `javascript:` URLs even if the
renderer let one through. Links get rel="noopener noreferrer" and open in a
new tab. Images become plain links, so an answer cannot make the browser
fetch a URL, which could carry chat text to another server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererProtocol
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

ALLOWED_TAGS = frozenset(
    {
        "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
        "hr", "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead",
        "tr", "ul",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "td": {"style"},
    "th": {"style"},
}
ALLOWED_URL_SCHEMES = frozenset({"http", "https", "mailto"})


def _render_image_as_link(
    renderer: RendererProtocol,
    tokens: Sequence[Token],
    index: int,
    options: OptionsDict,
    env: EnvType,
) -> str:
    token = tokens[index]
    source = str(token.attrGet("src") or "")
    label = token.content or source
    return f'<a href="{escapeHtml(source)}">{escapeHtml(label)}</a>'


def _build_renderer() -> MarkdownIt:
    renderer = MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")
    renderer.add_render_rule("image", _render_image_as_link)
    return renderer


_RENDERER = _build_renderer()


def sanitize_html(html: str) -> str:
    """Keep only the allowed tags, attributes and URL schemes of an HTML fragment."""
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(ALLOWED_URL_SCHEMES),
        filter_style_properties={"text-align"},
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )


def render_markdown(text: str) -> str:
    """Render Markdown text to sanitised HTML, safe to insert into a page."""
    env: dict[str, Any] = {}
    return sanitize_html(_RENDERER.render(text, env))
