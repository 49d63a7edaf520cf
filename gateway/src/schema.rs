//! Protobuf descriptors to JSON Schema (2020-12), with descriptions from the
//! proto comments.
//!
//! The schemas describe the proto3 JSON mapping exactly as the gateway
//! transcodes it (prost-reflect's serde): lowerCamelCase property names
//! (`json_name`), enums as value names, 64-bit integers as strings (numbers are
//! accepted on input), bytes as base64, `Timestamp` as RFC 3339.
//!
//! Request schemas ([`input_schema`]) also say what the server refuses: a
//! field's `(taskmcp.v1.rules)` option (proto/taskmcp/v1/options.proto) becomes
//! `required` on its message's object (in field order) and `pattern`,
//! `minLength`/`maxLength`, `maximum`, `minItems`/`maxItems` or `not` (values refused within
//! the bounds) on its property,
//! at any depth (the items of `task.update`'s `updates` have their own
//! `required`). The option is the only source: a proto3 field without it is
//! optional and bounded by its type alone. Response schemas leave the rules
//! out: they bound what a client may send, not what the server returns (a
//! receipt read back from disk is whatever the file holds).
use std::collections::{BTreeMap, HashMap};

use prost_reflect::{
    DescriptorPool, EnumDescriptor, ExtensionDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor,
};
use serde_json::{Map, Value, json};

use crate::pb::FieldRules;

/// The dialect announced by the top-level tool schemas.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The field option that states a request field's rules.
pub const RULES_EXTENSION: &str = "taskmcp.v1.rules";

/// The JSON Schema of a message as the server sends it (no `$schema` keyword:
/// usable nested; no request rules).
///
/// Messages are inlined; a message that contains itself (directly or not) is
/// emitted once under `$defs` and referenced with `$ref`, so recursion ends.
pub fn message_schema(desc: &MessageDescriptor) -> Value {
    schema_of(desc, false)
}

/// The JSON Schema of a request message: [`message_schema`] plus the rules of
/// its fields (`required`, `pattern`, lengths, `maximum`, item counts).
pub fn request_schema(desc: &MessageDescriptor) -> Value {
    schema_of(desc, true)
}

fn schema_of(desc: &MessageDescriptor, with_rules: bool) -> Value {
    let rules = with_rules.then(|| desc.parent_pool().get_extension_by_name(RULES_EXTENSION)).flatten();
    let mut builder = Builder { rules, ..Builder::default() };
    let mut root = builder.message(desc);
    let mut defs = Map::new();
    // Each recursive type gets one definition; building a definition may
    // reveal further recursive types, hence the loop (finite: one per type).
    while let Some(name) = builder.wanted.keys().find(|n| !defs.contains_key(*n)).cloned() {
        let Some(def_desc) = builder.wanted.get(&name).cloned() else {
            break;
        };
        builder.stack.push(name.clone());
        let def = builder.message_body(&def_desc);
        builder.stack.pop();
        defs.insert(name, def);
    }
    if !defs.is_empty()
        && let Value::Object(obj) = &mut root
    {
        obj.insert("$defs".into(), Value::Object(defs));
    }
    root
}

/// A tool's `inputSchema`: [`request_schema`] plus the `$schema` dialect.
pub fn input_schema(desc: &MessageDescriptor) -> Value {
    with_dialect(request_schema(desc))
}

/// A top-level schema without request rules (a tool's `outputSchema`):
/// [`message_schema`] plus the `$schema` dialect.
pub fn tool_schema(desc: &MessageDescriptor) -> Value {
    with_dialect(message_schema(desc))
}

fn with_dialect(schema: Value) -> Value {
    match schema {
        Value::Object(obj) => {
            // `$schema` first, for readers of `tools/list`.
            let mut out = Map::with_capacity(obj.len() + 1);
            out.insert("$schema".into(), Value::String(DIALECT.into()));
            out.extend(obj);
            Value::Object(out)
        }
        other => other,
    }
}

/// The leading comment of the element at `path` in `file` (a descriptor's
/// `path()`), cleaned up, or `None` when there is none. Needs the descriptors
/// to have been compiled with source info.
pub fn doc_comment(file: &FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    info.location
        .iter()
        .find(|loc| loc.path == path)
        .and_then(|loc| loc.leading_comments.as_deref())
        .map(clean_comment)
        .filter(|c| !c.is_empty())
}

/// Turns a raw proto comment into prose: lines trimmed, the lines of a
/// paragraph joined with spaces (proto comments are hard-wrapped; the wrapping
/// means nothing to a reader of JSON), paragraphs separated by a blank line,
/// list items kept on their own lines.
pub fn clean_comment(raw: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in raw.lines().map(str::trim) {
        if line.is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() {
            current.push(if is_list_item(line) { '\n' } else { ' ' });
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    paragraphs.join("\n\n")
}

fn is_list_item(line: &str) -> bool {
    if line.starts_with("- ") || line.starts_with("* ") {
        return true;
    }
    // `1. `, `12) `: a numbered item.
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && matches!(line.as_bytes().get(digits..digits + 2), Some(b". ") | Some(b") "))
}

/// The `(taskmcp.v1.rules)` of `field`, if it has them.
pub fn field_rules(extension: &ExtensionDescriptor, field: &FieldDescriptor) -> Option<FieldRules> {
    let options = field.options();
    if !options.has_extension(extension) {
        return None;
    }
    options.get_extension(extension).as_message()?.transcode_to().ok()
}

/// Every misapplied rule in `pool`, as `field: what is wrong`: a rule the
/// field's type cannot carry (a `pattern` on a number, `max_items` on a single
/// value), bounds the wrong way round, an unanchored pattern. Such a rule
/// could not be published faithfully, so [`request_schema`] leaves it out; the
/// gateway's tests run this over the contract so that none is written.
pub fn misapplied_rules(pool: &DescriptorPool) -> Vec<String> {
    let Some(extension) = pool.get_extension_by_name(RULES_EXTENSION) else {
        return Vec::new();
    };
    let mut wrong = Vec::new();
    for message in pool.all_messages() {
        for field in message.fields() {
            let Some(rules) = field_rules(&extension, &field) else { continue };
            let applies = Applies::of(&field);
            let mut say = |what: &str| wrong.push(format!("{}: {what}", field.full_name()));
            let string_rules = !rules.pattern.is_empty() || rules.min_length.is_some() || rules.max_length.is_some();
            if string_rules && !applies.string {
                say("pattern, min_length and max_length are for singular string fields");
            }
            if (rules.maximum.is_some() || rules.refused.is_some()) && !applies.int32 {
                say("maximum and refused are for singular 32-bit integer fields");
            }
            if !rules.reserved.is_empty() && !applies.string {
                say("reserved is for singular string fields");
            }
            if rules.refused.as_ref().is_some_and(|r| r.from > r.to) {
                say("refused runs from above its end");
            }
            if (rules.min_items.is_some() || rules.max_items.is_some()) && !applies.list {
                say("min_items and max_items are for repeated fields");
            }
            let anchored = rules.pattern.starts_with('^') && rules.pattern.ends_with('$');
            if !rules.pattern.is_empty() && !anchored {
                say("a pattern must be anchored with ^ and $ (JSON Schema matches it anywhere in the value)");
            }
            if let (Some(min), Some(max)) = (rules.min_length, rules.max_length)
                && min > max
            {
                say("min_length is above max_length");
            }
            if let (Some(min), Some(max)) = (rules.min_items, rules.max_items)
                && min > max
            {
                say("min_items is above max_items");
            }
        }
    }
    wrong
}

/// Which rules a field's type can carry.
struct Applies {
    string: bool,
    int32: bool,
    list: bool,
}

impl Applies {
    fn of(field: &FieldDescriptor) -> Applies {
        let single = !field.is_list() && !field.is_map();
        Applies {
            string: single && matches!(field.kind(), Kind::String),
            int32: single
                && matches!(field.kind(), Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32),
            list: field.is_list(),
        }
    }
}

/// Puts the rules the field's type can carry on its schema.
fn apply_rules(schema: &mut Value, field: &FieldDescriptor, rules: &FieldRules) {
    let Value::Object(obj) = schema else { return };
    let applies = Applies::of(field);
    if applies.string {
        if !rules.pattern.is_empty() {
            obj.insert("pattern".into(), json!(rules.pattern));
        }
        if let Some(min) = rules.min_length {
            obj.insert("minLength".into(), json!(min));
        }
        if let Some(max) = rules.max_length {
            obj.insert("maxLength".into(), json!(max));
        }
        if !rules.reserved.is_empty() {
            obj.insert("not".into(), json!({"enum": rules.reserved}));
        }
    }
    if applies.int32 {
        if let Some(max) = rules.maximum {
            // Never above the type's own bound.
            let type_max = obj.get("maximum").and_then(Value::as_i64).unwrap_or(i64::MAX);
            obj.insert("maximum".into(), json!(i64::from(max).min(type_max)));
        }
        if let Some(refused) = &rules.refused
            && refused.from <= refused.to
        {
            obj.insert("not".into(), json!({"minimum": refused.from, "maximum": refused.to}));
        }
    }
    if applies.list {
        if let Some(min) = rules.min_items {
            obj.insert("minItems".into(), json!(min));
        }
        if let Some(max) = rules.max_items {
            obj.insert("maxItems".into(), json!(max));
        }
    }
}

#[derive(Default)]
struct Builder {
    /// The `(taskmcp.v1.rules)` extension when request rules are wanted.
    rules: Option<ExtensionDescriptor>,
    /// Comments by file name, then by path: built once per file, since every
    /// field looks one up.
    comments: HashMap<String, HashMap<Vec<i32>, String>>,
    /// Messages being built, outermost first: meeting one again is recursion.
    stack: Vec<String>,
    /// Recursive messages that need a `$defs` entry.
    wanted: BTreeMap<String, MessageDescriptor>,
}

impl Builder {
    fn comment(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        let by_path = self.comments.entry(file.name().to_string()).or_insert_with(|| {
            file.file_descriptor_proto()
                .source_code_info
                .iter()
                .flat_map(|info| info.location.iter())
                .filter_map(|loc| {
                    let text = clean_comment(loc.leading_comments.as_deref()?);
                    (!text.is_empty()).then(|| (loc.path.clone(), text))
                })
                .collect()
        });
        by_path.get(path).cloned()
    }

    fn message(&mut self, desc: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(desc) {
            return schema;
        }
        let name = desc.full_name().to_string();
        if self.stack.contains(&name) {
            let reference = json!({ "$ref": format!("#/$defs/{name}") });
            self.wanted.insert(name, desc.clone());
            return reference;
        }
        self.stack.push(name);
        let schema = self.message_body(desc);
        self.stack.pop();
        schema
    }

    /// The object schema of a message (the caller handles recursion).
    fn message_body(&mut self, desc: &MessageDescriptor) -> Value {
        let file = desc.parent_file();
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in desc.fields() {
            let rules = self.rules.as_ref().and_then(|ext| field_rules(ext, &field));
            let mut schema = self.field(&file, &field);
            if let Some(rules) = &rules {
                apply_rules(&mut schema, &field, rules);
                if rules.required {
                    required.push(Value::String(field.json_name().to_string()));
                }
            }
            properties.insert(field.json_name().to_string(), schema);
        }
        let mut description: Vec<String> = self.comment(&file, desc.path()).into_iter().collect();
        for oneof in desc.oneofs().filter(|o| !o.is_synthetic()) {
            description.push(format!(
                "At most one of {} may be set (oneof `{}`).",
                member_list(oneof.fields()),
                oneof.name()
            ));
        }
        let mut schema = Map::new();
        schema.insert("type".into(), json!("object"));
        if !description.is_empty() {
            schema.insert("description".into(), Value::String(description.join("\n\n")));
        }
        schema.insert("properties".into(), Value::Object(properties));
        if !required.is_empty() {
            schema.insert("required".into(), Value::Array(required));
        }
        schema.insert("additionalProperties".into(), Value::Bool(false));
        Value::Object(schema)
    }

    fn field(&mut self, file: &FileDescriptor, field: &FieldDescriptor) -> Value {
        let kind = field.kind();
        let mut schema = if field.is_map() {
            self.map(&kind)
        } else if field.is_list() {
            json!({ "type": "array", "items": self.kind(&kind) })
        } else {
            self.kind(&kind)
        };

        let mut description: Vec<String> = Vec::new();
        let own = self.comment(file, field.path());
        // An enum's values are only explained on the enum; repeat them here so
        // the property documents itself.
        let enum_desc = match &kind {
            Kind::Enum(e) if !field.is_map() => Some(e.clone()),
            _ => None,
        };
        match (own, &enum_desc) {
            (Some(text), _) => description.push(text),
            (None, Some(e)) => description.extend(self.comment(&e.parent_file(), e.path())),
            (None, None) => {}
        }
        if let Some(e) = &enum_desc {
            description.extend(self.enum_values_doc(e));
        }
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            let others: Vec<FieldDescriptor> = oneof.fields().filter(|f| f.number() != field.number()).collect();
            if !others.is_empty() {
                description.push(format!(
                    "Part of oneof `{}`: leave unset when {} is set.",
                    oneof.name(),
                    member_list(others.into_iter())
                ));
            }
        }
        if !description.is_empty()
            && let Value::Object(obj) = &mut schema
        {
            // The field's own words win over the type's.
            obj.insert("description".into(), Value::String(description.join("\n\n")));
        }
        schema
    }

    fn map(&mut self, entry: &Kind) -> Value {
        let Kind::Message(entry) = entry else {
            return json!({ "type": "object" });
        };
        let key = entry.map_entry_key_field().kind();
        let value = entry.map_entry_value_field().kind();
        let mut schema = Map::new();
        schema.insert("type".into(), json!("object"));
        // JSON object keys are strings; non-string proto keys are spelled out.
        let names = match key {
            Kind::Bool => Some(json!({ "enum": ["true", "false"] })),
            Kind::Uint32 | Kind::Uint64 | Kind::Fixed32 | Kind::Fixed64 => Some(json!({ "pattern": "^[0-9]+$" })),
            Kind::String => None,
            _ => Some(json!({ "pattern": "^-?[0-9]+$" })),
        };
        if let Some(names) = names {
            schema.insert("propertyNames".into(), names);
        }
        schema.insert("additionalProperties".into(), self.kind(&value));
        Value::Object(schema)
    }

    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double | Kind::Float => float_schema(),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "minimum": i32::MIN, "maximum": i32::MAX })
            }
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => int64_schema(),
            Kind::Uint64 | Kind::Fixed64 => uint64_schema(),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => bytes_schema(),
            Kind::Message(m) => self.message(m),
            Kind::Enum(e) => enum_schema(e),
        }
    }

    /// `- NAME: comment` for each documented value.
    fn enum_values_doc(&mut self, desc: &EnumDescriptor) -> Option<String> {
        let file = desc.parent_file();
        let lines: Vec<String> = desc
            .values()
            .filter_map(|v| {
                let text = self.comment(&file, v.path())?;
                Some(format!("- {}: {}", v.name(), text.replace("\n\n", " ")))
            })
            .collect();
        (!lines.is_empty()).then(|| format!("Values:\n{}", lines.join("\n")))
    }
}

fn member_list(fields: impl Iterator<Item = FieldDescriptor>) -> String {
    let names: Vec<String> = fields.map(|f| format!("`{}`", f.json_name())).collect();
    names.join(", ")
}

fn enum_schema(desc: &EnumDescriptor) -> Value {
    if desc.full_name() == "google.protobuf.NullValue" {
        return json!({ "type": "null" });
    }
    let names: Vec<String> = desc.values().map(|v| v.name().to_string()).collect();
    json!({ "type": "string", "enum": names })
}

/// Finite values are numbers; the JSON mapping spells the others as strings.
fn float_schema() -> Value {
    json!({
        "anyOf": [
            { "type": "number" },
            { "type": "string", "enum": ["NaN", "Infinity", "-Infinity"] }
        ]
    })
}

/// Emitted as a decimal string (doubles cannot hold every 64-bit value); a
/// number is accepted on input too.
fn int64_schema() -> Value {
    json!({ "type": ["integer", "string"], "pattern": "^-?[0-9]+$" })
}

fn uint64_schema() -> Value {
    json!({ "type": ["integer", "string"], "minimum": 0, "pattern": "^[0-9]+$" })
}

fn bytes_schema() -> Value {
    json!({ "type": "string", "contentEncoding": "base64" })
}

/// The well-known types have their own JSON forms in the proto3 mapping.
fn well_known(desc: &MessageDescriptor) -> Option<Value> {
    let schema = match desc.full_name() {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$" }),
        "google.protobuf.FieldMask" => json!({ "type": "string" }),
        "google.protobuf.Struct" => json!({ "type": "object" }),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({ "type": "array" }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } }
        }),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => float_schema(),
        "google.protobuf.Int64Value" => int64_schema(),
        "google.protobuf.UInt64Value" => uint64_schema(),
        "google.protobuf.Int32Value" => json!({ "type": "integer", "minimum": i32::MIN, "maximum": i32::MAX }),
        "google.protobuf.UInt32Value" => json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.StringValue" => json!({ "type": "string" }),
        "google.protobuf.BytesValue" => bytes_schema(),
        _ => return None,
    };
    Some(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    fn pool() -> DescriptorPool {
        DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap()
    }

    fn schema_of(name: &str) -> Value {
        let pool = pool();
        message_schema(&pool.get_message_by_name(name).unwrap())
    }

    #[test]
    fn open_change_request_properties_enums_and_comments() {
        let s = schema_of("taskmcp.v1.OpenChangeRequest");
        assert_eq!(s["type"], "object");
        assert_eq!(s["additionalProperties"], false);
        assert!(s.get("required").is_none());
        assert!(s.get("$schema").is_none());
        let props = s["properties"].as_object().unwrap();
        let names: Vec<&str> = props.keys().map(String::as_str).collect();
        for want in ["title", "slug", "rationale", "owner", "ttlSeconds", "template"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert_eq!(props.len(), 6);
        assert_eq!(props["ttlSeconds"]["type"], "integer");
        assert_eq!(props["ttlSeconds"]["minimum"], 0);
        assert_eq!(
            props["template"]["enum"],
            json!(["TEMPLATE_UNSPECIFIED", "TEMPLATE_FEATURE", "TEMPLATE_BUGFIX", "TEMPLATE_CHORE"])
        );
        let template = props["template"]["description"].as_str().unwrap();
        assert!(template.starts_with("Which scaffold to use. Defaults to TEMPLATE_FEATURE."), "{template}");
        assert!(template.contains("- TEMPLATE_BUGFIX: A defect fix."), "{template}");
        assert_eq!(props["title"]["description"], "Human title, one line, 1 to 200 characters.");
        // A hard-wrapped comment becomes one line.
        assert_eq!(
            props["slug"]["description"],
            "The change's identifier: 3 to 64 characters of lowercase letters, digits and inner hyphens, \
             starting and ending with a letter or digit, not `archive` (e.g. `add-login-throttle`)."
        );
        // The message schema (a response's view) carries no request rules.
        assert!(props["slug"].get("pattern").is_none() && props["slug"].get("maxLength").is_none());
        assert_eq!(props["ttlSeconds"]["maximum"], u32::MAX);
    }

    fn request_of(name: &str) -> Value {
        request_schema(&pool().get_message_by_name(name).unwrap())
    }

    #[test]
    fn request_rules_become_required_and_bounds() {
        let s = request_of("taskmcp.v1.OpenChangeRequest");
        // In field order; the other fields stay optional.
        assert_eq!(s["required"], json!(["title", "slug"]));
        let props = &s["properties"];
        assert_eq!(props["slug"]["minLength"], 3);
        assert_eq!(props["slug"]["maxLength"], 64);
        assert_eq!(props["slug"]["pattern"], "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$");
        assert_eq!(props["title"]["minLength"], 1);
        assert_eq!(props["title"]["maxLength"], 200);
        assert_eq!(props["rationale"]["maxLength"], 8192);
        assert!(props["rationale"].get("minLength").is_none());
        assert_eq!(props["owner"]["maxLength"], 128);
        // 0 is the default: the rule lowers the type's maximum and keeps its minimum.
        assert_eq!(props["ttlSeconds"]["maximum"], 86_400);
        assert_eq!(props["ttlSeconds"]["minimum"], 0);
        // Within the bounds, what the server refuses all the same: too short a TTL, a name it
        // keeps for the archive folder.
        assert_eq!(props["ttlSeconds"]["not"], json!({"minimum": 1, "maximum": 59}));
        assert_eq!(props["slug"]["not"], json!({"enum": ["archive"]}));
        // Descriptions and types are the message schema's.
        assert_eq!(props["title"]["type"], "string");
        assert_eq!(props["title"]["description"], "Human title, one line, 1 to 200 characters.");

        // Nested: the items of a list, and an optional message.
        let s = request_of("taskmcp.v1.UpdateTasksRequest");
        assert_eq!(s["required"], json!(["slug", "updates"]));
        let updates = &s["properties"]["updates"];
        assert_eq!((updates["minItems"].clone(), updates["maxItems"].clone()), (json!(1), json!(500)));
        assert_eq!(updates["items"]["required"], json!(["id"]));
        assert_eq!(updates["items"]["properties"]["id"]["maxLength"], 64);
        let s = request_of("taskmcp.v1.ArchiveChangeRequest");
        assert_eq!(s["required"], json!(["slug"]));
        assert_eq!(s["properties"]["tests"]["properties"]["note"]["maxLength"], 2048);
        assert!(s["properties"]["tests"].get("required").is_none());

        // No rules, no keywords: the list request has only its type bounds and the page size.
        let s = request_of("taskmcp.v1.ListChangesRequest");
        assert!(s.get("required").is_none());
        assert_eq!(s["properties"]["pageSize"]["maximum"], 200);
        let token = s["properties"]["pageToken"].as_object().unwrap();
        assert_eq!(token.keys().collect::<Vec<_>>(), ["description", "type"], "an opaque token has no rules");
    }

    #[test]
    fn input_schemas_have_rules_and_output_schemas_do_not() {
        let pool = pool();
        let input = input_schema(&pool.get_message_by_name("taskmcp.v1.ShowChangeRequest").unwrap());
        assert_eq!(input["$schema"], DIALECT);
        assert_eq!(input["required"], json!(["slug"]));
        // The receipt's test summary, read back from disk, is not held to the request's bound.
        let output = tool_schema(&pool.get_message_by_name("taskmcp.v1.ArchiveChangeResponse").unwrap());
        let note = &output["properties"]["receipt"]["properties"]["tests"]["properties"]["note"];
        assert_eq!(note["type"], "string");
        assert!(note.get("maxLength").is_none() && note.get("pattern").is_none(), "{note}");
    }

    #[test]
    fn the_contract_has_no_misapplied_rule() {
        assert_eq!(misapplied_rules(&pool()), Vec::<String>::new());
    }

    #[test]
    fn misapplied_rules_are_found_and_left_out_of_the_schema() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
        let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
        let mut compiler = protox::Compiler::new([dir, proto]).unwrap();
        compiler.include_imports(true);
        compiler.open_file("rules.proto").unwrap();
        // Decoded from the encoded set: a prost_types round trip would drop the option.
        let pool = DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).unwrap();
        let mut wrong = misapplied_rules(&pool);
        wrong.sort();
        assert_eq!(
            wrong,
            [
                "rules.test.Wrong.count: pattern, min_length and max_length are for singular string fields",
                "rules.test.Wrong.level: reserved is for singular string fields",
                "rules.test.Wrong.mode: maximum and refused are for singular 32-bit integer fields",
                "rules.test.Wrong.name: a pattern must be anchored with ^ and $ (JSON Schema matches it anywhere in the value)",
                "rules.test.Wrong.name: min_length is above max_length",
                "rules.test.Wrong.names: pattern, min_length and max_length are for singular string fields",
                "rules.test.Wrong.retries: refused runs from above its end",
                "rules.test.Wrong.size: maximum and refused are for singular 32-bit integer fields",
                "rules.test.Wrong.tag: min_items and max_items are for repeated fields",
            ]
        );
        let s = request_schema(&pool.get_message_by_name("rules.test.Wrong").unwrap());
        let props = &s["properties"];
        assert_eq!(s["required"], json!(["count"]), "required applies to any field");
        assert!(props["count"].get("pattern").is_none());
        assert!(props["names"].get("maxLength").is_none() && props["names"]["items"].get("maxLength").is_none());
        assert!(props["size"].get("maximum").is_none());
        assert!(props["tag"].get("maxItems").is_none());
        assert!(["level", "mode", "retries"].iter().all(|p| props[p].get("not").is_none()), "{props}");
        assert_eq!(props["names"]["maxItems"], 3, "a rule that applies is kept beside one that does not");
    }

    #[test]
    fn change_summary_timestamps_optional_messages_and_descriptions() {
        let s = schema_of("taskmcp.v1.ChangeSummary");
        assert_eq!(s["description"], "One change as it appears in a listing.");
        let props = &s["properties"];
        assert_eq!(props["updatedAt"]["type"], "string");
        assert_eq!(props["updatedAt"]["format"], "date-time");
        assert_eq!(props["updatedAt"]["description"], "Last modification of any file of the change.");
        assert_eq!(props["archiveName"]["type"], "string");
        // A nested message is inlined, with the field's comment.
        assert_eq!(props["lock"]["type"], "object");
        assert_eq!(props["lock"]["properties"]["expiresAt"]["format"], "date-time");
        assert!(props["lock"]["description"].as_str().unwrap().starts_with("The lock, if one is held"));
        assert_eq!(props["progress"]["properties"]["done"]["type"], "integer");
    }

    #[test]
    fn repeated_oneof_bytes_and_64_bit() {
        let s = schema_of("taskmcp.v1.OpenChangeResponse");
        assert_eq!(s["properties"]["files"]["type"], "array");
        assert_eq!(s["properties"]["files"]["items"]["type"], "string");

        let s = schema_of("taskmcp.v1.ArchiveChangeEvent");
        let description = s["description"].as_str().unwrap();
        assert!(description.contains("`progress`, `result`"), "{description}");
        assert!(description.contains("oneof `event`"), "{description}");
        assert_eq!(s["properties"]["result"]["properties"]["alreadyArchived"]["type"], "boolean");

        let s = schema_of("taskmcp.v1.ResourceChunk");
        assert_eq!(s["properties"]["blob"]["contentEncoding"], "base64");
        assert_eq!(s["properties"]["totalSize"]["type"], json!(["integer", "string"]));
        assert_eq!(s["properties"]["totalSize"]["pattern"], "^[0-9]+$");
    }

    #[test]
    fn tool_schema_announces_the_dialect() {
        let pool = pool();
        let s = tool_schema(&pool.get_message_by_name("taskmcp.v1.ShowChangeRequest").unwrap());
        assert_eq!(s["$schema"], DIALECT);
        assert_eq!(s["properties"]["slug"]["type"], "string");
    }

    #[test]
    fn recursive_messages_end_in_defs() {
        // google.protobuf.DescriptorProto contains itself (nested_type).
        let s = schema_of("google.protobuf.DescriptorProto");
        assert_eq!(s["properties"]["nestedType"]["items"]["$ref"], "#/$defs/google.protobuf.DescriptorProto");
        assert_eq!(s["$defs"]["google.protobuf.DescriptorProto"]["type"], "object");
        // Every `$ref` resolves.
        let text = s.to_string();
        for piece in text.split("\"#/$defs/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(s["$defs"].get(name).is_some(), "dangling $ref to {name}");
        }
    }

    #[test]
    fn comment_cleaning() {
        assert_eq!(clean_comment(" One\n two.\n\n Three.\n"), "One two.\n\nThree.");
        assert_eq!(clean_comment(" Steps:\n - a\n - b\n"), "Steps:\n- a\n- b");
        assert_eq!(clean_comment(" 1. first\n 2. second\n"), "1. first\n2. second");
        assert_eq!(clean_comment("\n\n"), "");
    }
}
