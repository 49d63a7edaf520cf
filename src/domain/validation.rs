//! Structural validation of a change: required files, proposal sections,
//! checklist syntax and spec delta format.
//!
//! Content is judged by its structure only. Markdown may contain HTML, URLs of
//! any scheme or shell commands; none of that is a finding (the earlier server
//! blocked archiving on such text).
use super::checklist::{Fences, heading, lines};
use super::{checklist, proposal, specs, templates::RATIONALE_PLACEHOLDER};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    /// Relative to the change folder, e.g. `tasks.md` or `specs/auth/spec.md`.
    pub file: String,
    /// 1-based; 0 for the whole file.
    pub line: u32,
    pub message: String,
}

/// What the workspace read from a change folder. Files that could not be read as
/// UTF-8 text within the size cap are reported by the workspace as findings itself
/// and appear here as `None` / absent.
#[derive(Debug, Clone, Default)]
pub struct ChangeFiles {
    pub proposal: Option<String>,
    pub tasks: Option<String>,
    /// Whether `specs/` exists as a directory.
    pub specs_dir: bool,
    /// `(path relative to specs/, content)` for every `*.md` under `specs/`, README.md included.
    pub spec_files: Vec<(String, String)>,
}

/// Error: there is no `proposal.md`.
pub const PROPOSAL_MISSING: &str = "PROPOSAL_MISSING";
/// Error: `proposal.md` is blank.
pub const PROPOSAL_EMPTY: &str = "PROPOSAL_EMPTY";
/// Error: `proposal.md` has no `# Title` heading.
pub const PROPOSAL_TITLE_MISSING: &str = "PROPOSAL_TITLE_MISSING";
/// Error for `## Why` and `## What Changes`, warning for `## Impact`.
pub const PROPOSAL_SECTION_MISSING: &str = "PROPOSAL_SECTION_MISSING";
/// Warning: a section has no content, or `## Why` still holds the template's prompt.
pub const PROPOSAL_SECTION_EMPTY: &str = "PROPOSAL_SECTION_EMPTY";
/// Error: there is no `tasks.md`.
pub const TASKS_MISSING: &str = "TASKS_MISSING";
/// Error: `tasks.md` is blank.
pub const TASKS_EMPTY: &str = "TASKS_EMPTY";
/// Error: `tasks.md` has no `- [ ]` item.
pub const TASKS_NO_ITEMS: &str = "TASKS_NO_ITEMS";
/// Error: a line that tries to be a checklist item and is malformed.
pub const TASKS_MALFORMED_ITEM: &str = "TASKS_MALFORMED_ITEM";
/// Warning: two items share an id, so the later one got a `#N` suffix.
pub const TASKS_DUPLICATE_ID: &str = "TASKS_DUPLICATE_ID";
/// Warning: `tasks.md` ends mid-line, as a file cut short while it was saved does.
pub const TASKS_NO_FINAL_NEWLINE: &str = "TASKS_NO_FINAL_NEWLINE";
/// Info: `specs/` holds no delta file.
pub const SPECS_NO_DELTAS: &str = "SPECS_NO_DELTAS";
/// Warning: a spec file whose name a resource URI cannot carry (a space, non-ASCII, `%`, ...):
/// `change.show` lists it, but it is no resource (`relpath::check_relative`).
pub const SPECS_NAME_NOT_SERVED: &str = "SPECS_NAME_NOT_SERVED";

/// Proposal sections checked, with the severity of their absence.
const SECTIONS: [(&str, Severity); 3] =
    [("Why", Severity::Error), ("What Changes", Severity::Error), ("Impact", Severity::Warning)];

/// All findings, sorted: errors first, then by file and line.
pub fn validate(files: &ChangeFiles) -> Vec<Finding> {
    let mut out = Findings::default();
    check_proposal(files.proposal.as_deref(), &mut out);
    check_tasks(files.tasks.as_deref(), &mut out);
    check_specs(files, &mut out);
    let mut findings = out.0;
    findings.sort_by(|a, b| (a.severity, &a.file, a.line).cmp(&(b.severity, &b.file, b.line)));
    findings
}

pub fn is_valid(findings: &[Finding]) -> bool {
    !findings.iter().any(|f| f.severity == Severity::Error)
}

/// README files under `specs/` explain deltas; they are not deltas themselves.
pub fn is_readme(spec_path: &str) -> bool {
    spec_path.rsplit('/').next().is_some_and(|name| name.eq_ignore_ascii_case("README.md"))
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, code: &'static str, severity: Severity, file: &str, line: u32, message: impl Into<String>) {
        self.0.push(Finding { code, severity, file: file.to_string(), line, message: message.into() });
    }
}

fn is_blank(text: &str) -> bool {
    text.chars().all(|c| c.is_whitespace() || c == '\u{feff}')
}

fn check_proposal(text: Option<&str>, out: &mut Findings) {
    const FILE: &str = "proposal.md";
    let Some(text) = text else {
        out.add(
            PROPOSAL_MISSING,
            Severity::Error,
            FILE,
            0,
            "proposal.md is missing: it states why the change is needed and what it changes",
        );
        return;
    };
    if is_blank(text) {
        out.add(
            PROPOSAL_EMPTY,
            Severity::Error,
            FILE,
            0,
            "proposal.md is empty: add a `# Title`, `## Why`, `## What Changes` and `## Impact`",
        );
        return;
    }
    // `proposal::title` reads the first line literally; a byte order mark would hide the H1.
    if proposal::title(text.trim_start_matches('\u{feff}')).is_none() {
        out.add(
            PROPOSAL_TITLE_MISSING,
            Severity::Error,
            FILE,
            0,
            "proposal.md has no title: start it with a `# <title>` heading",
        );
    }
    let outline = Outline::read(text);
    for (name, severity) in SECTIONS {
        let Some(section) = outline.find(name) else {
            out.add(PROPOSAL_SECTION_MISSING, severity, FILE, 0, format!("proposal.md has no `## {name}` section"));
            continue;
        };
        if section.content.is_empty() {
            out.add(PROPOSAL_SECTION_EMPTY, Severity::Warning, FILE, section.line, format!("`## {name}` is empty"));
        } else if name == "Why" && section.content == [RATIONALE_PLACEHOLDER] {
            out.add(
                PROPOSAL_SECTION_EMPTY,
                Severity::Warning,
                FILE,
                section.line,
                "`## Why` still holds the template's prompt: replace it with the reason for the change",
            );
        }
    }
}

/// The level-2 sections of a markdown document, each with its non-blank lines
/// (deeper headings and code included) up to the next heading of level 1 or 2.
struct Outline<'a> {
    sections: Vec<OutlineSection<'a>>,
}

struct OutlineSection<'a> {
    title: &'a str,
    line: u32,
    content: Vec<&'a str>,
}

impl<'a> Outline<'a> {
    fn read(text: &'a str) -> Self {
        let mut sections: Vec<OutlineSection<'a>> = Vec::new();
        let mut open = false;
        let mut fences = Fences::default();
        for line in lines(text) {
            let code = fences.is_code(line.text);
            match heading(line.text) {
                Some((level, title)) if !code && level <= 2 => {
                    open = level == 2;
                    if open {
                        sections.push(OutlineSection { title, line: line.number, content: Vec::new() });
                    }
                }
                _ => {
                    let trimmed = line.text.trim();
                    if let (true, false, Some(section)) = (open, trimmed.is_empty(), sections.last_mut()) {
                        section.content.push(trimmed);
                    }
                }
            }
        }
        Outline { sections }
    }

    /// The first section whose heading starts with `name` as a whole word, ignoring
    /// case: `## What changes (v2)` is the `What Changes` section, `## Whyever` is not.
    fn find(&self, name: &str) -> Option<&OutlineSection<'a>> {
        self.sections.iter().find(|s| {
            let Some(head) = s.title.get(..name.len()) else {
                return false;
            };
            head.eq_ignore_ascii_case(name) && !s.title[name.len()..].starts_with(|c: char| c.is_alphanumeric())
        })
    }
}

fn check_tasks(text: Option<&str>, out: &mut Findings) {
    const FILE: &str = "tasks.md";
    let Some(text) = text else {
        out.add(
            TASKS_MISSING,
            Severity::Error,
            FILE,
            0,
            "tasks.md is missing: it holds the change's `- [ ]` checklist",
        );
        return;
    };
    if is_blank(text) {
        out.add(TASKS_EMPTY, Severity::Error, FILE, 0, "tasks.md is empty: add `- [ ] 1.1 <task>` checklist items");
        return;
    }
    if !text.ends_with('\n') {
        out.add(
            TASKS_NO_FINAL_NEWLINE,
            Severity::Warning,
            FILE,
            lines(text).count() as u32,
            "tasks.md ends mid-line, as a file cut short while it was saved does: check that it is whole, \
             and end it with a newline (task.update holds off a file that ends so for 2 s after it was written)",
        );
    }
    let list = checklist::parse(text);
    if list.items.is_empty() {
        out.add(
            TASKS_NO_ITEMS,
            Severity::Error,
            FILE,
            0,
            "tasks.md has no checklist item: add lines like `- [ ] 1.1 <task>` (outside code blocks)",
        );
    }
    for problem in list.problems {
        out.add(TASKS_MALFORMED_ITEM, Severity::Error, FILE, problem.line, problem.message);
    }
    for item in list.items.iter().filter(|i| checklist::is_duplicate_id(&i.id)) {
        let base = item.id.split(checklist::DUPLICATE_MARK).next().unwrap_or_default();
        out.add(
            TASKS_DUPLICATE_ID,
            Severity::Warning,
            FILE,
            item.line,
            format!("task id {base:?} is already used above, so this item's id is {:?}: renumber it", item.id),
        );
    }
}

fn check_specs(files: &ChangeFiles, out: &mut Findings) {
    let mut deltas = 0;
    for (path, content) in &files.spec_files {
        let file = format!("specs/{path}");
        if super::relpath::check_relative(path).is_err() {
            out.add(
                SPECS_NAME_NOT_SERVED,
                Severity::Warning,
                &file,
                0,
                format!(
                    "{file} cannot be read as a resource (change://<slug>/delta/...): name it with ASCII \
                     letters, digits, '.', '_' and '-' only"
                ),
            );
        }
        if is_readme(path) {
            continue;
        }
        deltas += 1;
        for problem in specs::parse_delta(content).1 {
            out.add(problem.code, Severity::Error, &file, problem.line, problem.message);
        }
    }
    if deltas == 0 {
        let why = if files.specs_dir { "specs/ holds no delta file" } else { "there is no specs/ folder" };
        out.add(
            SPECS_NO_DELTAS,
            Severity::Info,
            "specs/",
            0,
            format!(
                "{why}; that is fine for a change that alters no behaviour, otherwise add specs/<capability>/spec.md"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROPOSAL: &str =
        "# Add throttling\n\n## Why\nAttacks.\n\n## What Changes\n- Throttle.\n\n## Impact\n- auth\n";
    const TASKS: &str = "# Tasks\n## 1. Build\n- [ ] 1.1 Do it\n";
    const DELTA: &str = "## ADDED Requirements\n### Requirement: Throttle\nThe system SHALL.\n#### Scenario: s\n- **WHEN** x\n- **THEN** y\n";

    fn good() -> ChangeFiles {
        ChangeFiles {
            proposal: Some(PROPOSAL.into()),
            tasks: Some(TASKS.into()),
            specs_dir: true,
            spec_files: vec![("auth/spec.md".into(), DELTA.into()), ("README.md".into(), "# readme".into())],
        }
    }

    fn with_proposal(text: &str) -> Vec<Finding> {
        validate(&ChangeFiles { proposal: Some(text.into()), ..good() })
    }

    fn with_tasks(text: &str) -> Vec<Finding> {
        validate(&ChangeFiles { tasks: Some(text.into()), ..good() })
    }

    fn summary(findings: &[Finding]) -> Vec<(&'static str, Severity, &str, u32)> {
        findings.iter().map(|f| (f.code, f.severity, f.file.as_str(), f.line)).collect()
    }

    #[test]
    fn a_good_change_has_no_findings() {
        assert_eq!(validate(&good()), []);
    }

    #[test]
    fn missing_and_empty_files() {
        let f = validate(&ChangeFiles::default());
        assert_eq!(
            summary(&f),
            [
                (PROPOSAL_MISSING, Severity::Error, "proposal.md", 0),
                (TASKS_MISSING, Severity::Error, "tasks.md", 0),
                (SPECS_NO_DELTAS, Severity::Info, "specs/", 0),
            ]
        );
        assert!(!is_valid(&f));
        let f =
            validate(&ChangeFiles { proposal: Some(" \n\t\n".into()), tasks: Some("\u{feff}\r\n".into()), ..good() });
        assert_eq!(
            summary(&f),
            [(PROPOSAL_EMPTY, Severity::Error, "proposal.md", 0), (TASKS_EMPTY, Severity::Error, "tasks.md", 0)]
        );
    }

    #[test]
    fn a_task_list_cut_short_mid_line_is_flagged_on_its_last_line() {
        let f = validate(&ChangeFiles { tasks: Some("## 1. Work\n- [ ] 1.1 One\n- [ ] 1.2 Tw".into()), ..good() });
        assert_eq!(summary(&f), [(TASKS_NO_FINAL_NEWLINE, Severity::Warning, "tasks.md", 3)]);
        assert!(is_valid(&f), "a warning only: the file may be whole");
    }

    #[test]
    fn proposal_title_missing() {
        let f = with_proposal("## Why\nx\n## What Changes\nx\n## Impact\nx\n```\n# not a title\n```\n");
        assert_eq!(summary(&f), [(PROPOSAL_TITLE_MISSING, Severity::Error, "proposal.md", 0)]);
    }

    #[test]
    fn byte_order_mark_and_crlf_are_fine() {
        let bom = format!("\u{feff}{}", PROPOSAL.replace('\n', "\r\n"));
        assert_eq!(with_proposal(&bom), []);
    }

    #[test]
    fn required_sections() {
        let f = with_proposal("# T\n## Impact\nx\n");
        assert_eq!(
            summary(&f),
            [
                (PROPOSAL_SECTION_MISSING, Severity::Error, "proposal.md", 0),
                (PROPOSAL_SECTION_MISSING, Severity::Error, "proposal.md", 0),
            ]
        );
        assert!(f[0].message.contains("## Why") && f[1].message.contains("## What Changes"));
        let f = with_proposal("# T\n## Why\nx\n## What Changes\nx\n");
        assert_eq!(summary(&f), [(PROPOSAL_SECTION_MISSING, Severity::Warning, "proposal.md", 0)]);
        assert!(f[0].message.contains("## Impact"));
    }

    #[test]
    fn section_names_are_matched_leniently_but_as_words() {
        let f = with_proposal("# T\n## WHY it matters\nx\n## What changes?\nx\n## impact\nx\n");
        assert_eq!(f, []);
        let f = with_proposal("# T\n## Whyever\nx\n## What Changes\nx\n## Impact\nx\n");
        assert_eq!(summary(&f), [(PROPOSAL_SECTION_MISSING, Severity::Error, "proposal.md", 0)]);
        // Level 3 and fenced headings do not count.
        let f = with_proposal("# T\n### Why\nx\n```\n## What Changes\n```\n## Impact\nx\n");
        assert_eq!(f.iter().filter(|f| f.code == PROPOSAL_SECTION_MISSING).count(), 2);
    }

    #[test]
    fn empty_sections_warn() {
        let f = with_proposal("# T\n## Why\n\n   \n## What Changes\n### Details\n- x\n## Impact\n");
        assert_eq!(
            summary(&f),
            [
                (PROPOSAL_SECTION_EMPTY, Severity::Warning, "proposal.md", 2),
                (PROPOSAL_SECTION_EMPTY, Severity::Warning, "proposal.md", 8),
            ]
        );
        // A section ends at the next level-1 or level-2 heading.
        let f = with_proposal("# T\n## Why\n# Other\nx\n## What Changes\nx\n## Impact\nx\n");
        assert_eq!(summary(&f), [(PROPOSAL_SECTION_EMPTY, Severity::Warning, "proposal.md", 2)]);
    }

    #[test]
    fn placeholder_rationale_warns() {
        let text = format!("# T\n## Why\n\n{RATIONALE_PLACEHOLDER}\n\n## What Changes\nx\n## Impact\nx\n");
        let f = with_proposal(&text);
        assert_eq!(summary(&f), [(PROPOSAL_SECTION_EMPTY, Severity::Warning, "proposal.md", 2)]);
        assert!(f[0].message.contains("prompt"));
        let text =
            format!("# T\n## Why\n{RATIONALE_PLACEHOLDER}\nBut also a reason.\n## What Changes\nx\n## Impact\nx\n");
        assert_eq!(with_proposal(&text), []);
    }

    #[test]
    fn html_urls_and_commands_are_not_findings() {
        let text = "# <b>Title</b> with javascript:alert(1)\n## Why\n<script>alert(1)</script> onload=x\n\
                    `rm -rf /`, cat, ps, su, more, iconSize=3\n## What Changes\n- vbscript:x\n## Impact\n- \u{7f}\u{1}\n";
        assert_eq!(with_proposal(text), []);
        let tasks = "## 1. X\n- [ ] 1.1 <img src=x onerror=alert(1)> javascript:void(0) && sudo rm -rf ~\n";
        assert_eq!(with_tasks(tasks), []);
    }

    #[test]
    fn tasks_without_items() {
        let f = with_tasks("# Tasks\n\nJust prose.\n```\n- [ ] fenced\n```\n");
        assert_eq!(summary(&f), [(TASKS_NO_ITEMS, Severity::Error, "tasks.md", 0)]);
    }

    #[test]
    fn malformed_items_are_errors_with_lines() {
        let f = with_tasks("## 1. X\n- [ ] 1.1 fine\n- [] broken\n-[x] 1.3 tight\n- [y] odd\n");
        assert_eq!(
            summary(&f),
            [
                (TASKS_MALFORMED_ITEM, Severity::Error, "tasks.md", 3),
                (TASKS_MALFORMED_ITEM, Severity::Error, "tasks.md", 4),
                (TASKS_MALFORMED_ITEM, Severity::Error, "tasks.md", 5),
            ]
        );
        assert!(f.iter().all(|f| !f.message.is_empty()));
    }

    #[test]
    fn duplicate_ids_warn() {
        let f = with_tasks("## 1. X\n- [ ] 1.1 a\n- [ ] 1.1 b\n");
        assert_eq!(summary(&f), [(TASKS_DUPLICATE_ID, Severity::Warning, "tasks.md", 3)]);
        assert!(f[0].message.contains("1.1#2"));
        assert!(is_valid(&f));
    }

    #[test]
    fn delta_problems_carry_their_code_file_and_line() {
        let files = ChangeFiles {
            spec_files: vec![
                ("auth/spec.md".into(), "## ADDED Requirements\n### Requirement: A\nno scenario\n".into()),
                ("billing/spec.md".into(), "# Nothing here\n".into()),
                ("ok/spec.md".into(), DELTA.into()),
            ],
            ..good()
        };
        let f = validate(&files);
        assert_eq!(
            summary(&f),
            [
                (specs::DELTA_REQUIREMENT_NO_SCENARIO, Severity::Error, "specs/auth/spec.md", 2),
                (specs::DELTA_NO_OPERATIONS, Severity::Error, "specs/billing/spec.md", 0),
            ]
        );
    }

    #[test]
    fn every_delta_code_surfaces() {
        let cases = [
            ("x\n", specs::DELTA_NO_OPERATIONS),
            (
                "## ADDED Requirements\n### Requirement: A\n#### Scenario: s\n## CHANGED Requirements\n",
                specs::DELTA_UNKNOWN_SECTION,
            ),
            (
                "### Requirement: A\n## ADDED Requirements\n### Requirement: B\n#### Scenario: s\n",
                specs::DELTA_REQUIREMENT_OUTSIDE_SECTION,
            ),
            ("## MODIFIED Requirements\n### Requirement: A\n", specs::DELTA_REQUIREMENT_NO_SCENARIO),
            ("## REMOVED Requirements\n### Requirement:\n", specs::DELTA_REQUIREMENT_EMPTY_NAME),
            (
                "## ADDED Requirements\n#### Scenario: s\n### Requirement: A\n#### Scenario: s\n",
                specs::DELTA_SCENARIO_OUTSIDE_REQUIREMENT,
            ),
            ("## ADDED Requirements\n## REMOVED Requirements\n### Requirement: A\n", specs::DELTA_SECTION_EMPTY),
        ];
        for (text, code) in cases {
            let f = validate(&ChangeFiles { spec_files: vec![("cap/spec.md".into(), text.into())], ..good() });
            assert_eq!(f.iter().map(|f| f.code).collect::<Vec<_>>(), [code], "{text:?}");
            assert_eq!(f[0].severity, Severity::Error);
            assert_eq!(f[0].file, "specs/cap/spec.md");
        }
    }

    #[test]
    fn readmes_are_skipped_at_any_depth() {
        let files = ChangeFiles {
            spec_files: vec![
                ("README.md".into(), "junk".into()),
                ("auth/readme.MD".into(), "junk".into()),
                ("auth/spec.md".into(), DELTA.into()),
            ],
            ..good()
        };
        assert_eq!(validate(&files), []);
        assert!(is_readme("a/b/Readme.md"));
        assert!(!is_readme("a/README.md.bak") && !is_readme("NOTREADME.md"));
    }

    #[test]
    fn no_deltas_is_info_only() {
        for (specs_dir, spec_files) in
            [(true, vec![("README.md".to_string(), String::new())]), (true, vec![]), (false, vec![])]
        {
            let f = validate(&ChangeFiles { specs_dir, spec_files, ..good() });
            assert_eq!(summary(&f), [(SPECS_NO_DELTAS, Severity::Info, "specs/", 0)]);
            assert!(is_valid(&f));
        }
    }

    /// A spec file the resource URIs cannot name is a warning, not a reason to refuse the
    /// archive; its content is still checked as a delta.
    #[test]
    fn a_spec_name_no_resource_can_carry_is_a_warning() {
        let files = ChangeFiles {
            spec_files: vec![("auth/my spec.md".into(), DELTA.into()), ("ünïcode.md".into(), DELTA.into())],
            ..good()
        };
        let f = validate(&files);
        assert_eq!(
            summary(&f),
            [
                (SPECS_NAME_NOT_SERVED, Severity::Warning, "specs/auth/my spec.md", 0),
                (SPECS_NAME_NOT_SERVED, Severity::Warning, "specs/ünïcode.md", 0),
            ]
        );
        assert!(is_valid(&f));
    }

    #[test]
    fn findings_are_sorted_by_severity_file_and_line() {
        let files = ChangeFiles {
            proposal: Some("# T\n## Why\n\n## What Changes\nx\n".into()),
            tasks: Some("- [ ] 1 a\n- [ ] 1 b\n- [] c\n- [y] d\n".into()),
            specs_dir: false,
            spec_files: vec![
                ("z/spec.md".into(), "nothing".into()),
                ("a/spec.md".into(), "## ADDED Requirements\n### Requirement: A\n".into()),
            ],
        };
        let f = validate(&files);
        assert_eq!(
            summary(&f),
            [
                (specs::DELTA_REQUIREMENT_NO_SCENARIO, Severity::Error, "specs/a/spec.md", 2),
                (specs::DELTA_NO_OPERATIONS, Severity::Error, "specs/z/spec.md", 0),
                (TASKS_MALFORMED_ITEM, Severity::Error, "tasks.md", 3),
                (TASKS_MALFORMED_ITEM, Severity::Error, "tasks.md", 4),
                (PROPOSAL_SECTION_MISSING, Severity::Warning, "proposal.md", 0),
                (PROPOSAL_SECTION_EMPTY, Severity::Warning, "proposal.md", 2),
                (TASKS_DUPLICATE_ID, Severity::Warning, "tasks.md", 2),
            ]
        );
    }
}
