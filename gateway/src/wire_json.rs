//! Protobuf wire bytes to proto3 JSON, straight from the descriptors.
//!
//! A tool's answer used to be decoded into a `DynamicMessage` (a map of boxed values per
//! message) and then serialized by prost-reflect: together about 30% of the CPU of a
//! `change.show` call through the gateway. [`OutputEncoder`] reads the response bytes once and
//! writes the JSON text as it goes, as serde_json writes what prost-reflect hands it: the same
//! number formatting crates, the same string escapes, so the text is the same byte for byte
//! (differential tests hold the two to that). Writing bytes straight into the buffer, rather
//! than through serde's `Serializer`, took a third off the instructions this costs (callgrind).
//!
//! It handles the encodings a protobuf encoder writes for proto3 messages. Anything else — a
//! singular field sent twice (merge semantics), two members of one oneof, a repeated map key,
//! a wire type that does not fit the field, malformed bytes, invalid UTF-8, an out-of-range
//! timestamp — makes it give up, and the message goes through `DynamicMessage` as before, which
//! then decides (and words any error). Message types it was not built for (proto2, extensions,
//! groups, well-known types other than `Timestamp`) never take this path.
use std::{collections::HashMap, sync::Arc};

use base64::{Engine as _, prelude::BASE64_STANDARD};
use prost::Message as _;
use prost_reflect::{DynamicMessage, EnumDescriptor, Kind, MessageDescriptor, SerializeOptions, Syntax};
use serde::{Serialize, Serializer};
use smallvec::SmallVec;

/// prost-reflect's nesting limit for decoding; deeper messages go its way and meet it there.
const MAX_DEPTH: u32 = 100;
/// The range of `google.protobuf.Timestamp` in JSON (0001-01-01 to 9999-12-31), as prost-reflect
/// checks it.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;
const TIMESTAMP: &str = "google.protobuf.Timestamp";

/// Serializes one message type from its wire bytes; built once per tool.
#[derive(Debug, Clone)]
pub struct OutputEncoder {
    descriptor: MessageDescriptor,
    /// `None` when the type needs what only `DynamicMessage` handles.
    plan: Option<Arc<Plan>>,
}

impl OutputEncoder {
    pub fn new(descriptor: MessageDescriptor) -> Self {
        let plan = Plan::new(&descriptor).map(Arc::new);
        OutputEncoder { descriptor, plan }
    }

    /// True when answers are serialized from the wire bytes (not through `DynamicMessage`).
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.plan.is_some()
    }

    /// `bytes` as JSON text.
    pub fn to_text(&self, bytes: &[u8]) -> Result<JsonText, EncodeError> {
        if let Some(json) = self.direct_bytes(bytes) {
            return Ok(JsonText { json, escaped: None });
        }
        self.reflected_text(bytes)
    }

    /// `bytes` as JSON text, and beside it (on the direct path) the same text escaped as the
    /// contents of a JSON string: MCP's text block, written in the same pass.
    pub fn to_text_and_escaped(&self, bytes: &[u8]) -> Result<JsonText, EncodeError> {
        if let Some(plan) = &self.plan {
            let mut out = Escaped {
                json: Vec::with_capacity(2 * bytes.len() + 64),
                text: Vec::with_capacity(3 * bytes.len() + 64),
            };
            if write_message(plan, 0, bytes, 0, &mut out).is_ok() {
                return Ok(JsonText { json: out.json, escaped: Some(out.text) });
            }
        }
        self.reflected_text(bytes)
    }

    /// `bytes` as JSON text through `DynamicMessage`, where the direct path gives up.
    fn reflected_text(&self, bytes: &[u8]) -> Result<JsonText, EncodeError> {
        let message = self.decode(bytes)?;
        JsonText::new(&Reflected(&message)).map_err(EncodeError::Encode)
    }

    /// `bytes` as a `Value`.
    pub fn to_value(&self, bytes: &[u8]) -> Result<serde_json::Value, EncodeError> {
        if let Some(text) = self.direct_bytes(bytes) {
            return serde_json::from_slice(&text).map_err(EncodeError::Encode);
        }
        let message = self.decode(bytes)?;
        serde_json::to_value(Reflected(&message)).map_err(EncodeError::Encode)
    }

    /// The direct path alone: `None` where it gives up.
    #[cfg(test)]
    fn direct(&self, bytes: &[u8]) -> Option<String> {
        self.direct_bytes(bytes).map(|text| String::from_utf8(text).expect("the direct path writes UTF-8"))
    }

    fn direct_bytes(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let plan = self.plan.as_ref()?;
        // The JSON of a message is about one and a half times its protobuf; sized so the
        // buffer does not grow, copying, on the way.
        let mut out = Vec::with_capacity(2 * bytes.len() + 64);
        write_message(plan, 0, bytes, 0, &mut out).ok()?;
        Some(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<DynamicMessage, EncodeError> {
        DynamicMessage::decode(self.descriptor.clone(), bytes).map_err(EncodeError::Decode)
    }
}

/// JSON text, valid JSON (and UTF-8) as it is, so it is passed on and embedded in answers
/// without being parsed or checked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText {
    json: Vec<u8>,
    /// The text escaped as the contents of a JSON string, when it was written alongside.
    escaped: Option<Vec<u8>>,
}

impl JsonText {
    /// `value` as JSON text.
    pub fn new(value: &impl Serialize) -> Result<JsonText, serde_json::Error> {
        serde_json::to_vec(value).map(|json| JsonText { json, escaped: None })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.json
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.json
    }

    pub fn len(&self) -> usize {
        self.json.len()
    }

    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }

    /// Appends the text escaped as the contents of a JSON string.
    pub fn write_escaped(&self, out: &mut Vec<u8>) {
        match &self.escaped {
            Some(escaped) => out.extend_from_slice(escaped),
            None => escape_into(out, &self.json),
        }
    }

    /// The text parsed, for the paths that queue messages as `Value`s.
    pub fn to_value(&self) -> serde_json::Value {
        // It is valid JSON, so it parses; `null` would only hide a bug, never a client's input.
        serde_json::from_slice(&self.json).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a response could not be written as JSON.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("decoding the response: {0}")]
    Decode(prost::DecodeError),
    #[error("encoding the response as JSON: {0}")]
    Encode(serde_json::Error),
}

/// JSON out: every field, defaults included, so `structuredContent` always has the same shape;
/// lowerCamelCase names, enums as names, 64-bit integers as strings. Unset message and
/// `optional` fields are left out. The direct path writes exactly this form.
pub const OUTPUT_OPTIONS: SerializeOptions = SerializeOptions::new().skip_default_fields(false);

/// A decoded message, serialized by prost-reflect.
pub struct Reflected<'a>(pub &'a DynamicMessage);

impl Serialize for Reflected<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_options(serializer, &OUTPUT_OPTIONS)
    }
}

/// What the direct path knows of every message type reachable from the root (index 0).
#[derive(Debug)]
struct Plan {
    messages: Vec<MessagePlan>,
}

#[derive(Debug)]
enum MessagePlan {
    Timestamp,
    Fields(Vec<FieldPlan>),
}

/// One field; a message's fields are kept in field-number order, the order prost-reflect
/// writes them in.
#[derive(Debug)]
struct FieldPlan {
    number: u32,
    /// The JSON member name, quoted, and the colon: `"jsonName":`.
    key: Snippet,
    /// `key` escaped as the contents of a JSON string.
    escaped_key: Snippet,
    shape: Shape,
    /// Written only when on the wire (message fields, `optional`, oneof members); the others
    /// are written with their default when absent.
    presence: bool,
    /// Index of the (non-synthetic) oneof holding the field.
    oneof: Option<usize>,
}

/// A few bytes the writer appends often (a field's key), kept so that they are appended
/// with one fixed-size copy: a call to `memcpy` per key was about 1% of the instructions of a
/// `change.show` call (callgrind).
#[derive(Debug)]
enum Snippet {
    Short { bytes: [u8; Snippet::SHORT], len: usize },
    Long(Box<[u8]>),
}

impl Snippet {
    const SHORT: usize = 32;

    fn new(text: &[u8]) -> Snippet {
        match text.len() {
            len @ 0..=Snippet::SHORT => {
                let mut bytes = [0; Snippet::SHORT];
                bytes[..len].copy_from_slice(text);
                Snippet::Short { bytes, len }
            }
            _ => Snippet::Long(text.into()),
        }
    }

    fn append_to(&self, out: &mut Vec<u8>) {
        match self {
            // The whole array, then cut back: a copy of known size, not a call.
            Snippet::Short { bytes, len } => {
                out.extend_from_slice(bytes);
                out.truncate(out.len() - (Snippet::SHORT - len));
            }
            Snippet::Long(bytes) => out.extend_from_slice(bytes),
        }
    }
}

#[derive(Debug)]
enum Shape {
    Single(ValueKind),
    List(ValueKind),
    /// Key and value of the map entry.
    Map(ValueKind, ValueKind),
}

#[derive(Debug, Clone)]
enum ValueKind {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    Enum(EnumDescriptor),
    /// Index into `Plan::messages`.
    Message(usize),
}

impl Plan {
    fn new(root: &MessageDescriptor) -> Option<Plan> {
        let mut builder = PlanBuilder { messages: Vec::new(), index: HashMap::new() };
        builder.message(root)?;
        let messages = builder.messages.into_iter().collect::<Option<Vec<_>>>()?;
        Some(Plan { messages })
    }
}

struct PlanBuilder {
    messages: Vec<Option<MessagePlan>>,
    index: HashMap<String, usize>,
}

impl PlanBuilder {
    /// The index of `desc`'s plan, built on first sight; `None` if the type is not for the
    /// direct path.
    fn message(&mut self, desc: &MessageDescriptor) -> Option<usize> {
        if let Some(&index) = self.index.get(desc.full_name()) {
            return Some(index);
        }
        let index = self.messages.len();
        self.index.insert(desc.full_name().to_string(), index);
        self.messages.push(None);
        let plan = if desc.full_name() == TIMESTAMP {
            MessagePlan::Timestamp
        } else {
            // Other well-known types have JSON forms of their own; proto2 has explicit
            // defaults and groups; extensions are looked up by number elsewhere.
            if desc.package_name() == "google.protobuf"
                || desc.parent_file().syntax() != Syntax::Proto3
                || desc.extensions().len() > 0
            {
                return None;
            }
            let mut oneofs: Vec<String> = Vec::new();
            let mut fields = Vec::new();
            for field in desc.fields() {
                if field.is_group() {
                    return None;
                }
                let shape = if field.is_map() {
                    let Kind::Message(entry) = field.kind() else { return None };
                    Shape::Map(
                        self.kind(&entry.map_entry_key_field().kind())?,
                        self.kind(&entry.map_entry_value_field().kind())?,
                    )
                } else if field.is_list() {
                    Shape::List(self.kind(&field.kind())?)
                } else {
                    Shape::Single(self.kind(&field.kind())?)
                };
                let oneof = field.containing_oneof().filter(|o| !o.is_synthetic()).map(|o| {
                    oneofs.iter().position(|n| n == o.full_name()).unwrap_or_else(|| {
                        oneofs.push(o.full_name().to_string());
                        oneofs.len() - 1
                    })
                });
                let mut key = Vec::new();
                string(&mut key, field.json_name().as_bytes());
                key.push(b':');
                let mut escaped_key = Vec::new();
                escape_into(&mut escaped_key, &key);
                let (key, escaped_key) = (Snippet::new(&key), Snippet::new(&escaped_key));
                fields.push(FieldPlan {
                    number: field.number(),
                    key,
                    escaped_key,
                    shape,
                    presence: field.supports_presence(),
                    oneof,
                });
            }
            MessagePlan::Fields(fields)
        };
        self.messages[index] = Some(plan);
        Some(index)
    }

    fn kind(&mut self, kind: &Kind) -> Option<ValueKind> {
        Some(match kind {
            Kind::Double => ValueKind::Double,
            Kind::Float => ValueKind::Float,
            Kind::Int32 => ValueKind::Int32,
            Kind::Int64 => ValueKind::Int64,
            Kind::Uint32 => ValueKind::Uint32,
            Kind::Uint64 => ValueKind::Uint64,
            Kind::Sint32 => ValueKind::Sint32,
            Kind::Sint64 => ValueKind::Sint64,
            Kind::Fixed32 => ValueKind::Fixed32,
            Kind::Fixed64 => ValueKind::Fixed64,
            Kind::Sfixed32 => ValueKind::Sfixed32,
            Kind::Sfixed64 => ValueKind::Sfixed64,
            Kind::Bool => ValueKind::Bool,
            Kind::String => ValueKind::String,
            Kind::Bytes => ValueKind::Bytes,
            // `NullValue` is written as `null`; it only lives in `Struct`, which is not for here.
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => return None,
            Kind::Enum(e) => ValueKind::Enum(e.clone()),
            Kind::Message(m) => ValueKind::Message(self.message(m)?),
        })
    }
}

/// The direct path gives up: the message goes through `DynamicMessage`.
#[derive(Debug)]
struct GiveUp;

/// One value as it came off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// One field occurrence: the field's position in its `MessagePlan::Fields` and its value.
type Occurrence<'a> = (usize, Wire<'a>);

fn varint(bytes: &mut &[u8]) -> Result<u64, GiveUp> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(GiveUp)?;
        *bytes = rest;
        if shift == 63 && byte > 1 {
            return Err(GiveUp);
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(GiveUp)
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], GiveUp> {
    if bytes.len() < n {
        return Err(GiveUp);
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

/// Reads the next field: its number and value.
fn next_field<'a>(bytes: &mut &'a [u8]) -> Result<(u64, Wire<'a>), GiveUp> {
    let tag = varint(bytes)?;
    let number = tag >> 3;
    if number == 0 {
        return Err(GiveUp);
    }
    let wire = match tag & 7 {
        0 => Wire::Varint(varint(bytes)?),
        1 => Wire::Fixed64(u64::from_le_bytes(take(bytes, 8)?.try_into().map_err(|_| GiveUp)?)),
        2 => {
            let len = usize::try_from(varint(bytes)?).map_err(|_| GiveUp)?;
            Wire::Len(take(bytes, len)?)
        }
        5 => Wire::Fixed32(u32::from_le_bytes(take(bytes, 4)?.try_into().map_err(|_| GiveUp)?)),
        // Groups (3, 4) and anything else.
        _ => return Err(GiveUp),
    };
    Ok((number, wire))
}

impl ValueKind {
    /// Whether `wire` is how a value of this kind travels (`Len` for a packed list too).
    fn fits(&self, wire: &Wire<'_>, list: bool) -> bool {
        match wire {
            Wire::Varint(_) => self.is_varint(),
            Wire::Fixed64(_) => matches!(self, ValueKind::Double | ValueKind::Fixed64 | ValueKind::Sfixed64),
            Wire::Fixed32(_) => matches!(self, ValueKind::Float | ValueKind::Fixed32 | ValueKind::Sfixed32),
            Wire::Len(_) => {
                matches!(self, ValueKind::String | ValueKind::Bytes | ValueKind::Message(_))
                    || (list && self.is_packable())
            }
        }
    }

    fn is_varint(&self) -> bool {
        matches!(
            self,
            ValueKind::Int32
                | ValueKind::Int64
                | ValueKind::Uint32
                | ValueKind::Uint64
                | ValueKind::Sint32
                | ValueKind::Sint64
                | ValueKind::Bool
                | ValueKind::Enum(_)
        )
    }

    fn is_packable(&self) -> bool {
        !matches!(self, ValueKind::String | ValueKind::Bytes | ValueKind::Message(_))
    }
}

/// Writes the message `message` of `plan` from its wire bytes; gives up (leaving a partial
/// text that the caller drops) on what only `DynamicMessage` would read right.
fn write_message<S: Sink>(plan: &Plan, message: usize, bytes: &[u8], depth: u32, out: &mut S) -> Result<(), GiveUp> {
    if depth > MAX_DEPTH {
        return Err(GiveUp);
    }
    let fields = match &plan.messages[message] {
        MessagePlan::Timestamp => return write_timestamp(bytes, out),
        MessagePlan::Fields(fields) => fields,
    };
    let mut occurrences = SmallVec::new();
    collect_occurrences(fields, bytes, &mut occurrences)?;
    out.plain(b"{");
    let mut first = true;
    let mut rest = occurrences.as_slice();
    for (slot, field) in fields.iter().enumerate() {
        let count = rest.iter().take_while(|(s, _)| *s == slot).count();
        let (mine, after) = rest.split_at(count);
        rest = after;
        if mine.is_empty() && field.presence {
            continue;
        }
        if !first {
            out.plain(b",");
        }
        first = false;
        out.key(field);
        write_field(plan, field, mine, depth, out)?;
    }
    out.plain(b"}");
    Ok(())
}

/// The known fields of `bytes`, grouped by field in field-number order (wire order within a
/// field); gives up on what only `DynamicMessage` would read right. Kept on the caller's stack
/// for messages of up to 16 fields on the wire: one allocation per nested message was 6% of
/// the instructions of a `change.show` call (callgrind), and returning the vector by value
/// copied its half kilobyte per message.
fn collect_occurrences<'a>(
    fields: &[FieldPlan],
    mut bytes: &'a [u8],
    found: &mut SmallVec<[Occurrence<'a>; 16]>,
) -> Result<(), GiveUp> {
    let mut sorted = true;
    let mut expected = 0;
    let mut any_oneof = false;
    while !bytes.is_empty() {
        let (number, wire) = next_field(&mut bytes)?;
        // Encoders write fields in number order, so the field after the last one found is the
        // first guess.
        let slot = match fields.get(expected) {
            Some(field) if u64::from(field.number) == number => expected,
            _ => match fields.binary_search_by_key(&number, |f| u64::from(f.number)) {
                Ok(slot) => slot,
                // Unknown fields are skipped, as prost-reflect's JSON leaves them out.
                Err(_) => continue,
            },
        };
        let field = &fields[slot];
        let fits = match &field.shape {
            Shape::Single(kind) => kind.fits(&wire, false),
            Shape::List(kind) => kind.fits(&wire, true),
            Shape::Map(..) => matches!(wire, Wire::Len(_)),
        };
        if !fits {
            return Err(GiveUp);
        }
        sorted &= found.last().is_none_or(|(last, _)| *last <= slot);
        any_oneof |= field.oneof.is_some();
        found.push((slot, wire));
        expected = slot + 1;
    }
    if !sorted {
        // Stable: a list keeps its wire order.
        found.sort_by_key(|(slot, _)| *slot);
    }
    // A singular field sent twice merges (messages) or takes the last value, and a oneof keeps
    // its last member: `DynamicMessage` knows how.
    let mut oneof_seen: SmallVec<[usize; 4]> = SmallVec::new();
    for (i, (slot, _)) in found.iter().enumerate() {
        let field = &fields[*slot];
        let repeated_here = i > 0 && found[i - 1].0 == *slot;
        if matches!(field.shape, Shape::Single(_)) && repeated_here {
            return Err(GiveUp);
        }
        if any_oneof
            && let Some(oneof) = field.oneof
            && !repeated_here
        {
            if oneof_seen.contains(&oneof) {
                return Err(GiveUp);
            }
            oneof_seen.push(oneof);
        }
    }
    Ok(())
}

/// A field's JSON value from its occurrences (none: the default).
fn write_field<S: Sink>(
    plan: &Plan,
    field: &FieldPlan,
    occurrences: &[Occurrence<'_>],
    depth: u32,
    out: &mut S,
) -> Result<(), GiveUp> {
    match &field.shape {
        Shape::Single(kind) => {
            let wire = occurrences.first().map_or_else(|| default_wire(kind), |(_, wire)| *wire);
            write_value(plan, kind, wire, depth, out)
        }
        Shape::List(kind) => {
            out.plain(b"[");
            let mut first = true;
            let mut element = |wire, out: &mut S| {
                if !first {
                    out.plain(b",");
                }
                first = false;
                write_value(plan, kind, wire, depth, out)
            };
            for &(_, wire) in occurrences {
                match wire {
                    Wire::Len(mut packed) if kind.is_packable() => {
                        while !packed.is_empty() {
                            element(packed_value(kind, &mut packed)?, out)?;
                        }
                    }
                    wire => element(wire, out)?,
                }
            }
            out.plain(b"]");
            Ok(())
        }
        Shape::Map(key_kind, value_kind) => {
            let mut entries: SmallVec<[(Wire<'_>, Wire<'_>); 8]> = SmallVec::new();
            for (_, wire) in occurrences {
                let Wire::Len(entry) = wire else { return Err(GiveUp) };
                let (key, value) = map_entry(key_kind, value_kind, entry)?;
                // A repeated key keeps its last value: `DynamicMessage` knows how.
                if entries.iter().any(|(k, _)| *k == key) {
                    return Err(GiveUp);
                }
                entries.push((key, value));
            }
            out.plain(b"{");
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.plain(b",");
                }
                write_map_key(key_kind, key, out)?;
                out.plain(b":");
                write_value(plan, value_kind, value, depth, out)?;
            }
            out.plain(b"}");
            Ok(())
        }
    }
}

/// The wire form of a kind's default value (an empty message for a message).
fn default_wire(kind: &ValueKind) -> Wire<'static> {
    match kind {
        ValueKind::Double | ValueKind::Fixed64 | ValueKind::Sfixed64 => Wire::Fixed64(0),
        ValueKind::Float | ValueKind::Fixed32 | ValueKind::Sfixed32 => Wire::Fixed32(0),
        ValueKind::String | ValueKind::Bytes | ValueKind::Message(_) => Wire::Len(&[]),
        _ => Wire::Varint(0),
    }
}

fn packed_value<'a>(kind: &ValueKind, bytes: &mut &'a [u8]) -> Result<Wire<'a>, GiveUp> {
    Ok(match kind {
        ValueKind::Double | ValueKind::Fixed64 | ValueKind::Sfixed64 => {
            Wire::Fixed64(u64::from_le_bytes(take(bytes, 8)?.try_into().map_err(|_| GiveUp)?))
        }
        ValueKind::Float | ValueKind::Fixed32 | ValueKind::Sfixed32 => {
            Wire::Fixed32(u32::from_le_bytes(take(bytes, 4)?.try_into().map_err(|_| GiveUp)?))
        }
        _ => Wire::Varint(varint(bytes)?),
    })
}

/// A map entry's key (field 1) and value (field 2), defaults where absent.
fn map_entry<'a>(
    key_kind: &ValueKind,
    value_kind: &ValueKind,
    mut bytes: &'a [u8],
) -> Result<(Wire<'a>, Wire<'a>), GiveUp> {
    let (mut key, mut value) = (None, None);
    while !bytes.is_empty() {
        let (number, wire) = next_field(&mut bytes)?;
        let (slot, kind) = match number {
            1 => (&mut key, key_kind),
            2 => (&mut value, value_kind),
            _ => continue,
        };
        if slot.is_some() || !kind.fits(&wire, false) {
            return Err(GiveUp);
        }
        *slot = Some(wire);
    }
    Ok((key.unwrap_or_else(|| default_wire(key_kind)), value.unwrap_or_else(|| default_wire(value_kind))))
}

/// One value of a field, written as serde_json writes what prost-reflect hands it: integers
/// by `itoa` (the 64-bit ones as strings), floats by `zmij`, enums by name.
fn write_value<S: Sink>(plan: &Plan, kind: &ValueKind, wire: Wire<'_>, depth: u32, out: &mut S) -> Result<(), GiveUp> {
    if let Some(n) = integer(kind, wire) {
        n.write(out, false);
        return Ok(());
    }
    match (kind, wire) {
        (ValueKind::Bool, Wire::Varint(v)) => out.plain(if v != 0 { b"true" } else { b"false" }),
        (ValueKind::Enum(desc), Wire::Varint(v)) => match desc.get_value(v as i32) {
            Some(value) => string(out, value.name().as_bytes()),
            None => number(out, v as i32),
        },
        (ValueKind::Float, Wire::Fixed32(v)) => float(out, f32::from_bits(v)),
        (ValueKind::Double, Wire::Fixed64(v)) => float(out, f64::from_bits(v)),
        (ValueKind::String, Wire::Len(bytes)) => {
            utf8_string(out, bytes)?;
        }
        (ValueKind::Bytes, Wire::Len(bytes)) => {
            out.quote();
            out.plain(BASE64_STANDARD.encode(bytes).as_bytes());
            out.quote();
        }
        (ValueKind::Message(message), Wire::Len(bytes)) => write_message(plan, *message, bytes, depth + 1, out)?,
        _ => return Err(GiveUp),
    }
    Ok(())
}

/// A map key: JSON object keys are strings, numbers and booleans written as text.
fn write_map_key<S: Sink>(kind: &ValueKind, wire: Wire<'_>, out: &mut S) -> Result<(), GiveUp> {
    if let Some(n) = integer(kind, wire) {
        n.write(out, true);
        return Ok(());
    }
    match (kind, wire) {
        (ValueKind::String, Wire::Len(bytes)) => utf8_string(out, bytes)?,
        (ValueKind::Bool, Wire::Varint(v)) => {
            out.quote();
            out.plain(if v != 0 { b"true" } else { b"false" });
            out.quote();
        }
        _ => return Err(GiveUp),
    }
    Ok(())
}

/// The value of an integer field.
#[derive(Clone, Copy)]
enum Integer {
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
}

impl Integer {
    /// 64-bit integers are JSON strings (a double cannot hold them); 32-bit ones are numbers,
    /// except as map keys (`quoted`).
    fn write<S: Sink>(self, out: &mut S, quoted: bool) {
        match self {
            Integer::I32(n) if !quoted => number(out, n),
            Integer::U32(n) if !quoted => number(out, n),
            Integer::I32(n) => quoted_number(out, n),
            Integer::U32(n) => quoted_number(out, n),
            Integer::I64(n) => quoted_number(out, n),
            Integer::U64(n) => quoted_number(out, n),
        }
    }
}

/// An integer field's value from the wire; `None` for other kinds, or a wire type that does
/// not fit.
// The casts are the protobuf wire rules: an int32 travels as a sign-extended varint, a uint32
// as a varint whose high bits a decoder drops, fixed-width values as their bits.
fn integer(kind: &ValueKind, wire: Wire<'_>) -> Option<Integer> {
    Some(match (kind, wire) {
        (ValueKind::Int32, Wire::Varint(v)) => Integer::I32(v as i32),
        (ValueKind::Int64, Wire::Varint(v)) => Integer::I64(v as i64),
        (ValueKind::Uint32, Wire::Varint(v)) => Integer::U32(v as u32),
        (ValueKind::Uint64, Wire::Varint(v)) => Integer::U64(v),
        (ValueKind::Sint32, Wire::Varint(v)) => Integer::I32(zigzag32(v)),
        (ValueKind::Sint64, Wire::Varint(v)) => Integer::I64(zigzag64(v)),
        (ValueKind::Fixed32, Wire::Fixed32(v)) => Integer::U32(v),
        (ValueKind::Sfixed32, Wire::Fixed32(v)) => Integer::I32(v as i32),
        (ValueKind::Fixed64, Wire::Fixed64(v)) => Integer::U64(v),
        (ValueKind::Sfixed64, Wire::Fixed64(v)) => Integer::I64(v as i64),
        _ => return None,
    })
}

/// `sint32` and `sint64` travel zigzag-encoded (0, -1, 1, -2, … as 0, 1, 2, 3, …); a `sint32`
/// decoder keeps the low 32 bits of the varint.
fn zigzag32(v: u64) -> i32 {
    let v = v as u32;
    (v >> 1) as i32 ^ -((v & 1) as i32)
}

fn zigzag64(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn number<S: Sink>(out: &mut S, n: impl itoa::Integer) {
    out.plain(itoa::Buffer::new().format(n).as_bytes());
}

fn quoted_number<S: Sink>(out: &mut S, n: impl itoa::Integer) {
    out.quote();
    number(out, n);
    out.quote();
}

/// A float as serde_json writes a finite one (`zmij`); the others as prost-reflect names them.
fn float<S: Sink, F: zmij::Float + Into<f64>>(out: &mut S, v: F) {
    let wide: f64 = v.into();
    if wide.is_finite() {
        out.plain(zmij::Buffer::new().format_finite(v).as_bytes());
        return;
    }
    let name: &[u8] = if wide == f64::INFINITY {
        b"Infinity"
    } else if wide == f64::NEG_INFINITY {
        b"-Infinity"
    } else {
        b"NaN"
    };
    out.quote();
    out.plain(name);
    out.quote();
}

/// `text` as a JSON string.
fn string<S: Sink>(out: &mut S, text: &[u8]) {
    out.quote();
    escape_words(out, text);
    out.quote();
}

/// A protobuf `string` field as a JSON string; gives up on invalid UTF-8. The escaper notes
/// whether it met a byte above ASCII, so only such text pays for a full UTF-8 check: a call
/// to `from_utf8` per field was 3% of a `change.show` call (callgrind).
fn utf8_string<S: Sink>(out: &mut S, bytes: &[u8]) -> Result<(), GiveUp> {
    out.quote();
    if !escape_words(out, bytes) {
        std::str::from_utf8(bytes).map_err(|_| GiveUp)?;
    }
    out.quote();
    Ok(())
}

/// A `google.protobuf.Timestamp` in RFC 3339, as prost-types displays it (UTC, `Z`, and 0, 3, 6
/// or 9 fraction digits), for seconds within the JSON range and nanos within a second; other
/// values go through `DynamicMessage`.
fn write_timestamp<S: Sink>(bytes: &[u8], out: &mut S) -> Result<(), GiveUp> {
    let timestamp = prost_types::Timestamp::decode(bytes).map_err(|_| GiveUp)?;
    let (seconds, nanos) = (timestamp.seconds, timestamp.nanos);
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return Err(GiveUp);
    }
    // The calendar from the `time` crate; the digits by hand, as prost-types lays them out.
    let at = time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| GiveUp)?;
    let nanos = nanos as u32;
    out.quote();
    fixed_digits(out, at.year() as u32, 4);
    out.plain(b"-");
    fixed_digits(out, u32::from(u8::from(at.month())), 2);
    out.plain(b"-");
    fixed_digits(out, u32::from(at.day()), 2);
    out.plain(b"T");
    fixed_digits(out, u32::from(at.hour()), 2);
    out.plain(b":");
    fixed_digits(out, u32::from(at.minute()), 2);
    out.plain(b":");
    fixed_digits(out, u32::from(at.second()), 2);
    if nanos != 0 {
        out.plain(b".");
        if nanos.is_multiple_of(1_000_000) {
            fixed_digits(out, nanos / 1_000_000, 3);
        } else if nanos.is_multiple_of(1_000) {
            fixed_digits(out, nanos / 1_000, 6);
        } else {
            fixed_digits(out, nanos, 9);
        }
    }
    out.plain(b"Z");
    out.quote();
    Ok(())
}

/// `n` in exactly `width` decimal digits (`n` has no more).
fn fixed_digits<S: Sink>(out: &mut S, mut n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    let digits = &mut digits[..width];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.plain(digits);
}

/// Where the direct path writes: the JSON text alone (a `Vec<u8>`), or [`Escaped`].
trait Sink {
    /// Bytes that read the same inside a JSON string: no `"`, `\` or control characters.
    fn plain(&mut self, bytes: &[u8]);
    /// A `"` of the JSON text (a string's delimiter).
    fn quote(&mut self);
    /// A field's `"jsonName":`.
    fn key(&mut self, field: &FieldPlan);
    /// `byte`, one that needs an escape inside a JSON string, escaped.
    fn escape(&mut self, byte: u8);
    /// Takes back the last `n` bytes of [`Sink::plain`].
    fn unwrite(&mut self, n: usize);
}

impl Sink for Vec<u8> {
    fn plain(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    fn quote(&mut self) {
        self.push(b'"');
    }

    fn key(&mut self, field: &FieldPlan) {
        field.key.append_to(self);
    }

    fn escape(&mut self, byte: u8) {
        push_escape(self, byte);
    }

    fn unwrite(&mut self, n: usize) {
        self.truncate(self.len() - n);
    }
}

/// The JSON text, and beside it the same text escaped as the contents of a JSON string (MCP's
/// text block). Escaping the finished text instead costs a branch per quote, and a tool's
/// answer is dense with them: that was 11% of the instructions of a `change.show` call
/// (callgrind). Here keys come escaped from the plan, and string values are escaped twice in
/// one pass.
struct Escaped {
    json: Vec<u8>,
    text: Vec<u8>,
}

impl Sink for Escaped {
    fn plain(&mut self, bytes: &[u8]) {
        self.json.extend_from_slice(bytes);
        self.text.extend_from_slice(bytes);
    }

    fn quote(&mut self) {
        self.json.push(b'"');
        self.text.extend_from_slice(b"\\\"");
    }

    fn key(&mut self, field: &FieldPlan) {
        field.key.append_to(&mut self.json);
        field.escaped_key.append_to(&mut self.text);
    }

    fn escape(&mut self, byte: u8) {
        let start = self.json.len();
        push_escape(&mut self.json, byte);
        // The escape is a backslash and ASCII letters or digits, but for `\"` and `\\`.
        for &b in &self.json[start..] {
            if b == b'"' || b == b'\\' {
                self.text.push(b'\\');
            }
            self.text.push(b);
        }
    }

    fn unwrite(&mut self, n: usize) {
        self.json.truncate(self.json.len() - n);
        self.text.truncate(self.text.len() - n);
    }
}

/// Appends `text` as the contents of a JSON string, escaped as serde_json escapes: `"` and `\`,
/// control characters as `\n`-style short forms or `\u00XX`; everything else as it is.
pub fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    escape_words(out, text);
}

/// [`escape_into`] into any sink, answering whether `text` was all ASCII.
fn escape_words<S: Sink>(out: &mut S, text: &[u8]) -> bool {
    // Sixteen bytes at a time: each chunk is classified at once (SSE2 compares), copied whole
    // (a fixed-size copy, not a `memcpy` per run between escapes) and cut back to the first
    // byte that needs an escape. The last short chunk is padded with spaces, which need none,
    // so a short string (most are: ids, names) is one chunk rather than a byte loop. A table
    // load per byte, then eight-byte words, were most of the cost of writing the text block of
    // a tool's answer (callgrind, `change.show`).
    let mut high = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (chunk, len) = match rest.first_chunk::<CHUNK>() {
            Some(chunk) => (*chunk, CHUNK),
            None => (padded(rest), rest.len()),
        };
        let class = classify(&chunk);
        high |= class.high;
        out.plain(&chunk);
        if class.escapes == 0 {
            out.unwrite(CHUNK - len);
            rest = &rest[len..];
            continue;
        }
        let at = class.escapes.trailing_zeros() as usize;
        out.unwrite(CHUNK - at);
        out.escape(rest[at]);
        rest = &rest[at + 1..];
    }
    high == 0
}

/// The bytes [`escape_words`] classifies at once.
const CHUNK: usize = 16;

/// `rest`, shorter than a chunk, followed by spaces. Copied in two overlapping fixed-size
/// pieces: a copy of variable length is a call to `memcpy`, and most strings end here.
fn padded(rest: &[u8]) -> [u8; CHUNK] {
    let mut padded = [b' '; CHUNK];
    let n = rest.len();
    if n >= 8 {
        padded[..8].copy_from_slice(&rest[..8]);
        padded[n - 8..n].copy_from_slice(&rest[n - 8..]);
    } else if n >= 4 {
        padded[..4].copy_from_slice(&rest[..4]);
        padded[n - 4..n].copy_from_slice(&rest[n - 4..]);
    } else {
        // One to three bytes, without the loop that becomes a call to `memcpy`.
        padded[0] = rest[0];
        padded[n / 2] = rest[n / 2];
        padded[n - 1] = rest[n - 1];
    }
    padded
}

/// Bit `i` of `escapes` is set when byte `i` of a chunk needs an escape (`"`, `\\` or below
/// 0x20), bit `i` of `high` when it is not ASCII.
struct Class {
    escapes: u32,
    high: u32,
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify(chunk: &[u8; CHUNK]) -> Class {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // Plain Rust over the bytes compiles to SSE2 only in some contexts (LLVM scalarised it once
    // inlined here), so the compares are spelled out.
    // SAFETY: SSE2 is part of the x86_64 baseline, and the load reads the 16 bytes of `chunk`
    // (unaligned loads are allowed).
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20 exactly when the unsigned minimum with 0x1f is the byte itself.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(bytes, _mm_set1_epi8(0x1f)), bytes);
        Class {
            escapes: _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32,
            high: _mm_movemask_epi8(bytes) as u32,
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn classify(chunk: &[u8; CHUNK]) -> Class {
    classify_bytewise(chunk)
}

/// [`classify`] a byte at a time: other targets' form, and the SSE2 form's reference in tests.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn classify_bytewise(chunk: &[u8; CHUNK]) -> Class {
    let mut class = Class { escapes: 0, high: 0 };
    for (i, &byte) in chunk.iter().enumerate() {
        class.escapes |= u32::from(ESCAPE[usize::from(byte)] != 0) << i;
        class.high |= u32::from(byte >= 0x80) << i;
    }
    class
}

/// The escape of a byte that needs one.
fn push_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match ESCAPE[usize::from(byte)] {
        b'u' => {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]])
        }
        short => out.extend_from_slice(&[b'\\', short]),
    }
}

/// For each byte, the letter after the backslash that escapes it (`u`: `\u00XX`), or 0.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prost::encoding::{WireType, encode_key, encode_varint};
    use prost_reflect::{DescriptorPool, MapKey as Key, Value as V};
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn test_pool() -> DescriptorPool {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
        let files = protox::compile(["every_kind.proto", "legacy.proto"], [dir]).expect("compile the test protos");
        DescriptorPool::from_file_descriptor_set(files).expect("test pool")
    }

    fn every() -> MessageDescriptor {
        test_pool().get_message_by_name("wirejson.test.Every").expect("Every")
    }

    fn reflected_text(desc: &MessageDescriptor, bytes: &[u8]) -> String {
        let message = DynamicMessage::decode(desc.clone(), bytes).expect("decodes");
        serde_json::to_string(&Reflected(&message)).expect("serializes")
    }

    fn random_message(desc: &MessageDescriptor, rng: &mut StdRng, depth: u32, maps: bool) -> DynamicMessage {
        let mut message = DynamicMessage::new(desc.clone());
        if desc.full_name() == TIMESTAMP {
            message
                .set_field_by_name("seconds", V::I64(rng.random_range(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS)));
            message.set_field_by_name("nanos", V::I32(rng.random_range(0..1_000_000_000)));
            return message;
        }
        if depth > 3 {
            return message;
        }
        for field in desc.fields() {
            if !rng.random_bool(0.6) {
                continue;
            }
            let value = if field.is_map() {
                if !maps {
                    continue;
                }
                let Kind::Message(entry) = field.kind() else { unreachable!("a map field is a message") };
                let (key_kind, value_kind) = (entry.map_entry_key_field().kind(), entry.map_entry_value_field().kind());
                let entries = (0..rng.random_range(0..4))
                    .map(|_| (random_key(&key_kind, rng), random_value(&value_kind, rng, depth, maps)))
                    .collect::<HashMap<_, _>>();
                V::Map(entries)
            } else if field.is_list() {
                V::List((0..rng.random_range(0..4)).map(|_| random_value(&field.kind(), rng, depth, maps)).collect())
            } else {
                random_value(&field.kind(), rng, depth, maps)
            };
            message.set_field(&field, value);
        }
        message
    }

    /// One of `specials`, or (as often as any one of them) a random value.
    fn pick<T: Copy>(rng: &mut StdRng, specials: &[T], random: impl FnOnce(&mut StdRng) -> T) -> T {
        let i = rng.random_range(0..=specials.len());
        specials.get(i).copied().unwrap_or_else(|| random(rng))
    }

    fn random_value(kind: &Kind, rng: &mut StdRng, depth: u32, maps: bool) -> V {
        const STRINGS: &[&str] =
            &["", "plain", "héllo wörld", "quote \" back \\ slash \n tab \t bell \u{7}", "日本語", "</script>"];
        match kind {
            Kind::Double => {
                let random = rng.random::<f64>() * 1e6 - 5e5;
                V::F64(pick(
                    rng,
                    &[0.0, -0.0, 1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, 1e300],
                    |_| random,
                ))
            }
            Kind::Float => {
                let random = rng.random::<f32>() * 1e3 - 5e2;
                V::F32(pick(rng, &[0.0, -0.0, 0.1, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX], |_| random))
            }
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                V::I32(pick(rng, &[0, -1, i32::MIN, i32::MAX], |r| r.random()))
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                V::I64(pick(rng, &[0, -1, i64::MIN, i64::MAX], |r| r.random()))
            }
            Kind::Uint32 | Kind::Fixed32 => V::U32(pick(rng, &[0, 1, u32::MAX], |r| r.random())),
            Kind::Uint64 | Kind::Fixed64 => V::U64(pick(rng, &[0, 1, u64::MAX], |r| r.random())),
            Kind::Bool => V::Bool(rng.random()),
            Kind::String => V::String(pick(rng, STRINGS, |_| "x").to_string()),
            Kind::Bytes => {
                V::Bytes((0..rng.random_range(0..9)).map(|_| rng.random::<u8>()).collect::<Vec<u8>>().into())
            }
            // 7 is no value of the enum: written as a number.
            Kind::Enum(_) => V::EnumNumber(pick(rng, &[0, 1, 2, 7], |_| 1)),
            Kind::Message(m) => V::Message(random_message(m, rng, depth + 1, maps)),
        }
    }

    fn random_key(kind: &Kind, rng: &mut StdRng) -> Key {
        match kind {
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Key::I32(pick(rng, &[0, -1, i32::MIN], |r| r.random())),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Key::I64(pick(rng, &[0, -1, i64::MIN], |r| r.random())),
            Kind::Uint32 | Kind::Fixed32 => Key::U32(rng.random()),
            Kind::Uint64 | Kind::Fixed64 => Key::U64(pick(rng, &[0, u64::MAX], |r| r.random())),
            Kind::Bool => Key::Bool(rng.random()),
            Kind::String => Key::String(pick(rng, &["", "k", "ü \"q\""], |_| "z").to_string()),
            other => unreachable!("{other:?} is no map key kind"),
        }
    }

    /// The direct path's text against prost-reflect's for random messages of `desc`: the same
    /// bytes, or (maps on, whose order prost-reflect leaves to a `HashMap`) the same value.
    fn agrees_on_random_messages(desc: &MessageDescriptor, seed: u64, rounds: usize) {
        let encoder = OutputEncoder::new(desc.clone());
        assert!(encoder.is_direct(), "{} is for the direct path", desc.full_name());
        let mut rng = StdRng::seed_from_u64(seed);
        for round in 0..rounds {
            let maps = round % 2 == 1;
            let bytes = random_message(desc, &mut rng, 0, maps).encode_to_vec();
            let direct = encoder.direct(&bytes).unwrap_or_else(|| panic!("direct path gave up on {bytes:?}"));
            let reflected = reflected_text(desc, &bytes);
            if maps {
                let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("JSON");
                assert_eq!(parse(&direct), parse(&reflected), "round {round}");
            } else {
                assert_eq!(direct, reflected, "round {round}");
            }
            assert_eq!(encoder.to_text(&bytes).expect("encodes").as_bytes(), direct.as_bytes());
            let both = encoder.to_text_and_escaped(&bytes).expect("encodes");
            assert_eq!(both.as_bytes(), direct.as_bytes(), "round {round}");
            let mut escaped = Vec::new();
            escape_into(&mut escaped, direct.as_bytes());
            assert_eq!(
                String::from_utf8_lossy(both.escaped.as_deref().expect("written alongside")),
                String::from_utf8_lossy(&escaped),
                "round {round}"
            );
        }
    }

    #[test]
    fn writes_what_prost_reflect_writes_for_every_field_shape() {
        agrees_on_random_messages(&every(), 7, 2_000);
    }

    #[test]
    fn every_tool_of_the_service_takes_the_direct_path_and_agrees() {
        let pool = DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET).expect("embedded descriptors");
        let registry = crate::upstream::Registry::from_pool(&pool).expect("registry");
        assert!(!registry.tools().is_empty());
        for (i, tool) in registry.tools().iter().enumerate() {
            agrees_on_random_messages(&tool.method.output(), i as u64, 200);
        }
    }

    #[test]
    fn types_with_json_forms_of_their_own_go_through_dynamic_message() {
        let pool = test_pool();
        for name in ["wirejson.test.WithDuration", "wirejson.legacy.Legacy"] {
            let desc = pool.get_message_by_name(name).expect(name);
            let encoder = OutputEncoder::new(desc.clone());
            assert!(!encoder.is_direct(), "{name}");
            let mut message = DynamicMessage::new(desc.clone());
            if name.ends_with("Legacy") {
                message.set_field_by_name("n", V::I32(3));
            }
            let bytes = message.encode_to_vec();
            assert_eq!(encoder.to_text(&bytes).expect("encodes").as_bytes(), reflected_text(&desc, &bytes).as_bytes());
        }
    }

    fn field(buf: &mut Vec<u8>, number: u32, wire_type: WireType) {
        encode_key(number, wire_type, buf);
    }

    fn varint_field(buf: &mut Vec<u8>, number: u32, value: u64) {
        field(buf, number, WireType::Varint);
        encode_varint(value, buf);
    }

    fn len_field(buf: &mut Vec<u8>, number: u32, payload: &[u8]) {
        field(buf, number, WireType::LengthDelimited);
        encode_varint(payload.len() as u64, buf);
        buf.extend_from_slice(payload);
    }

    #[test]
    fn reads_what_other_encoders_may_send() {
        let desc = every();
        let encoder = OutputEncoder::new(desc.clone());
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

        let mut bytes = Vec::new();
        len_field(&mut bytes, 14, b"later field first");
        varint_field(&mut bytes, 5000, 1);
        varint_field(&mut bytes, 3, 42);
        cases.push(("fields out of number order", bytes));

        let mut bytes = Vec::new();
        varint_field(&mut bytes, 23, 1);
        len_field(&mut bytes, 23, &[2, 3]);
        varint_field(&mut bytes, 3, 9);
        varint_field(&mut bytes, 23, 4);
        cases.push(("a list unpacked, packed and interrupted", bytes));

        let mut bytes = Vec::new();
        varint_field(&mut bytes, 999, 1);
        len_field(&mut bytes, 998, b"unknown");
        varint_field(&mut bytes, 3, 1);
        cases.push(("unknown fields", bytes));

        let mut bytes = Vec::new();
        varint_field(&mut bytes, 3, (-5i64) as u64);
        varint_field(&mut bytes, 7, 9); // sint32 -5
        cases.push(("negative int32 as a ten-byte varint", bytes));

        let mut bytes = Vec::new();
        varint_field(&mut bytes, 23, u64::from(u32::MAX) + 7);
        varint_field(&mut bytes, 5, u64::MAX);
        cases.push(("32-bit values with high bits set", bytes));

        for (what, bytes) in cases {
            let direct = encoder.direct(&bytes).unwrap_or_else(|| panic!("{what}: direct path gave up"));
            assert_eq!(direct, reflected_text(&desc, &bytes), "{what}");
        }
    }

    #[test]
    fn gives_up_where_dynamic_message_reads_differently_and_then_agrees_with_it() {
        let desc = every();
        let encoder = OutputEncoder::new(desc.clone());
        let inner = |name: &str, n: u64| {
            let mut bytes = Vec::new();
            len_field(&mut bytes, 1, name.as_bytes());
            varint_field(&mut bytes, 2, n);
            bytes
        };
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

        let mut bytes = Vec::new();
        varint_field(&mut bytes, 3, 1);
        varint_field(&mut bytes, 3, 2);
        cases.push(("a singular field twice: the last wins", bytes));

        let mut bytes = Vec::new();
        len_field(&mut bytes, 17, &inner("a", 1));
        len_field(&mut bytes, 17, &inner("", 0)[..0]);
        len_field(&mut bytes, 17, &{
            let mut b = Vec::new();
            varint_field(&mut b, 2, 5);
            b
        });
        cases.push(("a message field twice: merged", bytes));

        let mut bytes = Vec::new();
        len_field(&mut bytes, 60, b"first member");
        varint_field(&mut bytes, 62, 3);
        cases.push(("two members of a oneof: the last wins", bytes));

        let mut bytes = Vec::new();
        for value in [1, 2] {
            let mut entry = Vec::new();
            len_field(&mut entry, 1, b"same key");
            varint_field(&mut entry, 2, value);
            len_field(&mut bytes, 40, &entry);
        }
        cases.push(("a map key twice: the last wins", bytes));

        for (what, bytes) in cases {
            assert_eq!(encoder.direct(&bytes), None, "{what}: the direct path must give up");
            let value = encoder.to_value(&bytes).expect("DynamicMessage reads it");
            let expected: serde_json::Value = serde_json::from_str(&reflected_text(&desc, &bytes)).expect("JSON");
            assert_eq!(value, expected, "{what}");
        }
        let value = |bytes: &[u8]| encoder.to_value(bytes).expect("reads");
        let mut bytes = Vec::new();
        varint_field(&mut bytes, 3, 1);
        varint_field(&mut bytes, 3, 2);
        assert_eq!(value(&bytes)["i32"], 2);
        let mut bytes = Vec::new();
        len_field(&mut bytes, 60, b"first member");
        varint_field(&mut bytes, 62, 3);
        assert_eq!((value(&bytes).get("cS"), value(&bytes)["cI"].as_str()), (None, Some("3")));
    }

    #[test]
    fn every_byte_at_every_position_is_classified_as_byte_by_byte() {
        for byte in 0..=u8::MAX {
            for at in 0..CHUNK {
                let mut chunk = [b'a'; CHUNK];
                chunk[at] = byte;
                let (simd, bytewise) = (classify(&chunk), classify_bytewise(&chunk));
                assert_eq!((simd.escapes, simd.high), (bytewise.escapes, bytewise.high), "{byte:#x} at {at}");
            }
        }
    }

    #[test]
    fn escaping_matches_serde_json_for_every_byte_at_every_offset() {
        let serde = |text: &str| serde_json::to_string(text).expect("serde");
        let ours = |text: &str| {
            let mut out = Vec::new();
            string(&mut out, text.as_bytes());
            let mut checked = Vec::new();
            utf8_string(&mut checked, text.as_bytes()).expect("valid UTF-8 is written");
            assert_eq!(checked, out, "{text:?}");
            // Written beside it, escaped again: what serde_json makes of the JSON string.
            let mut both = Escaped { json: Vec::new(), text: Vec::new() };
            utf8_string(&mut both, text.as_bytes()).expect("valid UTF-8 is written");
            assert_eq!(both.json, out, "{text:?}");
            let again = serde(std::str::from_utf8(&out).expect("UTF-8"));
            assert_eq!(String::from_utf8_lossy(&both.text), again[1..again.len() - 1], "{text:?}");
            String::from_utf8(out).expect("UTF-8")
        };
        // Each ASCII byte in each of the first three sixteen-byte chunks, in a full chunk and in
        // the padded last one of each length, among other text.
        for byte in 0u8..0x80 {
            for offset in 0..40 {
                for after in ["", "b", "bcd", "bcdefgh", "é", &"é".repeat(9)] {
                    let text = format!("{}{}{after}", "a".repeat(offset), char::from(byte));
                    assert_eq!(ours(&text), serde(&text), "byte {byte:#x} at {offset}, then {after:?}");
                }
            }
        }
        let mut rng = StdRng::seed_from_u64(11);
        const PIECES: &[&str] =
            &["a", "bcdefgh", "\"", "\\", "\n", "\u{1}", "\u{1f}", " ", "é", "日本", "\u{2028}", "\u{7f}"];
        for _ in 0..2_000 {
            let text: String =
                (0..rng.random_range(0..40)).map(|_| PIECES[rng.random_range(0..PIECES.len())]).collect();
            assert_eq!(ours(&text), serde(&text), "{text:?}");
        }
    }

    #[test]
    fn timestamps_read_as_prost_types_displays_them() {
        let mut rng = StdRng::seed_from_u64(5);
        let nanos = [0, 1, 999_999_999, 5_000_000, 120_000, 7_000, 100_000_000, 1_000];
        let edges = [
            MIN_TIMESTAMP_SECONDS,
            MAX_TIMESTAMP_SECONDS,
            0,
            -1,
            951_782_400,
            68_169_600,
            MIN_TIMESTAMP_SECONDS + 86_399,
        ];
        for i in 0..20_000 {
            let seconds = edges
                .get(i)
                .copied()
                .unwrap_or_else(|| rng.random_range(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS));
            let timestamp = prost_types::Timestamp { seconds, nanos: nanos[i % nanos.len()] };
            let mut out = Vec::new();
            write_timestamp(&timestamp.encode_to_vec(), &mut out).expect("in range");
            assert_eq!(String::from_utf8(out).expect("UTF-8"), format!("\"{timestamp}\""));
        }
        for (seconds, nanos) in [(0, -1), (0, 1_000_000_000), (MAX_TIMESTAMP_SECONDS + 1, 0)] {
            let bytes = prost_types::Timestamp { seconds, nanos }.encode_to_vec();
            assert!(write_timestamp(&bytes, &mut Vec::new()).is_err(), "{seconds} {nanos}: DynamicMessage decides");
        }
    }

    #[test]
    fn malformed_answers_are_errors_on_both_paths() {
        let encoder = OutputEncoder::new(every());
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

        let mut bytes = Vec::new();
        varint_field(&mut bytes, 14, 1);
        cases.push(("a string field sent as a varint", bytes));

        let mut bytes = Vec::new();
        field(&mut bytes, 14, WireType::LengthDelimited);
        encode_varint(50, &mut bytes);
        bytes.extend_from_slice(b"short");
        cases.push(("a length beyond the end", bytes));

        let mut bytes = Vec::new();
        len_field(&mut bytes, 14, &[0xff, 0xfe]);
        cases.push(("a string that is not UTF-8", bytes));

        let mut bytes = Vec::new();
        len_field(&mut bytes, 14, b"eight by\xfftes and more");
        cases.push(("a stray byte in a string's second word", bytes));

        let mut bytes = Vec::new();
        len_field(&mut bytes, 14, b"eight by\xc3");
        cases.push(("a character cut short at a string's end", bytes));

        let mut bytes = Vec::new();
        let mut at = Vec::new();
        varint_field(&mut at, 1, (MAX_TIMESTAMP_SECONDS + 1) as u64);
        len_field(&mut bytes, 70, &at);
        cases.push(("a timestamp after 9999", bytes));

        cases.push(("a varint that never ends", vec![0x18, 0xff, 0xff]));

        for (what, bytes) in cases {
            assert_eq!(encoder.direct(&bytes), None, "{what}");
            let err = encoder.to_text(&bytes).expect_err(what);
            assert!(matches!(err, EncodeError::Decode(_) | EncodeError::Encode(_)), "{what}: {err}");
        }
    }
}
