//! The tools' input schemas and the server agree: what a schema refuses, the server refuses
//! with INVALID_ARGUMENT naming that field, and what a schema accepts, the server does not
//! refuse as invalid.
//!
//! The calls are made from the schemas alone, as `tools/list` and `GET /v1/tools` serve them
//! (first checked to be the same on both faces): for every tool and every constrained field, at
//! any depth, a call just outside each bound the schema states (a required field left out, a
//! length one below `minLength` or one above `maxLength`, a number one above `maximum` or one
//! below `minimum`, one item too few or too many, an unknown enum name or property) must be
//! refused, and a call exactly at the bound must not be. A field with rules is also tried at
//! lengths or item counts inside its bounds (empty where the field is required, 1, 8,
//! 100 000 characters; 10 000 items) and with one character of a valid value replaced, at its
//! start, middle and end, by each of [`PROBES`]; there the schema's own verdict is the
//! expectation, whichever it is.
//! So a rule the schema states that the server does not keep fails, and so does a check the
//! server makes that the schema leaves out of a field it constrains (a pattern, a bound or a
//! `required` missing from the proto's `(taskmcp.v1.rules)`).
//!
//! The schema's verdict is Ajv's (tests/typescript/schema_oracle.mjs): the validator the MCP
//! TypeScript SDK uses, in its 2020-12 build, strict, which also proves every tool schema a
//! valid 2020-12 schema. Tool calls go through `POST /v1/tools/{name}`; the resource RPCs,
//! which are not tools, get the same treatment over gRPC with the schema the gateway would make
//! of their requests (only for what protobuf can carry: a negative or oversized number, an
//! unknown property or enum name cannot be sent there, so those cases only check that the
//! schema refuses them too).
//!
//! Known gaps, as the proto comments say: a field with no rules at all is not probed (nothing
//! says it is validated; a page token is opaque and only the server's own are valid), `""` is
//! not sent for an optional string (proto3 reads it as the field's absence), and what the
//! server checks that JSON Schema cannot say is not in the schema: the `## Why` Markdown rules
//! (which the probes meet, hence [`KNOWN_GAPS`]), and, never probed, a title's trimmed length
//! and U+0085 around it. Values refused within the bounds (`not`: the slug `archive`, TTLs
//! from 1 to 59) are tried too, each one and those just outside a refused range.
mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use regex_syntax::hir::{Class, Hir, HirKind};
use serde_json::{Value, json};
use task_mcp::pb;
use task_mcp_gateway::{schema, upstream::Registry};
use tonic::Code;
use tonic_types::StatusExt;

use common::{Server, bounded, mcp::Mcp};

/// Characters put in place of one character of a valid value: every class a pattern here
/// draws a line between (case, digits, the punctuation of slugs and owners, spaces and line
/// breaks, C0 and C1 controls, non-ASCII letters and separators).
const PROBES: &[char] = &[
    'A', 'z', '0', '-', '_', '.', ' ', '/', '@', '#', ':', '+', '\u{1}', '\t', '\n', '\r', '\u{7f}', '\u{9b}', 'é',
    '\u{2028}',
];

/// Characters a value of a given length is made of, tried in turn until the schema accepts one.
const FILL: &[char] = &['a', '0', 'x', 'A', '-', '.', ' ', '_'];

/// Lengths and item counts tried inside the bounds, besides the bounds themselves.
const STRING_LENGTHS: &[usize] = &[1, 8, 100_000];
const ITEM_COUNTS: &[usize] = &[0, 1, 10_000];

/// The validation keywords this test knows how to exercise. A schema with any other one fails
/// the test until the generator learns it, so that no rule is skipped unseen.
const EXERCISED: &[&str] = &[
    "required",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "enum",
    "additionalProperties",
    "not",
];
const OTHER_VALIDATION_KEYWORDS: &[&str] = &[
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "const",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
    "dependentRequired",
    "format",
    "oneOf",
    "anyOf",
    "allOf",
    "if",
    "patternProperties",
    "propertyNames",
    "prefixItems",
    "contains",
];

/// Checks the server makes that JSON Schema cannot state, as the proto comments say: a
/// disagreement at `field` whose refusal says `because` is expected, and must be seen (a gap
/// that the probes stop meeting is a line to delete here).
const KNOWN_GAPS: &[Gap] = &[Gap {
    tool: "change.open",
    field: "rationale",
    because: "would split the proposal's `## Why` section",
    why: "the Markdown heading rules of `## Why` are not a regular expression",
}];

struct Gap {
    tool: &'static str,
    field: &'static str,
    because: &'static str,
    #[allow(dead_code, reason = "documentation for the reader of the list")]
    why: &'static str,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// The schema's verdict: Ajv over a line protocol

struct Oracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Node's stderr. Not inherited: Node makes the stdio it is handed non-blocking, and the
    /// test's own stderr would then fail to print a long report.
    stderr: std::fs::File,
}

impl Oracle {
    fn start() -> Oracle {
        let node = repo().join(".tools/bin/node22");
        let sdk = repo().join(".tools/ts-sdk");
        let stderr = tempfile::tempfile().expect("a file for the oracle's stderr");
        let mut child = Command::new(&node)
            .arg(repo().join("tests/typescript/schema_oracle.mjs"))
            .arg("--sdk")
            .arg(&sdk)
            .env_remove("NODE_OPTIONS")
            .env_remove("NODE_PATH")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.try_clone().expect("the stderr file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): run scripts/install-test-tools (scripts/test does it for you); it \
                     installs Node 22 and the MCP TypeScript SDK, whose Ajv judges the schemas",
                    node.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut oracle = Oracle { child, stdin, stdout, stderr };
        let hello = oracle.read();
        assert!(hello["ajv"].is_string(), "the schema oracle did not start: {hello}");
        oracle
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the oracle's answer");
        if line.is_empty() {
            use std::io::{Read, Seek};
            let mut said = String::new();
            let _ = self.stderr.rewind().and_then(|()| self.stderr.read_to_string(&mut said));
            panic!("the schema oracle exited; it said: {said}");
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the oracle's answer {line:?}: {e}"))
    }

    fn ask(&mut self, request: &Value) -> Value {
        writeln!(self.stdin, "{request}").expect("write to the oracle");
        self.read()
    }

    /// Compiles `schema` (meta-schema and strict checks); the error when it does not.
    fn compile(&mut self, schema: &Value) -> Result<(), String> {
        let answer = self.ask(&json!({ "schema": schema }));
        match answer["error"].as_str() {
            Some(error) => Err(error.to_string()),
            None => Ok(()),
        }
    }

    /// The fields `instance` breaks in `schema` (dotted property paths, no indices), with the
    /// keyword each breaks.
    fn verdict(&mut self, schema: &Value, instance: &Value) -> BTreeSet<(String, String)> {
        let answer = self.ask(&json!({ "schema": schema, "instance": instance }));
        let Some(errors) = answer["errors"].as_array() else {
            panic!("the oracle could not judge {instance} against {schema}: {answer}");
        };
        errors
            .iter()
            .map(|e| {
                let mut path: Vec<String> = e["instancePath"]
                    .as_str()
                    .unwrap_or_default()
                    .split('/')
                    .skip(1)
                    .filter(|s| s.parse::<usize>().is_err())
                    .map(|s| s.replace("~1", "/").replace("~0", "~"))
                    .collect();
                for key in ["missingProperty", "additionalProperty"] {
                    if let Some(name) = e["params"][key].as_str() {
                        path.push(name.to_string());
                    }
                }
                (path.join("."), e["keyword"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }

    /// Whether `value` is valid against `schema` (a property's schema).
    fn accepts(&mut self, schema: &Value, value: &Value) -> bool {
        self.verdict(schema, value).is_empty()
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Calls made from a schema

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Just outside a bound: the schema must refuse it at the field, and so must the server.
    Refused,
    /// At a bound, or the base call: the schema accepts it, the server must not refuse it.
    Accepted,
    /// A probe: whatever the schema says, the server must say the same.
    AsSchemaSays,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seg {
    Key(usize),
    Index,
}

struct Case {
    /// The field the case is about, as a dotted path of JSON names (`updates.id`); empty for
    /// the base call.
    field: String,
    /// The keyword at stake (`maxLength`, ...), `base`, or `probe`.
    keyword: &'static str,
    what: String,
    args: Value,
    expect: Expect,
}

/// Makes the cases of one schema.
struct Generator<'a> {
    oracle: &'a mut Oracle,
    cases: Vec<Case>,
    /// Property names met while walking, indexed by `Seg::Key`.
    names: Vec<String>,
}

impl Generator<'_> {
    fn generate(oracle: &mut Oracle, schema: &Value) -> Vec<Case> {
        let mut g = Generator { oracle, cases: Vec::new(), names: Vec::new() };
        let base = g.base(schema);
        g.push(&[], "base", "the required fields, valid".into(), base.clone(), Expect::Accepted);
        g.object(schema, &[], &base);
        g.cases
    }

    fn field_name(&self, at: &[Seg]) -> String {
        let keys: Vec<&str> = at
            .iter()
            .filter_map(|s| match s {
                Seg::Key(i) => Some(self.names[*i].as_str()),
                Seg::Index => None,
            })
            .collect();
        keys.join(".")
    }

    fn key(&mut self, at: &[Seg], name: &str) -> Vec<Seg> {
        self.names.push(name.to_string());
        let mut path = at.to_vec();
        path.push(Seg::Key(self.names.len() - 1));
        path
    }

    fn push(&mut self, at: &[Seg], keyword: &'static str, what: String, args: Value, expect: Expect) {
        let field = self.field_name(at);
        self.cases.push(Case { field, keyword, what, args, expect });
    }

    /// A valid value: the required properties, each valid; the fewest items a list may have.
    fn base(&mut self, schema: &Value) -> Value {
        match kind(schema) {
            "object" => {
                let mut out = serde_json::Map::new();
                for name in required(schema) {
                    out.insert(name.clone(), self.base(&schema["properties"][&name]));
                }
                Value::Object(out)
            }
            "array" => {
                let item = self.base(&schema["items"]);
                Value::Array(vec![item; uint(schema, "minItems").unwrap_or(0)])
            }
            "enum" => schema["enum"][0].clone(),
            "string" => {
                let n = STRING_LENGTHS[1].clamp(uint(schema, "minLength").unwrap_or(0), max_len(schema));
                let value = self
                    .string_of_len(n, schema)
                    .or_else(|| self.shortest(schema))
                    .unwrap_or_else(|| panic!("cannot make a valid value for {schema}: extend FILL or shortest()"));
                Value::String(value)
            }
            "integer" => json!(0.clamp(int(schema, "minimum").unwrap_or(0), int(schema, "maximum").unwrap_or(0))),
            "boolean" => json!(false),
            other => panic!("the case generator does not know schemas of kind {other}: {schema}; extend it"),
        }
    }

    /// `n` characters of one [`FILL`] character that `judge` accepts.
    fn string_of_len(&mut self, n: usize, judge: &Value) -> Option<String> {
        FILL.iter().map(|c| c.to_string().repeat(n)).find(|v| self.oracle.accepts(judge, &json!(v)))
    }

    /// The shortest string the schema's pattern matches, if the schema accepts it.
    fn shortest(&mut self, schema: &Value) -> Option<String> {
        let value = shortest_match(schema["pattern"].as_str()?)?;
        self.oracle.accepts(schema, &json!(value)).then_some(value)
    }

    /// The cases of the object at `at` in `ctx` (the arguments, with that object present).
    fn object(&mut self, schema: &Value, at: &[Seg], ctx: &Value) {
        let required = required(schema);
        for name in &required {
            let path = self.key(at, name);
            let mut args = ctx.clone();
            remove(&mut args, &path, &self.names);
            self.push(&path, "required", "left out".into(), args, Expect::Refused);
        }
        if schema["additionalProperties"] == false {
            let path = self.key(at, "notAField");
            let args = set(ctx, &path, &self.names, json!(true));
            self.push(&path, "additionalProperties", "an unknown property".into(), args, Expect::Refused);
        }
        let Some(properties) = schema["properties"].as_object() else { return };
        for (name, prop) in properties {
            let path = self.key(at, name);
            self.property(prop, &path, ctx, required.contains(name));
        }
    }

    fn property(&mut self, schema: &Value, at: &[Seg], ctx: &Value, required: bool) {
        match kind(schema) {
            "object" => {
                let inner = if get(ctx, at, &self.names).is_some() {
                    ctx.clone()
                } else {
                    let value = self.base(schema);
                    set(ctx, at, &self.names, value)
                };
                self.object(schema, at, &inner);
            }
            "array" => self.array(schema, at, ctx, required),
            "string" => self.string(schema, at, ctx, required),
            "integer" => self.integer(schema, at, ctx),
            "enum" => {
                let values = schema["enum"].as_array().expect("enum values");
                for value in [values.first(), values.last()].into_iter().flatten() {
                    let args = set(ctx, at, &self.names, value.clone());
                    self.push(at, "enum", format!("{value}"), args, Expect::Accepted);
                }
                let args = set(ctx, at, &self.names, json!("NOT_ONE_OF_THEM"));
                self.push(at, "enum", "a name not listed".into(), args, Expect::Refused);
            }
            "boolean" => {}
            other => panic!("the case generator does not know schemas of kind {other}: {schema}; extend it"),
        }
    }

    fn string(&mut self, schema: &Value, at: &[Seg], ctx: &Value, required: bool) {
        let ruled = ["pattern", "minLength", "maxLength", "not"].iter().any(|k| schema.get(*k).is_some());
        if !ruled {
            return;
        }
        // Each name the schema reserves, though its pattern and lengths allow it.
        for reserved in schema["not"]["enum"].as_array().into_iter().flatten() {
            let args = set(ctx, at, &self.names, reserved.clone());
            self.push(at, "not", format!("{reserved} (reserved)"), args, Expect::Refused);
        }
        let min = uint(schema, "minLength").unwrap_or(0);
        let max = max_len(schema);
        // The bounds, with a value the rest of the schema (its pattern) accepts.
        let mut unbounded = schema.clone();
        let obj = unbounded.as_object_mut().expect("an object schema");
        obj.remove("minLength");
        obj.remove("maxLength");
        let bound = |g: &mut Self, n: usize, keyword: &'static str, expect: Expect| {
            let what = format!("{n} characters ({keyword} {})", schema[keyword]);
            let judge = if expect == Expect::Accepted { schema } else { &unbounded };
            // No pattern accepts the empty string a required field's `minLength` 1 is broken
            // by; it breaks both, at the one field.
            let found = if n == 0 { Some(String::new()) } else { g.string_of_len(n, judge) };
            let Some(value) = found else {
                panic!("cannot make {what} that the pattern accepts for {schema}: extend FILL");
            };
            let args = set(ctx, at, &g.names, json!(value));
            g.push(at, keyword, what, args, expect);
        };
        if min > 0 {
            // An empty string is an optional field's absence in proto3, not a value.
            if min > 1 || required {
                bound(self, min - 1, "minLength", Expect::Refused);
            }
            bound(self, min, "minLength", Expect::Accepted);
        }
        if let Some(max) = uint(schema, "maxLength") {
            bound(self, max + 1, "maxLength", Expect::Refused);
            bound(self, max, "maxLength", Expect::Accepted);
        }
        // Lengths inside the bounds, as the schema says.
        let floor = if required { 0 } else { 1 };
        let mut tried = BTreeSet::new();
        for &n in [0].iter().chain(STRING_LENGTHS) {
            let n = n.clamp(min.max(floor), max);
            if tried.insert(n)
                && let Some(value) = self.string_of_len(n, schema)
            {
                let args = set(ctx, at, &self.names, json!(value));
                self.push(at, "length", format!("{n} characters"), args, Expect::AsSchemaSays);
            }
        }
        // One character replaced, in valid values of the shortest and a middling length (with a
        // pattern or without: a field with rules but no pattern claims any character will do).
        let mut bases = BTreeSet::new();
        for n in [min.max(1), STRING_LENGTHS[1].clamp(min.max(1), max)] {
            let value = self.string_of_len(n, schema).or_else(|| self.shortest(schema));
            bases.extend(value);
        }
        assert!(!bases.is_empty(), "cannot make a valid value for {schema}: extend FILL or shortest()");
        for base in bases {
            let chars: Vec<char> = base.chars().collect();
            let spots: BTreeSet<usize> = [0, chars.len() / 2, chars.len() - 1].into_iter().collect();
            for spot in spots {
                for &probe in PROBES {
                    let mut changed = chars.clone();
                    changed[spot] = probe;
                    let value: String = changed.into_iter().collect();
                    if value == base {
                        continue;
                    }
                    let what = format!("{value:?}: {probe:?} at {spot} of {base:?}");
                    let args = set(ctx, at, &self.names, json!(value));
                    self.push(at, "character", what, args, Expect::AsSchemaSays);
                }
            }
        }
    }

    fn integer(&mut self, schema: &Value, at: &[Seg], ctx: &Value) {
        // Values refused within the bounds: each end of the range, and just outside it.
        if let (Some(from), Some(to)) = (int(&schema["not"], "minimum"), int(&schema["not"], "maximum")) {
            for (value, expect) in [
                (from, Expect::Refused),
                (to, Expect::Refused),
                (from - 1, Expect::AsSchemaSays),
                (to + 1, Expect::AsSchemaSays),
            ] {
                let args = set(ctx, at, &self.names, json!(value));
                self.push(at, "not", format!("{value} (refused: {from} to {to})"), args, expect);
            }
        }
        if let Some(max) = int(schema, "maximum") {
            for (value, expect) in [(max + 1, Expect::Refused), (max, Expect::Accepted)] {
                let args = set(ctx, at, &self.names, json!(value));
                self.push(at, "maximum", format!("{value} (maximum {max})"), args, expect);
            }
        }
        if let Some(min) = int(schema, "minimum") {
            for (value, expect) in [(min - 1, Expect::Refused), (min, Expect::Accepted)] {
                let args = set(ctx, at, &self.names, json!(value));
                self.push(at, "minimum", format!("{value} (minimum {min})"), args, expect);
            }
        }
    }

    fn array(&mut self, schema: &Value, at: &[Seg], ctx: &Value, required: bool) {
        let item = self.base(&schema["items"]);
        let items = |n: usize| Value::Array(vec![item.clone(); n]);
        let min = uint(schema, "minItems").unwrap_or(0);
        let max = uint(schema, "maxItems");
        if min > 0 {
            // An empty list is an optional field's absence in proto3, not a value.
            if min > 1 || required {
                let args = set(ctx, at, &self.names, items(min - 1));
                self.push(at, "minItems", format!("{} items (minItems {min})", min - 1), args, Expect::Refused);
            }
            let args = set(ctx, at, &self.names, items(min));
            self.push(at, "minItems", format!("{min} items (minItems {min})"), args, Expect::Accepted);
        }
        if let Some(max) = max {
            let args = set(ctx, at, &self.names, items(max + 1));
            self.push(at, "maxItems", format!("{} items (maxItems {max})", max + 1), args, Expect::Refused);
            let args = set(ctx, at, &self.names, items(max));
            self.push(at, "maxItems", format!("{max} items (maxItems {max})"), args, Expect::Accepted);
        }
        if min > 0 || max.is_some() {
            let floor = if required { 0 } else { 1 };
            let mut tried = BTreeSet::new();
            for &n in ITEM_COUNTS {
                let n = n.clamp(min.max(floor), max.unwrap_or(usize::MAX));
                if tried.insert(n) {
                    let args = set(ctx, at, &self.names, items(n));
                    self.push(at, "items", format!("{n} items"), args, Expect::AsSchemaSays);
                }
            }
        }
        // The items' own rules, in a list of as few items as may be.
        let mut element = at.to_vec();
        element.push(Seg::Index);
        let inner = set(ctx, at, &self.names, items(min.max(1)));
        self.property(&schema["items"], &element, &inner, true);
    }
}

/// What a schema describes, for the generator: its `type`, or `enum`.
fn kind(schema: &Value) -> &str {
    if schema.get("enum").is_some() {
        return "enum";
    }
    schema["type"].as_str().unwrap_or("(no single type)")
}

fn required(schema: &Value) -> Vec<String> {
    let names = schema["required"].as_array().into_iter().flatten();
    names.filter_map(Value::as_str).map(str::to_string).collect()
}

fn uint(schema: &Value, keyword: &str) -> Option<usize> {
    schema[keyword].as_u64().map(|n| usize::try_from(n).expect("a bound that fits usize"))
}

fn int(schema: &Value, keyword: &str) -> Option<i64> {
    schema[keyword].as_i64()
}

fn max_len(schema: &Value) -> usize {
    uint(schema, "maxLength").unwrap_or(usize::MAX)
}

/// The value at `path` in `value`, if there is one.
fn get<'v>(value: &'v Value, path: &[Seg], names: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, seg| match seg {
        Seg::Key(i) => v.get(&names[*i]),
        Seg::Index => v.get(0),
    })
}

/// `value` with `new` at `path` (objects made on the way; an index means the first item).
fn set(value: &Value, path: &[Seg], names: &[String], new: Value) -> Value {
    let mut out = value.clone();
    let mut at = &mut out;
    for seg in path {
        at = match seg {
            Seg::Key(i) => {
                if !at.is_object() {
                    *at = json!({});
                }
                at.as_object_mut().expect("an object").entry(names[*i].clone()).or_insert(Value::Null)
            }
            Seg::Index => {
                let list = at.as_array_mut().expect("a list on the way to an item");
                &mut list[0]
            }
        };
    }
    *at = new;
    out
}

fn remove(value: &mut Value, path: &[Seg], names: &[String]) {
    let (last, parent) = path.split_last().expect("a property path");
    let parent = parent.iter().try_fold(value, |v, seg| match seg {
        Seg::Key(i) => v.get_mut(&names[*i]),
        Seg::Index => v.get_mut(0),
    });
    if let (Some(Value::Object(obj)), Seg::Key(i)) = (parent, last) {
        obj.remove(&names[*i]);
    }
}

/// The shortest string `pattern` matches (first class members; repetitions at their minimum).
fn shortest_match(pattern: &str) -> Option<String> {
    fn walk(hir: &Hir) -> String {
        match hir.kind() {
            HirKind::Empty | HirKind::Look(_) => String::new(),
            HirKind::Literal(literal) => String::from_utf8_lossy(&literal.0).into_owned(),
            HirKind::Class(Class::Unicode(class)) => {
                class.ranges().first().map(|r| r.start().to_string()).unwrap_or_default()
            }
            HirKind::Class(Class::Bytes(class)) => {
                class.ranges().first().map(|r| char::from(r.start()).to_string()).unwrap_or_default()
            }
            HirKind::Repetition(rep) => walk(&rep.sub).repeat(rep.min as usize),
            HirKind::Capture(capture) => walk(&capture.sub),
            HirKind::Concat(parts) => parts.iter().map(walk).collect(),
            HirKind::Alternation(alternatives) => {
                alternatives.iter().map(walk).min_by_key(|s| s.chars().count()).unwrap_or_default()
            }
        }
    }
    regex_syntax::Parser::new().parse(pattern).ok().map(|hir| walk(&hir))
}

/// Every validation keyword in `schema` (at any depth), by name.
fn keywords_in(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(obj) => {
            for (key, value) in obj {
                if EXERCISED.contains(&key.as_str()) || OTHER_VALIDATION_KEYWORDS.contains(&key.as_str()) {
                    out.insert(key.clone());
                }
                // Property names are not keywords.
                if key == "properties" {
                    for sub in value.as_object().into_iter().flat_map(|o| o.values()) {
                        keywords_in(sub, out);
                    }
                } else {
                    keywords_in(value, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| keywords_in(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// The server's verdict

/// What the server said to one call.
struct Answer {
    status: String,
    /// Set when the call was refused as invalid: the fields named, normalized.
    refused: Option<BTreeSet<String>>,
    text: String,
}

impl Answer {
    fn refuses(&self, field: &str) -> bool {
        self.refused.as_ref().is_some_and(|named| named.contains(&normalize(field)))
    }
}

/// A field name as both faces can spell it: `ttl_seconds`, `ttlSeconds` and `updates[0].id`
/// become `ttlseconds` and `updates.id`.
fn normalize(name: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in name.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if in_index => {}
            '_' => {}
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

async fn call_rest(http: &reqwest::Client, base: &str, tool: &str, args: &Value) -> Answer {
    let url = format!("{base}/v1/tools/{tool}");
    let response = bounded(&format!("POST {url}"), http.post(&url).json(args).send())
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let refused = (status == 400).then(|| {
        let mut named = BTreeSet::new();
        for v in body["details"]["badRequest"]["fieldViolations"].as_array().into_iter().flatten() {
            named.extend(v["field"].as_str().map(normalize));
        }
        named.extend(body["details"]["errorInfo"]["metadata"]["field"].as_str().map(normalize));
        // The gateway's own refusal of arguments that do not fit the message names the
        // argument first (`tests.passed: invalid value ...`), or the unknown one in quotes
        // after its parent (`tests: unrecognized field name 'x'`).
        if body["reason"] == "INVALID_ARGUMENTS"
            && let Some(message) = body["message"].as_str()
        {
            let (path, rest) = message.split_once(": ").unwrap_or(("", message));
            let unknown = rest.strip_prefix("unrecognized field name '").and_then(|r| r.split_once('\''));
            named.insert(match unknown {
                Some((name, _)) if path.is_empty() => normalize(name),
                Some((name, _)) => normalize(&format!("{path}.{name}")),
                None => normalize(path),
            });
        }
        named
    });
    let text = format!("{} {} {}", body["reason"].as_str().unwrap_or(""), body["details"], body["message"]);
    Answer { status: status.to_string(), refused, text }
}

/// A resource RPC by gRPC: `None` when protobuf cannot carry `args` at all.
async fn call_grpc(resources: &mut common::Resources, method: &MethodDescriptor, args: &Value) -> Option<Answer> {
    let message = DynamicMessage::deserialize(method.input(), args).ok()?;
    let result = match method.full_name() {
        "taskmcp.v1.Resources.ReadResource" => {
            let request: pb::ReadResourceRequest = message.transcode_to().expect("transcode");
            resources.read_resource(request).await.map(drop)
        }
        "taskmcp.v1.Resources.ListResources" => {
            let request: pb::ListResourcesRequest = message.transcode_to().expect("transcode");
            resources.list_resources(request).await.map(drop)
        }
        "taskmcp.v1.Resources.WatchChanges" => {
            let request: pb::WatchChangesRequest = message.transcode_to().expect("transcode");
            resources.watch_changes(request).await.map(drop)
        }
        other => panic!("no gRPC call for {other}, whose request has rules: add one here"),
    };
    Some(match result {
        Ok(()) => Answer { status: "OK".into(), refused: None, text: String::new() },
        Err(status) => {
            let refused = (status.code() == Code::InvalidArgument).then(|| {
                let mut named = BTreeSet::new();
                if let Some(info) = status.get_details_error_info() {
                    named.extend(info.metadata.get("field").map(|f| normalize(f)));
                }
                if let Some(bad) = status.get_details_bad_request() {
                    named.extend(bad.field_violations.iter().map(|v| normalize(&v.field)));
                }
                named
            });
            Answer { status: format!("{:?}", status.code()), refused, text: status.message().to_string() }
        }
    })
}

// ---------------------------------------------------------------------------

/// How one call went.
enum Verdict {
    Agree,
    /// The schema accepts it and the server refuses it for a reason in [`KNOWN_GAPS`].
    KnownGap(usize),
    Disagree(String),
}

fn judge(tool: &str, case: &Case, schema_says: &BTreeSet<(String, String)>, answer: Option<&Answer>) -> Verdict {
    let broken: BTreeSet<&str> = schema_says.iter().map(|(field, _)| field.as_str()).collect();
    let schema_refuses = !broken.is_empty();
    let at_field = broken.len() == 1 && broken.contains(case.field.as_str());
    let expect = match case.expect {
        Expect::AsSchemaSays if schema_refuses => Expect::Refused,
        Expect::AsSchemaSays => Expect::Accepted,
        other => other,
    };
    let problem = match (expect, answer) {
        (Expect::Refused, _) if !at_field => {
            format!("the schema should refuse it at `{}` alone, but says {schema_says:?}", case.field)
        }
        (Expect::Accepted, _) if schema_refuses => format!("the schema should accept it, but says {schema_says:?}"),
        // Protobuf cannot carry it: refused before any server sees it, as the schema says.
        (_, None) => return Verdict::Agree,
        (Expect::Refused, Some(answer)) if !answer.refuses(&case.field) => format!(
            "the schema refuses it ({schema_says:?}), the server did not refuse `{}`: {} {}",
            case.field, answer.status, answer.text
        ),
        (Expect::Accepted, Some(answer)) if answer.refused.is_some() => {
            let gap = KNOWN_GAPS.iter().position(|gap| {
                gap.tool == tool
                    && gap.field == case.field
                    && answer.refuses(gap.field)
                    && answer.text.contains(gap.because)
            });
            if let Some(gap) = gap {
                return Verdict::KnownGap(gap);
            }
            format!("the schema accepts it, the server refused it: {} {}", answer.status, answer.text)
        }
        _ => return Verdict::Agree,
    };
    let args = case.args.to_string();
    let args = if args.len() > 300 {
        format!("{}… ({} bytes)", args.chars().take(300).collect::<String>(), args.len())
    } else {
        args
    };
    let field = if case.field.is_empty() { "(the call)" } else { &case.field };
    Verdict::Disagree(format!("`{field}` [{}] {}: {problem}\n    arguments: {args}", case.keyword, case.what))
}

/// `tools/list` over MCP (a 2025-11-25 session, then a stateless 2026-07-28 request): the
/// input schemas by tool name.
async fn mcp_input_schemas(server: &Server, http: &reqwest::Client) -> Vec<BTreeMap<String, Value>> {
    let by_name = |tools: &Value| -> BTreeMap<String, Value> {
        let tools = tools.as_array().unwrap_or_else(|| panic!("a tools list: {tools}"));
        tools.iter().map(|t| (t["name"].as_str().unwrap().to_string(), t["inputSchema"].clone())).collect()
    };
    let mut mcp = Mcp::connect(http.clone(), server.mcp_url(), None, "2025-11-25", "input-schemas").await;
    let listed = mcp.request("tools/list", json!({})).await;
    assert!(listed["result"]["nextCursor"].is_null(), "one page of tools: {listed}");
    let session = by_name(&listed["result"]["tools"]);

    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta}});
    let response = http
        .post(server.mcp_url())
        .header("accept", common::mcp::ACCEPT_BOTH)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .json(&body)
        .send()
        .await
        .expect("stateless tools/list");
    let listed: Value = response.json().await.expect("stateless tools/list body");
    let stateless = by_name(&listed["result"]["tools"]);
    vec![session, stateless]
}

#[tokio::test(flavor = "multi_thread")]
async fn input_schemas_agree_with_the_server() {
    let server = Server::start();
    let http = reqwest::Client::new();
    let base = server.http_base();
    let mut oracle = Oracle::start();

    // The schemas as both faces serve them.
    let listed: Value = http.get(format!("{base}/v1/tools")).send().await.unwrap().json().await.unwrap();
    let tools: BTreeMap<String, Value> = listed["tools"]
        .as_array()
        .expect("GET /v1/tools lists tools")
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["inputSchema"].clone()))
        .collect();
    assert!(!tools.is_empty(), "no tools: {listed}");
    for (face, schemas) in
        ["tools/list (2025-11-25)", "tools/list (2026-07-28)"].iter().zip(mcp_input_schemas(&server, &http).await)
    {
        assert_eq!(schemas, tools, "{face} serves the input schemas GET /v1/tools does");
    }

    // Every schema a valid 2020-12 schema; outputs too, since clients compile them.
    for tool in listed["tools"].as_array().unwrap() {
        for which in ["inputSchema", "outputSchema"] {
            if let Err(error) = oracle.compile(&tool[which]) {
                panic!(
                    "{} {which} is not a valid 2020-12 schema for Ajv (strict): {error}\n{}",
                    tool["name"], tool[which]
                );
            }
        }
    }

    // The resource RPCs, which are not tools: the schema the gateway would make of each request.
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).expect("the descriptors");
    let registry = Registry::from_pool(&pool).expect("the tool registry");
    let tool_inputs: BTreeSet<String> =
        registry.tools().iter().map(|t| t.method.input().full_name().to_string()).collect();
    let others: Vec<MethodDescriptor> = pool
        .services()
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .filter(|m| !tool_inputs.contains(m.input().full_name()))
        .collect();
    assert!(!others.is_empty(), "the resource RPCs are not tools");

    let mut resources = server.resources().await;
    let mut failures = Vec::new();
    let mut exercised: BTreeMap<String, usize> = BTreeMap::new();
    let mut present = BTreeSet::new();
    let mut calls = 0;
    let mut per_rpc = BTreeMap::new();
    let mut gaps_seen = vec![0; KNOWN_GAPS.len()];
    let mut rpcs: Vec<(String, Value, Option<MethodDescriptor>)> =
        tools.iter().map(|(name, schema)| (name.clone(), schema.clone(), None)).collect();
    rpcs.extend(others.iter().map(|m| (m.full_name().to_string(), schema::input_schema(&m.input()), Some(m.clone()))));
    for (name, schema, grpc) in &rpcs {
        if let Err(error) = oracle.compile(schema) {
            panic!("{name}: not a valid 2020-12 schema for Ajv (strict): {error}\n{schema}");
        }
        keywords_in(schema, &mut present);
        let cases = Generator::generate(&mut oracle, schema);
        for case in &cases {
            let schema_says = oracle.verdict(schema, &case.args);
            let answer = match grpc {
                None => Some(call_rest(&http, &base, name, &case.args).await),
                Some(method) => call_grpc(&mut resources, method, &case.args).await,
            };
            calls += 1;
            *per_rpc.entry(name.as_str()).or_insert(0) += usize::from(answer.is_some());
            if schema_says.iter().all(|(field, _)| *field == case.field) {
                for (_, keyword) in &schema_says {
                    *exercised.entry(keyword.clone()).or_default() += 1;
                }
            }
            match judge(name, case, &schema_says, answer.as_ref()) {
                Verdict::Agree => {}
                Verdict::KnownGap(gap) => gaps_seen[gap] += 1,
                Verdict::Disagree(problem) => failures.push(format!("{name} {problem}")),
            }
        }
    }

    let unexercised: Vec<&String> = present.iter().filter(|k| !exercised.contains_key(*k)).collect();
    assert!(
        unexercised.is_empty(),
        "the schemas use {unexercised:?}, which no case refused: teach the generator (exercised: {exercised:?})"
    );
    for (gap, seen) in KNOWN_GAPS.iter().zip(&gaps_seen) {
        assert!(
            *seen > 0,
            "no call met the known gap at {} `{}` ({}): delete it from KNOWN_GAPS",
            gap.tool,
            gap.field,
            gap.because
        );
    }
    let mut report = String::new();
    for failure in failures.iter().take(40) {
        let _ = writeln!(report, "- {failure}");
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} cases show the schema and the server disagree{}:\n{report}",
        failures.len(),
        if failures.len() > 40 { " (the first 40)" } else { "" }
    );
    eprintln!(
        "{calls} cases, schema and server agree (known gaps met {gaps_seen:?} times); calls made by tool or RPC: \
         {per_rpc:?}; schema refusals by keyword: {exercised:?}"
    );
}
