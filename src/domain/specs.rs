//! Spec delta files (`specs/<capability>/spec.md`). (Being written: see the domain brief.)

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequirementOp {
    /// ADDED, MODIFIED, REMOVED or RENAMED.
    pub operation: String,
    pub requirement: String,
    pub scenarios: u32,
    /// 1-based line of the `### Requirement:` heading.
    pub line: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaProblem {
    pub line: u32,
    pub code: &'static str,
    pub message: String,
}

pub fn parse_delta(_text: &str) -> (Vec<RequirementOp>, Vec<DeltaProblem>) {
    todo!()
}
