"""`/proxy.pac`: the proxy auto-config that sends internal pages through the SOCKS proxy.

Public on purpose, because browsers fetch it without a session; it contains
only the allow-listed networks and names and the proxy address.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from llmcloud.socks.acl import AllowList
from llmcloud.socks.pac import PAC_MEDIA_TYPE, pac_proxy_address, render_pac
from llmcloud.web.deps import web_state

router = APIRouter()


@router.get("/proxy.pac", include_in_schema=False)
async def proxy_pac(request: Request) -> Response:
    settings = web_state(request).settings
    allow_list = AllowList.parse(settings.socks_allow)
    address = pac_proxy_address(settings.socks_pac_proxy, settings.socks_port)
    return Response(
        render_pac(allow_list, address),
        media_type=PAC_MEDIA_TYPE,
        headers={"Cache-Control": "no-cache"},
    )
