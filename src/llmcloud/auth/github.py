"""The GitHub user behind an access token: numeric id, verified email, organisations, teams.

The account is keyed by GitHub's numeric user id, because a login name can
be renamed and then taken by someone else. The email address is the public
profile address when GitHub's `/user/emails` list marks it verified, and
otherwise the primary verified address from that list. Organisation and team
allow lists are checked at every login through `/user/memberships/orgs/ORG`
and `/user/teams`, which need the `read:org` scope.
"""

from __future__ import annotations

from typing import Any

from authlib.integrations.httpx_client import OAuth2Client

from llmcloud.auth.identity_profile import ProviderProfile
from llmcloud.auth.login_errors import bad_gateway, forbidden
from llmcloud.auth.oidc import fetch_json, get_from_provider

TEAMS_PAGE_SIZE = 100
MAX_TEAM_PAGES = 10


def fetch_github_profile(
    client: OAuth2Client,
    api_url: str,
    *,
    allowed_orgs: list[str],
    allowed_teams: list[str],
) -> ProviderProfile:
    """Return the profile of the client's token holder, or raise LoginFailed (403, 502)."""
    user = fetch_json(client, f"{api_url}/user", "user profile", with_token=True)
    subject = user.get("id")
    if not isinstance(subject, int):
        raise bad_gateway("profile_invalid", "GitHub's /user response has no numeric id")
    login = str(user.get("login") or "")

    emails = _fetch_emails(client, api_url)
    email, verified = _pick_email(user.get("email"), emails)
    if allowed_orgs or allowed_teams:
        _check_membership(client, api_url, login, allowed_orgs, allowed_teams)
    return ProviderProfile(
        provider="github",
        subject=str(subject),
        username_hint=login,
        email=email,
        email_verified=verified,
    )


def _fetch_emails(client: OAuth2Client, api_url: str) -> list[dict[str, Any]]:
    response = get_from_provider(client, f"{api_url}/user/emails", "email list", with_token=True)
    try:
        emails = response.json()
    except ValueError:
        emails = None
    if not isinstance(emails, list):
        raise bad_gateway("profile_invalid", "GitHub's /user/emails response is not a list")
    return [entry for entry in emails if isinstance(entry, dict)]


def _pick_email(public: object, emails: list[dict[str, Any]]) -> tuple[str | None, bool]:
    verified = [entry for entry in emails if entry.get("verified") is True]
    if isinstance(public, str):
        for entry in verified:
            if str(entry.get("email", "")).lower() == public.lower():
                return str(entry["email"]), True
    for entry in verified:
        if entry.get("primary") is True:
            return str(entry["email"]), True
    return (public if isinstance(public, str) and public else None), False


def _check_membership(
    client: OAuth2Client, api_url: str, login: str, orgs: list[str], teams: list[str]
) -> None:
    for org in orgs:
        if _is_org_member(client, api_url, org):
            return
    if teams and _is_team_member(client, api_url, teams):
        return
    allowed = ", ".join([*orgs, *teams])
    raise forbidden(
        "github_org_not_allowed",
        f"GitHub user {login!r} is not a member of an allowed organisation or team "
        f"({allowed}); ask an admin to add you there",
    )


def _is_org_member(client: OAuth2Client, api_url: str, org: str) -> bool:
    url = f"{api_url}/user/memberships/orgs/{org}"
    response = get_from_provider(
        client, url, "organisation membership", with_token=True, not_found_ok=True
    )
    if response.status_code != 200:
        return False
    try:
        membership = response.json()
    except ValueError:
        return False
    return isinstance(membership, dict) and membership.get("state") == "active"


def _is_team_member(client: OAuth2Client, api_url: str, teams: list[str]) -> bool:
    allowed_slugs = {team.lower() for team in teams}
    for page in range(1, MAX_TEAM_PAGES + 1):
        url = f"{api_url}/user/teams?per_page={TEAMS_PAGE_SIZE}&page={page}"
        response = get_from_provider(client, url, "team list", with_token=True)
        listed = response.json()
        if not isinstance(listed, list):
            raise bad_gateway("profile_invalid", "GitHub's /user/teams response is not a list")
        for team in listed:
            org = (team.get("organization") or {}).get("login", "")
            if f"{org}/{team.get('slug', '')}".lower() in allowed_slugs:
                return True
        if len(listed) < TEAMS_PAGE_SIZE:
            return False
    return False
