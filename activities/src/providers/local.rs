//! The `local` provider: real PostgreSQL clusters created with the system's initdb/pg_ctl on free
//! loopback ports under a base directory, as the `postgres` user when running as root.
//!
//! Tests, benchmarks and the demo use the same code to make their throwaway sources and control
//! planes; `Guard` stops and removes a cluster when dropped, even during a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::Error;

/// Settings a cluster gets on top of initdb's defaults: what logical replication needs, and
/// modest memory so that a fleet of them fits on one machine.
const BASE_CONF: &str = "
listen_addresses = '127.0.0.1'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
max_worker_processes = 32
max_logical_replication_workers = 16
max_sync_workers_per_subscription = 2
max_connections = 120
shared_buffers = 128MB
logging_collector = off
wal_sender_timeout = 30s
";

/// Who may log in, as in production: the superuser `postgres` (dmf's own connections, the tests'
/// set-up) without a password over loopback and the Unix socket, every other role with its
/// password (SCRAM), so that an application role without its password on a target cannot log in.
const HBA: &str = "\
local all all trust
local replication all trust
host all postgres 127.0.0.1/32 trust
host replication postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
";

/// Who may log in to a cluster made with a password for `postgres` (a target the local provider
/// makes outside `--fast-local-targets`): everyone with a password, over TCP and the socket.
const HBA_PASSWORDS: &str = "\
local all all scram-sha-256
local replication all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host replication all 127.0.0.1/32 scram-sha-256
";

/// The file (in the cluster's directory, readable by its owner only) that holds the generated
/// password of `postgres` on a cluster made with one.
pub const PASSWORD_FILE: &str = "dmf.password";

/// Written after initdb and configuration have completed.
const READY_MARKER: &str = "dmf-cluster-ready";

/// Options for creating a local cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory of the cluster: `data/` and `log` go under it.
    pub dir: PathBuf,
    pub port: u16,
    /// Trade durability for speed (fsync off): tests, demo and benchmarks only.
    pub fast: bool,
    /// Extra postgresql.conf lines.
    pub extra_conf: String,
    /// Give `postgres` a generated password (kept in [`PASSWORD_FILE`]) and require passwords
    /// of everyone; without it `postgres` is trusted on loopback (tests, benches, the demo).
    pub passwords: bool,
}

/// A local PostgreSQL cluster (it may or may not be running).
#[derive(Debug, Clone)]
pub struct LocalCluster {
    pub dir: PathBuf,
    pub port: u16,
}

/// The directory holding initdb, pg_ctl, pg_dump and pg_restore: `DMF_PG_BIN`, else the newest
/// Debian-style `/usr/lib/postgresql/<major>/bin`, else `pg_config --bindir`.
pub fn bin_dir() -> Result<PathBuf, Error> {
    if let Ok(dir) = std::env::var("DMF_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().map_err(|_| {
        Error::Local("PostgreSQL server binaries not found: install postgresql (Debian: apt-get install postgresql) or set DMF_PG_BIN".into())
    })?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if dir.join("initdb").exists() {
        Ok(dir)
    } else {
        Err(Error::Local(format!("no initdb in {}; set DMF_PG_BIN", dir.display())))
    }
}

/// Path of one PostgreSQL program (pg_dump, pg_restore, psql...).
pub fn program(name: &str) -> Result<PathBuf, Error> {
    let p = bin_dir()?.join(name);
    if p.exists() {
        Ok(p)
    } else {
        Ok(PathBuf::from(name))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// A command for a server program, run as `postgres` when we are root (initdb and pg_ctl refuse root).
fn server_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<Output, Error> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| Error::Local(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: what.to_string(),
            status: out.status.to_string(),
            stderr: tail(&out),
        });
    }
    Ok(out)
}

/// The last lines a failed command printed (stderr, else stdout).
fn tail(out: &Output) -> String {
    let text = if out.stderr.is_empty() { &out.stdout } else { &out.stderr };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Make `dir` (and its parents) exist and belong to `postgres` when we are root.
pub fn prepare_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Local(format!("create {}: {e}", dir.display())))?;
    if is_root() {
        let mut c = Command::new("chown");
        c.args(["-R", "postgres:postgres"]).arg(dir);
        run(c, &format!("chown {}", dir.display()))?;
        // Parents must be traversable by postgres.
        let mut p = dir.parent();
        while let Some(d) = p {
            if let Ok(meta) = std::fs::metadata(d) {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode();
                if mode & 0o001 == 0 {
                    let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011));
                }
            }
            p = d.parent();
        }
    }
    Ok(())
}

/// Write `text` to `path` readable by its owner only (and by `postgres`, which owns the cluster
/// directories, when we are root).
/// Written whole or not at all: a crash leaves no empty file for the next attempt to trust.
fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::Local(format!("create {}: {e}", tmp.display())))?;
    f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::Local(format!("write {}: {e}", tmp.display())))?;
    if is_root() {
        let mut c = Command::new("chown");
        c.args(["postgres:postgres"]).arg(&tmp);
        run(c, &format!("chown {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::Local(format!("rename {} to {}: {e}", tmp.display(), path.display())))
}

/// A port nobody listens on right now.
pub fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Local(format!("find a free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| Error::Local(e.to_string()))?.port())
}

impl LocalCluster {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Where the generated password of `postgres` is, on a cluster made with one.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join(PASSWORD_FILE)
    }

    /// Connection string for a database of this cluster.
    pub fn dsn(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, dbname)
    }

    /// Whether this cluster was completely made (initdb ran and its settings were written): the
    /// marker is written last, so a cluster interrupted half-way is made again.
    pub fn exists(&self) -> bool {
        self.dir.join(READY_MARKER).exists()
    }

    /// initdb a new cluster (or adopt the one already in `dir`), configured for logical replication.
    pub fn create(opts: &Options) -> Result<LocalCluster, Error> {
        let c = LocalCluster { dir: opts.dir.clone(), port: opts.port };
        if c.exists() {
            return Ok(c);
        }
        prepare_dir(&c.dir)?;
        let data = c.data_dir();
        // A half-made data directory from a crash is useless: start over (stopping it first, in
        // case it was started with initdb's defaults).
        if data.exists() {
            let _ = c.stop_mode("immediate");
            std::fs::remove_dir_all(&data).map_err(|e| Error::Local(format!("remove {}: {e}", data.display())))?;
        }
        let mut cmd = server_command(&bin_dir()?.join("initdb"));
        cmd.arg("-D").arg(&data).args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]);
        if opts.passwords {
            let file = c.password_file();
            if !file.exists() {
                let password = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
                write_private(&file, &format!("{password}\n"))?;
            }
            cmd.args(["-A", "scram-sha-256"]).arg(format!("--pwfile={}", file.display()));
        } else {
            cmd.args(["-A", "trust"]);
        }
        run(cmd, &format!("initdb {}", data.display()))?;
        let mut conf = format!("{BASE_CONF}port = {}\nunix_socket_directories = '{}'\n", opts.port, c.dir.display());
        if opts.fast {
            // A new cluster has no WAL segments to recycle: skip zero-filling each new one (a
            // hydration would otherwise write its WAL twice). Durability is off here anyway.
            conf.push_str("fsync = off\nfull_page_writes = off\nwal_init_zero = off\n");
        }
        conf.push_str(&opts.extra_conf);
        let conf_path = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).map_err(|e| Error::Local(format!("write {}: {e}", conf_path.display())))?;
        let hba = data.join("pg_hba.conf");
        std::fs::write(&hba, if opts.passwords { HBA_PASSWORDS } else { HBA }).map_err(|e| Error::Local(format!("write {}: {e}", hba.display())))?;
        prepare_dir(&c.dir)?;
        let marker = c.dir.join(READY_MARKER);
        std::fs::write(&marker, format!("port {}\n", opts.port)).map_err(|e| Error::Local(format!("write {}: {e}", marker.display())))?;
        Ok(c)
    }

    pub fn is_running(&self) -> bool {
        let Ok(bin) = bin_dir() else { return false };
        let mut cmd = server_command(&bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.data_dir()).arg("status").stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().map(|s| s.success()).unwrap_or(false)
    }

    pub fn start(&self) -> Result<(), Error> {
        if self.is_running() {
            return Ok(());
        }
        let mut cmd = server_command(&bin_dir()?.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "120", "start"])
            .stdout(Stdio::null());
        run(cmd, &format!("pg_ctl start {} (log: {})", self.data_dir().display(), self.dir.join("log").display()))?;
        Ok(())
    }

    /// Stop: `fast` ends sessions and checkpoints; `immediate` is a crash (used by tests).
    pub fn stop_mode(&self, mode: &str) -> Result<(), Error> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = server_command(&bin_dir()?.join("pg_ctl"));
        cmd.arg("-D").arg(self.data_dir()).args(["-m", mode, "-w", "-t", "60", "stop"]).stdout(Stdio::null());
        run(cmd, &format!("pg_ctl stop {}", self.data_dir().display()))?;
        Ok(())
    }

    pub fn stop(&self) -> Result<(), Error> {
        self.stop_mode("fast")
    }

    /// Stop and remove everything under `dir`.
    pub fn destroy(&self) -> Result<(), Error> {
        let _ = self.stop_mode("immediate");
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| Error::Local(format!("remove {}: {e}", self.dir.display())))?;
        }
        Ok(())
    }

    /// Run SQL through psql against a database of this cluster (setup helper for tests and demo).
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, Error> {
        let mut cmd = Command::new(program("psql")?);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"]).arg(self.dsn(dbname)).args(["-c", sql]);
        let out = run(cmd, &format!("psql on port {}", self.port))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Create, start and wrap in a guard that destroys it on drop. Retries on a port race.
    pub fn ephemeral(base: &Path, name: &str, extra_conf: &str) -> Result<Guard, Error> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let dir = base.join(name);
            let opts = Options { dir: dir.clone(), port, fast: true, extra_conf: extra_conf.to_string(), passwords: false };
            let c = LocalCluster::create(&opts)?;
            match c.start() {
                Ok(()) => return Ok(Guard(c)),
                Err(e) => {
                    let _ = c.destroy();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Local("could not start a cluster".into())))
    }
}

impl LocalCluster {
    /// A streaming physical standby of this (running) cluster, started, in `base/name`: the
    /// lagging read endpoint of the proxy's read-your-writes tests (`extra_conf` can add
    /// `recovery_min_apply_delay`).
    pub fn physical_standby(&self, base: &Path, name: &str, extra_conf: &str) -> Result<Guard, Error> {
        let port = free_port()?;
        let dir = base.join(name);
        prepare_dir(&dir)?;
        let c = LocalCluster { dir: dir.clone(), port };
        let mut cmd = server_command(&bin_dir()?.join("pg_basebackup"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-X", "stream", "-c", "fast", "-R", "-D"]).arg(c.data_dir());
        run(cmd, &format!("pg_basebackup of port {}", self.port))?;
        let conf_path = c.data_dir().join("postgresql.auto.conf");
        let mut conf = std::fs::read_to_string(&conf_path).unwrap_or_default();
        conf.push_str(&format!("
port = {port}
unix_socket_directories = '{}'
hot_standby = on
{extra_conf}
", dir.display()));
        std::fs::write(&conf_path, conf).map_err(|e| Error::Local(format!("write {}: {e}", conf_path.display())))?;
        let guard = Guard(c);
        guard.start()?;
        Ok(guard)
    }
}

/// Stop every cluster directly under `base` (the targets a worker made there), whatever state it
/// is in. Used when a demo or test ends early.
pub fn stop_all_under(base: &Path) {
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        if entry.path().join("data").join("PG_VERSION").exists() {
            let _ = LocalCluster { dir: entry.path(), port: 0 }.stop_mode("immediate");
        }
    }
}

/// Owns a local cluster: stops and removes it when dropped (also during a panic).
#[derive(Debug)]
pub struct Guard(pub LocalCluster);

impl std::ops::Deref for Guard {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.0.destroy() {
            tracing::warn!(dir = %self.0.dir.display(), error = %e, "could not remove local cluster");
        }
    }
}

/// Extensions the local binaries can install (their control files).
pub fn available_extensions() -> Result<Vec<String>, Error> {
    let bin = bin_dir()?;
    let mut dirs = Vec::new();
    if let Ok(out) = Command::new(bin.join("pg_config")).arg("--sharedir").output() {
        if out.status.success() {
            dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("extension"));
        }
    }
    // Debian: /usr/lib/postgresql/<major>/bin -> /usr/share/postgresql/<major>/extension
    if let Some(major) = bin.parent().and_then(|p| p.file_name()) {
        dirs.push(PathBuf::from("/usr/share/postgresql").join(major).join("extension"));
    }
    let mut names = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".control") {
                names.push(name.to_string());
            }
        }
    }
    if names.is_empty() {
        return Err(Error::Local("cannot find the local PostgreSQL extension directory".into()));
    }
    Ok(names)
}
