"""The built-in alerter, for deployments without Alertmanager.

Inside `llmcloud web` (and so `up`) it evaluates the conditions of
llmcloud.monitoring.conditions on every new sample. A failing condition is
pending until it has held for its rule's `for:` duration (PENDING_SECONDS),
as in Prometheus; one that clears while pending is never sent. An alert that
starts firing is sent at once; one that keeps firing is sent again only after
`alert_repeat_interval`; one that stops firing is sent once as resolved.
Everything that becomes due in one evaluation goes out as one message, to the
webhook (Slack- and Mattermost-compatible `{"text": ...}`) and by email.
A failure to send is logged and counted in llmcloud_alert_notifications_total,
and the alert is tried again at the next evaluation. With `redis_url` set,
the web instances of a deployment claim each notification in Redis, so that
one of them sends it (llmcloud.monitoring.alert_claims).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage

import httpx

from llmcloud.monitoring import metrics
from llmcloud.monitoring.alert_claims import AlertClaims, alert_claims_for
from llmcloud.monitoring.conditions import PENDING_SECONDS, Firing, evaluate
from llmcloud.monitoring.samples import Sample
from llmcloud.settings import Settings

logger = logging.getLogger("llmcloud.monitoring")

NOTIFY_TIMEOUT_SECONDS = 10.0


@dataclass
class AlertState:
    description: str
    since: float
    """Time of the first sample in which the condition failed."""
    firing: bool = False
    """False while the condition has held for less than its pending duration."""
    last_sent: float | None = None


@dataclass(frozen=True)
class Notice:
    """One line of a message: an alert that fires, or one that resolved."""

    name: str
    subject: str
    description: str
    resolved: bool

    def line(self) -> str:
        mark = "RESOLVED" if self.resolved else "FIRING"
        where = f" ({self.subject})" if self.subject else ""
        return f"[{mark}] {self.name}{where}: {self.description}"


class Alerter:
    """Turns samples into notifications; `pending` overrides PENDING_SECONDS by alert name."""

    def __init__(
        self,
        settings: Settings,
        claims: AlertClaims | None = None,
        pending: Mapping[str, float] | None = None,
    ) -> None:
        self.settings = settings
        self.repeat_interval = settings.alert_repeat_interval
        self.pending = PENDING_SECONDS if pending is None else pending
        if claims is None:
            redis_url = settings.redis_url
            claims = alert_claims_for(redis_url.get_secret_value() if redis_url else None)
        self.claims = claims
        self.active: dict[tuple[str, str], AlertState] = {}
        self._unsent_resolved: list[Notice] = []

    async def evaluate(self, sample: Sample) -> list[Notice]:
        """Update the alert states from a sample and send what is due; return what was sent."""
        due = self._due(evaluate(sample), sample.time)
        metrics.alerts_firing.set(sum(1 for state in self.active.values() if state.firing))
        if not due:
            return []
        claimed = await self.claims.claim(due, sample.time, self.repeat_interval)
        # Notices claimed by another instance count as sent, so that this one repeats them
        # only after the repeat interval and sends their resolution only if it wins that claim.
        self._mark_sent([notice for notice in due if notice not in claimed], sample.time)
        if not claimed:
            self._unsent_resolved = []
            return []
        if await self._send(claimed):
            self._mark_sent(claimed, sample.time)
            self._unsent_resolved = []
            return claimed
        await self.claims.release(claimed, sample.time)
        self._unsent_resolved = [notice for notice in claimed if notice.resolved]
        return []

    async def close(self) -> None:
        await self.claims.close()

    def _mark_sent(self, notices: list[Notice], now: float) -> None:
        for notice in notices:
            state = self.active.get((notice.name, notice.subject))
            if state is not None and not notice.resolved:
                state.last_sent = now

    def _due(self, firing: Firing, now: float) -> list[Notice]:
        due = list(self._unsent_resolved)
        for key in [key for key in self.active if key not in firing]:
            state = self.active.pop(key)
            if state.last_sent is not None:
                due.append(Notice(*key, state.description, resolved=True))
        for key, description in sorted(firing.items()):
            state = self.active.setdefault(key, AlertState(description, since=now))
            state.description = description
            if now - state.since < self.pending.get(key[0], 0.0):
                continue
            state.firing = True
            if state.last_sent is None or now - state.last_sent >= self.repeat_interval:
                due.append(Notice(*key, description, resolved=False))
        return due

    async def _send(self, notices: list[Notice]) -> bool:
        """Send to every configured channel; True when at least one channel took the message."""
        text = "llmcloud alerts:\n" + "\n".join(notice.line() for notice in notices)
        channels = []
        webhook = self.settings.alert_webhook_url
        if webhook is not None:
            channels.append(("webhook", self._post_webhook(webhook.get_secret_value(), text)))
        if self.settings.alert_email_to:
            channels.append(("email", asyncio.to_thread(self._send_email, text, notices)))
        if not channels:
            logger.warning("alert not sent, because no channel is configured: %s", text)
            return True
        delivered = False
        for channel, sending in channels:
            try:
                await sending
            except (httpx.HTTPError, OSError, smtplib.SMTPException) as exc:
                logger.warning("sending alerts by %s failed: %s", channel, _describe(exc))
                metrics.alert_notifications.labels(channel, "error").inc()
                continue
            metrics.alert_notifications.labels(channel, "ok").inc()
            delivered = True
        return delivered

    async def _post_webhook(self, url: str, text: str) -> None:
        async with httpx.AsyncClient(timeout=NOTIFY_TIMEOUT_SECONDS) as client:
            response = await client.post(url, json={"text": text})
            response.raise_for_status()

    def _send_email(self, text: str, notices: list[Notice]) -> None:
        settings = self.settings
        message = EmailMessage()
        firing = sum(1 for notice in notices if not notice.resolved)
        message["Subject"] = f"llmcloud: {firing} firing, {len(notices) - firing} resolved"
        message["From"] = settings.alert_email_from
        message["To"] = ", ".join(settings.alert_email_to)
        message.set_content(text)
        with smtplib.SMTP(
            settings.alert_smtp_host, settings.alert_smtp_port, timeout=NOTIFY_TIMEOUT_SECONDS
        ) as smtp:
            if settings.alert_smtp_starttls:
                smtp.starttls()
            if settings.alert_smtp_username and settings.alert_smtp_password:
                smtp.login(
                    settings.alert_smtp_username, settings.alert_smtp_password.get_secret_value()
                )
            smtp.send_message(message)


def _describe(exc: BaseException) -> str:
    """Describe a send failure without the webhook URL, which httpx puts in its messages."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.HTTPError):
        return type(exc).__name__
    return f"{type(exc).__name__}: {exc}"
