//! Scaffolds for new changes, rendered from the files in `templates/`. (Being written.)
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

pub fn render(_vars: &TemplateVars<'_>) -> Scaffold {
    todo!()
}
