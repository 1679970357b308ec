//! Routing a unit: which backend it runs on while reads are split (read-your-writes: a read goes
//! to the read endpoint only once that has applied the session's last write), and which
//! statements are mirrored to the shadow. Both look at the whole batch a unit starts with.

use super::unit::RunsOn;
use super::Session;
use crate::backend::Backend;
use crate::metrics::add;
use crate::protocol::frame;
use crate::protocol::tag::client;
use crate::protocol::{Frame, Side};
use crate::router::classify::Class;
use crate::router::Mode;
use crate::shadow::{Capture, MirrorSpec};
use crate::Error;

/// A batch bigger than this is not classified: it runs on the primary and is not mirrored.
pub(super) const BATCH_CAP: usize = 256 * 1024;

/// What the batch at the head of the client buffer is.
pub(super) enum Batch {
    /// Complete, `len` bytes: one Query, or extended messages up to and including Sync.
    Complete(usize),
    Incomplete,
    /// Contains messages the proxy does not route (COPY data, function calls, Terminate).
    Unroutable,
}

/// One statement of a batch: its text, and for the extended protocol the Parse and Bind that run
/// it (what a mirror replays).
struct BatchStatement {
    sql: String,
    parse: Option<Vec<u8>>,
    bind: Option<Vec<u8>>,
    /// It runs (Query, or Bind): a Parse alone only prepares.
    runs: bool,
}

impl Session {
    /// Units are routed by their whole batch: reads are split, or statements mirrored.
    pub(super) fn batch_needed(&self) -> bool {
        self.route.mode == Mode::SplitReads || (self.route.shadow.is_some() && self.route.shadow_fraction > 0.0)
    }

    /// Start a unit: pass the gate, then route the batch of `batch` bytes (if it was read whole)
    /// to a backend, and pick it for mirroring.
    pub(super) async fn begin_unit(&mut self, batch: Option<usize>) -> Result<(), Error> {
        self.gate().await?;
        let Some(len) = batch else { return Ok(()) };
        let bytes = self.client_buf[..len].to_vec();
        let stmts = self.batch_statements(&bytes)?;
        let route = self.route.clone();
        if route.mode == Mode::SplitReads && !stmts.is_empty() && stmts.iter().all(|s| self.shared.classify(&s.sql) == Class::Read) {
            self.unit.run_on(RunsOn::PrimaryReads);
            let to_read = self.read_allowed().await?;
            if to_read {
                self.unit.run_on(RunsOn::ReadEndpoint);
            }
            let counter = if to_read { &self.shared.metrics.reads_to_read_endpoint } else { &self.shared.metrics.reads_to_primary };
            add(counter, 1);
        }
        if let (Some(_), [s]) = (&route.shadow, stmts.as_slice()) {
            if s.runs && self.roll() < route.shadow_fraction {
                let class = self.shared.classify(&s.sql);
                if matches!(class, Class::Read | Class::Write) {
                    let spec = MirrorSpec::new(self.params.get("user").unwrap_or_default(), &s.sql, class, s.parse.as_deref(), s.bind.as_deref());
                    self.capture = Some(Capture::new(spec));
                }
            }
        }
        Ok(())
    }

    /// The statements a complete batch runs: SQL text, and for the extended protocol the Parse
    /// and Bind messages (to mirror it). A Query with several statements is one text.
    fn batch_statements(&self, bytes: &[u8]) -> Result<Vec<BatchStatement>, Error> {
        let mut out = Vec::new();
        let mut unnamed: Option<(String, Vec<u8>)> = None;
        let mut pos = 0;
        while let Some(h) = frame::header(&bytes[pos..], Side::Client)? {
            let end = pos + 5 + h.len;
            let whole = &bytes[pos..end];
            let f = Frame { tag: h.tag, body: &whole[5..] };
            match h.tag {
                client::QUERY => out.push(BatchStatement { sql: f.query()?.to_string(), parse: None, bind: None, runs: true }),
                client::PARSE => {
                    let (name, sql) = f.parse()?;
                    if name.is_empty() {
                        unnamed = Some((sql.to_string(), whole.to_vec()));
                    } else if !out.iter().any(|s| s.sql == sql) {
                        // a named Parse alone (PQprepare) still has to be routed: classify it
                        out.push(BatchStatement { sql: sql.to_string(), parse: None, bind: None, runs: false });
                    }
                }
                client::BIND => {
                    let (_, stmt) = f.bind()?;
                    let found = if stmt.is_empty() {
                        unnamed.clone()
                    } else {
                        self.statements.get(stmt).map(|s| (s.sql.clone(), s.parse.clone())).or_else(|| named_in_batch(bytes, stmt))
                    };
                    match found {
                        Some((sql, parse)) => {
                            out.retain(|s| s.runs || s.sql != sql);
                            out.push(BatchStatement { sql, parse: Some(parse), bind: Some(whole.to_vec()), runs: true });
                        }
                        // unknown statement: the server will say so; route to the primary
                        None => out.push(BatchStatement { sql: String::new(), parse: None, bind: None, runs: false }),
                    }
                }
                _ => {}
            }
            pos = end;
            if pos >= bytes.len() {
                break;
            }
        }
        Ok(out)
    }

    /// A uniform draw in [0, 1), to pick a fraction of statements to mirror.
    fn roll(&mut self) -> f64 {
        // xorshift64*: cheap, per session, good enough to pick a fraction of statements
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Read-your-writes, and a read backend to use: may this read unit go to the read endpoint?
    async fn read_allowed(&mut self) -> Result<bool, Error> {
        if self.wrote {
            let rows = self.primary.simple_query("SELECT pg_current_wal_insert_lsn()::text").await?;
            self.ryw_lsn = rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|t| crate::protocol::lsn::parse(&t)).unwrap_or(u64::MAX);
            self.wrote = false;
        }
        if self.ryw_lsn > 0 && self.shared.gate.read_applied_lsn() < self.ryw_lsn {
            return Ok(false);
        }
        if self.read.as_ref().is_some_and(|r| r.endpoint().dsn != self.route.read.dsn) {
            self.read = None;
        }
        if self.read.is_none() {
            match self.open_read().await {
                Ok(r) => self.read = Some(r),
                Err(e) => {
                    tracing::warn!(cluster = %self.shared.opts.cluster, session = self.id, read = %self.route.read.label(), error = %e, "read endpoint unavailable; reading from the primary");
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// A read-only backend on the read endpoint carrying this session's settings.
    async fn open_read(&mut self) -> Result<Backend, Error> {
        let state = self.held_state().await?;
        let mut r = crate::frontend::connect_as(self.route.read.clone(), &self.shared, &self.params, crate::frontend::auth::Proof::Password, true).await?;
        super::moving::replay(&mut r, &state).await?;
        Ok(r)
    }
}

/// The batch at the head of `buf`.
pub(super) fn batch_len(buf: &[u8]) -> Result<Batch, Error> {
    let mut pos = 0;
    loop {
        let Some(h) = frame::header(&buf[pos..], Side::Client)? else { return Ok(Batch::Incomplete) };
        let end = pos + 5 + h.len;
        match h.tag {
            client::PARSE | client::BIND | client::DESCRIBE | client::EXECUTE | client::CLOSE | client::FLUSH => {}
            // a Query ends a batch like Sync does (tokio-postgres sends Close without Sync
            // ahead of the next request)
            client::SYNC | client::QUERY => return Ok(if end <= buf.len() { Batch::Complete(end) } else { Batch::Incomplete }),
            _ => return Ok(Batch::Unroutable),
        }
        if end > buf.len() {
            return Ok(Batch::Incomplete);
        }
        pos = end;
    }
}

/// A named Parse inside the batch itself (Parse and Bind sent together).
fn named_in_batch(bytes: &[u8], name: &str) -> Option<(String, Vec<u8>)> {
    let mut pos = 0;
    while let Ok(Some(h)) = frame::header(&bytes[pos..], Side::Client) {
        let end = pos + 5 + h.len;
        let whole = bytes.get(pos..end)?;
        if h.tag == client::PARSE {
            if let Ok((n, sql)) = (Frame { tag: client::PARSE, body: &whole[5..] }).parse() {
                if n == name {
                    return Some((sql.to_string(), whole.to_vec()));
                }
            }
        }
        pos = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::build;

    #[test]
    fn batches_end_at_sync_or_a_query() {
        let mut b = build::parse("", "select 1", &[]);
        b.extend(build::bind("", "", &[]));
        assert!(matches!(batch_len(&b), Ok(Batch::Incomplete)));
        b.extend(build::sync());
        assert!(matches!(batch_len(&b), Ok(Batch::Complete(n)) if n == b.len()));
        let q = build::query("select 1");
        let mut closed = build::close_statement("s1");
        closed.extend(q.clone());
        assert!(matches!(batch_len(&closed), Ok(Batch::Complete(n)) if n == closed.len()));
        let mut two = q.clone();
        two.extend(build::query("select 2"));
        assert!(matches!(batch_len(&two), Ok(Batch::Complete(n)) if n == q.len()));
        assert!(matches!(batch_len(&build::terminate()), Ok(Batch::Unroutable)));
    }
}
