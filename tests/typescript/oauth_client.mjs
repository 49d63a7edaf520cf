// The official MCP TypeScript SDK as an OAuth client of task-mcp (tests/oauth.rs).
//
// Its `ClientCredentialsProvider` is given the MCP URL, client credentials and the issuer they
// belong to, nothing else: it must find the rest as a real client does (the 401's
// `resource_metadata`, the server's RFC 9728 metadata, the issuer's metadata, a token for the
// resource), then open a session, list the tools and open a change.
//
//     node22 tests/typescript/oauth_client.mjs --url http://127.0.0.1:PORT/mcp --issuer URL \
//         --client-id ID --client-secret SECRET --scope "a b" --sdk .tools/ts-sdk [--slug SLUG]
//
// `--scope`: this SDK's client-credentials provider (1.32) asks the token endpoint for the
// scopes it is configured with only, not for those the challenge names (the Python SDK's does),
// so a machine client of it is configured with them. Without, it gets a token with no scope,
// our 403 `insufficient_scope`, and its step-up retry asks for nothing more.
//
// Prints one JSON object on stdout: every HTTP request the SDK made (method, URL, status), the
// tools and the call's result; exits 0 only if every step passed.
import { createRequire } from 'node:module';
import path from 'node:path';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    issuer: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    scope: { type: 'string' },
    sdk: { type: 'string', default: '.tools/ts-sdk' },
    slug: { type: 'string', default: 'oauth-opened-ts' },
  },
});
for (const name of ['url', 'issuer', 'client-id', 'client-secret']) {
  if (!args[name]) {
    console.error(`--${name} is required`);
    process.exit(2);
  }
}

// As client_check.mjs: resolve the SDK from its install folder, not from this file's.
const sdkRequire = createRequire(path.join(path.resolve(args.sdk), 'node_modules', 'noop.js'));
const load = (m) => sdkRequire(`@modelcontextprotocol/sdk/${m}`);
const { Client } = load('client/index.js');
const { StreamableHTTPClientTransport } = load('client/streamableHttp.js');
const { ClientCredentialsProvider } = load('client/auth-extensions.js');

const report = { requests: [], ok: false };
// Every request the SDK makes, discovery and token included, goes through this fetch.
const recording = async (input, init) => {
  const response = await fetch(input, init);
  const url = typeof input === 'string' ? input : input.url ?? String(input);
  report.requests.push({ method: init?.method ?? input.method ?? 'GET', url: String(url), status: response.status });
  return response;
};

try {
  const provider = new ClientCredentialsProvider({
    clientId: args['client-id'],
    clientSecret: args['client-secret'],
    expectedIssuer: args.issuer,
    scope: args.scope,
  });
  const client = new Client({ name: 'task-mcp-oauth-check', version: '1.0.0' }, { capabilities: {} });
  const transport = new StreamableHTTPClientTransport(new URL(args.url), { authProvider: provider, fetch: recording });
  await client.connect(transport);
  report.server = client.getServerVersion()?.name;
  report.tools = (await client.listTools()).tools.map((t) => t.name).sort();
  const opened = await client.callTool({ name: 'change.open', arguments: { slug: args.slug, title: 'Opened over OAuth' } });
  report.open = { isError: opened.isError ?? false, structured: opened.structuredContent ?? null };
  report.scope = provider.tokens()?.scope ?? null;
  await transport.close();
  report.ok = !report.open.isError;
} catch (error) {
  report.error = String(error?.stack ?? error);
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
