//! Scaffolds for new changes, rendered from the files in `templates/`.
//!
//! The templates are compiled in, so a deployed binary never depends on files
//! beside it. Placeholders are `{{title}}`, `{{slug}}`, `{{owner}}`, `{{date}}`
//! (YYYY-MM-DD), `{{type}}` and `{{rationale}}`. Substitution is a single pass:
//! text that came from the client is inserted verbatim and never scanned for
//! placeholders, and unknown placeholders are left as written.
use super::{Owner, Rationale, Slug, TemplateKind, Title};

pub struct TemplateVars<'a> {
    pub kind: TemplateKind,
    pub title: &'a Title,
    pub slug: &'a Slug,
    pub owner: &'a Owner,
    pub rationale: &'a Rationale,
    pub date: time::Date,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scaffold {
    pub proposal: String,
    pub tasks: String,
    pub specs_readme: String,
}

/// Stands in for an empty rationale in `## Why`; validation warns while it is still there.
pub const RATIONALE_PLACEHOLDER: &str = "_Describe why this change is needed._";

const FEATURE_PROPOSAL: &str = include_str!("../../templates/feature/proposal.md");
const FEATURE_TASKS: &str = include_str!("../../templates/feature/tasks.md");
const BUGFIX_PROPOSAL: &str = include_str!("../../templates/bugfix/proposal.md");
const BUGFIX_TASKS: &str = include_str!("../../templates/bugfix/tasks.md");
const CHORE_PROPOSAL: &str = include_str!("../../templates/chore/proposal.md");
const CHORE_TASKS: &str = include_str!("../../templates/chore/tasks.md");
const SPECS_README: &str = include_str!("../../templates/specs-README.md");

/// The raw `(proposal.md, tasks.md)` templates of a kind.
pub fn sources(kind: TemplateKind) -> (&'static str, &'static str) {
    match kind {
        TemplateKind::Feature => (FEATURE_PROPOSAL, FEATURE_TASKS),
        TemplateKind::Bugfix => (BUGFIX_PROPOSAL, BUGFIX_TASKS),
        TemplateKind::Chore => (CHORE_PROPOSAL, CHORE_TASKS),
    }
}

pub fn render(vars: &TemplateVars<'_>) -> Scaffold {
    let (proposal, tasks) = sources(vars.kind);
    let date = format_date(vars.date);
    let rationale = if vars.rationale.is_empty() { RATIONALE_PLACEHOLDER } else { vars.rationale.as_str() };
    let lookup = |name: &str| match name {
        "title" => Some(vars.title.as_str()),
        "slug" => Some(vars.slug.as_str()),
        "owner" => Some(vars.owner.as_str()),
        "date" => Some(date.as_str()),
        "type" => Some(vars.kind.as_str()),
        "rationale" => Some(rationale),
        _ => None,
    };
    Scaffold {
        proposal: substitute(proposal, lookup),
        tasks: substitute(tasks, lookup),
        specs_readme: substitute(SPECS_README, lookup),
    }
}

fn format_date(date: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), u8::from(date.month()), date.day())
}

/// Replaces each `{{name}}` that `lookup` knows, in one left-to-right pass.
fn substitute<'v>(template: &str, lookup: impl Fn(&str) -> Option<&'v str>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after_open = &rest[open + 2..];
        let value = after_open.find("}}").and_then(|close| Some((lookup(&after_open[..close])?, close)));
        match value {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after_open[close + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after_open;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use time::macros::date;

    use super::*;
    use crate::domain::{checklist, proposal, specs, validation};

    const KINDS: [TemplateKind; 3] = [TemplateKind::Feature, TemplateKind::Bugfix, TemplateKind::Chore];

    fn render_with(kind: TemplateKind, title: &str, rationale: &str) -> Scaffold {
        render(&TemplateVars {
            kind,
            title: &Title::parse(title).unwrap(),
            slug: &Slug::parse("add-login-throttle").unwrap(),
            owner: &Owner::parse("alice@example.com").unwrap(),
            rationale: &Rationale::parse(rationale).unwrap(),
            date: date!(2026 - 03 - 07),
        })
    }

    fn validate(s: &Scaffold) -> Vec<validation::Finding> {
        validation::validate(&validation::ChangeFiles {
            proposal: Some(s.proposal.clone()),
            tasks: Some(s.tasks.clone()),
            specs_dir: true,
            spec_files: vec![("README.md".into(), s.specs_readme.clone())],
        })
    }

    #[test]
    fn every_scaffold_validates() {
        for kind in KINDS {
            let s = render_with(kind, "Add login throttling", "Brute-force attempts are rising.");
            let findings = validate(&s);
            let serious: Vec<_> = findings.iter().filter(|f| f.severity != validation::Severity::Info).collect();
            assert!(serious.is_empty(), "{kind:?}: {serious:?}");
            assert!(validation::is_valid(&findings));
        }
    }

    #[test]
    fn a_rationale_in_markdown_keeps_the_proposal_whole_or_is_refused() {
        let kept = [
            "### Background\nLogins fail.\n\n#### Detail\nMore.",
            "Like this:\n```md\n## What Changes\n# not a title\n```\nand no more.",
            "~~~\n## inside\n~~~~",
            "#hashtag, not a heading",
            "Lines end in CRLF\r\nlike this.\r\n",
            "A list:\n- one\n---\nand a rule after it.",
            "Text.\n\n---\n\nA rule between paragraphs.",
            "1. first\n---",
        ];
        for rationale in kept {
            for kind in KINDS {
                let findings = validate(&render_with(kind, "Markdown", rationale));
                let serious: Vec<_> = findings.iter().filter(|f| f.severity != validation::Severity::Info).collect();
                assert!(serious.is_empty(), "{rationale:?} {kind:?}: {serious:?}");
            }
        }
        let refused = [
            ("## Background\nx", "line 1: a level-2 heading"),
            ("Why:\n\n   # Title again", "line 3: a level-1 heading"),
            ("Like this:\n```\n## What Changes", "does not close"),
            ("because\r# Injected H1\r## What Changes\rnothing", "line 1: a carriage return without a line feed"),
            ("Real reason\nImpact\n======", "line 3: a level-1 heading"),
            ("Real reason\n\nWhat Changes\n  ---", "line 4: a level-2 heading"),
        ];
        for (rationale, says) in refused {
            match Rationale::parse(rationale) {
                Err(crate::error::Error::InvalidArgument { field: "rationale", why }) => {
                    assert!(why.contains(says), "{rationale:?}: {why}")
                }
                other => panic!("{rationale:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_rationale_gets_a_prompt_and_only_that_warning() {
        for kind in KINDS {
            let s = render_with(kind, "Tidy", "");
            assert!(s.proposal.contains(RATIONALE_PLACEHOLDER));
            let findings = validate(&s);
            assert!(validation::is_valid(&findings), "{kind:?}: {findings:?}");
            let warnings: Vec<_> = findings.iter().filter(|f| f.severity == validation::Severity::Warning).collect();
            assert_eq!(warnings.len(), 1, "{kind:?}: {warnings:?}");
            assert_eq!(warnings[0].code, "PROPOSAL_SECTION_EMPTY");
        }
    }

    #[test]
    fn scaffold_shape() {
        for kind in KINDS {
            let s = render_with(kind, "Add <login> throttling & more", "Because.\n\nTwo paragraphs.");
            assert_eq!(proposal::title(&s.proposal).as_deref(), Some("Add <login> throttling & more"));
            assert!(s.proposal.starts_with("# Add <login> throttling & more\n"));
            for needle in ["`add-login-throttle`", "alice@example.com", "2026-03-07", kind.as_str(), "Because.\n\nTwo"]
            {
                assert!(s.proposal.contains(needle), "{kind:?} proposal lacks {needle:?}");
            }
            for section in ["\n## Why\n", "\n## What Changes\n", "\n## Impact\n"] {
                assert!(s.proposal.contains(section), "{kind:?} proposal lacks {section:?}");
            }
            assert!(s.tasks.starts_with("# Tasks: Add <login> throttling & more\n"));
            let tasks = checklist::parse(&s.tasks);
            assert!((8..=15).contains(&tasks.items.len()), "{kind:?}: {} items", tasks.items.len());
            assert!(tasks.problems.is_empty());
            assert!(tasks.items.iter().all(|i| !i.done && !checklist::is_duplicate_id(&i.id)));
            assert_eq!(tasks.items[0].id, "1.1");
            assert!(tasks.items[0].section.starts_with("1. "));
            assert!(s.specs_readme.contains("add-login-throttle"));
            assert!(!s.proposal.contains("{{") && !s.tasks.contains("{{") && !s.specs_readme.contains("{{"));
        }
        assert!(render_with(TemplateKind::Bugfix, "x", "").proposal.contains("\n## Bug Description\n"));
        assert!(render_with(TemplateKind::Chore, "x", "").proposal.contains("\n## Background\n"));
    }

    #[test]
    fn readme_example_is_a_valid_delta_but_fenced() {
        let readme = render_with(TemplateKind::Feature, "x", "").specs_readme;
        // Outside the fences the README holds no delta...
        let (ops, _) = specs::parse_delta(&readme);
        assert!(ops.is_empty());
        // ...and the fenced example is itself a well-formed delta.
        let example: String =
            readme.split("```markdown\n").skip(1).filter_map(|block| block.split("```").next()).collect();
        let (ops, problems) = specs::parse_delta(&example);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = ops.iter().map(|o| o.operation.as_str()).collect();
        assert_eq!(names, ["ADDED", "REMOVED", "RENAMED"]);
        assert!(readme.contains("### Requirement: Login throttling") && readme.contains("SHALL"));
        assert!(readme.contains("#### Scenario:") && readme.contains("- **WHEN**") && readme.contains("- **THEN**"));
    }

    #[test]
    fn substitution_is_single_pass() {
        let s = render_with(TemplateKind::Feature, "Use {{slug}} and {{date}}", "Why {{title}} {{owner}}");
        assert_eq!(proposal::title(&s.proposal).as_deref(), Some("Use {{slug}} and {{date}}"));
        assert!(s.proposal.contains("Why {{title}} {{owner}}"));
        assert!(s.tasks.starts_with("# Tasks: Use {{slug}} and {{date}}\n"));
    }

    #[test]
    fn substitute_edge_cases() {
        let lookup = |name: &str| (name == "a").then_some("A");
        assert_eq!(substitute("{{a}}{{b}}{{a}}", lookup), "A{{b}}A");
        assert_eq!(substitute("{{{a}}}", lookup), "{{{a}}}");
        assert_eq!(substitute("{{a", lookup), "{{a");
        assert_eq!(substitute("}}{{", lookup), "}}{{");
        assert_eq!(substitute("é{{a}}ü", lookup), "éAü");
        assert_eq!(substitute("", lookup), "");
    }

    #[test]
    fn dates_are_zero_padded() {
        assert_eq!(format_date(date!(0987 - 01 - 02)), "0987-01-02");
        assert_eq!(format_date(date!(2026 - 11 - 24)), "2026-11-24");
    }
}
