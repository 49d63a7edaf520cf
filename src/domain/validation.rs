//! Structural validation of a change. (Being written: see the domain brief.)

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

/// All findings, sorted: errors first, then by file and line.
pub fn validate(_files: &ChangeFiles) -> Vec<Finding> {
    todo!()
}

pub fn is_valid(findings: &[Finding]) -> bool {
    !findings.iter().any(|f| f.severity == Severity::Error)
}
