"""The table of every llmcloud setting.

Each field of `Settings` is one setting: its name, type, default and help text.
The same table gives the `LLMCLOUD_*` environment variables, the keys of the
TOML config file, `llmcloud config show` and docs/configuration.md (a test
compares that file with the table). Sources, strongest first: values passed in
code, environment variables, the TOML file, the defaults.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from llmcloud.auth.provider_config import BaseUrl, OidcProviderList, TrustedProxyList
from llmcloud.gateway.config import BackendList, KeepAlive, hide_userinfo
from llmcloud.units import parse_duration

ENV_PREFIX = "LLMCLOUD_"
CONFIG_ENV = "LLMCLOUD_CONFIG"


class ConfigError(Exception):
    """A setting has an invalid value, or the config file cannot be read."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llmcloud"


def default_config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmcloud" / "llmcloud.toml"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        frozen=True,
    )

    # General
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Folder that holds all state: database, secrets, certificates, models.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level of log records that are written."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log line format: `text` for people, `json` for log collectors."
    )

    # Engine server
    engine_host: str = Field(
        "127.0.0.1",
        description="Address the engine listens on. Any address but loopback needs engine_token.",
    )
    engine_port: int = Field(11434, ge=1, le=65535, description="TCP port of the engine.")
    engine_token: SecretStr | None = Field(
        None,
        description="Bearer token that clients of the engine API must send. Required when "
        "engine_host is not a loopback address.",
    )
    engine_url: str = Field(
        "http://127.0.0.1:11434",
        description="Engine URL that the client commands (`llmcloud run`, `list`, `pull`) use.",
    )
    engine_max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        description="Largest accepted JSON request body, in bytes; larger bodies get 413.",
    )

    # Engine scheduling
    engine_keep_alive: str = Field(
        "5m",
        description="How long a model stays loaded after its last request when the request "
        "names no keep_alive: seconds or a duration such as `5m`; negative keeps it loaded.",
    )
    engine_num_parallel: int = Field(
        4,
        ge=1,
        le=64,
        description="Requests one loaded model decodes at once, in one batch (its slots).",
    )
    engine_max_queue: int = Field(
        64,
        ge=0,
        description="Requests that may wait for a slot per model; past that the engine "
        "answers 503 with Retry-After.",
    )
    engine_max_loaded_models: int = Field(
        2, ge=1, description="Models kept loaded at once; the least recently used one unloads."
    )
    engine_num_ctx: int = Field(
        2048,
        ge=64,
        description="Default context length in tokens per request when the request gives no "
        "num_ctx.",
    )
    engine_max_num_ctx: int = Field(
        32768, ge=64, description="Largest num_ctx that a request may ask for, in tokens."
    )
    engine_gpu_layers: int = Field(
        0,
        ge=-1,
        description="Model layers offloaded to the GPU; -1 offloads all. Needs llama-cpp-python "
        "built with GPU support.",
    )
    engine_threads: int | None = Field(
        None, ge=1, description="CPU threads for decoding; unset means the number of cores."
    )
    engine_background: bool | None = Field(
        None,
        description="Run the engine in Linux's idle scheduling class (SCHED_IDLE): decoding "
        "uses every core that nothing else wants, and gives a core up at once to the web app or "
        "any other process that wakes, rather than at the end of its time slice. Unset means on "
        "under `llmcloud up`, where the web app shares the engine's cores, and off for "
        "`llmcloud engine` alone. The web app's scheduled backups follow it, so that they share "
        "the cores with decoding. Leave it off where other CPU-bound work must not take "
        "decoding's time.",
    )
    engine_registry: str = Field(
        "https://registry.ollama.ai",
        description="Model registry that `llmcloud pull NAME` downloads from.",
    )

    # Web app and accounts
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the database, for example "
        "`postgresql://USER:PASSWORD@HOST:5432/llmcloud`. Unset means SQLite in "
        "`<data_dir>/llmcloud.db`.",
    )
    signup_mode: Literal["open", "approval", "closed"] = Field(
        "approval",
        description="Who may sign up: `open` makes new accounts users at once, `approval` "
        "makes them pending until an admin approves them, `closed` rejects sign-ups, so that "
        "only admins create accounts, with `llmcloud users create`. In every mode the first "
        "account becomes an admin.",
    )
    session_idle_timeout_seconds: int = Field(
        14 * 24 * 3600,
        ge=60,
        description="Seconds after its last request that a login session expires.",
    )
    session_max_age_seconds: int = Field(
        30 * 24 * 3600,
        ge=60,
        description="Seconds after log-in that a session expires however active it is.",
    )
    web_host: str = Field(
        "127.0.0.1",
        description="Address the web app listens on. Put it behind a TLS proxy, or use "
        "llmcloud's own TLS, before listening on anything but loopback.",
    )
    web_port: int = Field(8080, ge=1, le=65535, description="TCP port of the web app.")
    public_url: str | None = Field(
        None,
        description="URL at which users reach the web app, such as `https://chat.example.org`. "
        "Forms and WebSockets must come from its origin, and an https URL makes the session "
        "cookie Secure. Unset means the origin that each request's Host header names.",
    )
    web_default_model: str = Field(
        "smollm2:135m",
        description="Model that new chats preselect in the model picker when a backend lists it; "
        "otherwise the first listed model is preselected.",
    )
    web_max_prompt_length: int = Field(
        32_000,
        ge=1,
        le=1_000_000,
        description="Longest prompt that the chat page accepts, in characters.",
    )
    web_max_import_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1024,
        description="Largest chat export file that may be imported, in bytes.",
    )
    web_max_answer_tokens: int | None = Field(
        None,
        ge=1,
        description="Longest answer, in tokens, that the chat page asks a model for (sent as "
        "Ollama's num_predict, OpenAI's max_tokens). Unset leaves the limit to the backend.",
    )

    # Gateway
    gateway_backends: BackendList = Field(
        None,
        description="Model backends that the web app's gateway routes chats to: a TOML array "
        "of tables `[[gateway_backends]]`, or a JSON list in the environment. Each has `name`, "
        "`kind` (`ollama` for llmcloud engines and Ollama, `openai` for OpenAI-compatible "
        "servers such as vLLM), `base_url`, and optionally `api_key` (sent as a Bearer token), "
        "`weight` (share of the load, default 1), `max_parallel` (requests sent to it at once, "
        "default 4), `enabled` (default true) and `ca_bundle` (PEM file to verify its TLS "
        "certificate). Unset means one llmcloud engine at engine_url, with engine_token as its "
        "key and engine_num_parallel as its max_parallel.",
    )
    gateway_keep_alive: KeepAlive = Field(
        "5m",
        description="keep_alive that the gateway sends with every chat to Ollama-API backends: "
        "how long the backend keeps the model loaded after the request; seconds or a duration "
        "such as `5m`; negative keeps it loaded.",
    )
    gateway_health_interval: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="Seconds between two health checks of a backend (GET /api/tags or "
        "/v1/models). A backend that fails one leaves rotation; one that passes returns.",
    )
    gateway_max_queue_per_model: int = Field(
        32,
        ge=0,
        description="Chat requests per model that may wait in the gateway for a free backend; "
        "past that the gateway answers 503 with Retry-After at once.",
    )
    gateway_connect_timeout: float = Field(
        3.0,
        gt=0,
        description="Seconds to wait for a TCP and TLS connection to a backend before failing "
        "over to another.",
    )
    gateway_first_token_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds to wait for a backend's first token, model loading included, "
        "before failing over to another; also the longest pause between two tokens before the "
        "answer counts as failed.",
    )

    # TLS
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain (leaf first) that the web app serves over HTTPS. "
        "Set together with tls_key_file. Unset, with tls_acme_domains also unset, means plain "
        "HTTP, except under `llmcloud up`, which then issues one for localhost from the "
        "internal CA.",
    )
    tls_key_file: Path | None = Field(
        None, description="Unencrypted PEM private key of tls_cert_file."
    )
    tls_acme_domains: list[str] = Field(
        [],
        description="Domain names for a certificate from an ACME CA, such as Let's Encrypt. "
        "The web app answers the HTTP-01 challenge, stores the certificate under "
        "`<data_dir>/certs/acme/`, serves it and renews it. A TOML array, or a JSON list in "
        "the environment.",
    )
    tls_acme_directory: str = Field(
        "https://acme-v02.api.letsencrypt.org/directory",
        description="Directory URL of the ACME CA (RFC 8555).",
    )
    tls_acme_email: str | None = Field(
        None, description="Contact email registered with the ACME account, for expiry notices."
    )
    tls_acme_ca_bundle: Path | None = Field(
        None,
        description="PEM file of the CA that signed the ACME server's own HTTPS certificate, "
        "for a private or test ACME CA. Unset uses the system's trust store.",
    )
    tls_http_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Plain-HTTP port that only redirects to HTTPS and answers ACME HTTP-01 "
        "challenges (80 in production). Unset opens no such port.",
    )
    tls_cert_lifetime_days: int = Field(
        90,
        ge=1,
        le=825,
        description="Lifetime of certificates that the internal CA issues, in days.",
    )
    tls_ca_lifetime_days: int = Field(
        3650, ge=30, description="Lifetime of the internal CA's own certificate, in days."
    )
    tls_reload_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Seconds between two checks of the certificate files for a change; a "
        "changed, valid pair is served to new connections without a restart.",
    )
    tls_renew_check_seconds: float = Field(
        3600.0,
        gt=0,
        description="Seconds between two checks whether the ACME certificate is due for "
        "renewal. A certificate is renewed when a third of its lifetime is left, or earlier "
        "inside the renewal window that the CA offers (ARI, RFC 9773).",
    )
    tls_engine_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain that the engine serves over HTTPS; set together "
        "with tls_engine_key_file. Backends then use https:// URLs, with a ca_bundle for the "
        "internal CA.",
    )
    tls_engine_key_file: Path | None = Field(
        None, description="Unencrypted PEM private key of tls_engine_cert_file."
    )

    # Login providers
    auth_github_client_id: str | None = Field(
        None,
        description="Client ID of the GitHub OAuth app; set with auth_github_client_secret to "
        "show a GitHub log-in button. Register the redirect URI that `llmcloud auth providers` "
        "prints.",
    )
    auth_github_client_secret: SecretStr | None = Field(
        None, description="Client secret of the GitHub OAuth app."
    )
    auth_github_display_name: str = Field("GitHub", description="Label of the GitHub button.")
    auth_github_url: BaseUrl = Field(
        "https://github.com",
        description="Base URL of GitHub's web pages (authorize and access_token); change it "
        "only for GitHub Enterprise Server.",
    )
    auth_github_api_url: BaseUrl = Field(
        "https://api.github.com",
        description="Base URL of GitHub's REST API; for GitHub Enterprise Server "
        "`https://HOST/api/v3`.",
    )
    auth_github_allowed_orgs: list[str] = Field(
        default_factory=list,
        description="GitHub organisations whose members may log in, checked at every login "
        "(asks for the `read:org` scope). Empty allows every GitHub user who passes the email "
        "allow lists.",
    )
    auth_github_allowed_teams: list[str] = Field(
        default_factory=list,
        description="GitHub teams, written `org/team-slug`, whose members may log in, checked "
        "at every login (asks for `read:org`). A member of an allowed organisation or team "
        "passes.",
    )
    auth_oidc_providers: OidcProviderList = Field(
        None,
        description="OpenID Connect providers: a TOML array of tables `[[auth_oidc_providers]]`, "
        "or a JSON list in the environment. Each has `name` (used in URLs), `issuer` (issuer "
        "URL or discovery URL), `client_id`, and optionally `client_secret`, `display_name`, "
        "`scopes` (default openid, email, profile), `groups_claim` (default `groups`), "
        "`admin_groups` and `user_groups`. When either list is set, the groups claim decides "
        "the role at every login through that provider: admin for `admin_groups`, user for "
        "`user_groups`, and, while `user_groups` is set, auth_new_identity_role for an account "
        "in neither list. The last active admin keeps its role. See docs/login-providers.md.",
    )
    auth_allowed_email_domains: list[str] = Field(
        default_factory=list,
        description="Email domains whose verified addresses may log in through a provider. "
        "Empty allows any domain unless auth_allowed_emails is set.",
    )
    auth_allowed_emails: list[str] = Field(
        default_factory=list,
        description="Single verified email addresses that may log in through a provider, beside "
        "the allowed domains.",
    )
    auth_provider_signup: bool = Field(
        True,
        description="Whether an identity unknown to llmcloud creates an account; false shows "
        "such users a page saying that sign-up through providers is off.",
    )
    auth_new_identity_role: Literal["pending", "user"] = Field(
        "pending",
        description="Role of accounts created by a provider log-in; `pending` waits for an "
        "admin's approval.",
    )
    auth_password_login: bool = Field(
        True, description="Whether the log-in page shows the username and password form."
    )
    auth_provider_timeout: float = Field(
        10.0,
        gt=0,
        le=120,
        description="Seconds to wait for each request to a login provider before showing a "
        "502 error page.",
    )
    trusted_proxies: TrustedProxyList = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto headers are believed. The same headers from any other client are "
        "ignored.",
    )

    # Backups
    backup_targets: list[str] = Field(
        default_factory=list,
        description="Where backups are stored, several for 3-2-1: absolute folder paths (local "
        "or a mounted NFS share), `s3://BUCKET/PREFIX`, or `restic:REPOSITORY`. Empty means "
        "`<data_dir>/backups`, which is on the same disk and so is not separate. A TOML array, "
        "or a JSON list in the environment.",
    )
    backup_identity_file: Path | None = Field(
        None,
        description="age identity (private key) that encrypts and decrypts backups. Unset means "
        "`<data_dir>/secrets/backup.age`, created on the first backup. Keep a copy off this "
        "machine: backups cannot be restored without it.",
    )
    backup_passphrase: SecretStr | None = Field(
        None,
        description="Passphrase that encrypts backups instead of an identity file. The backup "
        "key is then kept only encrypted with this passphrase (age's scrypt recipient), in "
        "`<data_dir>/secrets/backup-passphrase-key.age` and as `key.age` beside every backup, "
        "so the passphrase alone restores them. Set either this or backup_identity_file.",
    )
    backup_recipients: list[str] = Field(
        default_factory=list,
        description="Extra age public keys (`age1...`) that can also decrypt every backup, such "
        "as an offline key.",
    )
    backup_s3_endpoint_url: str | None = Field(
        None,
        description="Endpoint of an S3-compatible store (MinIO, Ceph); unset uses AWS. "
        "Credentials come from the usual AWS variables or files.",
    )
    backup_s3_region: str | None = Field(None, description="Region of the S3 bucket.")
    backup_restic_password: SecretStr | None = Field(
        None, description="Password of the restic repository of a `restic:` target."
    )
    backup_model_blobs: bool = Field(
        False,
        description="Also back up the model store's blobs (the model files). Each blob is "
        "stored once per target, encrypted, under `blobs/`, and shared by every backup that "
        "references it. Off means models must be pulled again after a restore.",
    )
    backup_compression_level: int = Field(
        3, ge=1, le=19, description="zstd compression level of backup archives."
    )
    backup_lock_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds a backup waits for a database lock held by a long write before it "
        "fails.",
    )
    backup_deployment_lock_timeout: float = Field(
        600.0,
        ge=0,
        description="Seconds that a manual `llmcloud backup run`, `verify` or `prune`, and the "
        "backup and migration at start-up, wait for the backup lock that another instance of "
        "the deployment holds (through PostgreSQL or Redis) before they fail. Scheduled runs "
        "never wait: they are skipped.",
    )
    backup_keep_last: int = Field(24, ge=1, description="Number of newest backups to keep.")
    backup_keep_daily: int = Field(
        7, ge=0, description="Number of days for which the newest backup of the day is kept."
    )
    backup_keep_weekly: int = Field(
        4, ge=0, description="Number of weeks for which the newest backup of the week is kept."
    )
    backup_keep_monthly: int = Field(
        6, ge=0, description="Number of months for which the newest backup of the month is kept."
    )
    backup_schedule: str = Field(
        "0 * * * *",
        description="Cron expression (minute hour day month weekday, UTC) of the backups that "
        "`web` and `up` take; empty turns them off.",
    )
    backup_verify_schedule: str = Field(
        "30 3 * * *",
        description="Cron expression (UTC) of the restore test of the newest backup; empty "
        "turns it off.",
    )
    backup_verify_blob_days: int = Field(
        30,
        ge=0,
        description="Days for which a model blob that verify decrypted and hashed on a target "
        "is afterwards only checked for presence there; 0 checks every blob on every verify.",
    )

    # Monitoring
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token that scrapers of /metrics must send unless they connect from "
        "loopback without a proxy header. Unset means /metrics is served to loopback only.",
    )
    monitoring_min_free_disk_percent: float = Field(
        5.0,
        ge=0,
        le=100,
        description="Free space on the data dir's file system, in percent, below which "
        "/readyz fails.",
    )
    monitoring_sample_interval: float = Field(
        15.0,
        ge=1,
        le=3600,
        description="Seconds between two samples of the metrics for the status page and the "
        "built-in alerter.",
    )
    monitoring_history_hours: float = Field(
        6.0,
        gt=0,
        le=168,
        description="Hours of samples that the status page keeps and charts.",
    )
    alert_webhook_url: SecretStr | None = Field(
        None,
        description="URL that the built-in alerter posts alerts to, as Slack- and "
        'Mattermost-compatible JSON (`{"text": ...}`). Kept secret, because the URL of an '
        "incoming webhook is its credential. Unset sends no webhook.",
    )
    alert_email_to: list[str] = Field(
        default_factory=list,
        description="Addresses that the built-in alerter emails alerts to. Empty sends no email.",
    )
    alert_email_from: str = Field(
        "llmcloud@localhost", description="Sender address of alert emails."
    )
    alert_smtp_host: str = Field("127.0.0.1", description="SMTP server for alert emails.")
    alert_smtp_port: int = Field(25, ge=1, le=65535, description="TCP port of the SMTP server.")
    alert_smtp_starttls: bool = Field(
        False, description="Upgrade the SMTP connection with STARTTLS before sending."
    )
    alert_smtp_username: str | None = Field(
        None, description="SMTP user name; unset sends without logging in."
    )
    alert_smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    alert_repeat_interval: float = Field(
        4 * 3600.0,
        ge=1,
        description="Seconds before the built-in alerter repeats an alert that is still firing.",
    )
    socks_metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="TCP port on socks_host where `llmcloud socks serve` serves /metrics, "
        "/healthz and /readyz, under the same rules as the other processes. Unset serves none.",
    )
    monitoring_socks_metrics_url: str | None = Field(
        None,
        description="URL of the SOCKS proxy's /metrics (such as http://127.0.0.1:9108/metrics) "
        "that the web app scrapes at every monitoring sample, so that the built-in alerter "
        "and the status page see the proxy's totals; it sends metrics_token when that is set. "
        "`llmcloud up` sets it when socks_metrics_port is set. Unset scrapes none.",
    )

    @field_validator(
        "metrics_token",
        "alert_smtp_password",
        "alert_webhook_url",
        "monitoring_socks_metrics_url",
        mode="before",
    )
    @classmethod
    def _empty_monitoring_value_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("monitoring_socks_metrics_url")
    @classmethod
    def _check_socks_metrics_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"invalid monitoring_socks_metrics_url {value!r}; expected an http:// or "
                "https:// URL with a host, such as http://127.0.0.1:9108/metrics"
            )
        return value

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_alert_webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = urlsplit(value.get_secret_value())
        if url.scheme not in ("http", "https") or not url.hostname:
            # The URL is not shown, because it contains the webhook's credential.
            raise ValueError(
                "invalid alert_webhook_url; expected an http:// or https:// URL with a host, "
                "such as https://chat.example.org/hooks/KEY"
            )
        return value

    # SOCKS proxy
    socks_host: str = Field(
        "127.0.0.1",
        description="Address the SOCKS5 proxy (`llmcloud socks`) listens on: loopback for use "
        "through an SSH tunnel, or an address on the private network.",
    )
    socks_port: int = Field(1080, ge=1, le=65535, description="TCP port of the SOCKS5 proxy.")
    socks_in_up: bool = Field(
        True,
        description="Whether `llmcloud up` also starts the SOCKS5 proxy, on socks_host and "
        "socks_port. False leaves the proxy off, or to `llmcloud socks serve`.",
    )
    socks_allow: list[str] = Field(
        default_factory=list,
        description="Destinations the SOCKS proxy may connect to, each `HOST` or `HOST:PORTS`: "
        "an address or CIDR network (`10.0.0.0/8`, IPv6 in brackets when ports follow: "
        "`[fd00::/8]:443`) or a host name pattern (`grafana.internal`, `*.internal`); PORTS is "
        "`*`, `443`, `8000-8999` or a comma-separated list. Empty allows nothing. Names are "
        "resolved by the proxy, and a name that no pattern matches is judged by its address. "
        "Link-local and cloud metadata addresses are denied unless a network entry lists them. "
        "The PAC file at /proxy.pac sends exactly these networks and names through the proxy.",
    )
    socks_roles: list[str] = Field(
        default_factory=lambda: ["admin"],
        description="Account roles whose users may log in to the SOCKS proxy.",
    )
    socks_allow_no_auth: bool = Field(
        False,
        description="Let SOCKS clients connect without a login. Honoured only while socks_host "
        "is a loopback address; otherwise every client must log in.",
    )
    socks_max_connections: int = Field(
        2000,
        ge=1,
        description="Open SOCKS connections, handshakes included, past which new ones are "
        "closed at once.",
    )
    socks_max_tunnels_per_user: int = Field(
        1000, ge=1, description="Open SOCKS tunnels per user; past that a request gets reply 01."
    )
    socks_handshake_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a SOCKS client has from connecting until its request is complete, "
        "login included.",
    )
    socks_connect_timeout: float = Field(
        10.0, gt=0, description="Seconds the SOCKS proxy waits for a destination to accept."
    )
    socks_idle_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds without a byte in either direction after which a SOCKS tunnel "
        "is closed.",
    )
    socks_max_login_failures: int = Field(
        5,
        ge=1,
        description="Failed SOCKS logins per client address within socks_login_failure_window, "
        "past which that address's logins are rejected without a password check.",
    )
    socks_login_failure_window: float = Field(
        300.0, gt=0, description="Seconds over which failed SOCKS logins are counted."
    )
    socks_login_cache_seconds: float = Field(
        60.0,
        ge=0,
        description="Seconds a successful SOCKS login is remembered, so that the many "
        "connections a browser opens skip the slow password check; a deactivated account or "
        "changed password takes effect after at most this long. 0 checks every connection.",
    )
    socks_pac_proxy: str | None = Field(
        None,
        description="Proxy address, `HOST:PORT`, that /proxy.pac tells browsers to use. Unset "
        "means `127.0.0.1:<socks_port>`, the local end of an SSH tunnel.",
    )

    @field_validator("socks_allow")
    @classmethod
    def _check_socks_allow(cls, value: list[str]) -> list[str]:
        from llmcloud.socks.acl import parse_rule

        for entry in value:
            parse_rule(entry)
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = urlsplit(value.strip())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(
                f"invalid public_url {value!r}; expected an http:// or https:// URL with a host, "
                "such as https://chat.example.org"
            )
        return value.strip().rstrip("/")

    @field_validator(
        "engine_token",
        "database_url",
        "auth_github_client_secret",
        "backup_restic_password",
        "backup_passphrase",
        mode="before",
    )
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        # LLMCLOUD_ENGINE_TOKEN= (set but empty) must not count as a token.
        return None if value == "" else value

    @field_validator("engine_keep_alive")
    @classmethod
    def _check_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_path()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    @property
    def keep_alive_seconds(self) -> float:
        return parse_duration(self.engine_keep_alive)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    # Deployment
    session_secret_key: SecretStr | None = Field(
        None,
        description="Key that signs session cookies, as 64 hex digits (32 bytes), for example "
        "from `openssl rand -hex 32`. Every web instance on one database must have the same "
        "key, and one whose key differs from the database's record refuses to start. Unset "
        "means the key file `<data_dir>/secrets/session_key`, created on first start.",
    )
    redis_url: SecretStr | None = Field(
        None,
        description="Redis URL, such as `redis://127.0.0.1:6379/0`, through which web instances "
        "share live chat streams, so that a chat answered on one instance can be followed on "
        "another, and claim each alert notification, so that one instance sends it. The "
        "gateways of all instances also share their queues through it, so queue positions, "
        "gateway_max_queue_per_model and each backend's max_parallel hold for the deployment. "
        "Unset keeps all of these inside each instance.",
    )
    web_login_rate_limit: int = Field(
        10,
        ge=0,
        description="Password log-ins that may be tried in any 60 seconds for one account "
        "name, and ten times as many from one client address; past that the log-in page "
        "answers 429 naming the seconds to wait. Counted across every web instance that "
        "shares redis_url, else per instance. 0 means no limit.",
    )
    web_chat_rate_limit: int = Field(
        0,
        ge=0,
        description="Prompts (sends and regenerations) that one account may start in any 60 "
        "seconds on the chat page; past that it gets an error naming the seconds to wait. Counted "
        "across every web instance that shares redis_url, else per instance. 0 means no limit.",
    )

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_redis_url_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("session_secret_key", mode="before")
    @classmethod
    def _check_session_secret_key(cls, value: object) -> object:
        if value is None or value == "":
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
            raise ValueError(
                f"invalid key of {len(text.strip())} characters; expected 64 hex digits, "
                "such as the output of `openssl rand -hex 32`"
            )
        return text.strip().lower()


def _config_file_path() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} from {CONFIG_ENV} not found")
        return path
    default = default_config_file()
    return default if default.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, turning every invalid value into one readable ConfigError."""
    config_file = _config_file_path()
    file_keys = _read_config_keys(config_file) if config_file is not None else frozenset()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_validation_error(exc, config_file, file_keys)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_json_error(exc)) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the config file {config_file}: {exc}") from None


def _read_config_keys(path: Path) -> frozenset[str]:
    """Parse the TOML config file and return its top-level keys, for naming where errors are."""
    try:
        with path.open("rb") as file:
            return frozenset(tomllib.load(file))
    except tomllib.TOMLDecodeError as exc:
        # The message of tomllib (Python 3.11) ends with "(at line L, column C)".
        raise ConfigError(f"invalid TOML in the config file {path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from None


def _describe_validation_error(
    exc: ValidationError, config_file: Path | None, file_keys: frozenset[str]
) -> str:
    lines = []
    for error in exc.errors():
        setting = str(error["loc"][0]) if error["loc"] else "?"
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            lines.append(_describe_unknown_setting(setting, config_file, file_keys))
            continue
        path = setting + "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"][1:]
        )
        source = _setting_source(setting, config_file, file_keys)
        if _is_unparsed_json_env(setting, source, error):
            # A list setting that is `| None` gets the raw string when its JSON is invalid, and
            # that string may contain an API key, so it is not shown.
            lines.append(_describe_invalid_json(setting))
            continue
        lines.append(f"setting {path}{source} = {_shown_value(setting, error)}: {error['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _describe_unknown_setting(key: str, config_file: Path | None, file_keys: frozenset[str]) -> str:
    where = f" in the config file {config_file}" if key in file_keys else ""
    message = f"unknown setting {key!r}{where}; remove it or fix the spelling"
    close = difflib.get_close_matches(key, Settings.model_fields, n=3)
    if close:
        message += " (did you mean " + " or ".join(close) + "?)"
    return message


def _setting_source(setting: str, config_file: Path | None, file_keys: frozenset[str]) -> str:
    """Name where a value came from, in the order the sources are applied."""
    env = f"{ENV_PREFIX}{setting.upper()}"
    # Environment variable names are matched without regard to case, as pydantic-settings does.
    if any(name.upper() == env for name in os.environ):
        return f" (env {env})"
    if setting in file_keys:
        return f" (config file {config_file})"
    return f" (env {env})" if setting in Settings.model_fields else ""


def _is_unparsed_json_env(setting: str, source: str, error: Any) -> bool:
    return (
        setting in JSON_SETTINGS
        and source.startswith(" (env ")
        and len(error["loc"]) == 1
        and isinstance(error.get("input"), str)
    )


def _shown_value(setting: str, error: Any) -> str:
    value = error.get("input")
    if setting in SECRET_SETTINGS or any("key" in str(part) for part in error["loc"]):
        return "***"
    if isinstance(value, dict | list):
        # A whole table may contain an API key, so only scalar values are shown.
        return f"({type(value).__name__})"
    if isinstance(value, str):
        # A URL's user info may be a password.
        return repr(hide_userinfo(value))
    return repr(value)


def _describe_json_error(exc: SettingsError) -> str:
    """Explain a JSON-typed environment variable whose value is not valid JSON."""
    match = re.search(r'field "(\w+)"', str(exc))
    if match is None or match.group(1) not in Settings.model_fields:
        return f"invalid settings: {exc}; list and table values must be valid JSON"
    return _describe_invalid_json(match.group(1))


def _describe_invalid_json(setting: str) -> str:
    env = f"{ENV_PREFIX}{setting.upper()}"
    return f"invalid value of {env}: it must be JSON, for example {env}='{_json_example(setting)}'"


def _list_item_type(annotation: Any) -> Any | None:
    """Return the item type of a list setting (also `list[...] | None`), or None for others."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is list:
            return get_args(candidate)[0]
    return None


def _json_example(setting: str) -> str:
    """Build an example JSON value of a list setting, from the type of its items."""
    item_type = _list_item_type(Settings.model_fields[setting].annotation)
    if isinstance(item_type, type) and issubclass(item_type, BaseModel):
        required = [name for name, field in item_type.model_fields.items() if field.is_required()]
        fields = ", ".join(f'"{name}": "..."' for name in required)
        return f"[{{{fields}}}]"
    return '["first", "second"]'


SECRET_SETTINGS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)
# Settings that an environment variable sets as JSON, because their type is a list.
JSON_SETTINGS = frozenset(
    name
    for name, field in Settings.model_fields.items()
    if _list_item_type(field.annotation) is not None
)


def describe_settings() -> list[dict[str, str]]:
    """List every setting with its env var, type, default and help, for docs and `config show`."""
    rows = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "see help"
            if name == "data_dir":
                default = "`$XDG_DATA_HOME/llmcloud` (`~/.local/share/llmcloud`)"
        elif field.default is None:
            default = "unset"
        else:
            default = f"`{field.default}`"
        rows.append(
            {
                "name": name,
                "env": f"{ENV_PREFIX}{name.upper()}",
                "type": _type_name(field.annotation),
                "default": default,
                "help": field.description or "",
            }
        )
    return rows


def _type_name(annotation: Any) -> str:
    text = str(annotation)
    text = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    text = re.sub(r"\b(?:[a-z_]+\.)+([A-Za-z_]\w*)", r"\1", text)
    return text.replace("NoneType", "None")
