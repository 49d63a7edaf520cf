//! `tasks.md` checklists. (Being written: see the domain brief.)
use crate::error::Result;

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

pub fn parse(_text: &str) -> Checklist {
    todo!()
}

/// Applies `(id, done)` updates to the text. Unknown ids fail the whole call with
/// `Error::TaskNotFound { slug, id }`. Returns the new text (identical except for
/// the checkbox characters that changed) and the ids whose state changed.
pub fn apply(_text: &str, _slug: &str, _updates: &[(String, bool)]) -> Result<(String, Vec<String>)> {
    todo!()
}
