//! Facts read from `proposal.md`.

use super::checklist::{Fences, heading, lines};

/// The text of the first level-one heading (`# Title`), outside code fences. Fences and
/// headings are read as validation and the checklist read them, so that all agree on what
/// is code and what is a heading (an indented `  # Title` is one, a `#` inside a longer
/// fence is not).
pub fn title(text: &str) -> Option<String> {
    // Editors on Windows may start the file with a byte-order mark; validation skips it too.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut fences = Fences::default();
    lines(text).filter(|line| !fences.is_code(line.text)).find_map(|line| match heading(line.text) {
        Some((1, t)) if !t.is_empty() => Some(t.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_h1_outside_fences() {
        assert_eq!(super::title("```\n# no\n```\n## Why\n# Yes it is\n").as_deref(), Some("Yes it is"));
        assert_eq!(super::title("no heading"), None);
        assert_eq!(super::title("\u{feff}# After a byte-order mark\n").as_deref(), Some("After a byte-order mark"));
    }

    #[test]
    fn fences_and_headings_are_read_as_everywhere_else() {
        let nested = "````md\n```\n# Fake title inside code\n```\n````\n# Real Title\n";
        assert_eq!(super::title(nested).as_deref(), Some("Real Title"), "a shorter fence does not close a longer one");
        assert_eq!(super::title("  # Indented Title\n").as_deref(), Some("Indented Title"));
        assert_eq!(super::title("    # indented code\n# Title\n").as_deref(), Some("Title"));
        assert_eq!(super::title("# Title #\r\n").as_deref(), Some("Title"), "closing hashes and CRLF");
    }
}
