"""Drives the calls that `scripts/bench-instructions` counts, over one keep-alive connection (as
one connection of the throughput bench does): warm-up calls, then zeroes callgrind's counters,
makes N calls and dumps the counts.

- `task-mcp`: one MCP session, `change.open`, then `change.show` (the bench's `a` scenario).
- `peer-echo`: rmcp-echo's `echo` tool, session-less with the 2025-11-25 header (the bench's `e2`).
- `peer-show`: rmcp-echo's `show` tool, which answers our change.show JSON (the bench's `e3`)."""
import http.client
import json
import subprocess
import sys

server, port, calls, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def post(body):
    conn.request("POST", "/mcp", json.dumps(body), headers)
    response = conn.getresponse()
    return response, response.read()


def call(name, arguments):
    params = {"name": name, "arguments": arguments}
    response, body = post({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params})
    if response.status != 200 or b'"isError":true' in body or b'"error"' in body[:40]:
        sys.exit(f"{name} failed: {response.status} {body[:300]!r}")


if server == "task-mcp":
    response, _ = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench-instructions", "version": "1"}}})
    headers["mcp-session-id"] = response.getheader("mcp-session-id")
    headers["mcp-protocol-version"] = "2025-11-25"
    post({"jsonrpc": "2.0", "method": "notifications/initialized"})
    # The change the throughput bench reads (bench/src/grpc.rs: open_bench_change).
    call("change.open", {"title": "Bench change", "slug": "bench-change", "owner": "bench",
         "rationale": "A change the benchmark reads over and over: change.show on it is the measured call."})
    tool, arguments = "change.show", {"slug": "bench-change"}
else:
    headers["mcp-protocol-version"] = "2025-11-25"
    tool, arguments = {
        "peer-echo": ("echo", {"message": "hello from the bench"}),
        "peer-show": ("show", {"slug": "bench-change"}),
    }[server]

for _ in range(warmup):
    call(tool, arguments)
subprocess.run(["callgrind_control", "--zero"], check=True, capture_output=True)
for _ in range(calls):
    call(tool, arguments)
subprocess.run(["callgrind_control", "--dump"], check=True, capture_output=True)
