#!/usr/bin/env node
// A real OAuth 2.1 authorization server for the resource-server tests: npm
// `oidc-provider` (panva's certified OpenID Provider), pinned by
// scripts/install-test-tools into .tools/oidc, on loopback over plain http.
// It issues client_credentials access tokens as RFC 9068 JWTs (header
// `typ: at+jwt`, `alg: ES256`, `kid`) for the resources named on the command line.
//
//     .tools/bin/node22 tests/oauth/authorization_server.mjs \
//         [--port 0] [--resource URL]... [--scopes "changes:read changes:write"] \
//         [--ttl-seconds 300] [--keys-file PATH [--rotate]] \
//         [--client ID:SECRET[:SCOPES]]... [--client-auth-method client_secret_basic] \
//         [--oidc .tools/oidc]
//
//   --port N          0 (default) picks a free port; the issuer carries the real one.
//   --resource URL    an RFC 8707 resource indicator tokens may be issued for
//                     (repeatable). A token's `aud` is that URL exactly as given here;
//                     a request names it exactly or by the same WHATWG-normalised URL
//                     (so `http://h:1` and `http://h:1/` are one resource). Any other
//                     resource gets `invalid_target`. With no `resource` parameter the
//                     first --resource is used.
//   --scopes "a b"    the scopes the AS knows (space- or comma-separated); every
//                     resource accepts all of them. oidc-provider adds `openid` to the
//                     published scopes_supported on its own.
//   --ttl-seconds N   access-token lifetime (`exp - iat`, and `expires_in`).
//   --keys-file PATH  a JWKS of PRIVATE signing keys: loaded when it exists, else one
//                     ES256 key is generated and written there (mode 0600). Without
//                     it one key is generated in memory.
//   --rotate          (needs --keys-file) puts a fresh key with a new kid at the FRONT
//                     of the file before starting: oidc-provider signs with the first
//                     matching key, so new tokens carry the new kid, and the old key
//                     stays published in the JWKS. With no file yet it only creates it.
//   --client ID:SECRET[:SCOPES]
//                     a confidential client (repeatable), grant client_credentials
//                     only, no redirect URIs. The line is split at its FIRST TWO
//                     colons only, so ID and SECRET cannot contain ':' and SCOPES may
//                     (`reader:s3cret:changes:read` is id `reader`, secret `s3cret`,
//                     scopes `changes:read`). SCOPES (space- or comma-separated) are
//                     the scopes the client may request; a request for another known
//                     scope is refused with `invalid_scope`. Without SCOPES the client
//                     may request every --scopes value. Default: one client,
//                     `task-mcp-test:test-secret:changes:read changes:write`.
//   --client-auth-method M
//                     how every client authenticates at the token endpoint:
//                     `client_secret_basic` (default; HTTP Basic, what the MCP Python
//                     SDK's ClientCredentialsOAuthProvider sends by default) or
//                     `client_secret_post` (client_id/client_secret in the form).
//                     oidc-provider binds one method to each client and refuses the
//                     other; the discovery document advertises only this one.
//   --oidc DIR        where oidc-provider is installed (default .tools/oidc).
//
// When listening it prints exactly ONE line on stdout, then serves until killed
// (SIGTERM or SIGINT exit 0 at once):
//
//     {"issuer":"http://127.0.0.1:PORT","token_endpoint":"http://127.0.0.1:PORT/token","jwks_uri":"http://127.0.0.1:PORT/jwks"}
//
// Everything else, oidc-provider's development notices included, goes to stderr.
// Discovery is served at both /.well-known/openid-configuration and
// /.well-known/oauth-authorization-server (RFC 8414), from oidc-provider itself.
//
// Each line written to stdin adds one more --resource. This breaks the
// chicken-and-egg of two processes on port 0 (the resource server needs the
// issuer, the AS needs the resource URL): start the AS, then the resource
// server, then write its resource URL here. Each is acknowledged on stderr with
// `{"resource_added":"URL"}`; stdout keeps its single line.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

// oidc-provider's notices (console.info) would land on stdout, where the reader
// expects one JSON line: send every console method to stderr, and write the line
// with process.stdout.write.
for (const method of ['log', 'info', 'debug']) console[method] = console.error;

const HERE = path.dirname(fileURLToPath(import.meta.url));

function usage(message) {
  process.stderr.write(`authorization_server.mjs: ${message}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      resource: { type: 'string', multiple: true, default: [] },
      scopes: { type: 'string', default: 'changes:read changes:write' },
      'ttl-seconds': { type: 'string', default: '300' },
      'keys-file': { type: 'string' },
      rotate: { type: 'boolean', default: false },
      client: { type: 'string', multiple: true, default: ['task-mcp-test:test-secret:changes:read changes:write'] },
      'client-auth-method': { type: 'string', default: 'client_secret_basic' },
      oidc: { type: 'string', default: path.resolve(HERE, '../../.tools/oidc') },
    },
  }));
} catch (e) {
  usage(e.message);
}

const words = (list) => list.split(/[\s,]+/).filter(Boolean);
const PORT = Number(args.port);
const TTL = Number(args['ttl-seconds']);
const SCOPES = words(args.scopes);
if (!Number.isInteger(PORT) || PORT < 0 || PORT > 65535) usage(`--port must be 0..65535, not ${args.port}`);
if (!Number.isInteger(TTL) || TTL < 1) usage(`--ttl-seconds must be a positive integer, not ${args['ttl-seconds']}`);
if (SCOPES.length === 0) usage('--scopes names no scope');
if (args.rotate && !args['keys-file']) usage('--rotate needs --keys-file (it rotates the keys in that file)');
if (!['client_secret_basic', 'client_secret_post'].includes(args['client-auth-method'])) {
  usage(`--client-auth-method must be client_secret_basic or client_secret_post, not ${args['client-auth-method']}`);
}

// ---------------------------------------------------------------- resources

// Identifier as configured -> normalised form used for matching.
const RESOURCES = new Map();
function addResource(url) {
  const normalised = URL.parse(url)?.href;
  if (!normalised || normalised.includes('#')) throw new Error(`not an absolute URL without fragment: ${url}`);
  RESOURCES.set(url, normalised);
}
try {
  args.resource.forEach(addResource);
} catch (e) {
  usage(`--resource: ${e.message}`);
}
const configuredResource = (requested) => {
  const normalised = URL.parse(requested)?.href;
  for (const [url, norm] of RESOURCES) if (url === requested || norm === normalised) return url;
  return undefined;
};

// ---------------------------------------------------------------- clients

const CLIENTS = args.client.map((spec) => {
  const first = spec.indexOf(':');
  const second = first < 0 ? -1 : spec.indexOf(':', first + 1);
  if (first <= 0) usage(`--client must be ID:SECRET[:SCOPES], not ${spec}`);
  const id = spec.slice(0, first);
  const secret = second < 0 ? spec.slice(first + 1) : spec.slice(first + 1, second);
  const scopes = second < 0 ? SCOPES : words(spec.slice(second + 1));
  if (!secret) usage(`--client ${spec}: empty secret`);
  const unknown = scopes.filter((s) => !SCOPES.includes(s));
  if (unknown.length) usage(`--client ${id}: scopes ${unknown.join(' ')} are not in --scopes`);
  return {
    client_id: id,
    client_secret: secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: args['client-auth-method'],
    scope: scopes.join(' '),
  };
});

// ---------------------------------------------------------------- keys

function newKey() {
  const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  // alg and use on every key: oidc-provider ranks keys that name them above keys
  // that do not, so uniform keys keep "first key in the list signs" true.
  return { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'ES256', use: 'sig' };
}

function loadKeys() {
  const file = args['keys-file'];
  if (!file) return { keys: [newKey()] };
  let jwks;
  if (fs.existsSync(file)) {
    jwks = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (!Array.isArray(jwks?.keys) || jwks.keys.length === 0) usage(`--keys-file ${file} is not a JWKS with keys`);
    if (!args.rotate) return jwks;
    jwks.keys.unshift(newKey());
  } else {
    jwks = { keys: [newKey()] };
  }
  fs.writeFileSync(file, `${JSON.stringify(jwks, null, 2)}\n`, { mode: 0o600 });
  return jwks;
}

// ---------------------------------------------------------------- oidc-provider

// As tests/typescript/*.mjs do: an ES module `import` of a bare specifier only
// looks upward from this file, so resolve through a require anchored in the
// install folder (the package's own exports map), then import that file.
async function loadProvider() {
  const req = createRequire(path.join(path.resolve(args.oidc), 'node_modules', 'noop.js'));
  try {
    return await import(pathToFileURL(req.resolve('oidc-provider')).href);
  } catch (e) {
    process.stderr.write(`cannot load oidc-provider from ${args.oidc} (${e.message}); run scripts/install-test-tools\n`);
    process.exit(2);
  }
}

const { default: Provider, errors } = await loadProvider();
const jwks = loadKeys();

// Listen first, build the provider second: with --port 0 the issuer must carry
// the port the kernel picked.
const server = http.createServer();
await new Promise((resolve) => {
  server.once('error', (e) => {
    process.stderr.write(`authorization_server.mjs: cannot listen on 127.0.0.1:${PORT}: ${e.message}\n`);
    process.exit(1);
  });
  server.listen(PORT, '127.0.0.1', resolve);
});
const ISSUER = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(ISSUER, {
  clients: CLIENTS,
  jwks,
  scopes: SCOPES,
  clientAuthMethods: [args['client-auth-method']],
  // The keys are EC only; the default (RS256) would make every client invalid.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  features: {
    // Only the token endpoint matters here: no login pages, no user sessions.
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A request without `resource` gets the first one; with none configured
      // (yet: see stdin) oidc-provider falls back to an opaque, audience-less token.
      defaultResource: () => RESOURCES.keys().next().value,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        const audience = configuredResource(resourceIndicator);
        if (!audience) throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        return {
          scope: SCOPES.join(' '),
          audience,
          accessTokenTTL: TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  ttl: { AccessToken: TTL, ClientCredentials: TTL },
});
// Token-endpoint failures (invalid_client, invalid_scope, invalid_target) are
// what the tests provoke; say why on stderr.
provider.on('grant.error', (ctx, err) => {
  process.stderr.write(`grant.error: ${err.error ?? err.name}: ${err.error_description ?? err.message}\n`);
});
provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));
server.on('request', provider.callback());

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));

process.stdout.write(
  `${JSON.stringify({ issuer: ISSUER, token_endpoint: `${ISSUER}/token`, jwks_uri: `${ISSUER}/jwks` })}\n`,
);
process.stderr.write(
  `authorization server ${ISSUER}: resources [${[...RESOURCES.keys()].join(', ')}], ` +
    `clients [${CLIENTS.map((c) => `${c.client_id} (${c.scope})`).join(', ')}], signing kid ${jwks.keys[0].kid}\n`,
);

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const url = line.trim();
  if (!url) return;
  try {
    addResource(url);
    process.stderr.write(`${JSON.stringify({ resource_added: url })}\n`);
  } catch (e) {
    process.stderr.write(`${JSON.stringify({ resource_rejected: url, reason: e.message })}\n`);
  }
});
