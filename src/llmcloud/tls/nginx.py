"""An nginx server configuration for llmcloud behind nginx.

The rendered file belongs in nginx's http context (for example
/etc/nginx/conf.d/llmcloud.conf). It terminates TLS 1.2 and 1.3 with
Mozilla's intermediate ciphers, redirects port 80 to HTTPS but forwards
ACME HTTP-01 challenges to the web app, balances over an upstream of web
instances, upgrades /ws/ to WebSocket, passes streamed answers on without
buffering, sets X-Forwarded-*, limits request bodies as the web app does,
and hides /metrics. Checked with nginx 1.22 (Debian 12) by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmcloud.tls.context import INTERMEDIATE_CIPHERS
from llmcloud.tls.errors import CertificateError

UPSTREAM_NAME = "llmcloud_web"
# Longer than any pause in a streamed answer: model loading before the first token
# (gateway_first_token_timeout, 120 s by default) or an idle chat WebSocket.
DEFAULT_READ_TIMEOUT_SECONDS = 3600


@dataclass(frozen=True)
class NginxOptions:
    """Inputs of the rendered configuration; see `render_nginx_config`."""

    server_names: list[str]
    upstreams: list[str]
    cert_file: Path
    key_file: Path
    max_body_bytes: int
    https_listen: str = "443"
    http_listen: str | None = "80"
    read_timeout_seconds: int = DEFAULT_READ_TIMEOUT_SECONDS


def render_nginx_config(options: NginxOptions) -> str:
    """Render the upstream, the HTTPS server and the port-80 redirect server."""
    _check(options)
    parts = [_upstream(options), _upgrade_map(), _https_server(options)]
    if options.http_listen:
        parts.append(_redirect_server(options))
    return "\n".join(parts)


def _check(options: NginxOptions) -> None:
    if not options.upstreams:
        raise CertificateError("no upstream given; pass --upstream HOST:PORT for each web instance")
    if not options.server_names:
        raise CertificateError("no server name given; pass --server-name or set tls_acme_domains")
    for value in [*options.upstreams, *options.server_names, str(options.cert_file)]:
        if any(char in value for char in ";{}\"'\n\\ "):
            raise CertificateError(
                f"invalid value {value!r} for the nginx config; it must not contain spaces, "
                "quotes, braces, backslashes or ';'"
            )


def _upstream(options: NginxOptions) -> str:
    servers = "".join(f"    server {address};\n" for address in options.upstreams)
    return f"upstream {UPSTREAM_NAME} {{\n{servers}    keepalive 16;\n}}\n"


def _upgrade_map() -> str:
    return "map $http_upgrade $llmcloud_connection {\n    default upgrade;\n    ''      \"\";\n}\n"


def _https_server(options: NginxOptions) -> str:
    names = " ".join(options.server_names)
    timeout = f"{options.read_timeout_seconds}s"
    return f"""server {{
    listen {options.https_listen} ssl;
    server_name {names};

    ssl_certificate {options.cert_file};
    ssl_certificate_key {options.key_file};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {INTERMEDIATE_CIPHERS};
    ssl_prefer_server_ciphers off;
    ssl_session_timeout 1d;
    ssl_session_cache shared:llmcloud_tls:10m;
    ssl_session_tickets off;

    client_max_body_size {options.max_body_bytes};

    proxy_http_version 1.1;

    # Streamed answers: pass every token on at once, and wait out long pauses.
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_cache off;
    proxy_read_timeout {timeout};
    proxy_send_timeout {timeout};

    location = /metrics {{
        return 404;
    }}

    location /metrics/ {{
        return 404;
    }}

    location /ws/ {{
        proxy_pass http://{UPSTREAM_NAME};
{_proxy_headers("$llmcloud_connection", upgrade=True)}
    }}

    location / {{
        proxy_pass http://{UPSTREAM_NAME};
{_proxy_headers('""')}
    }}
}}
"""


def _proxy_headers(connection: str, *, upgrade: bool = False) -> str:
    """Return the proxy_set_header lines of one location.

    nginx inherits proxy_set_header from the server level only into locations
    that set none of their own, so every location lists all of them.
    """
    headers = [
        ("Host", "$http_host"),
        ("X-Real-IP", "$remote_addr"),
        ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
        ("X-Forwarded-Proto", "$scheme"),
        ("X-Forwarded-Host", "$http_host"),
        ("Connection", connection),
    ]
    if upgrade:
        headers.append(("Upgrade", "$http_upgrade"))
    return "\n".join(f"        proxy_set_header {name} {value};" for name, value in headers)


def _redirect_server(options: NginxOptions) -> str:
    names = " ".join(options.server_names)
    https_port = options.https_listen.rsplit(":", 1)[-1].split()[0]
    port = "" if https_port == "443" else f":{https_port}"
    return f"""server {{
    listen {options.http_listen};
    server_name {names};

    location /.well-known/acme-challenge/ {{
        proxy_pass http://{UPSTREAM_NAME};
        proxy_http_version 1.1;
{_proxy_headers('""')}
    }}

    location / {{
        return 301 https://$host{port}$request_uri;
    }}
}}
"""
