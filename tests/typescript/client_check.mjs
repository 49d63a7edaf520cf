#!/usr/bin/env node
// The official MCP TypeScript SDK (npm `@modelcontextprotocol/sdk`, the client
// Claude Desktop, Cursor and the MCP Inspector build on) as a real client of
// task-mcp.
//
// Run by tests/mcp_typescript.rs with the tools of scripts/install-test-tools:
//
//     .tools/bin/node22 tests/typescript/client_check.mjs \
//         --url http://127.0.0.1:PORT --workspace /path/to/openspec \
//         [--transport streamable-http|sse|all] [--sdk .tools/ts-sdk] [--archives 10]
//
// Over Streamable HTTP (`<url>/mcp`, StreamableHTTPClientTransport) and the
// legacy HTTP+SSE transport (`<url>/sse`, SSEClientTransport; reached through a
// small TCP proxy in this script so that step 6 can sever the connection):
//
// 1. connect (initialize); tools/list, every page, and the change tools are
//    there. The SDK compiles every outputSchema here and from then on validates
//    every structuredContent: a validation error fails the step it happens in;
// 2. change.open (with a resource_link block per resourceUris entry),
//    change.show, task.update ticking an id taken from
//    change.show, change.validate;
// 3. change.archive with onprogress: at least one progress notification before
//    the result; over legacy SSE, `--archives` archives in a row, none of which
//    may lose progress, and client.onerror must never report "unknown token"
//    (a progress notification that reached the SDK after its response);
// 4. resources/read of change://<slug>/proposal and change://<slug>/receipt;
// 5. resources/subscribe to a second change's proposal, an edit of its
//    proposal.md on disk, and notifications/resources/updated for that URI
//    within a bound;
// 7. cancellation: change.archive of a change whose folder is held with
//    flock(1) (the server waits for its turn at the folder), aborted with an
//    AbortSignal; client.onerror must not report "Received a response for an
//    unknown message ID", and nothing may be archived once the folder is free;
// 6. (legacy SSE only, last: it changes the session) the proxy severs every
//    connection; the SDK's EventSource reconnects, gets a new `endpoint` event
//    and carries on without initializing again; a tool call must still return
//    structuredContent that passes the SDK's output-schema check.
//
// It prints one JSON summary on stdout and exits 0 only if every step passed;
// on a failure the summary (and a line on stderr) names the transport, the step
// and the reason, and the exit code is 1 (2 for bad arguments or an SDK that
// cannot be loaded).
//
// Loading the SDK: an ES module `import` of a bare specifier ignores NODE_PATH
// and looks for node_modules only upward from the importing file, so this file
// (in tests/typescript/) cannot reach .tools/ts-sdk/node_modules that way.
// `createRequire` anchored in the install folder resolves through the package's
// own `exports` map (no hard-coded dist/ path), and every module comes from the
// one (CommonJS) build, so the classes and schemas are a single copy.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const EXPECTED_TOOLS = ['change.open', 'change.show', 'change.list', 'change.validate', 'change.archive', 'task.update'];
// Failure bounds, not speed checks.
const STEP_BOUND_MS = 30_000;
const NOTIFY_BOUND_MS = 20_000;
const RECONNECT_BOUND_MS = 15_000;
const TRANSPORT_BOUND_MS = 120_000;
// Step 7: how long the call waits at the held folder before it is aborted, and
// how long after the abort the folder stays held (the cancellation has to reach
// the server first) and then stays watched (a call that was not cancelled would
// archive within milliseconds of the folder coming free).
const CANCEL_AFTER_MS = 300;
const HOLD_AFTER_ABORT_MS = 300;
const WATCH_AFTER_RELEASE_MS = 400;

// ---------------------------------------------------------------- arguments

function usage(message) {
  process.stderr.write(`client_check.mjs: ${message}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      url: { type: 'string' },
      workspace: { type: 'string' },
      transport: { type: 'string', default: 'all' },
      sdk: { type: 'string', default: path.resolve(HERE, '../../.tools/ts-sdk') },
      archives: { type: 'string', default: '10' },
    },
  }));
} catch (e) {
  usage(e.message);
}
if (!args.url) usage('--url is required (the gateway base URL, e.g. http://127.0.0.1:8080)');
if (!args.workspace) usage("--workspace is required (the server's --workspace directory)");
const TRANSPORTS = { 'streamable-http': ['streamable-http'], sse: ['sse'], all: ['streamable-http', 'sse'] }[args.transport];
if (!TRANSPORTS) usage(`--transport must be streamable-http, sse or all, not ${args.transport}`);
const ARCHIVES = Number(args.archives);
if (!Number.isInteger(ARCHIVES) || ARCHIVES < 1) usage(`--archives must be a positive integer, not ${args.archives}`);
const BASE = args.url.replace(/\/+$/, '');
const WORKSPACE = path.resolve(args.workspace);

// ---------------------------------------------------------------- the SDK

const SDK_DIR = path.resolve(args.sdk);
let sdk;
try {
  const sdkRequire = createRequire(path.join(SDK_DIR, 'node_modules', 'noop.js'));
  const load = (m) => sdkRequire(`@modelcontextprotocol/sdk/${m}`);
  const pkg = JSON.parse(
    fs.readFileSync(path.join(SDK_DIR, 'node_modules', '@modelcontextprotocol', 'sdk', 'package.json'), 'utf8'),
  );
  sdk = {
    version: pkg.version,
    ...load('client/index.js'),
    ...load('client/streamableHttp.js'),
    ...load('client/sse.js'),
    ...load('types.js'),
  };
} catch (e) {
  usage(
    `cannot load @modelcontextprotocol/sdk from ${SDK_DIR} (${e.message}); ` +
      'run scripts/install-test-tools, which installs the pinned SDK into .tools/ts-sdk',
  );
}
const { Client, StreamableHTTPClientTransport, SSEClientTransport, ResourceUpdatedNotificationSchema } = sdk;

// ---------------------------------------------------------------- helpers

class CheckFailed extends Error {}

function expect(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function short(value, n = 1500) {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text === undefined ? String(value) : text.length > n ? `${text.slice(0, n)}...` : text;
}

async function bounded(what, ms, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckFailed(`${what}: no answer within ${ms} ms (failure bound)`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function until(what, ms, predicate) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new CheckFailed(`${what}: not within ${ms} ms (failure bound)`);
    await sleep(20);
  }
}

function describe(e) {
  if (e instanceof CheckFailed) return e.message;
  const code = e?.code !== undefined ? ` (code ${e.code})` : '';
  return `${e?.constructor?.name ?? 'Error'}${code}: ${e?.message ?? String(e)}`;
}

/// A TCP proxy on loopback between the client and the server, whose
/// connections can all be severed at once (a dropped network, both ways).
async function startProxy(target) {
  const pairs = new Set();
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted += 1;
    const upstream = net.connect(Number(target.port), target.hostname);
    const pair = { client, upstream };
    pairs.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    get accepted() {
      return accepted;
    },
    sever() {
      const n = pairs.size;
      for (const { client, upstream } of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
      pairs.clear();
      return n;
    },
    close() {
      this.sever();
      server.close();
    },
  };
}

/// Holds an exclusive flock on `dir` with flock(1) (util-linux; Node has no
/// flock of its own) until `release()`: `flock DIR cat` keeps the lock while
/// `cat` reads its stdin, so closing stdin releases it, and so does this
/// script's death (the pipe closes).
async function holdFolder(dir) {
  const child = spawn('flock', ['--exclusive', dir, 'sh', '-c', 'echo held; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => child.on('close', resolve));
  await bounded(
    `flock ${dir}`,
    STEP_BOUND_MS,
    new Promise((resolve, reject) => {
      child.on('error', (e) =>
        reject(new CheckFailed(`cannot run flock(1) to hold ${dir} (${e.message}); it is util-linux's, install util-linux`)),
      );
      child.stdout.on('data', (d) => String(d).includes('held') && resolve());
      child.on('close', (code) => reject(new CheckFailed(`flock ${dir} exited ${code} before holding it: ${stderr}`)));
    }),
  );
  return {
    async release() {
      child.stdin.end();
      await bounded(`releasing flock ${dir}`, STEP_BOUND_MS, exited);
    },
  };
}

// ---------------------------------------------------------------- one transport's run

class Run {
  constructor(name) {
    this.name = name;
    this.steps = [];
    this.current = '(connect)';
    this.errors = []; // everything client.onerror reported: {step, message}
    this.updated = new Map(); // uri -> time of the first notifications/resources/updated
    this.tag = crypto.randomBytes(3).toString('hex');
    this.client = new Client({ name: 'task-mcp-ts-sdk-check', version: '1.0.0' }, { capabilities: {} });
    this.client.onerror = (e) => this.errors.push({ step: this.current, message: short(String(e?.message ?? e), 400) });
    this.client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => {
      if (!this.updated.has(n.params.uri)) this.updated.set(n.params.uri, Date.now());
    });
  }

  begin(step) {
    this.current = step;
    this.startedAt = Date.now();
  }

  pass(facts = {}) {
    this.steps.push({ step: this.current, ok: true, ms: Date.now() - this.startedAt, ...facts });
  }

  /// client.onerror reports of the current step, other than those `allowed` matches.
  errorsNow(allowed = () => false) {
    return this.errors.filter((e) => e.step === this.current && !allowed(e.message));
  }

  expectNoErrors(allowed) {
    const errors = this.errorsNow(allowed);
    expect(errors.length === 0, `client.onerror reported: ${short(errors.map((e) => e.message), 1200)}`);
  }

  async call(name, args, options) {
    let result;
    try {
      result = await bounded(`tools/call ${name}`, STEP_BOUND_MS, this.client.callTool({ name, arguments: args }, undefined, options));
    } catch (e) {
      // The SDK's output-schema check (and a missing structuredContent) land here.
      throw new CheckFailed(`tools/call ${name} failed: ${describe(e)}`);
    }
    expect(!result.isError, `${name} returned isError: ${short(result)}`);
    expect(
      result.structuredContent && typeof result.structuredContent === 'object',
      `${name} has no structuredContent: ${short(result)}`,
    );
    this.lastContent = result.content;
    return result.structuredContent;
  }

  async readText(uri) {
    const result = await bounded(`resources/read ${uri}`, STEP_BOUND_MS, this.client.readResource({ uri }));
    expect(result.contents?.length >= 1, `resources/read ${uri}: no contents`);
    const [content] = result.contents;
    expect(content.uri === uri, `resources/read ${uri}: the content is for ${content.uri}`);
    expect(typeof content.text === 'string', `resources/read ${uri}: no text content: ${short(result)}`);
    return content.text;
  }

  async openChange(slug, title) {
    const opened = await this.call('change.open', { slug, title });
    expect(opened.created === true, `change.open ${slug}: created is not true: ${short(opened)}`);
    expect(opened.change?.slug === slug, `change.open ${slug}: structuredContent change.slug is ${opened.change?.slug}`);
    const links = this.lastContent.filter((block) => block.type === 'resource_link').map((block) => block.uri);
    expect(
      links.length > 0 && JSON.stringify(links) === JSON.stringify(opened.resourceUris),
      `change.open ${slug}: resource_link blocks ${JSON.stringify(links)} are not its resourceUris ${JSON.stringify(opened.resourceUris)}`,
    );
    return opened;
  }

  /// One change.archive with onprogress: how many progress notifications
  /// arrived before the result, and the result.
  async archiveWithProgress(slug) {
    const progress = [];
    const result = await this.call('change.archive', { slug }, { onprogress: (p) => progress.push(p) });
    return { beforeResult: progress.length, progress, result };
  }

  // ------------------------------------------------------------ the steps

  async connect(transport) {
    this.begin('connect');
    await bounded('connect (initialize)', STEP_BOUND_MS, this.client.connect(transport));
    const caps = this.client.getServerCapabilities();
    expect(caps?.tools, `the server declares no tools capability: ${short(caps)}`);
    expect(caps?.resources?.subscribe, `the server does not declare resources.subscribe: ${short(caps)}`);
    this.expectNoErrors();
    this.pass({ server: this.client.getServerVersion(), capabilities: caps });
  }

  async listTools() {
    this.begin('tools/list');
    const names = [];
    let cursor;
    let pages = 0;
    do {
      let page;
      try {
        page = await bounded('tools/list', STEP_BOUND_MS, this.client.listTools(cursor ? { cursor } : undefined));
      } catch (e) {
        // The SDK compiles each tool's outputSchema while it lists them.
        throw new CheckFailed(`tools/list failed: ${describe(e)}`);
      }
      pages += 1;
      names.push(...page.tools.map((t) => t.name));
      const noSchema = page.tools.filter((t) => EXPECTED_TOOLS.includes(t.name) && !t.outputSchema).map((t) => t.name);
      expect(noSchema.length === 0, `tools without an outputSchema (nothing to validate against): ${noSchema}`);
      cursor = page.nextCursor;
    } while (cursor);
    const missing = EXPECTED_TOOLS.filter((t) => !names.includes(t));
    expect(missing.length === 0, `tools/list lacks ${missing}; it has ${names}`);
    const fixtures = names.filter((n) => n.startsWith('test_'));
    expect(fixtures.length === 0, `conformance fixtures leak into the default tool list: ${fixtures}`);
    this.expectNoErrors();
    this.pass({ pages, tools: names.sort() });
  }

  async changeFlow() {
    const slug = `ts-${this.name}-${this.tag}`;
    const title = `TypeScript SDK check over ${this.name}`;

    this.begin('change.open');
    const opened = await this.openChange(slug, title);
    this.expectNoErrors();
    this.pass({ slug, files: opened.files });

    this.begin('change.show');
    const shown = await this.call('change.show', { slug });
    expect(shown.change?.slug === slug, `change.show ${slug}: change.slug is ${shown.change?.slug}`);
    expect(Array.isArray(shown.tasks) && shown.tasks.length > 0, `change.show ${slug}: no tasks: ${short(shown)}`);
    const task = shown.tasks.find((t) => !t.done);
    expect(task?.id, `change.show ${slug}: no open task to tick: ${short(shown.tasks)}`);
    this.expectNoErrors();
    this.pass({ tasks: shown.tasks.length, progress: shown.change.progress });

    this.begin('task.update');
    const updated = await this.call('task.update', { slug, updates: [{ id: task.id, done: true }] });
    expect(
      Array.isArray(updated.changed) && updated.changed.includes(task.id),
      `task.update ${slug} ${task.id}: changed is ${short(updated.changed)}`,
    );
    const after = updated.tasks?.find((t) => t.id === task.id);
    expect(after?.done === true, `task.update ${slug} ${task.id}: the task is not ticked afterwards: ${short(after)}`);
    expect(
      updated.progress?.done === (shown.change.progress?.done ?? 0) + 1,
      `task.update ${slug}: progress.done went from ${shown.change.progress?.done} to ${updated.progress?.done}`,
    );
    this.expectNoErrors();
    this.pass({ ticked: task.id, progress: updated.progress });

    this.begin('change.validate');
    const validated = await this.call('change.validate', { slug });
    expect(typeof validated.valid === 'boolean', `change.validate ${slug}: no boolean valid: ${short(validated)}`);
    const errors = (validated.findings ?? []).filter((f) => f.severity === 'SEVERITY_ERROR');
    expect(validated.valid === true && errors.length === 0, `change.validate ${slug}: not valid: ${short(validated)}`);
    this.expectNoErrors();
    this.pass({ valid: validated.valid, findings: (validated.findings ?? []).length });

    this.begin('resources/read proposal');
    const uri = `change://${slug}/proposal`;
    const proposal = await this.readText(uri);
    expect(proposal.includes(title), `${uri} does not mention the title ${JSON.stringify(title)}:\n${short(proposal, 1000)}`);
    this.expectNoErrors();
    this.pass({ uri, bytes: proposal.length });

    return slug;
  }

  /// Step 3: archives with progress. Over legacy SSE, `count` in a row (the
  /// first is `slug`, the rest are opened here), none of which may lose progress.
  async archives(slug, count) {
    this.begin('change.archive');
    const runs = [];
    const slugs = [slug];
    for (let i = 1; i < count; i++) {
      slugs.push(`${slug}-a${i}`);
    }
    let first;
    for (const [i, s] of slugs.entries()) {
      if (i > 0) await this.openChange(s, `Archive ${i} over ${this.name}`);
      const { beforeResult, progress, result } = await this.archiveWithProgress(s);
      const receipt = result.receipt?.archivePath;
      expect(receipt, `change.archive ${s} has no receipt.archivePath: ${short(result)}`);
      const values = progress.map((p) => p.progress);
      expect(
        values.every((v, j) => j === 0 || v >= values[j - 1]),
        `change.archive ${s}: progress went backwards: ${values}`,
      );
      runs.push({ slug: s, beforeResult, progress: values, total: progress.at(-1)?.total });
      if (i === 0) first = { progress, archivePath: receipt };
    }
    // Give a progress notification that trailed its response time to reach
    // the SDK and be reported as an unknown token.
    await sleep(100);
    // Every archive sends the same steps; one that got fewer than the most any
    // got lost some (and the SDK reports each lost one as an unknown token).
    const most = Math.max(...runs.map((r) => r.beforeResult));
    const lost = runs.filter((r) => r.beforeResult < most);
    const none = runs.filter((r) => r.beforeResult < 1);
    const unknown = this.errorsNow().filter((e) => e.message.includes('unknown token'));
    expect(
      none.length === 0 && lost.length === 0 && unknown.length === 0,
      `${most < 1 ? runs.length : lost.length} of ${runs.length} archives lost progress: progress notifications ` +
        `before the result per archive: ${runs.map((r) => r.beforeResult)} (${none.length} with none); ` +
        `client.onerror reported "unknown token" ${unknown.length} times` +
        (unknown.length ? ` (first: ${unknown[0].message})` : ''),
    );
    this.expectNoErrors();
    this.pass({
      archives: runs.length,
      progressBeforeResult: most,
      progress: first.progress,
      archivePath: first.archivePath,
    });

    this.begin('resources/read receipt');
    const uri = `change://${slug}/receipt`;
    const text = await this.readText(uri);
    let receipt;
    try {
      receipt = JSON.parse(text);
    } catch (e) {
      throw new CheckFailed(`${uri} is not JSON (${e.message}): ${short(text, 500)}`);
    }
    expect(receipt.slug === slug, `${uri} names slug ${receipt.slug}`);
    this.expectNoErrors();
    this.pass({ uri, archivePath: receipt.archivePath });
  }

  async subscription() {
    const slug = `ts-${this.name}-${this.tag}-watched`;
    this.begin('resources/subscribe');
    const opened = await this.openChange(slug, `Watched over ${this.name}`);
    const uri = `change://${slug}/proposal`;
    const rel = (opened.files ?? []).find((f) => f.endsWith('proposal.md')) ?? `changes/${slug}/proposal.md`;
    const file = path.join(WORKSPACE, rel);
    expect(fs.existsSync(file), `${file} does not exist after change.open ${slug}`);
    await bounded(`resources/subscribe ${uri}`, STEP_BOUND_MS, this.client.subscribeResource({ uri }));
    this.expectNoErrors();
    this.pass({ uri });

    this.begin('notifications/resources/updated');
    // The wait below is the bound; the edit is repeated once in case the first
    // raced the start of the server's watch.
    await sleep(300);
    const editedAt = Date.now();
    fs.appendFileSync(file, `\nEdited on disk by the TypeScript SDK check (${this.tag}).\n`);
    const seen = () => this.updated.has(uri);
    try {
      await until('updated', NOTIFY_BOUND_MS / 2, seen);
    } catch {
      fs.appendFileSync(file, `\nEdited again (${this.tag}).\n`);
      try {
        await until('updated', NOTIFY_BOUND_MS / 2, seen);
      } catch {
        throw new CheckFailed(
          `no notifications/resources/updated for ${uri} within ${NOTIFY_BOUND_MS} ms of editing ${file} ` +
            `(updated seen for: ${short([...this.updated.keys()])})`,
        );
      }
    }
    this.expectNoErrors();
    this.pass({ uri, afterMs: this.updated.get(uri) - editedAt });
  }

  /// Step 7: a call waiting at a held folder, aborted.
  async cancellation() {
    this.begin('cancel');
    const slug = `ts-${this.name}-${this.tag}-cancelled`;
    await this.openChange(slug, `Cancelled over ${this.name}`);
    const dir = path.join(WORKSPACE, 'changes', slug);
    expect(fs.statSync(dir, { throwIfNoEntry: false })?.isDirectory(), `${dir} is not a folder after change.open`);
    const hold = await holdFolder(dir);
    let outcome;
    try {
      const abort = new AbortController();
      // No onprogress: the call awaits a plain JSON answer over Streamable HTTP.
      const call = this.client
        .callTool({ name: 'change.archive', arguments: { slug } }, undefined, { signal: abort.signal })
        .then(
          (result) => ({ completed: result }),
          (error) => ({ error }),
        );
      await sleep(CANCEL_AFTER_MS);
      abort.abort(new Error('cancelled by the TypeScript SDK check'));
      outcome = await bounded('the aborted change.archive', STEP_BOUND_MS, call);
      await sleep(HOLD_AFTER_ABORT_MS);
    } finally {
      await hold.release();
    }
    expect(
      !outcome.completed,
      `change.archive ${slug} completed although its folder was held (the hold did not make it wait): ${short(outcome.completed)}`,
    );
    expect(
      String(outcome.error?.message).includes('cancelled by the TypeScript SDK check'),
      `the aborted change.archive failed otherwise than with the abort: ${describe(outcome.error)}`,
    );
    await sleep(WATCH_AFTER_RELEASE_MS);
    const archiveDir = path.join(WORKSPACE, 'changes', 'archive');
    const archived = fs.existsSync(archiveDir) ? fs.readdirSync(archiveDir).filter((d) => d.endsWith(`-${slug}`)) : [];
    expect(archived.length === 0, `the cancelled change.archive ${slug} archived it anyway: changes/archive/${archived}`);
    expect(fs.existsSync(dir), `${dir} is gone after the cancelled change.archive`);
    const shown = await this.call('change.show', { slug });
    expect(
      shown.change?.status === 'CHANGE_STATUS_DRAFT',
      `change.show ${slug} after the cancelled archive: status ${shown.change?.status}`,
    );
    const unknownId = this.errorsNow().filter((e) => e.message.includes('unknown message ID'));
    expect(
      unknownId.length === 0,
      `the server answered the cancelled request: client.onerror reported ${short(unknownId.map((e) => e.message), 800)}`,
    );
    this.expectNoErrors();
    this.pass({ aborted: describe(outcome.error), archived: false, status: shown.change.status });
  }

  /// Step 6 (legacy SSE): sever the connection; the SDK's EventSource
  /// reconnects to a new session that was never initialized.
  async reconnect(proxy, transport) {
    this.begin('reconnect');
    // The endpoint the SDK posts to is private to its transport; with the
    // pinned SDK it is `_endpoint`. Without it, this step cannot tell when the
    // reconnect has happened.
    const endpoint = () => (transport._endpoint ? String(transport._endpoint) : undefined);
    const before = endpoint();
    expect(before, `SSEClientTransport has no _endpoint with SDK ${sdk.version}: update this step`);
    const acceptedBefore = proxy.accepted;
    const severed = proxy.sever();
    expect(severed >= 1, 'the proxy had no connection to sever');
    const started = Date.now();
    try {
      await until('a new endpoint event', RECONNECT_BOUND_MS, () => endpoint() !== before);
    } catch {
      throw new CheckFailed(
        `the SDK did not reconnect within ${RECONNECT_BOUND_MS} ms after the connection was severed ` +
          `(endpoint still ${before}; new connections: ${proxy.accepted - acceptedBefore}; ` +
          `client.onerror: ${short(this.errorsNow().map((e) => e.message), 600)})`,
      );
    }
    const reconnectMs = Date.now() - started;
    const slug = `ts-${this.name}-${this.tag}-watched`;
    const shown = await this.call('change.show', { slug });
    expect(shown.change?.slug === slug, `change.show ${slug} after the reconnect: change.slug is ${shown.change?.slug}`);
    // The drop itself is reported (the EventSource's error event); nothing else may be.
    this.expectNoErrors((m) => m.startsWith('SSE error'));
    this.pass({ severed, reconnectMs, newEndpoint: endpoint() !== before, structuredContent: true });
  }
}

async function runTransport(name) {
  const run = new Run(name);
  const summary = { transport: name, ok: false };
  let proxy;
  try {
    await bounded(
      `the ${name} run`,
      TRANSPORT_BOUND_MS,
      (async () => {
        let transport;
        if (name === 'streamable-http') {
          summary.endpoint = `${BASE}/mcp`;
          transport = new StreamableHTTPClientTransport(new URL(summary.endpoint));
        } else {
          proxy = await startProxy(new URL(BASE));
          summary.endpoint = `${BASE}/sse`;
          summary.via = `${proxy.url}/sse`;
          transport = new SSEClientTransport(new URL(`${proxy.url}/sse`));
        }
        await run.connect(transport);
        await run.listTools();
        const slug = await run.changeFlow();
        await run.archives(slug, name === 'sse' ? ARCHIVES : 1);
        await run.subscription();
        await run.cancellation();
        if (name === 'sse') await run.reconnect(proxy, transport);
      })(),
    );
    summary.ok = true;
  } catch (e) {
    summary.error = describe(e);
    summary.failedStep = run.current;
    if (!(e instanceof CheckFailed)) summary.stack = String(e?.stack ?? '').slice(0, 3000);
  } finally {
    // Closing aborts the transport's open streams, which the SDK reports.
    run.begin('close');
    await run.client.close().catch(() => {});
    proxy?.close();
  }
  summary.steps = run.steps;
  summary.clientErrors = run.errors;
  return summary;
}

const results = [];
for (const name of TRANSPORTS) {
  results.push(await runTransport(name));
}
const ok = results.every((r) => r.ok);
process.stdout.write(
  `${JSON.stringify({ ok, sdk: { '@modelcontextprotocol/sdk': sdk.version }, node: process.version, url: BASE, results }, null, 2)}\n`,
);
for (const r of results.filter((r) => !r.ok)) {
  process.stderr.write(`FAILED [${r.transport}] at step ${r.failedStep}: ${r.error}\n`);
}
process.exit(ok ? 0 : 1);
