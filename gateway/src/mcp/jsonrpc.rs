//! JSON-RPC 2.0 framing for MCP.
use super::reply::Reply;
use serde_json::{Map, Value, json};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// Implementation-defined transport rejection (as the reference SDKs use it).
pub const SERVER_ERROR: i64 = -32000;
/// Resource not found (up to 2025-11-25; 2026-07-28 uses INVALID_PARAMS).
pub const RESOURCE_NOT_FOUND: i64 = -32002;
/// 2026-07-28: a header disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: the client lacks a capability the request needs.
pub const MISSING_CAPABILITY: i64 = -32021;
/// 2026-07-28: unsupported protocol version.
pub const UNSUPPORTED_VERSION: i64 = -32022;

#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
    /// The service refused the caller's credential (UNAUTHENTICATED), for example a token the
    /// gateway accepts and a separate service does not. MCP authorization wants a 401 for an
    /// invalid or expired token, so a transport that answers this error on its own answers it
    /// with that status ([`super::transport::credential_refused`]); in a stream or a batch
    /// beside other answers it stays a JSON-RPC error.
    pub credential_refused: Option<Box<CredentialRefused>>,
}

/// See [`RpcError::credential_refused`].
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRefused {
    /// The service's bearer challenge, when it sent one (as REST repeats it).
    pub challenge: Option<http::HeaderValue>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), data: None, credential_refused: None }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(INVALID_PARAMS, message)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, format!("Method not found: {method}"))
    }

    pub fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            e["data"] = data.clone();
        }
        e
    }
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Notification {
        method: String,
        params: Value,
    },
    /// The client's answer to a request the server sent (sampling, elicitation, ...).
    Response {
        id: Value,
        outcome: Result<Value, RpcError>,
    },
}

impl Incoming {
    /// Reads one JSON-RPC message. Errors are INVALID_REQUEST with the id when it could be read.
    pub fn parse(value: Value) -> Result<Self, (Option<Value>, RpcError)> {
        let Value::Object(mut obj) = value else {
            return Err((None, RpcError::new(INVALID_REQUEST, "a JSON-RPC message must be an object")));
        };
        let id = obj.remove("id");
        let valid_id = |id: &Value| matches!(id, Value::String(_)) || id.as_i64().is_some() || id.as_u64().is_some();
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err((id.filter(valid_id), RpcError::new(INVALID_REQUEST, "jsonrpc must be \"2.0\"")));
        }
        match (obj.remove("method"), id) {
            (Some(Value::String(method)), None) => {
                let params = params(&mut obj).map_err(|e| (None, e))?;
                Ok(Incoming::Notification { method, params })
            }
            (Some(Value::String(method)), Some(id)) if valid_id(&id) => match params(&mut obj) {
                Ok(params) => Ok(Incoming::Request { id, method, params }),
                Err(e) => Err((Some(id), e)),
            },
            (Some(Value::String(_)), Some(_)) => {
                Err((None, RpcError::new(INVALID_REQUEST, "id must be a string or an integer")))
            }
            (Some(_), id) => Err((id.filter(valid_id), RpcError::new(INVALID_REQUEST, "method must be a string"))),
            (None, Some(id)) if valid_id(&id) => {
                if let Some(result) = obj.remove("result") {
                    Ok(Incoming::Response { id, outcome: Ok(result) })
                } else if let Some(err) = obj.remove("error") {
                    let code = err.get("code").and_then(Value::as_i64).unwrap_or(INTERNAL_ERROR);
                    let message = err.get("message").and_then(Value::as_str).unwrap_or("").to_string();
                    Ok(Incoming::Response {
                        id,
                        outcome: Err(RpcError { data: err.get("data").cloned(), ..RpcError::new(code, message) }),
                    })
                } else {
                    Err((Some(id), RpcError::new(INVALID_REQUEST, "a response needs result or error")))
                }
            }
            (None, _) => Err((None, RpcError::new(INVALID_REQUEST, "not a request, notification or response"))),
        }
    }
}

/// A message's `params`: an object in MCP (JSON-RPC's by-position arrays are not used);
/// absent or `null` means none.
fn params(obj: &mut Map<String, Value>) -> Result<Value, RpcError> {
    match obj.remove("params") {
        Some(p @ Value::Object(_)) => Ok(p),
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(_) => Err(RpcError::invalid_params("params must be an object")),
    }
}

pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub fn error(id: Option<&Value>, err: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": err.to_json()})
}

/// A response as JSON text, for results that are not `Value`s (see `reply`).
pub fn result_text(id: &Value, result: &Reply) -> Vec<u8> {
    // Sized up front: a tool's answer is several KiB, and a buffer grown by doubling copies
    // it over and over on the way.
    let mut text = Vec::with_capacity(result.size_hint());
    match result.write_response(id, &mut text) {
        Ok(()) => text,
        Err(e) => error_text(Some(id), &RpcError::new(INTERNAL_ERROR, format!("encoding the result failed: {e}"))),
    }
}

/// An error response as JSON text.
pub fn error_text(id: Option<&Value>, err: &RpcError) -> Vec<u8> {
    error(id, err).to_string().into_bytes()
}

pub fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

pub fn request(id: &Value, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        let r = Incoming::parse(json!({"jsonrpc":"2.0","id":1,"method":"ping"})).unwrap();
        assert!(matches!(r, Incoming::Request { ref method, .. } if method == "ping"));
        let n = Incoming::parse(json!({"jsonrpc":"2.0","method":"notifications/initialized"})).unwrap();
        assert!(matches!(n, Incoming::Notification { .. }));
        let resp = Incoming::parse(json!({"jsonrpc":"2.0","id":"s1","result":{}})).unwrap();
        assert!(matches!(resp, Incoming::Response { outcome: Ok(_), .. }));
    }

    #[test]
    fn params_must_be_an_object_when_present() {
        let r = Incoming::parse(json!({"jsonrpc":"2.0","id":1,"method":"ping","params":null})).unwrap();
        assert!(matches!(r, Incoming::Request { ref params, .. } if params == &json!({})));
        for bad in [json!("abc"), json!([1, 2]), json!(3)] {
            let err = Incoming::parse(json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":bad})).err();
            let (id, err) = err.expect("refused");
            assert_eq!((id, err.code), (Some(json!(1)), INVALID_PARAMS));
        }
    }

    #[test]
    fn rejects_bad_envelopes() {
        for bad in [
            json!([]),
            json!({"id":1,"method":"ping"}),
            json!({"jsonrpc":"1.0","id":1,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":null,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":1.5,"method":"ping"}),
            json!({"jsonrpc":"2.0","id":1,"method":7}),
            json!({"jsonrpc":"2.0"}),
        ] {
            let (_, err) = Incoming::parse(bad.clone()).unwrap_err();
            assert_eq!(err.code, INVALID_REQUEST, "{bad}");
        }
    }
}
