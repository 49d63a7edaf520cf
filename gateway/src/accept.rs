//! `Accept` matching (RFC 9110 §12.5.1), one reading for the MCP transport and the REST routes:
//! for each media type, the most specific range that matches gives its quality, and a quality
//! of 0 means "not acceptable", so `application/json;q=0` refuses JSON rather than naming it.
use http::{HeaderMap, header};

/// The ranges of every `Accept` header of a request, in order (a value that is not
/// visible ASCII is skipped, as if absent).
pub fn ranges(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers.get_all(header::ACCEPT).into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','))
}

/// The quality `ranges` give `media`, in thousandths; `None` when no range names it.
pub fn quality<'a>(ranges: impl IntoIterator<Item = &'a str>, media: &str) -> Option<u16> {
    qualities(ranges, [media])[0]
}

/// [`quality`] for several media types in one pass over the ranges (the MCP transport asks
/// for two on every request).
pub fn qualities<'a, const N: usize>(ranges: impl IntoIterator<Item = &'a str>, media: [&str; N]) -> [Option<u16>; N] {
    // Per media type, (specificity, quality) of the most specific matching range so far.
    let mut matched: [Option<(u8, u16)>; N] = [None; N];
    for range in ranges {
        let (range_type, params) = range.split_once(';').unwrap_or((range, ""));
        let range_type = range_type.trim();
        let mut q = None;
        for (slot, media) in matched.iter_mut().zip(media) {
            let Some(specificity) = specificity(range_type, media) else { continue };
            let q = *q.get_or_insert_with(|| params.split(';').find_map(parse_quality).unwrap_or(1000));
            if slot.is_none_or(|(s, _)| specificity > s) {
                *slot = Some((specificity, q));
            }
        }
    }
    matched.map(|m| m.map(|(_, q)| q))
}

/// Whether every one of `media` is acceptable: named by some range, with a quality above 0.
pub fn accepts_all<'a, const N: usize>(ranges: impl IntoIterator<Item = &'a str>, media: [&str; N]) -> bool {
    qualities(ranges, media).iter().all(|q| q.is_some_and(|q| q > 0))
}

/// 2 for an exact match, 1 for `type/*`, 0 for `*/*`, `None` for no match.
fn specificity(range: &str, media: &str) -> Option<u8> {
    if range.eq_ignore_ascii_case(media) {
        return Some(2);
    }
    // Only a wildcard matches what it does not spell out: the usual `application/json,
    // text/event-stream` is settled here, without splitting either type.
    if !range.ends_with('*') {
        return None;
    }
    if range == "*/*" {
        return Some(0);
    }
    let (range_type, range_sub) = range.split_once('/')?;
    let (media_type, _) = media.split_once('/')?;
    (range_sub == "*" && range_type.eq_ignore_ascii_case(media_type)).then_some(1)
}

/// `q=0.5` → 500. Malformed values count as 1 (lenient, like browsers).
fn parse_quality(param: &str) -> Option<u16> {
    let (name, value) = param.split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("q") {
        return None;
    }
    let q: f32 = value.trim().parse().ok()?;
    Some((q.clamp(0.0, 1.0) * 1000.0).round() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_range_decides() {
        let q = |accept: &str, media| quality(accept.split(','), media);
        assert_eq!(q("application/json", "application/json"), Some(1000));
        assert_eq!(q("*/*;q=0.1, application/*;q=0.5", "application/json"), Some(500));
        assert_eq!(q("application/json;q=0, */*", "application/json"), Some(0));
        assert_eq!(q("Text/Event-Stream; charset=utf-8", "text/event-stream"), Some(1000));
        assert_eq!(q("image/*", "text/event-stream"), None);
        assert_eq!(q("application/json;q=bogus", "application/json"), Some(1000));
    }

    #[test]
    fn a_zero_quality_refuses_what_it_names() {
        let mut headers = HeaderMap::new();
        headers.append(header::ACCEPT, "application/json;q=0".parse().unwrap());
        headers.append(header::ACCEPT, "text/event-stream, */*".parse().unwrap());
        assert!(!accepts_all(ranges(&headers), ["application/json"]));
        assert!(accepts_all(ranges(&headers), ["text/event-stream"]));
        assert!(!accepts_all(ranges(&headers), ["text/event-stream", "application/json"]));
    }
}
