#!/usr/bin/env python3
"""The official MCP Python SDK (PyPI `mcp`) as a real client of task-mcp.

Run by tests/mcp_python.rs with the venv of scripts/install-test-tools:

    .tools/venv/bin/python tests/python/client_check.py \
        --url http://127.0.0.1:PORT --workspace /path/to/openspec

Over each transport, Streamable HTTP (`<url>/mcp`) and the legacy HTTP+SSE
transport (`<url>/sse`), it (with `--transport streamable-http-2026`, the same
over the stateless 2026-07-28 era: server/discover instead of initialize,
subscriptions/listen instead of resources/subscribe):

1. initializes a session;
2. lists the tools (following nextCursor) and checks the change tools are there;
3. calls change.open and checks structuredContent (slug, created) and that the
   SDK parsed a ResourceLink block for each of its resourceUris;
4. reads change://<slug>/proposal;
5. calls change.archive with a progress callback and checks that at least one
   progress notification arrived before the result;
6. reads change://<slug>/receipt;
7. opens a second change, subscribes to change://<slug2>/proposal, edits that
   proposal.md on disk and waits (bounded) for notifications/resources/updated
   for that URI.

It prints one JSON summary on stdout and exits 0 only if every step passed; on
a failure the summary names the transport, the step and the reason, and the
exit code is 1.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import secrets
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import anyio
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.subscriptions import ResourceUpdated, listen

try:  # mcp >= 1.24 (the pinned 2.x) names it streamable_http_client
    from mcp.client.streamable_http import streamable_http_client
except ImportError:  # pragma: no cover - older SDKs
    from mcp.client.streamable_http import streamablehttp_client as streamable_http_client

# The SDK marks the 2025-era subscribe API deprecated (2026-07-28 replaced it
# with subscriptions/listen); it is still the API for these eras.
warnings.simplefilter("ignore")

EXPECTED_TOOLS = {"change.open", "change.show", "change.list", "change.validate", "change.archive", "task.update"}
# Failure bounds, not speed checks.
STEP_BOUND_S = 30.0
NOTIFY_BOUND_S = 20.0
TRANSPORT_BOUND_S = 120.0


class CheckFailed(Exception):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def dump(model: Any) -> Any:
    if hasattr(model, "model_dump"):
        return model.model_dump(by_alias=True, mode="json", exclude_none=True)
    return model


def notification_parts(message: Any) -> tuple[str | None, dict[str, Any]]:
    """(method, params) of whatever the SDK hands the message handler."""
    if isinstance(message, Exception):
        return None, {}
    inner = getattr(message, "root", message)
    method = getattr(inner, "method", None)
    params = getattr(inner, "params", None)
    return method, dump(params) if params is not None else {}


class Run:
    """One transport's run: the steps done so far, for the summary."""

    def __init__(self, name: str, workspace: Path) -> None:
        self.name = name
        self.workspace = workspace
        self.steps: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.transport_errors: list[str] = []
        self.updated: dict[str, anyio.Event] = {}
        # The content blocks of the last tool result `call` returned.
        self.last_content: list[Any] = []

    def step(self, name: str, **facts: Any) -> None:
        self.steps.append({"step": name, "ok": True, **facts})

    async def on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            self.transport_errors.append(repr(message))
            return
        method, params = notification_parts(message)
        self.notifications.append({"method": method, "params": params, "at": time.monotonic()})
        if method == "notifications/resources/updated":
            event = self.updated.get(params.get("uri", ""))
            if event is not None:
                event.set()

    async def call(self, session: ClientSession, tool: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
        with anyio.fail_after(STEP_BOUND_S):
            result = await session.call_tool(tool, args, **kw)
        body = dump(result)
        expect(not result.is_error, f"{tool} returned isError: {json.dumps(body)[:2000]}")
        expect(isinstance(result.structured_content, dict), f"{tool} has no structuredContent: {json.dumps(body)[:2000]}")
        self.last_content = result.content
        return result.structured_content

    async def read_text(self, session: ClientSession, uri: str) -> str:
        with anyio.fail_after(STEP_BOUND_S):
            result = await session.read_resource(uri)
        expect(len(result.contents) >= 1, f"resources/read {uri}: no contents")
        content = result.contents[0]
        expect(str(content.uri) == uri, f"resources/read {uri}: content is for {content.uri}")
        text = getattr(content, "text", None)
        expect(isinstance(text, str), f"resources/read {uri}: no text content: {json.dumps(dump(result))[:1000]}")
        return text

    async def open_change(self, session: ClientSession, slug: str, title: str) -> dict[str, Any]:
        change = await self.call(session, "change.open", {"slug": slug, "title": title})
        expect(change.get("created") is True, f"change.open {slug}: created is not true: {json.dumps(change)[:1500]}")
        got = (change.get("change") or {}).get("slug")
        expect(got == slug, f"change.open {slug}: structuredContent change.slug is {got!r}")
        links = [str(c.uri) for c in self.last_content if isinstance(c, types.ResourceLink)]
        expect(
            links and links == change.get("resourceUris"),
            f"change.open {slug}: ResourceLink blocks {links} are not its resourceUris {change.get('resourceUris')}",
        )
        return change

    async def exercise(self, session: ClientSession, modern: bool = False) -> None:
        if modern:
            with anyio.fail_after(STEP_BOUND_S):
                found = await session.discover()
            expect(session.protocol_version == "2026-07-28", f"server/discover negotiated {session.protocol_version}")
            self.step(
                "server/discover",
                protocolVersion=session.protocol_version,
                supportedVersions=list(found.supported_versions),
                capabilities=dump(found.capabilities),
            )
            capabilities = found.capabilities
        else:
            with anyio.fail_after(STEP_BOUND_S):
                init = await session.initialize()
            self.step(
                "initialize",
                protocolVersion=init.protocol_version,
                server=dump(init.server_info),
                capabilities=dump(init.capabilities),
            )
            capabilities = init.capabilities
        expect(
            capabilities.resources is not None and bool(capabilities.resources.subscribe),
            "the server does not declare resources.subscribe",
        )

        names: list[str] = []
        cursor = None
        with anyio.fail_after(STEP_BOUND_S):
            while True:
                page = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
                names.extend(t.name for t in page.tools)
                cursor = page.next_cursor
                if not cursor:
                    break
        missing = sorted(EXPECTED_TOOLS - set(names))
        expect(not missing, f"tools/list lacks {missing}; it has {names}")
        fixtures = [n for n in names if n.startswith("test_")]
        expect(not fixtures, f"conformance fixtures leak into the default tool list: {fixtures}")
        self.step("tools/list", tools=sorted(names))

        tag = secrets.token_hex(3)
        slug = f"py-{self.name}-{tag}"
        title = f"Python SDK check over {self.name}"
        opened = await self.open_change(session, slug, title)
        self.step("change.open", slug=slug, created=True, files=opened.get("files"))

        proposal = await self.read_text(session, f"change://{slug}/proposal")
        expect(title in proposal, f"change://{slug}/proposal does not mention the title {title!r}:\n{proposal[:1000]}")
        self.step("resources/read proposal", uri=f"change://{slug}/proposal", bytes=len(proposal))

        progress: list[dict[str, Any]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append({"progress": value, "total": total, "message": message})

        archived = await self.call(session, "change.archive", {"slug": slug}, progress_callback=on_progress)
        before_result = len(progress)
        expect(before_result >= 1, "change.archive returned without any progress notification before its result")
        values = [p["progress"] for p in progress]
        expect(values == sorted(values), f"progress went backwards: {values}")
        receipt_path = (archived.get("receipt") or {}).get("archivePath")
        expect(bool(receipt_path), f"change.archive has no receipt.archivePath: {json.dumps(archived)[:1500]}")
        self.step("change.archive", progressBeforeResult=before_result, progress=progress, archivePath=receipt_path)

        receipt_text = await self.read_text(session, f"change://{slug}/receipt")
        receipt = json.loads(receipt_text)
        expect(receipt.get("slug") == slug, f"change://{slug}/receipt names slug {receipt.get('slug')!r}")
        self.step("resources/read receipt", uri=f"change://{slug}/receipt", receipt=receipt)

        slug2 = f"py-{self.name}-{tag}-watched"
        opened2 = await self.open_change(session, slug2, f"Watched over {self.name}")
        uri2 = f"change://{slug2}/proposal"
        rel = next((f for f in opened2.get("files") or [] if f.endswith("proposal.md")), f"changes/{slug2}/proposal.md")
        path2 = self.workspace / rel
        expect(path2.is_file(), f"{path2} does not exist after change.open {slug2}")
        self.updated[uri2] = anyio.Event()
        if modern:
            await self.listen_for_update(session, uri2, path2, tag)
            return
        with anyio.fail_after(STEP_BOUND_S):
            await session.subscribe_resource(uri2)
        self.step("resources/subscribe", uri=uri2)

        # Give the server's change feed a moment to be running; the wait below
        # is the bound, and the edit is repeated once in case the first one
        # raced the watch start.
        await anyio.sleep(0.3)
        edited_at = time.monotonic()
        edit(path2, f"Edited on disk by the Python SDK check ({tag}).")
        with anyio.move_on_after(NOTIFY_BOUND_S / 2):
            await self.updated[uri2].wait()
        if not self.updated[uri2].is_set():
            edit(path2, f"Edited again ({tag}).")
            with anyio.move_on_after(NOTIFY_BOUND_S / 2):
                await self.updated[uri2].wait()
        seen = [n for n in self.notifications if n["method"] == "notifications/resources/updated"]
        expect(
            self.updated[uri2].is_set(),
            f"no notifications/resources/updated for {uri2} within {NOTIFY_BOUND_S}s of editing {path2} "
            f"(resources/updated seen: {[n['params'] for n in seen]}; transport errors: {self.transport_errors})",
        )
        first = next(n for n in seen if n["params"].get("uri") == uri2)
        self.step("notifications/resources/updated", uri=uri2, afterSeconds=round(first["at"] - edited_at, 3))

    async def listen_for_update(self, session: ClientSession, uri: str, path: Path, tag: str) -> None:
        """2026-07-28: `subscriptions/listen` with resourceSubscriptions replaces resources/subscribe."""
        try:
            with anyio.fail_after(STEP_BOUND_S):
                subscription = listen(session, resource_subscriptions=[uri])
                stream = await subscription.__aenter__()
        except TimeoutError:
            raise CheckFailed(f"subscriptions/listen for {uri}: no notifications/subscriptions/acknowledged within {STEP_BOUND_S}s") from None
        try:
            self.step("subscriptions/listen", uri=uri)
            await anyio.sleep(0.3)
            edited_at = time.monotonic()
            edit(path, f"Edited on disk by the Python SDK check ({tag}).")
            got = None
            with anyio.move_on_after(NOTIFY_BOUND_S):
                async for event in stream:
                    if isinstance(event, ResourceUpdated) and event.uri == uri:
                        got = event
                        break
            expect(got is not None, f"no resources/updated event for {uri} on the listen stream within {NOTIFY_BOUND_S}s of editing {path}")
            self.step("notifications/resources/updated", uri=uri, afterSeconds=round(time.monotonic() - edited_at, 3))
        finally:
            await subscription.__aexit__(None, None, None)


def edit(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")


def innermost(e: BaseException) -> BaseException:
    """The first leaf of (nested) exception groups: the SDK's task groups wrap
    whatever the check raised."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


async def run_transport(name: str, url: str, workspace: Path) -> dict[str, Any]:
    run = Run(name, workspace)
    summary: dict[str, Any] = {"transport": name, "ok": False}
    try:
        with anyio.fail_after(TRANSPORT_BOUND_S):
            if name in ("streamable-http", "streamable-http-2026"):
                summary["endpoint"] = f"{url}/mcp"
                async with streamable_http_client(f"{url}/mcp") as streams:
                    read, write = streams[0], streams[1]
                    async with ClientSession(read, write, message_handler=run.on_message) as session:
                        await run.exercise(session, modern=name == "streamable-http-2026")
            else:
                summary["endpoint"] = f"{url}/sse"
                async with sse_client(f"{url}/sse") as (read, write):
                    async with ClientSession(read, write, message_handler=run.on_message) as session:
                        await run.exercise(session)
        summary["ok"] = True
    except BaseException as e:  # noqa: BLE001 - every failure must reach the summary
        root = innermost(e)
        if isinstance(root, CheckFailed):
            summary["error"] = str(root)
        elif isinstance(root, TimeoutError):
            summary["error"] = f"timed out (failure bound) during the step after {run.steps[-1]['step'] if run.steps else 'connect'}"
        else:
            summary["error"] = f"{type(root).__name__}: {root}"
            summary["traceback"] = "".join(traceback.format_exception(e))[-4000:]
    summary["steps"] = run.steps
    if not summary["ok"]:
        summary["failedAfter"] = run.steps[-1]["step"] if run.steps else "(connect)"
        summary["notifications"] = [{"method": n["method"], "params": n["params"]} for n in run.notifications][-20:]
        summary["transportErrors"] = run.transport_errors
    return summary


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--workspace", required=True, type=Path, help="the server's --workspace (openspec) directory")
    parser.add_argument(
        "--transport",
        choices=["streamable-http", "sse", "streamable-http-2026", "all"],
        default="all",
        help="what to check: 'all' is streamable-http and sse (the session eras, initialize); "
        "streamable-http-2026 is the stateless era (server/discover, subscriptions/listen)",
    )
    args = parser.parse_args()
    url = args.url.rstrip("/")
    transports = ["streamable-http", "sse"] if args.transport == "all" else [args.transport]
    results = [await run_transport(t, url, args.workspace) for t in transports]
    ok = all(r["ok"] for r in results)
    print(
        json.dumps(
            {"ok": ok, "sdk": {"mcp": importlib.metadata.version("mcp")}, "url": url, "results": results},
            indent=2,
            default=str,
        )
    )
    if not ok:
        for r in results:
            if not r["ok"]:
                print(f"FAILED [{r['transport']}] after {r['failedAfter']}: {r['error']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
