#!/usr/bin/env node
// JSON Schema verdicts for tests/input_schemas.rs: Ajv, the validator the MCP
// TypeScript SDK validates with, in its draft 2020-12 build (the dialect the tool
// schemas announce), strict, with every error reported. Ajv comes with the SDK
// that scripts/install-test-tools pins into .tools/ts-sdk.
//
//     .tools/bin/node22 tests/typescript/schema_oracle.mjs [--sdk .tools/ts-sdk]
//
// One JSON request per line on stdin, one JSON answer per line on stdout:
//
//     {"schema": S}                -> {"ok": true} once S compiles (it is checked against the
//                                     2020-12 meta-schema, and strict mode refuses unknown
//                                     keywords and formats), else {"error": "..."}
//     {"schema": S, "instance": I} -> {"errors": [{instancePath, keyword, params, message}]},
//                                     empty when I is valid against S
//
// The first line out is {"ajv": "<version>"}. A schema compiles once and is kept.

import { createRequire } from 'node:module';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: { sdk: { type: 'string', default: path.resolve(HERE, '../../.tools/ts-sdk') } },
});

// As in client_check.mjs: resolve from inside the install folder, since an ES module
// `import` of a bare specifier only looks upward from this file.
const sdkRequire = createRequire(path.join(path.resolve(args.sdk), 'node_modules', 'noop.js'));
let Ajv2020, addFormats, version;
try {
  Ajv2020 = sdkRequire('ajv/dist/2020').default;
  addFormats = sdkRequire('ajv-formats').default;
  version = sdkRequire('ajv/package.json').version;
} catch (e) {
  process.stderr.write(
    `cannot load ajv from ${args.sdk} (${e.message}); run scripts/install-test-tools, ` +
      'which installs the pinned MCP TypeScript SDK (and with it Ajv) into .tools/ts-sdk\n',
  );
  process.exit(2);
}

// Union types (`["integer", "string"]`) are how the schemas spell 64-bit integers.
const ajv = new Ajv2020({ strict: true, allErrors: true, allowUnionTypes: true });
addFormats(ajv);
const compiled = new Map();

function answer(request) {
  const key = JSON.stringify(request.schema);
  let validate = compiled.get(key);
  if (!validate) {
    try {
      validate = ajv.compile(request.schema);
    } catch (e) {
      return { error: String(e.message ?? e) };
    }
    compiled.set(key, validate);
  }
  if (!('instance' in request)) return { ok: true };
  validate(request.instance);
  const errors = (validate.errors ?? []).map(({ instancePath, keyword, params, message }) => ({
    instancePath,
    keyword,
    params,
    message,
  }));
  return { errors };
}

process.stdout.write(`${JSON.stringify({ ajv: version })}\n`);
const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  let out;
  try {
    out = answer(JSON.parse(line));
  } catch (e) {
    out = { error: `bad request line: ${e.message}` };
  }
  process.stdout.write(`${JSON.stringify(out)}\n`);
}
