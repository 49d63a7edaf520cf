//! `tasks.md` checklists.
//!
//! Item ids are what clients tick by, so they must be stable and unique:
//! * an item whose text starts with a number token (`- [ ] 1.2 Write tests`, at
//!   most [`MAX_NUMBER_LEN`] bytes) has that number as its id (`1.2`) and the rest
//!   as its text;
//! * any other item gets `<section>.<position>`, where `<section>` counts `## `
//!   headings from 1 (0 before the first one) and `<position>` counts the items
//!   of that section from 1, numbered or not; a position whose id an item's own
//!   number claims anywhere in the file is skipped, so adding an unnumbered item
//!   never takes a numbered item's id from it;
//! * when two items carry the same number, the later one gets `<id>#2`, `<id>#3`,
//!   ... (see [`DUPLICATE_MARK`]). Base ids never contain `#`, so the suffixed ids
//!   cannot collide with anything.
//!
//! Also home of the small line, fence and heading helpers that the spec and
//! validation parsers share, so all three agree on what is code and what is a heading.
use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};

/// One checklist item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskItem {
    pub id: String,
    pub text: String,
    pub done: bool,
    /// 1-based line number.
    pub line: u32,
    /// The nearest `##` heading above the item, without the hashes; empty if none.
    pub section: String,
}

/// A line that looks like a checklist item but is malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecklistProblem {
    pub line: u32,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checklist {
    pub items: Vec<TaskItem>,
    pub problems: Vec<ChecklistProblem>,
}

impl Checklist {
    /// (done, total)
    pub fn progress(&self) -> (u32, u32) {
        let done = self.items.iter().filter(|i| i.done).count() as u32;
        (done, self.items.len() as u32)
    }
}

/// Separates an id from the counter that keeps a repeated id unique (`1.2#2`).
pub const DUPLICATE_MARK: char = '#';

/// True when the id only exists because an earlier item already had its base id.
pub fn is_duplicate_id(id: &str) -> bool {
    id.contains(DUPLICATE_MARK)
}

pub fn parse(text: &str) -> Checklist {
    scan(text).0
}

/// Applies `(id, done)` updates to the text. Unknown ids fail the whole call with
/// `Error::TaskNotFound { slug, id }`. Returns the new text (identical except for
/// the checkbox characters that changed) and the ids whose state changed.
///
/// Several updates of one id resolve to the last one; an id counts as changed
/// when its final state differs from the state in `text`.
pub fn apply(text: &str, slug: &str, updates: &[(String, bool)]) -> Result<(String, Vec<String>)> {
    let (checklist, offsets) = scan(text);
    let index: HashMap<&str, usize> =
        checklist.items.iter().enumerate().map(|(i, item)| (item.id.as_str(), i)).collect();

    let mut wanted: HashMap<usize, bool> = HashMap::new();
    let mut order: Vec<usize> = Vec::new();
    for (id, done) in updates {
        let Some(&i) = index.get(id.as_str()) else {
            return Err(Error::TaskNotFound { slug: slug.to_string(), id: id.clone() });
        };
        if wanted.insert(i, *done).is_none() {
            order.push(i);
        }
    }

    let mut flips: Vec<(usize, char)> = Vec::new();
    let mut changed = Vec::new();
    for i in order {
        let (Some(item), Some(&offset), Some(&done)) = (checklist.items.get(i), offsets.get(i), wanted.get(&i)) else {
            continue;
        };
        if item.done != done {
            flips.push((offset, if done { 'x' } else { ' ' }));
            changed.push(item.id.clone());
        }
    }
    flips.sort_unstable();

    // Every checkbox character is one ASCII byte, so splicing at these offsets
    // keeps the text valid UTF-8 and every other byte untouched.
    let mut out = String::with_capacity(text.len());
    let mut cursor = 0;
    for (offset, mark) in flips {
        out.push_str(text.get(cursor..offset).unwrap_or_default());
        out.push(mark);
        cursor = offset + 1;
    }
    out.push_str(text.get(cursor..).unwrap_or_default());
    Ok((out, changed))
}

/// The checklist, plus the byte offset in `text` of each item's checkbox character.
fn scan(text: &str) -> (Checklist, Vec<usize>) {
    let mut checklist = Checklist::default();
    let mut offsets = Vec::new();
    let mut fences = Fences::default();
    let mut section = String::new();
    let mut section_index: u32 = 0;
    let mut position: u32 = 0;
    // Ids are given once every number in the file is known (see the module docs).
    let mut bases: Vec<Base> = Vec::new();

    for line in lines(text) {
        if fences.is_code(line.text) {
            continue;
        }
        if let Some((2, title)) = heading(line.text) {
            section = title.to_string();
            section_index = section_index.saturating_add(1);
            position = 0;
            continue;
        }
        match classify(line.text) {
            LineKind::Other => {}
            LineKind::Problem(message) => checklist.problems.push(ChecklistProblem { line: line.number, message }),
            LineKind::Item { box_at, done, text } => {
                position = position.saturating_add(1);
                let (base, text) = match split_number(text) {
                    Some((number, rest)) => (Base::Number(number.to_string()), rest),
                    None => (Base::Position { section: section_index, position }, text),
                };
                bases.push(base);
                checklist.items.push(TaskItem {
                    id: String::new(),
                    text: text.to_string(),
                    done,
                    line: line.number,
                    section: section.clone(),
                });
                offsets.push(line.start + box_at);
            }
        }
    }
    let numbered: HashSet<String> = bases
        .iter()
        .filter_map(|b| match b {
            Base::Number(n) => Some(n.clone()),
            Base::Position { .. } => None,
        })
        .collect();
    let mut taken: HashMap<String, u32> = HashMap::new();
    for (item, base) in checklist.items.iter_mut().zip(bases) {
        let base = match base {
            Base::Number(number) => number,
            Base::Position { section, mut position } => loop {
                let id = format!("{section}.{position}");
                if !numbered.contains(&id) && !taken.contains_key(&id) {
                    break id;
                }
                // Fewer items than positions: some position is free, so this ends.
                position = position.wrapping_add(1);
            },
        };
        let seen = taken.entry(base.clone()).or_insert(0);
        *seen = seen.saturating_add(1);
        item.id = if *seen == 1 { base } else { format!("{base}{DUPLICATE_MARK}{seen}") };
    }
    (checklist, offsets)
}

/// What an item's id is made from: its own number, or where it stands.
enum Base {
    Number(String),
    Position { section: u32, position: u32 },
}

enum LineKind<'a> {
    Other,
    Problem(String),
    /// `box_at` is the byte offset of the checkbox character within the line.
    Item {
        box_at: usize,
        done: bool,
        text: &'a str,
    },
}

fn classify(line: &str) -> LineKind<'_> {
    let bytes = line.as_bytes();
    let indent = count_blank(bytes);
    let rest = &bytes[indent..];
    let (marker, marker_len) = match rest.first() {
        Some(b'-' | b'*' | b'+') => (Marker::Bullet, 1),
        Some(b) if b.is_ascii_digit() => {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            match rest.get(digits) {
                Some(b'.' | b')') if digits <= 9 => (Marker::Ordered, digits + 1),
                _ => return LineKind::Other,
            }
        }
        Some(b'[') => (Marker::Missing, 0),
        _ => return LineKind::Other,
    };
    let gap = count_blank(&rest[marker_len..]);
    let open = indent + marker_len + gap;
    if bytes.get(open) != Some(&b'[') {
        return LineKind::Other;
    }
    let inner_start = open + 1;
    let Some(after_open) = line.get(inner_start..) else {
        return LineKind::Other;
    };
    // A checkbox holds at most a few characters; anything longer is link text.
    let Some(inner_len) = after_open.char_indices().take(5).find(|&(_, c)| c == ']').map(|(i, _)| i) else {
        return LineKind::Other;
    };
    let inner = &after_open[..inner_len];
    let after = &after_open[inner_len + 1..];
    if after.starts_with(['(', '[', ':']) {
        // `- [a](url)`, `- [a][ref]` and `[a]: url` are links, not checkboxes.
        return LineKind::Other;
    }
    if marker == Marker::Missing {
        // Only a well-formed box with text is clearly a task; `[y] text` at the
        // start of a line is more likely prose.
        let is_box = matches!(inner, " " | "x" | "X");
        return if is_box && after.starts_with([' ', '\t']) && !after.trim().is_empty() {
            problem("missing bullet before the checkbox: write `- [ ] text`")
        } else {
            LineKind::Other
        };
    }
    let marks: Vec<char> = inner.chars().filter(|c| !c.is_whitespace()).collect();
    if marks.len() > 1 || marks.first().is_some_and(char::is_ascii_digit) {
        // `[ab]` is prose; `[1]` is a citation.
        return LineKind::Other;
    }
    let done = match inner {
        " " => false,
        "x" | "X" => true,
        "" => {
            return problem("empty checkbox `[]`: write `[ ]` for an open item or `[x]` for a done one");
        }
        _ => {
            return problem(format!(
                "malformed checkbox `[{}]`: write `[ ]` for an open item or `[x]` for a done one",
                inner.escape_debug()
            ));
        }
    };
    if gap == 0 {
        return problem("missing space between the bullet and the checkbox: write `- [ ] text`");
    }
    if marker == Marker::Ordered {
        return problem("numbered list items are not tracked as tasks: write `- [ ] 1.1 text` instead");
    }
    if after.trim().is_empty() {
        return problem("checklist item has no text after the checkbox");
    }
    if !after.starts_with([' ', '\t']) {
        return problem("missing space after the checkbox: write `- [ ] text`");
    }
    LineKind::Item { box_at: inner_start, done, text: after.trim() }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Marker {
    Bullet,
    Ordered,
    /// The line starts with the checkbox itself.
    Missing,
}

fn problem(message: impl Into<String>) -> LineKind<'static> {
    LineKind::Problem(message.into())
}

fn count_blank(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| matches!(b, b' ' | b'\t')).count()
}

/// Splits a leading number token (`1`, `1.2`, `3.1.4`) followed by whitespace off the text.
/// The longest number token that is an item's id: with a `#n` suffix it stays well within
/// the 64 bytes `task.update` takes, so every id `change.show` returns can be ticked.
pub const MAX_NUMBER_LEN: usize = 32;

fn split_number(text: &str) -> Option<(&str, &str)> {
    let bytes = text.as_bytes();
    let mut end = 0;
    loop {
        let digits = bytes[end..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        end += digits;
        if end > MAX_NUMBER_LEN {
            return None;
        }
        match (bytes.get(end), bytes.get(end + 1)) {
            (Some(b'.'), Some(next)) if next.is_ascii_digit() => end += 1,
            (Some(b' ' | b'\t'), _) => return Some((&text[..end], text[end..].trim_start())),
            _ => return None,
        }
    }
}

/// One line of a document, without its line ending.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Line<'a> {
    /// 1-based.
    pub number: u32,
    /// Byte offset of `text` in the document.
    pub start: usize,
    pub text: &'a str,
}

/// The lines of `text`, split on LF with a trailing CR dropped; a leading byte
/// order mark is skipped so it cannot hide a first-line heading.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    let mut start = 0;
    text.split_inclusive('\n').enumerate().map(move |(i, raw)| {
        let mut line_start = start;
        start += raw.len();
        let mut body = raw.strip_suffix('\n').unwrap_or(raw);
        body = body.strip_suffix('\r').unwrap_or(body);
        if i == 0
            && let Some(rest) = body.strip_prefix('\u{feff}')
        {
            line_start += '\u{feff}'.len_utf8();
            body = rest;
        }
        Line { number: u32::try_from(i + 1).unwrap_or(u32::MAX), start: line_start, text: body }
    })
}

/// Tracks fenced code blocks (```` ``` ```` or `~~~`). A fence closes only on a
/// line of the same character at least as long as the opener, as in CommonMark;
/// an unclosed fence runs to the end of the document. Indentation is not
/// limited, so fences inside list items count too.
#[derive(Debug, Default)]
pub(crate) struct Fences {
    open: Option<(u8, usize)>,
}

impl Fences {
    /// Whether the lines fed so far left a fence open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Feed every line in order; true when the line is code or a fence delimiter.
    pub fn is_code(&mut self, line: &str) -> bool {
        let trimmed = line.trim_start_matches([' ', '\t']);
        let marker = fence_marker(trimmed);
        match self.open {
            Some((ch, len)) => {
                if let Some((c, n, rest)) = marker
                    && c == ch
                    && n >= len
                    && rest.trim().is_empty()
                {
                    self.open = None;
                }
                true
            }
            None => match marker {
                // A backtick "fence" with a backtick in its info string is inline code.
                Some((b'`', _, rest)) if rest.contains('`') => false,
                Some((c, n, _)) => {
                    self.open = Some((c, n));
                    true
                }
                None => false,
            },
        }
    }
}

fn fence_marker(trimmed: &str) -> Option<(u8, usize, &str)> {
    let first = *trimmed.as_bytes().first()?;
    if first != b'`' && first != b'~' {
        return None;
    }
    let n = trimmed.bytes().take_while(|&b| b == first).count();
    (n >= 3).then(|| (first, n, &trimmed[n..]))
}

/// An ATX heading: `(level, text)` with the text trimmed and any closing `#`s removed.
/// Up to three spaces of indentation are allowed, as in CommonMark.
pub(crate) fn heading(line: &str) -> Option<(u8, &str)> {
    let indent = line.bytes().take_while(|&b| b == b' ').count();
    if indent > 3 {
        return None;
    }
    let rest = &line[indent..];
    let level = rest.bytes().take_while(|&b| b == b'#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let after = &rest[level..];
    if !(after.is_empty() || after.starts_with([' ', '\t'])) {
        return None;
    }
    let mut text = after.trim();
    let without_closing = text.trim_end_matches('#');
    if without_closing.is_empty() {
        text = "";
    } else if without_closing.ends_with([' ', '\t']) {
        text = without_closing.trim_end();
    }
    Some((level as u8, text))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn ids(c: &Checklist) -> Vec<&str> {
        c.items.iter().map(|i| i.id.as_str()).collect()
    }

    fn ups(list: &[(&str, bool)]) -> Vec<(String, bool)> {
        list.iter().map(|(id, done)| (id.to_string(), *done)).collect()
    }

    #[test]
    fn parses_items_with_explicit_numbers() {
        let c = parse("# Tasks\n\n## 1. Design\n- [ ] 1.1 Sketch\n- [x] 1.2 Review\n## 2. Build\n- [X] 2.1 Code it\n");
        assert_eq!(ids(&c), ["1.1", "1.2", "2.1"]);
        assert_eq!(c.items[0].text, "Sketch");
        assert!(!c.items[0].done);
        assert!(c.items[1].done && c.items[2].done);
        assert_eq!(c.items[0].section, "1. Design");
        assert_eq!(c.items[2].section, "2. Build");
        assert_eq!(c.items[0].line, 4);
        assert_eq!(c.items[2].line, 7);
        assert!(c.problems.is_empty());
        assert_eq!(c.progress(), (2, 3));
    }

    #[test]
    fn unnumbered_items_get_section_and_position() {
        let c = parse("- [ ] before any heading\n## A\n- [ ] one\n- [ ] two\n## B\n- [ ] three\n");
        assert_eq!(ids(&c), ["0.1", "1.1", "1.2", "2.1"]);
        assert_eq!(c.items[0].section, "");
        assert_eq!(c.items[1].text, "one");
    }

    /// Only `## ` headings count as sections: a `###` sub-heading or a `#` title added by
    /// hand must not shift the ids of the items below it (clients tick by id).
    #[test]
    fn other_heading_levels_neither_start_a_section_nor_shift_ids() {
        let c = parse("# Tasks\n## A\n- [ ] one\n### Sub\n- [ ] two\n#### Deeper\n- [ ] three\n## B\n- [ ] four\n");
        assert_eq!(ids(&c), ["1.1", "1.2", "1.3", "2.1"]);
        assert_eq!(c.items[1].section, "A", "a sub-heading leaves the item in its section");
    }

    #[test]
    fn positions_count_numbered_items_too() {
        let c = parse("## 1. X\n- [ ] 1.1 numbered\n- [ ] plain\n");
        assert_eq!(ids(&c), ["1.1", "1.2"]);
    }

    #[test]
    fn number_token_needs_trailing_space() {
        let c = parse("- [ ] 1. Ordered style\n- [ ] 2024 roadmap\n- [ ] 1.2.3 Deep\n- [ ] 1.2\n- [ ] 3.x beta\n");
        assert_eq!(ids(&c), ["0.1", "2024", "1.2.3", "0.4", "0.5"]);
        assert_eq!(c.items[0].text, "1. Ordered style");
        assert_eq!(c.items[1].text, "roadmap");
        assert_eq!(c.items[3].text, "1.2");
    }

    #[test]
    fn duplicate_ids_get_a_suffix() {
        let c = parse("- [ ] 1.1 a\n- [ ] 1.1 b\n- [ ] 1.1 c\n## S\n- [ ] 1.1 d\n- [ ] e\n");
        assert_eq!(ids(&c), ["1.1", "1.1#2", "1.1#3", "1.1#4", "1.2"]);
        assert!(is_duplicate_id("1.1#2"));
        assert!(!is_duplicate_id("1.1"));
        let unique: HashSet<&str> = ids(&c).into_iter().collect();
        assert_eq!(unique.len(), c.items.len());
    }

    #[test]
    fn an_unnumbered_item_never_takes_a_numbered_items_id() {
        let c = parse("## A\n- [ ] first\n- [ ] 1.1 explicit\n");
        assert_eq!(ids(&c), ["1.2", "1.1"]);
        // Two items added by hand above numbered ones leave the numbered ids where they were.
        let text = "## 1. Build\n- [ ] Back up\n- [ ] Tell on-call\n- [ ] 1.1 Migrate\n- [ ] 1.2 Drop\n";
        let c = parse(text);
        assert_eq!(ids(&c), ["1.3", "1.4", "1.1", "1.2"]);
        assert!(c.items.iter().all(|i| !is_duplicate_id(&i.id)), "no id is reported as a duplicate");
        let (ticked, changed) = apply(text, "s", &[("1.2".into(), true)]).unwrap();
        assert_eq!(changed, ["1.2"]);
        assert!(ticked.contains("- [x] 1.2 Drop"), "{ticked}");
    }

    #[test]
    fn a_number_too_long_to_tick_is_text_not_an_id() {
        let long = (1..=20).map(|n| n.to_string()).collect::<Vec<_>>().join(".");
        assert!(long.len() > MAX_NUMBER_LEN);
        let c = parse(&format!("- [ ] {long} deep\n- [ ] 1.2 fine\n"));
        assert_eq!(ids(&c), ["0.1", "1.2"]);
        assert_eq!(c.items[0].text, format!("{long} deep"));
    }

    #[test]
    fn other_bullets_and_nesting() {
        let c = parse("* [ ] star\n+ [x] plus\n  - [ ] nested\n\t- [ ] tabbed\n    * [X] deep\n");
        assert_eq!(c.items.len(), 5);
        assert_eq!(c.items.iter().filter(|i| i.done).count(), 2);
        assert_eq!(c.items[2].text, "nested");
        assert!(c.problems.is_empty());
    }

    #[test]
    fn fenced_code_is_ignored() {
        let text = "```\n- [ ] in code\n## not a heading\n```\n~~~md\n- [] also code\n~~~\n- [ ] real\n";
        let c = parse(text);
        assert_eq!(ids(&c), ["0.1"]);
        assert_eq!(c.items[0].line, 8);
        assert!(c.problems.is_empty());
    }

    #[test]
    fn fence_closes_only_on_matching_marker() {
        let c = parse("````\n```\n- [ ] still code\n~~~\n````\n- [ ] real\n");
        assert_eq!(c.items.len(), 1);
        assert_eq!(c.items[0].text, "real");
        // An unclosed fence hides the rest of the document.
        assert!(parse("```\n- [ ] hidden\n").items.is_empty());
        // Inline code that starts with three backticks is not a fence.
        assert_eq!(parse("```x``` inline\n- [ ] seen\n").items.len(), 1);
    }

    #[test]
    fn malformed_checkboxes_are_problems() {
        for bad in [
            "- []",
            "- [] text",
            "-[ ] text",
            "- [ x] text",
            "- [x ] text",
            "- [  ] text",
            "- [y] text",
            "- [-] text",
            "- [ ]",
            "- [ ]   ",
            "- [x]text",
            "1. [ ] numbered",
            "- [✓] unicode",
            "[ ] no bullet",
            "  [x] no bullet either",
        ] {
            let c = parse(&format!("## S\n{bad}\n"));
            assert!(c.items.is_empty(), "{bad:?} should not be an item");
            assert_eq!(c.problems.len(), 1, "{bad:?} should be one problem");
            assert_eq!(c.problems[0].line, 2);
            assert!(!c.problems[0].message.is_empty());
        }
    }

    #[test]
    fn ordinary_list_lines_are_not_problems() {
        for fine in [
            "- plain item",
            "- [link](https://example.com) in a list",
            "- [a](x)",
            "- [ref][1]",
            "- [1] citation",
            "- [some words] in brackets",
            "---",
            "**bold**",
            "*emphasis*",
            "[x]: https://example.com",
            "2024. A year",
            "> - [ ] quoted",
            "[y] prose",
            "[ ]",
            "[x]text",
            "",
        ] {
            let c = parse(fine);
            assert!(c.items.is_empty(), "{fine:?} should not be an item");
            assert!(c.problems.is_empty(), "{fine:?} should not be a problem: {:?}", c.problems);
        }
    }

    #[test]
    fn item_text_is_trimmed_and_kept_verbatim() {
        let c = parse("- [ ]   <b>html</b> and `javascript:` rm -rf   \n");
        assert_eq!(c.items[0].text, "<b>html</b> and `javascript:` rm -rf");
    }

    #[test]
    fn crlf_and_bom() {
        let c = parse("\u{feff}## S\r\n- [ ] a\r\n- [x] b\r\n");
        assert_eq!(ids(&c), ["1.1", "1.2"]);
        assert_eq!(c.items[0].section, "S");
        assert_eq!(c.items[1].text, "b");
        assert!(c.items[1].done);
    }

    #[test]
    fn apply_flips_only_the_checkbox() {
        let text = "# T\n## 1. A\n- [ ] 1.1 one\n- [x] 1.2 two\n  * [X] 1.3 three";
        let (new, changed) = apply(text, "add-x", &ups(&[("1.1", true), ("1.3", false)])).unwrap();
        assert_eq!(new, "# T\n## 1. A\n- [x] 1.1 one\n- [x] 1.2 two\n  * [ ] 1.3 three");
        assert_eq!(changed, ["1.1", "1.3"]);
    }

    #[test]
    fn apply_preserves_crlf_and_missing_trailing_newline() {
        let text = "## A\r\n- [ ] a\r\n- [ ] b\r\n\r\n";
        let (new, changed) = apply(text, "s", &ups(&[("1.2", true)])).unwrap();
        assert_eq!(new, "## A\r\n- [ ] a\r\n- [x] b\r\n\r\n");
        assert_eq!(changed, ["1.2"]);
        let (new, _) = apply("- [x] only", "s", &ups(&[("0.1", false)])).unwrap();
        assert_eq!(new, "- [ ] only");
    }

    #[test]
    fn apply_with_bom_and_unicode_keeps_bytes() {
        let text = "\u{feff}- [ ] héllo wörld ✓\n- [ ] 日本\n";
        let (new, _) = apply(text, "s", &ups(&[("0.2", true)])).unwrap();
        assert_eq!(new, "\u{feff}- [ ] héllo wörld ✓\n- [x] 日本\n");
    }

    #[test]
    fn apply_unknown_id_fails_and_changes_nothing() {
        let text = "- [ ] a\n";
        let err = apply(text, "add-x", &ups(&[("0.1", true), ("9.9", true)])).unwrap_err();
        match err {
            Error::TaskNotFound { slug, id } => {
                assert_eq!(slug, "add-x");
                assert_eq!(id, "9.9");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn apply_reports_only_real_changes_in_update_order() {
        let text = "- [ ] a\n- [x] b\n- [ ] c\n";
        let updates = ups(&[("0.3", true), ("0.2", true), ("0.1", true), ("0.3", true)]);
        let (new, changed) = apply(text, "s", &updates).unwrap();
        assert_eq!(new, "- [x] a\n- [x] b\n- [x] c\n");
        assert_eq!(changed, ["0.3", "0.1"]);
        // Ticking then unticking in one call leaves the item as it was.
        let (new, changed) = apply(text, "s", &ups(&[("0.1", true), ("0.1", false)])).unwrap();
        assert_eq!(new, text);
        assert!(changed.is_empty());
        let (new, changed) = apply(text, "s", &[]).unwrap();
        assert_eq!(new, text);
        assert!(changed.is_empty());
    }

    #[test]
    fn apply_addresses_suffixed_ids() {
        let text = "- [ ] 1 a\n- [ ] 1 b\n";
        let (new, changed) = apply(text, "s", &ups(&[("1#2", true)])).unwrap();
        assert_eq!(new, "- [ ] 1 a\n- [x] 1 b\n");
        assert_eq!(changed, ["1#2"]);
    }

    #[test]
    fn apply_ignores_fenced_lookalikes() {
        let text = "```\n- [ ] 1 code\n```\n- [ ] 1 real\n";
        let (new, _) = apply(text, "s", &ups(&[("1", true)])).unwrap();
        assert_eq!(new, "```\n- [ ] 1 code\n```\n- [x] 1 real\n");
    }

    #[test]
    fn headings() {
        assert_eq!(heading("## 1. Design"), Some((2, "1. Design")));
        assert_eq!(heading("   ### Requirement: X ###"), Some((3, "Requirement: X")));
        assert_eq!(heading("##"), Some((2, "")));
        assert_eq!(heading("## C#"), Some((2, "C#")));
        assert_eq!(heading("##nope"), None);
        assert_eq!(heading("    ## code"), None);
        assert_eq!(heading("####### seven"), None);
    }

    #[test]
    fn hostile_input_does_not_panic() {
        let long_number = format!("- [ ] {} x\n", "9".repeat(10_000));
        let many_dups = "- [ ] 1 x\n".repeat(5_000);
        for text in [
            "",
            "\n\n\r\n",
            "-",
            "- [",
            "- [ ",
            "- [x",
            "- [é",
            "- [éé]",
            "\u{feff}",
            "1",
            "99999999999. [ ] x",
            "\r",
            "- [\u{0}] x",
            long_number.as_str(),
            many_dups.as_str(),
        ] {
            let c = parse(text);
            let _ = apply(text, "s", &ups(&[("1", true)]));
            let unique: HashSet<&str> = ids(&c).into_iter().collect();
            assert_eq!(unique.len(), c.items.len());
        }
    }
}
