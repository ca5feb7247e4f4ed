"""Rendering answers as sanitised Markdown."""

from __future__ import annotations

import asyncio
import re

import pytest

from llmcloud.web import markdown
from llmcloud.web.markdown import (
    MARKDOWN_MAX_CHARS,
    RenderCache,
    render_answers,
    render_markdown,
    sanitize_html,
)


def test_markdown_renders_code_block() -> None:
    html = render_markdown("```python\nprint('<b>')\n```")
    assert html == "<pre><code>print('&lt;b&gt;')\n</code></pre>\n"


def test_markdown_renders_table() -> None:
    html = render_markdown("| a | b |\n|--:|---|\n| 1 | 2 |")
    assert '<th style="text-align:right">a</th>' in html
    assert "<td>2</td>" in html


def test_markdown_link_gets_rel_and_target() -> None:
    html = render_markdown("[docs](https://example.org)")
    assert 'rel="noopener noreferrer"' in html
    assert 'target="_blank"' in html


def test_markdown_image_becomes_link() -> None:
    html = render_markdown("![cat](https://example.org/cat.png)")
    assert "<img" not in html
    assert '<a href="https://example.org/cat.png"' in html


@pytest.mark.parametrize(
    "answer",
    [
        "<script>alert(1)</script>",
        '<img src=x onerror="alert(1)">',
        "[click](javascript:alert(1))",
        "[click](JaVaScRiPt:alert(1))",
        "![x](javascript:alert(1))",
        '<a href="javascript:alert(1)">click</a>',
        "<svg onload=alert(1)>",
        "<iframe src=https://example.org></iframe>",
    ],
)
def test_markdown_output_has_no_active_content(answer: str) -> None:
    html = render_markdown(answer).lower()
    assert "<script" not in html
    assert "<img" not in html
    assert "<svg" not in html
    assert "<iframe" not in html
    assert re.search(r"<[^>]*javascript:", html) is None


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<p onclick=alert(1)>hi</p>", "<p>hi</p>"),
        (
            '<a href="javascript:alert(1)">x</a>',
            '<a target="_blank" rel="noopener noreferrer">x</a>',
        ),
        ("<script>alert(1)</script>ok", "ok"),
        (
            '<table><tr><td style="color:red;text-align:left">x</td></tr></table>',
            '<table><tbody><tr><td style="text-align:left">x</td></tr></tbody></table>',
        ),
    ],
)
def test_sanitize_html_strips_active_parts(html: str, expected: str) -> None:
    assert sanitize_html(html) == expected


def test_long_text_shows_escaped() -> None:
    answer = "<script>alert(1)</script> **bold** [" + "[" * MARKDOWN_MAX_CHARS
    html = render_markdown(answer)
    assert html.startswith('<div class="plain">&lt;script&gt;alert(1)&lt;/script&gt; **bold**')
    assert "<script" not in html
    assert "<strong>" not in html


def test_render_answers_keeps_order_and_matches_render_markdown() -> None:
    answers = ["**a**", "", "`b`", "**a**"]
    assert asyncio.run(render_answers(answers)) == [render_markdown(text) for text in answers]


def test_render_cache_drops_the_least_recently_used() -> None:
    cache = RenderCache(max_chars=30, threads=1)
    first = cache.render("first")
    second = cache.render("second")
    assert cache.render("first") is first
    cache.render("third")
    assert cache.size <= 30
    assert cache.render("first") is first
    assert cache.render("second") is not second


def test_render_cache_skips_a_result_larger_than_itself() -> None:
    cache = RenderCache(max_chars=10, threads=1)
    assert cache.render("a longer answer") == render_markdown("a longer answer")
    assert cache.size == 0


def test_page_renders_markdown_up_to_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(markdown, "PAGE_RENDER_CHARS", 20)
    monkeypatch.setattr(markdown, "_CACHE", RenderCache(max_chars=1000, threads=1))
    answers = ["**first answer**", "**second answer**", "**first answer**"]
    first_view = asyncio.run(render_answers(answers))
    assert first_view[0] == "<p><strong>first answer</strong></p>\n"
    assert first_view[1] == '<div class="plain">**second answer**</div>'
    assert first_view[2] == first_view[0]
    second_view = asyncio.run(render_answers(answers))
    assert second_view[1] == "<p><strong>second answer</strong></p>\n"
