//! Facts read from `proposal.md`.

/// The text of the first level-one heading (`# Title`), outside code fences.
pub fn title(text: &str) -> Option<String> {
    let mut in_fence = false;
    // Editors on Windows may start the file with a byte-order mark; validation skips it too.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let t = rest.trim();
            if !t.is_empty() {
                return Some(t.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn first_h1_outside_fences() {
        assert_eq!(super::title("```\n# no\n```\n## Why\n# Yes it is\n").as_deref(), Some("Yes it is"));
        assert_eq!(super::title("no heading"), None);
        assert_eq!(super::title("\u{feff}# After a byte-order mark\n").as_deref(), Some("After a byte-order mark"));
    }
}
