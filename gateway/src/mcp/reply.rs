//! A method's result on its way to the client.
//!
//! Most results are small `Value`s. A tool's result is not: its output is the protobuf response
//! in JSON, sent twice (as the text block and as `structuredContent`). Building a `Value` tree
//! for it, serializing that for the text block and again for the response, then dropping it
//! cost about a third of the CPU of a `change.show` call. A `ToolReply` holds the output
//! serialized once, straight from the protobuf message, and writes it into both places.
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value, json, value::RawValue};

pub enum Reply {
    Json(Value),
    Tool(ToolReply),
}

pub struct ToolReply {
    output: Box<RawValue>,
    /// The negotiated version has `structuredContent` (2025-06-18 and later).
    structured: bool,
    /// Members a transport adds (`resultType` in 2026-07-28).
    extra: Map<String, Value>,
}

impl Reply {
    /// A successful tool call's result: a text block with `output`, and `output` itself as
    /// `structuredContent` when the version has it.
    pub fn tool(output: Box<RawValue>, structured: bool) -> Reply {
        Reply::Tool(ToolReply { output, structured, extra: Map::new() })
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
            Reply::Tool(tool) => 3 * tool.output.get().len() + ENVELOPE,
        }
    }

    /// The result as a `Value`, for paths that queue messages as values (SSE streams).
    pub fn into_value(self) -> Value {
        match self {
            Reply::Json(value) => value,
            Reply::Tool(tool) => {
                let output: Value = serde_json::from_str(tool.output.get()).unwrap_or(Value::Null);
                let mut result = json!({"content": [{"type": "text", "text": tool.output.get()}], "isError": false});
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
}

impl Serialize for Reply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Json(value) => value.serialize(serializer),
            Reply::Tool(tool) => {
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("content", &[TextBlock { kind: "text", text: tool.output.get() }])?;
                map.serialize_entry("isError", &false)?;
                if tool.structured {
                    map.serialize_entry("structuredContent", &tool.output)?;
                }
                for (key, value) in &tool.extra {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

#[derive(Serialize)]
struct TextBlock<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output() -> Box<RawValue> {
        RawValue::from_string(r#"{"slug":"a","n":1}"#.to_string()).expect("raw")
    }

    #[test]
    fn a_tool_reply_serializes_as_the_value_it_stands_for() {
        for structured in [true, false] {
            let reply = Reply::tool(output(), structured).decorate(|mut v| {
                v["resultType"] = json!("complete");
                v
            });
            let written: Value = serde_json::to_value(&reply).expect("serialize");
            let mut expected = json!({
                "content": [{"type": "text", "text": r#"{"slug":"a","n":1}"#}],
                "isError": false,
                "resultType": "complete",
            });
            if structured {
                expected["structuredContent"] = json!({"slug": "a", "n": 1});
            }
            assert_eq!(written, expected);
            assert_eq!(reply.into_value(), expected);
        }
    }
}
