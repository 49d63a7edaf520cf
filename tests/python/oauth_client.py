"""The official MCP Python SDK as an OAuth client of task-mcp (tests/oauth.rs).

The SDK's `ClientCredentialsOAuthProvider` is given only the MCP URL, its client
credentials and the issuer they belong to. Everything else it must find as a real
client would: the 401's `WWW-Authenticate` names the server's RFC 9728 metadata, the
metadata names the authorization server, whose own metadata names the token endpoint;
the token it gets (for the resource the metadata names) must then open a session, list
the tools and open a change.

Prints one JSON object on stdout: the steps seen by the HTTP client (each request's
method, URL and status) and the tool results; exits 0 only if every step passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

import anyio
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken


class MemoryStorage:
    """Tokens for this run only (the SDK's TokenStorage protocol)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


async def run(args: argparse.Namespace, report: dict) -> None:
    requests: list[dict] = report["requests"]

    async def record(response) -> None:
        requests.append({"method": response.request.method, "url": str(response.request.url), "status": response.status_code})

    storage = MemoryStorage()
    provider = ClientCredentialsOAuthProvider(
        server_url=args.url,
        storage=storage,
        client_id=args.client_id,
        client_secret=args.client_secret,
        issuer=args.issuer,
    )
    http = create_mcp_http_client(auth=provider)
    http.event_hooks["response"].append(record)
    async with http:
        async with streamable_http_client(args.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                report["server"] = init.server_info.name
                tools = await session.list_tools()
                report["tools"] = sorted(t.name for t in tools.tools)
                opened = await session.call_tool("change.open", {"slug": args.slug, "title": "Opened over OAuth"})
                report["open"] = {"isError": opened.is_error, "structured": opened.structured_content}
    report["scope"] = storage.tokens.scope if storage.tokens else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="the MCP endpoint, e.g. http://127.0.0.1:PORT/mcp")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--slug", default="oauth-opened")
    args = parser.parse_args()
    report: dict = {"requests": [], "ok": False}
    try:
        anyio.run(run, args, report)
        report["ok"] = not report["open"]["isError"]
    except BaseException as error:  # noqa: BLE001 - the report must say what failed
        report["error"] = "".join(traceback.format_exception(error))
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
