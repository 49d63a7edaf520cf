"""Drives the calls that `scripts/bench-instructions` counts: one MCP session, `change.open`,
warm-up calls, then zeroes callgrind's counters, makes N `change.show` calls over one
keep-alive connection (as one connection of the throughput bench does) and dumps the counts."""
import http.client
import json
import subprocess
import sys

port, calls, warmup = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def post(body):
    conn.request("POST", "/mcp", json.dumps(body), headers)
    response = conn.getresponse()
    return response, response.read()


def call(request_id, name, arguments):
    params = {"name": name, "arguments": arguments}
    response, body = post({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
    if response.status != 200 or b'"isError":false' not in body:
        sys.exit(f"{name} failed: {response.status} {body[:300]!r}")


response, _ = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench-instructions", "version": "1"}}})
headers["mcp-session-id"] = response.getheader("mcp-session-id")
headers["mcp-protocol-version"] = "2025-11-25"
post({"jsonrpc": "2.0", "method": "notifications/initialized"})
# The change the throughput bench reads (bench/src/grpc.rs: open_bench_change).
call(2, "change.open", {"title": "Bench change", "slug": "bench-change", "owner": "bench",
     "rationale": "A change the benchmark reads over and over: change.show on it is the measured call."})
for i in range(warmup):
    call(3, "change.show", {"slug": "bench-change"})
subprocess.run(["callgrind_control", "--zero"], check=True, capture_output=True)
for i in range(calls):
    call(3, "change.show", {"slug": "bench-change"})
subprocess.run(["callgrind_control", "--dump"], check=True, capture_output=True)
