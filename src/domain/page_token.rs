//! Opaque keyset page tokens. A token names the sort key of the last item served
//! and the filter it was made for, so a page never repeats or skips an item when
//! changes are opened or archived between calls.
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MAX_TOKEN_LEN: usize = 1024;

#[derive(Serialize, Deserialize)]
struct Token {
    v: u8,
    /// The status filter the token belongs to.
    f: String,
    /// Sort key of the last item of the previous page.
    a: String,
}

pub fn encode(filter: &str, after: &str) -> String {
    let token = Token { v: 1, f: filter.to_string(), a: after.to_string() };
    // Serializing a struct of strings cannot fail.
    let json = serde_json::to_vec(&token).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Returns the sort key to continue after. A token made for another filter, or
/// one that was not made by `encode`, is `InvalidPageToken`.
pub fn decode(token: &str, filter: &str) -> Result<String> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Error::InvalidPageToken);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| Error::InvalidPageToken)?;
    let parsed: Token = serde_json::from_slice(&bytes).map_err(|_| Error::InvalidPageToken)?;
    if parsed.v != 1 || parsed.f != filter {
        return Err(Error::InvalidPageToken);
    }
    Ok(parsed.a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = encode("draft", "0:add-x");
        assert_eq!(decode(&t, "draft").unwrap(), "0:add-x");
    }

    #[test]
    fn rejects_foreign_filter_and_garbage() {
        let t = encode("draft", "0:add-x");
        assert!(matches!(decode(&t, "all"), Err(Error::InvalidPageToken)));
        assert!(matches!(decode("not a token!", "draft"), Err(Error::InvalidPageToken)));
        assert!(matches!(decode(&"A".repeat(2000), "draft"), Err(Error::InvalidPageToken)));
    }
}
