//! Fault injection for the crash tests, inert unless `DMF_FAULT_DIR` is set: a fault named in an
//! environment variable fires once (a file in that directory remembers it), so a worker started
//! again after it goes on.

use std::path::Path;

/// Whether the fault `wanted` fires now: one of the comma-separated entries of `$var` is `wanted`
/// or `wanted:<how>`. Returns the entry, for its `<how>`.
pub(crate) fn fires(var: &str, wanted: &str) -> Option<String> {
    let (Ok(faults), Ok(dir)) = (std::env::var(var), std::env::var("DMF_FAULT_DIR")) else { return None };
    let entry = faults.split(',').map(str::trim).find(|f| *f == wanted || f.strip_prefix(wanted).is_some_and(|rest| rest.starts_with(':')))?;
    let marker = Path::new(&dir).join(wanted.replace(':', "-"));
    std::fs::OpenOptions::new().write(true).create_new(true).open(&marker).ok()?;
    Some(entry.to_string())
}
