//! A method's result on its way to the client.
//!
//! Most results are small `Value`s. A tool's result is not: its output is the protobuf response
//! in JSON, sent twice (as the text block and as `structuredContent`). Building a `Value` tree
//! for it, serializing that for the text block and again for the response, then dropping it
//! cost about a third of the CPU of a `change.show` call. A `ToolReply` holds the output
//! written once, straight from the protobuf bytes, and the response is written around it into
//! one buffer sized for it: the text block is the output escaped, written beside it from the
//! protobuf bytes (or escaped as it is copied in, for outputs that took another way).
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::wire_json::JsonText;

pub enum Reply {
    Json(Value),
    Tool(ToolReply),
}

pub struct ToolReply {
    output: JsonText,
    /// The negotiated version has `structuredContent` (2025-06-18 and later).
    structured: bool,
    /// Resource URIs the output names in fields marked `(taskmcp.v1.resource_link)`, each a
    /// `resource_link` content block after the text block (2025-06-18 and later).
    links: Vec<String>,
    /// Members a transport adds (`resultType` in 2026-07-28).
    extra: Map<String, Value>,
}

/// A `resource_link` content block.
#[derive(Serialize)]
struct LinkBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    uri: &'a str,
    /// The URI without its scheme (`add-x/proposal`): the spec wants a name, and the path
    /// says which change and which part.
    name: &'a str,
}

impl<'a> LinkBlock<'a> {
    fn of(uri: &'a str) -> Self {
        let name = uri.split_once("://").map_or(uri, |(_, rest)| rest);
        LinkBlock { kind: "resource_link", uri, name }
    }
}

/// The URIs in `output`'s top-level `fields` (a string or a list of strings each).
pub fn links_in(output: &JsonText, fields: &[String]) -> Vec<String> {
    if fields.is_empty() {
        return Vec::new();
    }
    let output = output.to_value();
    let mut links = Vec::new();
    for value in fields.iter().filter_map(|field| output.get(field)) {
        match value {
            Value::String(uri) if !uri.is_empty() => links.push(uri.clone()),
            Value::Array(uris) => links.extend(uris.iter().filter_map(Value::as_str).map(str::to_string)),
            _ => {}
        }
    }
    links
}

impl Reply {
    /// A successful tool call's result: a text block with `output`, and `output` itself as
    /// `structuredContent` when the version has it; then the `links` as `resource_link` blocks
    /// (empty for versions before 2025-06-18, which have no such block).
    pub fn tool(output: JsonText, structured: bool, links: Vec<String>) -> Reply {
        Reply::Tool(ToolReply { output, structured, links, extra: Map::new() })
    }

    /// Applies a transport's decoration (members added to the result object).
    pub fn decorate(self, f: impl FnOnce(Value) -> Value) -> Reply {
        match self {
            Reply::Json(value) => Reply::Json(f(value)),
            Reply::Tool(mut tool) => {
                if let Value::Object(extra) = f(Value::Object(std::mem::take(&mut tool.extra))) {
                    tool.extra = extra;
                }
                Reply::Tool(tool)
            }
        }
    }

    /// Bytes a response carrying this result may take (a starting capacity; the JSON-RPC
    /// envelope included).
    pub fn size_hint(&self) -> usize {
        const ENVELOPE: usize = 256;
        match self {
            Reply::Json(_) => ENVELOPE,
            // The output once as it is and once escaped, which at worst doubles it.
            Reply::Tool(tool) => 3 * tool.output.len() + ENVELOPE,
        }
    }

    /// The result as a `Value`, for paths that queue messages as values (SSE streams).
    pub fn into_value(self) -> Value {
        match self {
            Reply::Json(value) => value,
            Reply::Tool(tool) => {
                let output = tool.output.to_value();
                let text = String::from_utf8_lossy(tool.output.as_bytes());
                let mut content = vec![json!({"type": "text", "text": text})];
                content.extend(tool.links.iter().map(|uri| json!(LinkBlock::of(uri))));
                let mut result = json!({"content": content, "isError": false});
                if tool.structured {
                    result["structuredContent"] = output;
                }
                for (key, value) in tool.extra {
                    result[key] = value;
                }
                result
            }
        }
    }

    /// Appends the JSON-RPC response `{"jsonrpc":"2.0","id":…,"result":…}` carrying this result.
    pub fn write_response(&self, id: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let tool = match self {
            Reply::Json(result) => {
                #[derive(Serialize)]
                struct Response<'a> {
                    jsonrpc: &'static str,
                    id: &'a Value,
                    result: &'a Value,
                }
                return serde_json::to_writer(out, &Response { jsonrpc: "2.0", id, result });
            }
            Reply::Tool(tool) => tool,
        };
        // The members in the order serde would write them for
        // `{content: [{type, text}], isError, structuredContent, ...extra}`.
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        serde_json::to_writer(&mut *out, id)?;
        out.extend_from_slice(br#","result":{"content":[{"type":"text","text":""#);
        tool.output.write_escaped(out);
        out.extend_from_slice(br#""}"#);
        for uri in &tool.links {
            out.push(b',');
            serde_json::to_writer(&mut *out, &LinkBlock::of(uri))?;
        }
        out.extend_from_slice(br#"],"isError":false"#);
        if tool.structured {
            out.extend_from_slice(br#","structuredContent":"#);
            out.extend_from_slice(tool.output.as_bytes());
        }
        for (key, value) in &tool.extra {
            out.push(b',');
            serde_json::to_writer(&mut *out, key)?;
            out.push(b':');
            serde_json::to_writer(&mut *out, value)?;
        }
        out.extend_from_slice(b"}}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde::ser::SerializeMap;
    use serde_json::value::RawValue;

    use super::*;

    const OUTPUT: &str = r#"{"slug":"a","n":1,"text":"quote \" back \\ line\n bell \u0007 é"}"#;

    fn output() -> JsonText {
        JsonText::new(&serde_json::from_str::<Value>(OUTPUT).expect("JSON")).expect("text")
    }

    /// The response as serde writes it from the members in order: what `write_response` must
    /// produce byte for byte.
    fn reference(id: &Value, output: &str, structured: bool, links: &[String], extra: &Map<String, Value>) -> Vec<u8> {
        #[derive(Serialize)]
        struct Response<'a> {
            jsonrpc: &'static str,
            id: &'a Value,
            result: ToolResult<'a>,
        }
        #[derive(Serialize)]
        struct TextBlock<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            text: &'a str,
        }
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Block<'a> {
            Text(TextBlock<'a>),
            Link(LinkBlock<'a>),
        }
        struct ToolResult<'a>(&'a str, bool, &'a [String], &'a Map<String, Value>);
        impl Serialize for ToolResult<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(None)?;
                let mut content = vec![Block::Text(TextBlock { kind: "text", text: self.0 })];
                content.extend(self.2.iter().map(|uri| Block::Link(LinkBlock::of(uri))));
                map.serialize_entry("content", &content)?;
                map.serialize_entry("isError", &false)?;
                if self.1 {
                    let raw = RawValue::from_string(self.0.to_string()).expect("raw");
                    map.serialize_entry("structuredContent", &raw)?;
                }
                for (key, value) in self.3 {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
        let result = ToolResult(output, structured, links, extra);
        serde_json::to_vec(&Response { jsonrpc: "2.0", id, result }).expect("serializes")
    }

    #[test]
    fn a_tool_reply_is_written_as_serde_would_write_it() {
        let text = String::from_utf8(output().into_bytes()).expect("UTF-8");
        let two = vec!["change://a/proposal".to_string(), "change://a/delta/x \"y\".md".to_string()];
        for (structured, links) in [(true, vec![]), (false, vec![]), (true, two)] {
            for id in [json!(7), json!("req-\"1\"")] {
                let reply = Reply::tool(output(), structured, links.clone()).decorate(|mut v| {
                    v["resultType"] = json!("complete");
                    v
                });
                let mut written = Vec::new();
                reply.write_response(&id, &mut written).expect("write");
                let Reply::Tool(tool) = &reply else { unreachable!("a tool reply") };
                assert_eq!(
                    String::from_utf8_lossy(&written),
                    String::from_utf8_lossy(&reference(&id, &text, structured, &links, &tool.extra))
                );
                let mut content = vec![json!({"type": "text", "text": text})];
                for uri in &links {
                    let name = uri.strip_prefix("change://").expect("a change URI");
                    content.push(json!({"type": "resource_link", "uri": uri, "name": name}));
                }
                let mut expected = json!({
                    "content": content,
                    "isError": false,
                    "resultType": "complete",
                });
                if structured {
                    expected["structuredContent"] = serde_json::from_str(&text).expect("JSON");
                }
                let parsed: Value = serde_json::from_slice(&written).expect("valid JSON");
                assert_eq!(parsed["result"], expected);
                assert_eq!(reply.into_value(), expected);
            }
        }
    }

    #[test]
    fn links_are_the_marked_fields_uris_strings_and_lists_alike() {
        let output = JsonText::new(&json!({
            "uri": "change://a/proposal",
            "resourceUris": ["change://a/tasks", "change://a/delta/x.md"],
            "empty": "",
            "other": "change://a/ignored",
        }))
        .expect("text");
        let fields = ["uri".to_string(), "resourceUris".to_string(), "empty".to_string(), "absent".to_string()];
        assert_eq!(links_in(&output, &fields), ["change://a/proposal", "change://a/tasks", "change://a/delta/x.md"]);
        assert!(links_in(&output, &[]).is_empty());
    }
}
