//! Pure logic: validated inputs, templates, checklist parsing, validation,
//! spec deltas and page tokens. Nothing here touches the disk or the clock
//! except through arguments.
pub mod checklist;
pub mod inputs;
pub mod page_token;
pub mod proposal;
pub mod relpath;
pub mod specs;
pub mod templates;
pub mod uri;
pub mod validation;

pub use inputs::{Owner, Rationale, Slug, TemplateKind, Title, Ttl};
