//! Who may act from the dashboard: operators and their tokens (a file of `NAME TOKEN` lines), and
//! the actions themselves (resume, abort, rollback), each behind the token and the cluster's name
//! typed again, and written to the event log as `dashboard:NAME`.

use std::path::Path;

use dmf_telemetry::http::Reply;

use super::Dash;

/// Tokens shorter than this are refused when the file is read: they can be guessed.
const MIN_TOKEN: usize = 16;

pub(crate) struct Operators {
    /// (name, token)
    entries: Vec<(String, String)>,
}

impl Operators {
    pub fn load(path: &Path) -> anyhow::Result<Operators> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("operators file {}: {e}", path.display()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                anyhow::bail!("operators file {} line {}: expected `NAME TOKEN`", path.display(), i + 1);
            };
            if token.len() < MIN_TOKEN {
                anyhow::bail!("operators file {} line {}: the token of {name} is shorter than {MIN_TOKEN} characters", path.display(), i + 1);
            }
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')) {
                anyhow::bail!("operators file {} line {}: operator names are letters, digits and - _ . @", path.display(), i + 1);
            }
            entries.push((name.to_string(), token.to_string()));
        }
        if entries.is_empty() {
            anyhow::bail!("operators file {} names no operator", path.display());
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(path).map(|m| m.permissions().mode() & 0o077 != 0).unwrap_or(false) {
                tracing::warn!(file = %path.display(), "the operators file is readable by others than its owner: chmod 600 it");
            }
        }
        Ok(Operators { entries })
    }

    /// The operator whose token this is. Every entry is compared in full, in constant time.
    pub fn who(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (name, t) in &self.entries {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Names only: a token never reaches a log.
impl std::fmt::Debug for Operators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|(name, _)| name)).finish()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /cluster/NAME/action` with `action`, `token` and `confirm` (the cluster's name again).
pub(crate) async fn act(dash: &Dash, cluster: &str, form: &[(String, String)]) -> Reply {
    let Some(operators) = &dash.operators else {
        return Reply::status(403, "actions are off: start the dashboard with --allow-actions --operators FILE");
    };
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_default();
    let Some(operator) = operators.who(field("token")) else {
        tracing::warn!(cluster = ?cluster, "dashboard action refused: unknown token");
        return Reply::status(403, "unknown operator token");
    };
    if field("confirm") != cluster {
        return Reply::status(400, &format!("to confirm, type the cluster's name ({cluster}) again"));
    }
    let actor = format!("dashboard:{operator}");
    let done = match field("action") {
        "resume" => dash.db.resume(cluster, &actor).await,
        "abort" => dash.db.request_abort(cluster, &actor).await,
        "rollback" => dash.db.request_rollback(cluster, &actor).await,
        other => return Reply::status(400, &format!("unknown action {other:?}: resume, abort or rollback")),
    };
    match done {
        Ok(m) => {
            tracing::info!(cluster = ?cluster, operator, action = ?field("action"), phase = %m.phase, "dashboard action");
            Reply::redirect(&format!("{}?done={}", super::cluster_href(cluster), dmf_db::secret::percent_encode(field("action"))))
        }
        Err(e) => Reply::status(409, &dmf_db::secret::redact(&format!("{} {cluster}: {e}", field("action")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_tokens_and_malformed_lines_are_refused_and_tokens_name_their_operator() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops");
        std::fs::write(&path, "# on call\nalice 0123456789abcdef0123\nbob   fedcba9876543210fedc  # backup\n").unwrap();
        let ops = Operators::load(&path).unwrap();
        assert_eq!(ops.who("0123456789abcdef0123"), Some("alice"));
        assert_eq!(ops.who("fedcba9876543210fedc"), Some("bob"));
        assert_eq!(ops.who("0123456789abcdef012"), None);
        assert_eq!(ops.who(""), None);
        std::fs::write(&path, "alice short\n").unwrap();
        assert!(Operators::load(&path).unwrap_err().to_string().contains("line 1"));
        std::fs::write(&path, "alice\n").unwrap();
        assert!(Operators::load(&path).is_err());
        std::fs::write(&path, "<script> 0123456789abcdef0123\n").unwrap();
        assert!(Operators::load(&path).is_err());
    }
}
