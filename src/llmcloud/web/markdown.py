"""Rendering model answers as safe HTML.

An answer is untrusted text: a model repeats whatever its prompt or its
training put in front of it. markdown-it-py renders CommonMark with tables
and fenced code blocks, with raw HTML turned off, so tags in an answer show
as text. nh3 then keeps only the tags and attributes listed here, which
removes event-handler attributes and `javascript:` URLs even if the
renderer let one through. Links get rel="noopener noreferrer" and open in a
new tab. Images become plain links, so an answer cannot make the browser
fetch a URL, which could carry chat text to another server.

Rendering is pure Python. On input built to be slow, such as a long run of
`[`, it took up to about 15 µs per character when measured on a 2-core
machine. So pages and streams render in a worker thread (`render_answers`),
at most `RENDER_THREADS` at a time, and keep the results in a cache of at
most `CACHE_CHARS` characters. Text longer than `MARKDOWN_MAX_CHARS` shows
as plain text instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import anyio
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

MARKDOWN_MAX_CHARS = 50_000
"""Longer text is shown as plain text: about 12,000 tokens, longer than most answers."""
CACHE_CHARS = 32_000_000
PAGE_RENDER_CHARS = 500_000
"""Characters of Markdown rendered for one page at most, beyond those in the cache."""
RENDER_THREADS = 2


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
    """Render Markdown text to sanitised HTML, safe to insert into a page.

    Text longer than MARKDOWN_MAX_CHARS comes back escaped, as plain text.
    """
    if len(text) > MARKDOWN_MAX_CHARS:
        return plain_text(text)
    env: dict[str, Any] = {}
    return sanitize_html(_RENDERER.render(text, env))


def plain_text(text: str) -> str:
    """Return text escaped for a page, shown as written, without Markdown."""
    return f'<div class="plain">{html.escape(text, quote=False)}</div>'


class RenderCache:
    """Rendered answers by a digest of their text, the least recently used dropped first."""

    def __init__(self, max_chars: int, threads: int) -> None:
        self.max_chars = max_chars
        self.size = 0
        self._entries: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()
        # render_answers limits the threads of each event loop; this semaphore limits
        # them across event loops, and taken per answer it lets pages take turns.
        self._rendering = threading.BoundedSemaphore(threads)

    def get(self, text: str) -> str | None:
        """Return the cached rendering of the text, or None."""
        key = _digest(text)
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None:
                self._entries.move_to_end(key)
            return cached

    def render(self, text: str) -> str:
        cached = self.get(text)
        if cached is not None:
            return cached
        key = _digest(text)
        with self._rendering:
            rendered = render_markdown(text)
        if len(rendered) <= self.max_chars:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = rendered
                    self.size += len(rendered)
                while self.size > self.max_chars:
                    _, dropped = self._entries.popitem(last=False)
                    self.size -= len(dropped)
        return rendered


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


_CACHE = RenderCache(CACHE_CHARS, RENDER_THREADS)
# One limiter per event loop, because an anyio limiter belongs to the loop that first uses it.
_LIMITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


async def render_answers(texts: Sequence[str]) -> list[str]:
    """Render answers in worker threads, so that a long one does not hold up other requests.

    Answers in the cache come back at once. Of the others, at most PAGE_RENDER_CHARS
    characters are rendered as Markdown, and the rest show as plain text. A later call
    renders more of them, because the cache then holds the first ones.
    """
    rendered: list[str | None] = [_CACHE.get(text) for text in texts]
    budget = PAGE_RENDER_CHARS
    work: dict[str, str | None] = {}
    for index, text in enumerate(texts):
        if rendered[index] is not None or text in work:
            continue
        # Text over MARKDOWN_MAX_CHARS is only escaped, which is quick.
        cost = len(text) if len(text) <= MARKDOWN_MAX_CHARS else 0
        if cost <= budget:
            work[text] = None
            budget -= cost
        else:
            rendered[index] = plain_text(text)
    if work:
        results = await anyio.to_thread.run_sync(_render_all, list(work), limiter=_limiter())
        work = dict(zip(work, results, strict=True))
    return [
        html if html is not None else work[text] or ""
        for html, text in zip(rendered, texts, strict=True)
    ]


async def render_answer(text: str) -> str:
    """Render one answer in a worker thread; see render_answers."""
    return (await render_answers([text]))[0]


def _limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _LIMITERS.get(loop)
    if limiter is None:
        limiter = _LIMITERS[loop] = anyio.CapacityLimiter(RENDER_THREADS)
    return limiter


def _render_all(texts: Sequence[str]) -> list[str]:
    return [_CACHE.render(text) for text in texts]
