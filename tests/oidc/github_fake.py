"""A local server that implements the GitHub OAuth and REST endpoints that llmcloud uses.

It follows GitHub's documentation: /login/oauth/authorize redirects back
with a code, /login/oauth/access_token answers HTTP 200 with an `error`
field for a bad code (as GitHub does), codes work once, PKCE S256 is
checked, and /user, /user/emails, /user/memberships/orgs/ORG and
/user/teams answer for the token's user. `login_as` picks the fixture user
that the next authorization logs in, standing in for GitHub's own login page.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from tests.conftest import RunningServer

CLIENT_ID = "github-test-client"
CLIENT_SECRET = "github-test-secret"


@dataclass(frozen=True)
class GitHubUser:
    id: int
    login: str
    public_email: str | None
    emails: list[dict[str, Any]]
    orgs: tuple[str, ...] = ()
    teams: tuple[tuple[str, str], ...] = ()


def _email(address: str, *, primary: bool, verified: bool) -> dict[str, Any]:
    return {"email": address, "primary": primary, "verified": verified, "visibility": None}


USERS = {
    "octocat": GitHubUser(
        1001,
        "octocat",
        "octocat@example.org",
        [_email("octocat@example.org", primary=True, verified=True)],
    ),
    "private": GitHubUser(
        1002,
        "private",
        None,
        [
            _email("old@example.net", primary=False, verified=True),
            _email("Private.Person@Example.org", primary=True, verified=True),
        ],
    ),
    "unverified": GitHubUser(
        1003,
        "unverified",
        None,
        [_email("admin@example.org", primary=True, verified=False)],
    ),
    "member": GitHubUser(
        1004,
        "member",
        "member@example.org",
        [_email("member@example.org", primary=True, verified=True)],
        orgs=("llmcloud-org",),
    ),
    "teammate": GitHubUser(
        1005,
        "teammate",
        "teammate@example.org",
        [_email("teammate@example.org", primary=True, verified=True)],
        teams=(("other-org", "chat-users"),),
    ),
    "outsider": GitHubUser(
        1006,
        "outsider",
        "outsider@example.org",
        [_email("outsider@example.org", primary=True, verified=True)],
    ),
}


@dataclass
class FakeGitHub:
    login_as: str = "octocat"
    token_delay: float = 0.0
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    server: RunningServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> FakeGitHub:
        self.server = RunningServer(self._app()).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def _user(self, request: Request) -> GitHubUser | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        login = self.tokens.get(token)
        return USERS.get(login) if login else None

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/login/oauth/authorize")
        def authorize(request: Request) -> Response:
            params = request.query_params
            code = secrets.token_hex(10)
            self.codes[code] = {
                "login": self.login_as,
                "client_id": params.get("client_id", ""),
                "redirect_uri": params.get("redirect_uri", ""),
                "code_challenge": params.get("code_challenge", ""),
                "code_challenge_method": params.get("code_challenge_method", ""),
            }
            query = urlencode({"code": code, "state": params.get("state", "")})
            return RedirectResponse(f"{params.get('redirect_uri')}?{query}", 302)

        @app.post("/login/oauth/access_token")
        def access_token(
            client_id: str = Form(""),
            client_secret: str = Form(""),
            code: str = Form(""),
            redirect_uri: str = Form(""),
            code_verifier: str = Form(""),
        ) -> Response:
            self.token_requests.append({"client_id": client_id, "code_verifier": code_verifier})
            time.sleep(self.token_delay)
            if client_id != CLIENT_ID or client_secret != CLIENT_SECRET:
                return JSONResponse({"error": "incorrect_client_credentials"})
            grant = self.codes.pop(code, None)
            if grant is None or grant["redirect_uri"] != redirect_uri:
                return JSONResponse({"error": "bad_verification_code"})
            if _s256(code_verifier) != grant["code_challenge"]:
                return JSONResponse({"error": "bad_verification_code"})
            token = "gho_" + secrets.token_hex(16)
            self.tokens[token] = grant["login"]
            return JSONResponse({"access_token": token, "token_type": "bearer", "scope": ""})

        @app.get("/user")
        def user(request: Request) -> Response:
            found = self._user(request)
            if found is None:
                return JSONResponse({"message": "Bad credentials"}, 401)
            return JSONResponse({"id": found.id, "login": found.login, "email": found.public_email})

        @app.get("/user/emails")
        def emails(request: Request) -> Response:
            found = self._user(request)
            if found is None:
                return JSONResponse({"message": "Bad credentials"}, 401)
            return JSONResponse(found.emails)

        @app.get("/user/memberships/orgs/{org}")
        def membership(request: Request, org: str) -> Response:
            found = self._user(request)
            if found is None or org not in found.orgs:
                return JSONResponse({"message": "Not Found"}, 404)
            return JSONResponse(
                {"state": "active", "role": "member", "organization": {"login": org}}
            )

        @app.get("/user/teams")
        def teams(request: Request) -> Response:
            found = self._user(request)
            if found is None:
                return JSONResponse({"message": "Bad credentials"}, 401)
            listed = [{"slug": slug, "organization": {"login": org}} for org, slug in found.teams]
            return JSONResponse(listed)

        return app


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
