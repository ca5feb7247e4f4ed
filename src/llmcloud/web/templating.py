"""Jinja2 templates of the web app and the helper that renders a page.

Templates autoescape every value. The only markup inserted unescaped is an
answer rendered by `llmcloud.web.markdown`, which nh3 has sanitised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import HTMLResponse

from llmcloud import __version__
from llmcloud.auth.sessions import ActiveSession
from llmcloud.db.models import Role
from llmcloud.web.security import CSRF_FIELD

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


@dataclass(frozen=True)
class NavLink:
    label: str
    path: str
    admin_only: bool = False


# The navigation bar of logged-in users, in order. Pages for admins and the API-key
# pages add their links here.
NAV_LINKS: list[NavLink] = [
    NavLink("Chats", "/chats"),
    NavLink("API keys", "/api-keys"),
    NavLink("Admin", "/admin", admin_only=True),
]

templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.globals["version"] = __version__
templates.env.globals["csrf_field"] = CSRF_FIELD


def nav_links(active: ActiveSession | None) -> list[NavLink]:
    if active is None:
        return []
    is_admin = active.user.role == Role.ADMIN
    return [link for link in NAV_LINKS if is_admin or not link.admin_only]


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    active: ActiveSession | None = None,
) -> HTMLResponse:
    """Render a page; `active` defaults to the session that a dependency found for the request."""
    active = active or getattr(request.state, "session", None)
    values: dict[str, Any] = {
        "active": active,
        "user": active.user if active else None,
        "csrf_token": active.csrf_token if active else "",
        "nav_links": nav_links(active),
        "path": request.url.path,
    }
    values.update(context or {})
    return templates.TemplateResponse(request, template, values, status_code=status_code)
