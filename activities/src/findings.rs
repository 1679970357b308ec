//! Preflight's report: what each check found, by severity (errors block the migration). Its own
//! module so that the providers' checks write into it without depending on preflight itself.

use serde::{Deserialize, Serialize};

/// How much a finding matters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

/// One finding: which check, about what (a table, a setting), and what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub check: String,
    pub subject: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub source_bytes: i64,
    pub tables: usize,
}

impl Report {
    pub(crate) fn error(&mut self, check: &'static str, subject: Option<String>, message: String) {
        self.findings.push(Finding { severity: Severity::Error, check: check.to_string(), subject, message });
    }
    pub(crate) fn warn(&mut self, check: &'static str, subject: Option<String>, message: String) {
        self.findings.push(Finding { severity: Severity::Warning, check: check.to_string(), subject, message });
    }
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Error)
    }
}
