"""The user that a login provider vouched for, as the flow hands it to account matching."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProviderProfile:
    """An identity at a provider. `subject` is GitHub's numeric id or the OIDC `sub`.

    `email_verified` is true only when the provider said so: `email_verified`
    in OIDC claims, `verified` in GitHub's email list. `groups` is None when
    the provider sends the groups claim only as an aggregated or distributed
    claim, which llmcloud does not fetch, so the groups are unknown.
    """

    provider: str
    subject: str
    username_hint: str
    email: str | None
    email_verified: bool
    groups: tuple[str, ...] | None = field(default=())
