//! The tool registry: every RPC with the `(taskmcp.v1.tool)` option becomes a tool, named,
//! described and given its schemas from the descriptors alone.

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::Value;

use super::method_path;
use crate::{pb, schema, wire_json::OutputEncoder};

/// The method option that makes an RPC a tool.
const TOOL_EXTENSION: &str = "taskmcp.v1.tool";
const LINK_EXTENSION: &str = "taskmcp.v1.resource_link";

/// One tool, derived from an RPC carrying the `(taskmcp.v1.tool)` option.
#[derive(Debug, Clone)]
pub struct ToolDef {
    /// The name the proto declares (`change.open`).
    pub name: String,
    /// The name with every `.` and `/` as `_` (`change_open`), for clients that accept no
    /// others (see [`crate::ToolNames`]); the same as `name` when it has none.
    pub underscored_name: String,
    pub title: Option<String>,
    /// The RPC's doc comment.
    pub description: String,
    /// JSON Schema (2020-12) of the request message.
    pub input_schema: Value,
    /// JSON Schema of the response message.
    pub output_schema: Value,
    pub read_only: bool,
    pub destructive: bool,
    pub idempotent: bool,
    pub method: MethodDescriptor,
    /// The RPC's path (`/package.Service/Method`), made once rather than formatted per call.
    pub path: http::uri::PathAndQuery,
    /// The server-streaming form (same request; messages with `progress`, then `result`).
    pub stream_method: Option<MethodDescriptor>,
    /// Writes the response's bytes as JSON.
    pub output: OutputEncoder,
    /// The JSON names of the response's fields marked `(taskmcp.v1.resource_link)`.
    pub links: Vec<String>,
}

impl ToolDef {
    /// The name `tools/list` shows under `names`.
    pub fn listed_name(&self, names: crate::ToolNames) -> &str {
        match names {
            crate::ToolNames::Dotted => &self.name,
            crate::ToolNames::Underscored => &self.underscored_name,
        }
    }
}

/// Tools sorted by name (a deterministic `tools/list`).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    tools: Vec<ToolDef>,
}

impl Registry {
    pub fn tools(&self) -> &[ToolDef] {
        &self.tools
    }

    /// The tool called `name` or, failing that, whose underscored name is `name`: a client
    /// shown either form can call with it, whatever `tools/list` showed (no two tools share a
    /// name in either form, see [`Registry::from_pool`]).
    pub fn get(&self, name: &str) -> Option<&ToolDef> {
        self.tools.iter().find(|t| t.name == name).or_else(|| self.tools.iter().find(|t| t.underscored_name == name))
    }

    /// `text` (written with the proto's names) with every tool named as `tools/list` shows it
    /// under `names`: what the server tells a model must name the tools the model was shown.
    pub fn name_tools(&self, text: &str, names: crate::ToolNames) -> String {
        self.tools.iter().fold(text.to_string(), |text, tool| text.replace(&tool.name, tool.listed_name(names)))
    }

    /// Every RPC of `pool` with the `(taskmcp.v1.tool)` option, as a tool, with
    /// its streaming form attached when the pool has one.
    ///
    /// Fails on a contract the gateway could not serve faithfully: a bad or
    /// duplicate tool name (in either form: `a.b` and `a_b` would be one tool to a client
    /// shown underscored names), or the option on a streaming RPC.
    /// The descriptors compiled into a binary (`FILE_DESCRIPTOR_SET`) and their registry.
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<(DescriptorPool, Registry), String> {
        let pool =
            DescriptorPool::decode(bytes).map_err(|e| format!("decoding the embedded protobuf descriptors: {e}"))?;
        let registry = Registry::from_pool(&pool)?;
        Ok((pool, registry))
    }

    pub fn from_pool(pool: &DescriptorPool) -> Result<Registry, String> {
        let extension = pool
            .get_extension_by_name(TOOL_EXTENSION)
            .ok_or_else(|| format!("the descriptors do not define the `{TOOL_EXTENSION}` method option"))?;
        let mut tools = Vec::new();
        let mut streams = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&extension) {
                    if method.is_server_streaming() && !method.is_client_streaming() {
                        streams.push(method);
                    }
                    continue;
                }
                let tool: pb::ToolOptions = options
                    .get_extension(&extension)
                    .as_message()
                    .ok_or_else(|| format!("{}: `{TOOL_EXTENSION}` is not a message", method.full_name()))?
                    .transcode_to()
                    .map_err(|e| format!("{}: reading `{TOOL_EXTENSION}`: {e}", method.full_name()))?;
                if method.is_client_streaming() || method.is_server_streaming() {
                    // A tool call is one request and one result; the streaming
                    // form is a separate RPC found by its shape (below).
                    return Err(format!("{}: `{TOOL_EXTENSION}` is only supported on unary RPCs", method.full_name()));
                }
                validate_tool_name(&tool.name).map_err(|e| format!("{}: {e}", method.full_name()))?;
                let description = schema::doc_comment(&method.parent_file(), method.path())
                    .or_else(|| (!tool.title.is_empty()).then(|| tool.title.clone()))
                    .unwrap_or_else(|| format!("Calls the RPC `{}`.", method.full_name()));
                tools.push(ToolDef {
                    underscored_name: underscored(&tool.name),
                    name: tool.name,
                    title: (!tool.title.is_empty()).then_some(tool.title),
                    description,
                    input_schema: schema::input_schema(&method.input()),
                    output_schema: schema::tool_schema(&method.output()),
                    read_only: tool.read_only,
                    destructive: tool.destructive,
                    idempotent: tool.idempotent,
                    output: OutputEncoder::new(method.output()),
                    links: link_fields(&method.output())?,
                    path: method_path(&method).map_err(|e| format!("{}: {}", method.full_name(), e.message()))?,
                    method,
                    stream_method: None,
                });
            }
        }
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some((a, b, form)) = name_clash(tools.iter().map(|t| (t.name.as_str(), t.underscored_name.as_str()))) {
            let (a, b) = (&tools[a], &tools[b]);
            return Err(format!(
                "tool name `{form}` is declared by both {} (`{}`) and {} (`{}`){}",
                a.method.full_name(),
                a.name,
                b.method.full_name(),
                b.name,
                if a.name == b.name { "" } else { " once `.` and `/` are written `_`" }
            ));
        }
        for stream in streams {
            attach_stream_form(&mut tools, stream);
        }
        Ok(Registry { tools })
    }
}

/// The first name two tools share, in either of their forms (`(name, underscored)` each), with
/// the two tools' positions.
fn name_clash<'a>(tools: impl Iterator<Item = (&'a str, &'a str)>) -> Option<(usize, usize, &'a str)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, (name, underscored)) in tools.enumerate() {
        let forms = if name == underscored { &[name][..] } else { &[name, underscored][..] };
        for &form in forms {
            if let Some(first) = seen.insert(form, i) {
                return Some((first, i, form));
            }
        }
    }
    None
}

/// `name` with every `.` and `/` written `_`: what `^[a-zA-Z0-9_-]{1,64}$` accepts, given a
/// name [`validate_tool_name`] passed.
fn underscored(name: &str) -> String {
    name.replace(['.', '/'], "_")
}

/// A tool name as MCP clients accept it: `^[A-Za-z0-9_./-]{1,64}$`.
fn validate_tool_name(name: &str) -> Result<(), String> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'));
    if name.is_empty() || name.len() > 64 || !valid_chars {
        return Err(format!("tool name `{name}` must be 1 to 64 characters of letters, digits and `_./-`"));
    }
    Ok(())
}

/// Attaches `stream` to the tool it is the streaming form of: same request
/// type, and an output message with a `progress` message field and a `result`
/// field of the tool's response type. Ambiguity (two tools of the same types)
/// is settled by the RPC name (`ArchiveChangeStream` → `ArchiveChange`), and
/// left unattached, with a warning, when that does not settle it.
fn attach_stream_form(tools: &mut [ToolDef], stream: MethodDescriptor) {
    let output = stream.output();
    let has_progress = output.get_field_by_name("progress").is_some_and(|f| is_single_message(&f).is_some());
    let Some(result_type) = output.get_field_by_name("result").and_then(|f| is_single_message(&f)) else {
        return;
    };
    if !has_progress {
        return;
    }
    let input = stream.input();
    let fits = |t: &ToolDef| {
        t.stream_method.is_none()
            && t.method.input().full_name() == input.full_name()
            && t.method.output().full_name() == result_type.full_name()
    };
    let mut candidates: Vec<usize> = tools.iter().enumerate().filter(|(_, t)| fits(t)).map(|(i, _)| i).collect();
    if candidates.len() > 1 {
        candidates.retain(|&i| stream.name().starts_with(tools[i].method.name()));
    }
    match candidates.as_slice() {
        [] => {}
        [only] => tools[*only].stream_method = Some(stream),
        _ => tracing::warn!(rpc = stream.full_name(), "streaming RPC fits several tools; not used as a streaming form"),
    }
}

/// The JSON names of `output`'s fields marked `(taskmcp.v1.resource_link)`; a mark on a field
/// that holds no strings could not be honoured, and is refused like a misnamed tool.
fn link_fields(output: &MessageDescriptor) -> Result<Vec<String>, String> {
    let Some(extension) = output.parent_pool().get_extension_by_name(LINK_EXTENSION) else {
        return Ok(Vec::new());
    };
    let marked = output.fields().filter(|f| f.options().get_extension(&extension).as_bool() == Some(true));
    marked
        .map(|f| match f.kind() {
            Kind::String if !f.is_map() => Ok(f.json_name().to_string()),
            _ => Err(format!("{}: `{LINK_EXTENSION}` is only supported on string fields", f.full_name())),
        })
        .collect()
}

/// The message type of a singular message field.
fn is_single_message(field: &prost_reflect::FieldDescriptor) -> Option<MessageDescriptor> {
    match field.kind() {
        Kind::Message(m) if !field.is_list() && !field.is_map() => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_are_checked() {
        assert!(validate_tool_name("change.open").is_ok());
        assert!(validate_tool_name("a/b_c-D.9").is_ok());
        assert!(validate_tool_name(&"x".repeat(64)).is_ok());
        assert!(validate_tool_name("").is_err());
        assert!(validate_tool_name(&"x".repeat(65)).is_err());
        assert!(validate_tool_name("has space").is_err());
        assert!(validate_tool_name("émoji").is_err());
    }

    #[test]
    fn underscored_names_are_what_the_strictest_clients_accept() {
        assert_eq!(underscored("change.open"), "change_open");
        assert_eq!(underscored("a/b.c-d_e"), "a_b_c-d_e");
        assert_eq!(underscored("plain"), "plain");
    }

    /// The tools in `testdata/<file>`, or why the registry refuses them.
    fn registry_of(file: &str) -> Result<Registry, String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
        let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
        let mut compiler = protox::Compiler::new([dir, proto]).expect("compiler");
        compiler.include_imports(true);
        compiler.open_file(file).expect("the test proto");
        // Decoded from the encoded set: a prost_types round trip would drop the options.
        let pool = DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).expect("pool");
        Registry::from_pool(&pool)
    }

    #[test]
    fn resource_link_marks_are_read_from_the_descriptors_and_a_misplaced_one_is_refused() {
        let good = registry_of("links_good.proto").expect("the marks on string fields are honoured");
        assert_eq!(good.get("links.good").expect("the tool").links, ["uri", "moreUris"]);
        let contract = Registry::from_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET).expect("the contract").1;
        assert_eq!(contract.get("change.open").expect("change.open").links, ["resourceUris"]);
        assert!(contract.get("change.show").expect("change.show").links.is_empty());
        let Err(bad) = registry_of("links_bad.proto") else { panic!("a mark on a number is refused") };
        assert_eq!(bad, "links.bad.Misplaced.count: `taskmcp.v1.resource_link` is only supported on string fields");
    }

    #[test]
    fn two_tools_may_not_share_a_name_in_either_form() {
        let clash = |names: &[&'static str]| {
            let pairs: Vec<(&str, String)> = names.iter().map(|n| (*n, underscored(n))).collect();
            name_clash(pairs.iter().map(|(n, u)| (*n, u.as_str()))).map(|(a, b, form)| (a, b, form.to_string()))
        };
        assert_eq!(clash(&["change.open", "change.show", "task.update"]), None);
        assert_eq!(clash(&["plain", "other"]), None);
        assert_eq!(clash(&["a.b", "a.b"]), Some((0, 1, "a.b".into())));
        // One tool to a client shown underscored names, two to the gateway.
        assert_eq!(clash(&["a.b", "a_b"]), Some((0, 1, "a_b".into())));
        assert_eq!(clash(&["a_b", "a/b"]), Some((0, 1, "a_b".into())));
    }
}
