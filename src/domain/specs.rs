//! Spec delta files (`specs/<capability>/spec.md`) in OpenSpec's format:
//!
//! ```text
//! ## ADDED Requirements            (also MODIFIED, REMOVED, RENAMED)
//! ### Requirement: <name>
//! The system SHALL ...
//! #### Scenario: <name>
//! - **WHEN** ... / - **THEN** ...
//!
//! ## RENAMED Requirements
//! - FROM: `### Requirement: <old>`
//! - TO: `### Requirement: <new>`
//! ```
//!
//! The operation word is matched case-insensitively; the `### Requirement:` and
//! `#### Scenario:` forms are matched exactly, because that is what OpenSpec's
//! archive merge looks for and a delta it cannot read must not pass here.
use std::collections::HashSet;

use super::checklist::{Fences, heading, lines};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequirementOp {
    /// ADDED, MODIFIED, REMOVED or RENAMED.
    pub operation: String,
    /// For RENAMED pairs, `<old> -> <new>`.
    pub requirement: String,
    pub scenarios: u32,
    /// 1-based line of the `### Requirement:` heading (of the `FROM:` line for a rename).
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaProblem {
    pub line: u32,
    pub code: &'static str,
    pub message: String,
}

/// No `## <OPERATION> Requirements` section at all (reported on line 0).
pub const DELTA_NO_OPERATIONS: &str = "DELTA_NO_OPERATIONS";
/// A `## ... Requirements` heading whose operation is not ADDED, MODIFIED, REMOVED or RENAMED.
pub const DELTA_UNKNOWN_SECTION: &str = "DELTA_UNKNOWN_SECTION";
/// A `### Requirement:` that is not inside an operation section.
pub const DELTA_REQUIREMENT_OUTSIDE_SECTION: &str = "DELTA_REQUIREMENT_OUTSIDE_SECTION";
/// An ADDED or MODIFIED requirement without a `#### Scenario:`.
pub const DELTA_REQUIREMENT_NO_SCENARIO: &str = "DELTA_REQUIREMENT_NO_SCENARIO";
/// `### Requirement:` with nothing after the colon.
pub const DELTA_REQUIREMENT_EMPTY_NAME: &str = "DELTA_REQUIREMENT_EMPTY_NAME";
/// The same requirement twice in sections of the same operation.
pub const DELTA_REQUIREMENT_DUPLICATE: &str = "DELTA_REQUIREMENT_DUPLICATE";
/// A `#### Scenario:` that does not belong to a requirement.
pub const DELTA_SCENARIO_OUTSIDE_REQUIREMENT: &str = "DELTA_SCENARIO_OUTSIDE_REQUIREMENT";
/// An operation section with no requirement (or, for RENAMED, no FROM/TO pair).
pub const DELTA_SECTION_EMPTY: &str = "DELTA_SECTION_EMPTY";
/// A RENAMED `FROM:` without its `TO:`, or the other way round.
pub const DELTA_RENAME_INCOMPLETE: &str = "DELTA_RENAME_INCOMPLETE";

const OPERATIONS: [&str; 4] = ["ADDED", "MODIFIED", "REMOVED", "RENAMED"];

enum Section {
    /// Before any `##` heading, or under one that is not about requirements.
    Outside,
    /// Under a `## ... Requirements` heading that was already reported as unknown.
    Unknown,
    Op {
        operation: &'static str,
        line: u32,
        has_content: bool,
    },
}

/// The requirement block being read. `recorded` indexes `ops` when the block
/// counts (a named requirement inside an operation section).
struct Block {
    recorded: Option<usize>,
}

#[derive(Default)]
struct Parser {
    ops: Vec<RequirementOp>,
    problems: Vec<DeltaProblem>,
    seen: HashSet<(&'static str, String)>,
    any_operation: bool,
    /// A rename `FROM:` waiting for its `TO:`: (old name, line).
    pending_from: Option<(String, u32)>,
}

impl Parser {
    fn problem(&mut self, line: u32, code: &'static str, message: impl Into<String>) {
        self.problems.push(DeltaProblem { line, code, message: message.into() });
    }

    fn close_block(&mut self, block: &mut Option<Block>) {
        let Some(Block { recorded: Some(i) }) = block.take() else {
            return;
        };
        let Some(op) = self.ops.get(i) else {
            return;
        };
        if op.scenarios == 0 && matches!(op.operation.as_str(), "ADDED" | "MODIFIED") {
            let (line, message) = (
                op.line,
                format!(
                    "{} requirement {:?} has no scenario: add at least one `#### Scenario: <name>` with WHEN/THEN bullets",
                    op.operation, op.requirement
                ),
            );
            self.problem(line, DELTA_REQUIREMENT_NO_SCENARIO, message);
        }
    }

    fn close_section(&mut self, section: &mut Section) {
        if let Some((from, line)) = self.pending_from.take() {
            self.problem(
                line,
                DELTA_RENAME_INCOMPLETE,
                format!("rename of {from:?} has no `- TO: <new name>` line after it"),
            );
        }
        if let Section::Op { operation, line, has_content: false } = *section {
            let hint = if operation == "RENAMED" {
                "add `- FROM: <old name>` / `- TO: <new name>` pairs"
            } else {
                "add a `### Requirement: <name>` under it"
            };
            self.problem(line, DELTA_SECTION_EMPTY, format!("`## {operation} Requirements` is empty: {hint}"));
        }
        *section = Section::Outside;
    }

    fn record(&mut self, operation: &'static str, requirement: String, line: u32) -> Option<usize> {
        if !self.seen.insert((operation, requirement.clone())) {
            self.problem(
                line,
                DELTA_REQUIREMENT_DUPLICATE,
                format!("{operation} requirement {requirement:?} appears more than once"),
            );
            return None;
        }
        self.ops.push(RequirementOp { operation: operation.to_string(), requirement, scenarios: 0, line });
        Some(self.ops.len() - 1)
    }

    fn rename_line(&mut self, line: u32, text: &str) -> bool {
        let Some((is_from, name)) = rename_part(text) else {
            return false;
        };
        if name.is_empty() {
            let which = if is_from { "FROM" } else { "TO" };
            self.problem(line, DELTA_REQUIREMENT_EMPTY_NAME, format!("`{which}:` names no requirement"));
            return true;
        }
        if is_from {
            if let Some((previous, previous_line)) = self.pending_from.replace((name, line)) {
                self.problem(
                    previous_line,
                    DELTA_RENAME_INCOMPLETE,
                    format!("rename of {previous:?} has no `- TO:` line before the next `- FROM:`"),
                );
            }
        } else if let Some((from, from_line)) = self.pending_from.take() {
            self.record("RENAMED", format!("{from} -> {name}"), from_line);
        } else {
            self.problem(
                line,
                DELTA_RENAME_INCOMPLETE,
                format!("rename to {name:?} has no `- FROM: <old name>` line before it"),
            );
        }
        true
    }
}

pub fn parse_delta(text: &str) -> (Vec<RequirementOp>, Vec<DeltaProblem>) {
    let mut p = Parser::default();
    let mut fences = Fences::default();
    let mut section = Section::Outside;
    let mut block: Option<Block> = None;

    for line in lines(text) {
        let number = line.number;
        if fences.is_code(line.text) {
            continue;
        }
        match heading(line.text) {
            Some((level, title)) if level <= 2 => {
                p.close_block(&mut block);
                p.close_section(&mut section);
                if level == 2 {
                    section = open_section(&mut p, title, number);
                }
            }
            Some((3, title)) => {
                p.close_block(&mut block);
                let Some(name) = title.strip_prefix("Requirement:") else {
                    continue;
                };
                let name = name.trim();
                block = Some(Block { recorded: None });
                match &mut section {
                    Section::Op { operation, has_content, .. } => {
                        *has_content = true;
                        if name.is_empty() {
                            p.problem(
                                number,
                                DELTA_REQUIREMENT_EMPTY_NAME,
                                "`### Requirement:` needs a name after the colon",
                            );
                        } else {
                            let operation = *operation;
                            block = Some(Block { recorded: p.record(operation, name.to_string(), number) });
                        }
                    }
                    Section::Outside => p.problem(
                        number,
                        DELTA_REQUIREMENT_OUTSIDE_SECTION,
                        "`### Requirement:` must sit under `## ADDED Requirements`, `## MODIFIED Requirements`, \
                         `## REMOVED Requirements` or `## RENAMED Requirements`",
                    ),
                    Section::Unknown => {}
                }
            }
            Some((4, title)) if title.starts_with("Scenario:") => match &block {
                Some(Block { recorded }) => {
                    if let Some(op) = recorded.and_then(|i| p.ops.get_mut(i)) {
                        op.scenarios = op.scenarios.saturating_add(1);
                    }
                }
                None => p.problem(
                    number,
                    DELTA_SCENARIO_OUTSIDE_REQUIREMENT,
                    "`#### Scenario:` must follow a `### Requirement: <name>` heading",
                ),
            },
            _ => {
                if let Section::Op { operation: "RENAMED", has_content, .. } = &mut section
                    && block.is_none()
                    && p.rename_line(number, line.text)
                {
                    *has_content = true;
                }
            }
        }
    }
    p.close_block(&mut block);
    p.close_section(&mut section);

    if !p.any_operation {
        p.problem(
            0,
            DELTA_NO_OPERATIONS,
            "no `## ADDED Requirements`, `## MODIFIED Requirements`, `## REMOVED Requirements` or \
             `## RENAMED Requirements` section: a delta lists what the change does to the spec",
        );
    }
    p.problems.sort_by_key(|problem| problem.line);
    (p.ops, p.problems)
}

fn open_section(p: &mut Parser, title: &str, line: u32) -> Section {
    let words: Vec<&str> = title.split_whitespace().collect();
    if !words.last().is_some_and(|w| w.eq_ignore_ascii_case("Requirements")) {
        return Section::Outside;
    }
    if let [word, _] = words[..]
        && let Some(operation) = OPERATIONS.iter().find(|op| op.eq_ignore_ascii_case(word))
    {
        p.any_operation = true;
        return Section::Op { operation, line, has_content: false };
    }
    p.problem(
        line,
        DELTA_UNKNOWN_SECTION,
        format!(
            "unknown section `## {}`: use `## ADDED Requirements`, `## MODIFIED Requirements`, \
             `## REMOVED Requirements` or `## RENAMED Requirements`",
            title.escape_debug()
        ),
    );
    Section::Unknown
}

/// `- FROM: `### Requirement: Old`` → `(true, "Old")`; `- TO: ...` → `(false, ...)`.
fn rename_part(line: &str) -> Option<(bool, String)> {
    let rest = line.trim_start().strip_prefix(['-', '*', '+'])?.trim_start();
    let (is_from, rest) = if let Some(r) = strip_prefix_ignore_case(rest, "FROM:") {
        (true, r)
    } else {
        (false, strip_prefix_ignore_case(rest, "TO:")?)
    };
    let name = rest.trim().trim_matches('`').trim();
    let name = name.strip_prefix("###").map(str::trim_start).unwrap_or(name);
    let name = name.strip_prefix("Requirement:").unwrap_or(name).trim();
    Some((is_from, name.to_string()))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(problems: &[DeltaProblem]) -> Vec<&'static str> {
        problems.iter().map(|p| p.code).collect()
    }

    const GOOD: &str = "\
# Delta for auth

## ADDED Requirements

### Requirement: Login throttling
The system SHALL lock an account after 5 failed logins.

#### Scenario: Too many failures
- **WHEN** a user fails 5 times
- **THEN** the account is locked

#### Scenario: Success resets
- **WHEN** a user logs in
- **THEN** the counter resets

## MODIFIED Requirements

### Requirement: Session length
Sessions SHALL last 1 hour.

#### Scenario: Expiry
- **WHEN** an hour passes
- **THEN** the session ends

## REMOVED Requirements

### Requirement: Legacy tokens
**Reason**: replaced.

## RENAMED Requirements
- FROM: `### Requirement: Login`
- TO: `### Requirement: User authentication`
";

    #[test]
    fn parses_a_full_delta() {
        let (ops, problems) = parse_delta(GOOD);
        assert!(problems.is_empty(), "{problems:?}");
        let summary: Vec<(&str, &str, u32, u32)> =
            ops.iter().map(|o| (o.operation.as_str(), o.requirement.as_str(), o.scenarios, o.line)).collect();
        assert_eq!(
            summary,
            [
                ("ADDED", "Login throttling", 2, 5),
                ("MODIFIED", "Session length", 1, 18),
                ("REMOVED", "Legacy tokens", 0, 27),
                ("RENAMED", "Login -> User authentication", 0, 31),
            ]
        );
    }

    #[test]
    fn operation_word_is_case_insensitive() {
        let (ops, problems) = parse_delta("## added requirements\n### Requirement: X\n#### Scenario: s\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(ops[0].operation, "ADDED");
    }

    #[test]
    fn no_operations() {
        let (ops, problems) = parse_delta("# Just a title\n\nSome prose.\n");
        assert!(ops.is_empty());
        assert_eq!(codes(&problems), [DELTA_NO_OPERATIONS]);
        assert_eq!(problems[0].line, 0);
        assert_eq!(codes(&parse_delta("").1), [DELTA_NO_OPERATIONS]);
    }

    #[test]
    fn unknown_section() {
        let (ops, problems) = parse_delta(
            "## ADDED Requirements\n### Requirement: A\n#### Scenario: s\n## CHANGED Requirements\n### Requirement: B\n",
        );
        assert_eq!(ops.len(), 1);
        assert_eq!(codes(&problems), [DELTA_UNKNOWN_SECTION]);
        assert_eq!(problems[0].line, 4);
        // A full spec's `## Requirements` is not a delta section either.
        let (_, problems) = parse_delta("## Purpose\nx\n## Requirements\n### Requirement: A\n#### Scenario: s\n");
        assert_eq!(codes(&problems), [DELTA_NO_OPERATIONS, DELTA_UNKNOWN_SECTION]);
        // Headings that are not about requirements are just prose.
        let (_, problems) = parse_delta("## Notes\n## ADDED Requirements\n### Requirement: A\n#### Scenario: s\n");
        assert!(problems.is_empty());
    }

    #[test]
    fn requirement_outside_section() {
        let (ops, problems) = parse_delta(
            "### Requirement: Early\n#### Scenario: s\n## ADDED Requirements\n### Requirement: A\n#### Scenario: s\n## Notes\n### Requirement: Late\n",
        );
        assert_eq!(ops.len(), 1);
        assert_eq!(codes(&problems), [DELTA_REQUIREMENT_OUTSIDE_SECTION, DELTA_REQUIREMENT_OUTSIDE_SECTION]);
        assert_eq!((problems[0].line, problems[1].line), (1, 7));
    }

    #[test]
    fn requirement_without_scenario() {
        let text = "## ADDED Requirements\n### Requirement: A\nThe system SHALL.\n### Requirement: B\n#### Scenario: s\n\
                    ## MODIFIED Requirements\n### Requirement: C\n## REMOVED Requirements\n### Requirement: D\n";
        let (ops, problems) = parse_delta(text);
        assert_eq!(ops.len(), 4);
        assert_eq!(codes(&problems), [DELTA_REQUIREMENT_NO_SCENARIO, DELTA_REQUIREMENT_NO_SCENARIO]);
        assert_eq!((problems[0].line, problems[1].line), (2, 7));
    }

    #[test]
    fn scenario_must_be_level_four_under_a_requirement() {
        let (_, problems) = parse_delta("## ADDED Requirements\n### Requirement: A\n### Scenario: wrong level\n");
        assert_eq!(codes(&problems), [DELTA_REQUIREMENT_NO_SCENARIO]);
        let (_, problems) =
            parse_delta("## ADDED Requirements\n#### Scenario: orphan\n### Requirement: A\n#### Scenario: s\n");
        assert_eq!(codes(&problems), [DELTA_SCENARIO_OUTSIDE_REQUIREMENT]);
        assert_eq!(problems[0].line, 2);
        let (_, problems) =
            parse_delta("## ADDED Requirements\n### Requirement: A\n#### Scenario: s\n### Other\n#### Scenario: t\n");
        assert_eq!(codes(&problems), [DELTA_SCENARIO_OUTSIDE_REQUIREMENT]);
    }

    #[test]
    fn empty_requirement_name() {
        let (ops, problems) = parse_delta("## ADDED Requirements\n### Requirement:   \n#### Scenario: s\n");
        assert!(ops.is_empty());
        assert_eq!(codes(&problems), [DELTA_REQUIREMENT_EMPTY_NAME]);
        assert_eq!(problems[0].line, 2);
    }

    #[test]
    fn empty_sections() {
        let (_, problems) =
            parse_delta("## ADDED Requirements\n\nprose only\n## REMOVED Requirements\n## RENAMED Requirements\n");
        assert_eq!(codes(&problems), [DELTA_SECTION_EMPTY, DELTA_SECTION_EMPTY, DELTA_SECTION_EMPTY]);
        assert_eq!(problems.iter().map(|p| p.line).collect::<Vec<_>>(), [1, 4, 5]);
    }

    #[test]
    fn renames() {
        let (ops, problems) = parse_delta(
            "## RENAMED Requirements\n- FROM: `### Requirement: A`\n- TO: `### Requirement: B`\n* from: C\n* to: D\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = ops.iter().map(|o| o.requirement.as_str()).collect();
        assert_eq!(names, ["A -> B", "C -> D"]);
        assert!(ops.iter().all(|o| o.operation == "RENAMED" && o.scenarios == 0));

        let (ops, problems) =
            parse_delta("## RENAMED Requirements\n- FROM: A\n- FROM: B\n- TO: C\n- TO: D\n- FROM: E\n");
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].requirement, "B -> C");
        assert_eq!(codes(&problems), [DELTA_RENAME_INCOMPLETE; 3]);
        assert_eq!(problems.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 5, 6]);

        // FROM/TO lines mean nothing outside a RENAMED section.
        let (_, problems) = parse_delta("## REMOVED Requirements\n- FROM: A\n- TO: B\n");
        assert_eq!(codes(&problems), [DELTA_SECTION_EMPTY]);
    }

    #[test]
    fn duplicates_are_reported() {
        let (ops, problems) = parse_delta(
            "## ADDED Requirements\n### Requirement: A\n#### Scenario: s\n### Requirement: A\n#### Scenario: s\n",
        );
        assert_eq!(ops.len(), 1);
        assert_eq!(codes(&problems), [DELTA_REQUIREMENT_DUPLICATE]);
        assert_eq!(problems[0].line, 4);
    }

    #[test]
    fn fenced_code_is_ignored() {
        let text = "## ADDED Requirements\n### Requirement: A\n#### Scenario: s\n```md\n## Bogus Requirements\n\
                    ### Requirement: Hidden\n#### Scenario: hidden\n```\n";
        let (ops, problems) = parse_delta(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].scenarios, 1);
        // A fenced example alone is not a delta.
        let (ops, problems) = parse_delta("```\n## ADDED Requirements\n### Requirement: A\n```\n");
        assert!(ops.is_empty());
        assert_eq!(codes(&problems), [DELTA_NO_OPERATIONS]);
    }

    #[test]
    fn crlf_and_arbitrary_content() {
        let text = "## ADDED Requirements\r\n### Requirement: <script>alert(1)</script> javascript:x\r\n\
                    #### Scenario: rm -rf /\r\n";
        let (ops, problems) = parse_delta(text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(ops[0].requirement, "<script>alert(1)</script> javascript:x");
    }

    #[test]
    fn hostile_input_does_not_panic() {
        for text in [
            "##",
            "## Requirements",
            "## é Requirements",
            "- FROM:",
            "## RENAMED Requirements\n- FROM:\n- TO:\n- TO",
            "## RENAMED Requirements\n- FRO",
            "### Requirement:",
            "#### Scenario:",
            "\u{feff}## ADDED Requirements\n### Requirement: a\n#### Scenario: b",
            "```\n",
        ] {
            let _ = parse_delta(text);
        }
        let many = "## ADDED Requirements\n".repeat(2_000) + &"### Requirement: x\n".repeat(2_000);
        let (_, problems) = parse_delta(&many);
        assert!(!problems.is_empty());
    }
}
