"""Rendering answers as sanitised Markdown."""

from __future__ import annotations

import re

import pytest

from llmcloud.web.markdown import render_markdown, sanitize_html


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
