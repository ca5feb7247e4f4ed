"""The page icon: /favicon.ico and the icons that the base template links."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

ICO_HEADER = b"\x00\x00\x01\x00"
_ICON_LINK = re.compile(r'<link rel="icon" href="([^"]+)"')


def test_favicon_ico_served_without_login(client: TestClient) -> None:
    response = client.get("/favicon.ico")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/x-icon"
    assert response.content.startswith(ICO_HEADER)


def test_pages_link_served_icons(client: TestClient) -> None:
    page = client.get("/login")
    links = _ICON_LINK.findall(page.text)

    assert links == ["/favicon.ico", "/static/favicon.svg"]
    for link in links:
        assert client.get(link).status_code == 200, link
    assert client.get(links[1]).headers["content-type"] == "image/svg+xml"
