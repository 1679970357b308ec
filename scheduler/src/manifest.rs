//! The fleet manifest (TOML): fleet limits, defaults, and one `[[cluster]]` table per cluster.

use std::collections::HashMap;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

use dmf_db::secret::PasswordRef;

use crate::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    fleet: Spanned<RawFleet>,
    #[serde(default)]
    cluster: Vec<Spanned<RawCluster>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFleet {
    name: Spanned<String>,
    #[serde(default = "default_max_concurrent")]
    max_concurrent: Spanned<i64>,
    #[serde(default)]
    max_active: Option<Spanned<i64>>,
    #[serde(default = "default_max_per_host")]
    max_per_source_host: Spanned<i64>,
    #[serde(default = "default_breaker")]
    breaker_threshold: Spanned<f64>,
}

fn default_max_concurrent() -> Spanned<i64> {
    Spanned::new(0..0, 10)
}
fn default_max_per_host() -> Spanned<i64> {
    Spanned::new(0..0, 2)
}
fn default_breaker() -> Spanned<f64> {
    Spanned::new(0..0, 0.2)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    source: Spanned<String>,
    /// The source's password by reference (instead of inline in `source`).
    #[serde(default)]
    source_password_env: Option<Spanned<String>>,
    #[serde(default)]
    source_password_file: Option<Spanned<String>>,
    #[serde(default)]
    source_password_secret: Option<Spanned<String>>,
    #[serde(default)]
    target: Option<Spanned<String>>,
    /// An existing instance of the target pool: dmf makes the cluster's database there.
    #[serde(default)]
    target_instance: Option<Spanned<String>>,
    #[serde(default)]
    target_password_env: Option<Spanned<String>>,
    #[serde(default)]
    target_password_file: Option<Spanned<String>>,
    #[serde(default)]
    target_password_secret: Option<Spanned<String>>,
    #[serde(default)]
    wave: Option<Spanned<i64>>,
    #[serde(default)]
    provider: Option<Spanned<String>>,
    #[serde(default)]
    pause_before: Vec<Spanned<String>>,
    #[serde(default)]
    teardown_target: Option<bool>,
    #[serde(default)]
    replication: Option<Spanned<String>>,
    #[serde(default)]
    aws: Option<Spanned<toml::Value>>,
    /// Where each role's password is when dmf cannot read it on the source (RDS, Aurora).
    #[serde(default)]
    roles: Option<Spanned<std::collections::BTreeMap<String, RawRole>>>,
}

/// One role's password, by reference: the worker resolves it when it makes the role.
#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct RawRole {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password_secret: Option<String>,
}

/// A validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub fleet: dmf_db::fleet::NewFleet,
    /// Manifest line of each cluster, for error messages.
    pub lines: HashMap<String, usize>,
    /// What works but should not be so (a password inline in a connection string), by line.
    pub warnings: Vec<String>,
}

/// One side's password reference from `<side>_password_env` / `<side>_password_file`, checked
/// against a password inline in the side's connection string.
fn password_ref(
    side: &str,
    dsn: &Spanned<String>,
    [env, file, secret]: [&Option<Spanned<String>>; 3],
) -> Result<Option<PasswordRef>, (Range<usize>, String)> {
    let given: Vec<(&str, &Spanned<String>)> = [("env", env), ("file", file), ("secret", secret)].into_iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v))).collect();
    let (kind, value) = match given.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        [_, (_, second), ..] => return Err((second.span(), format!("give one of {side}_password_env, {side}_password_file and {side}_password_secret"))),
    };
    let r = match kind {
        "env" => PasswordRef::Env(value.get_ref().clone()),
        "file" => PasswordRef::File(value.get_ref().into()),
        _ => PasswordRef::secret(value.get_ref()).map_err(|m| (value.span(), format!("{side}_password_secret: {m}")))?,
    };
    if dmf_db::secret::has_password(dsn.get_ref()) {
        return Err((dsn.span(), format!("{side}: has a password of its own and {side}_password_{kind} too; keep one")));
    }
    Ok(Some(r))
}

/// The database a connection string names (the user's name when it names none, as libpq).
fn database_of(dsn: &str) -> Result<String, String> {
    let (_, config) = dmf_pgconn::tls::parse(dsn).map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    config.get_dbname().or(config.get_user()).map(str::to_string).ok_or_else(|| "names no database".to_string())
}

/// Where a byte offset falls, as a 1-based line number.
fn line_of(text: &str, span: &Range<usize>) -> usize {
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

/// The host of a connection string (URL or key=value), for the per-host limit.
pub fn source_host(dsn: &str) -> Result<String, String> {
    let (_, config) = dmf_pgconn::tls::parse(dsn).map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    Ok(format!("{host}:{port}"))
}

const PHASES_THAT_CAN_PAUSE: &[&str] = &["preflight", "provisioning", "schema", "hydrating", "replicating", "validating", "shadow_reads", "flipping"];

impl Manifest {
    pub fn parse(file: &str, text: &str) -> Result<Manifest, Error> {
        let err = |span: &Range<usize>, message: String| Error::Manifest { file: file.to_string(), line: line_of(text, span), message };
        let mut warnings = Vec::new();
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, &s)).unwrap_or(1);
            // toml's message does not always name the key: quote the offending line.
            let at = text.lines().nth(line - 1).map(str::trim).unwrap_or("");
            Error::Manifest { file: file.to_string(), line, message: format!("{} (at `{at}`)", e.message()) }
        })?;
        let f = raw.fleet.get_ref();
        let name = f.name.get_ref().trim();
        if name.is_empty() {
            return Err(err(&f.name.span(), "fleet.name: must not be empty".into()));
        }
        let positive = |v: &Spanned<i64>, field: &str| -> Result<i32, Error> {
            let n = *v.get_ref();
            if n <= 0 || n > i32::MAX as i64 {
                Err(err(&v.span(), format!("fleet.{field}: must be a positive integer, got {n}")))
            } else {
                Ok(n as i32)
            }
        };
        let max_concurrent = positive(&f.max_concurrent, "max_concurrent")?;
        let max_active = f.max_active.as_ref().map(|m| positive(m, "max_active")).transpose()?;
        let max_per_source_host = positive(&f.max_per_source_host, "max_per_source_host")?;
        let breaker = *f.breaker_threshold.get_ref();
        if !(0.0..=1.0).contains(&breaker) {
            return Err(err(&f.breaker_threshold.span(), format!("fleet.breaker_threshold: must be between 0 and 1, got {breaker}")));
        }
        if raw.cluster.is_empty() {
            return Err(Error::Manifest { file: file.into(), line: line_of(text, &raw.fleet.span()), message: "no [[cluster]] in the manifest".into() });
        }
        let mut clusters = Vec::new();
        let mut lines: HashMap<String, usize> = HashMap::new();
        // Aurora identifiers: two clusters must never adopt the same target
        let mut targets: HashMap<String, String> = HashMap::new();
        // pool instances: one database of a name per instance (`host:port/dbname` to its cluster)
        let mut databases: HashMap<String, (String, usize)> = HashMap::new();
        for c in &raw.cluster {
            let line = line_of(text, &c.span());
            let c = c.get_ref();
            let cname = c.name.get_ref().trim().to_string();
            if cname.is_empty() || !cname.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                return Err(err(&c.name.span(), format!("cluster.name: {cname:?} must be non-empty letters, digits, '-' or '_'")));
            }
            if let Some(first) = lines.get(&cname) {
                return Err(err(&c.name.span(), format!("cluster.name: {cname:?} appears twice (first on line {first})")));
            }
            let source = c.source.get_ref().clone();
            let host = source_host(&source).map_err(|m| err(&c.source.span(), format!("cluster {cname}: source: {m}")))?;
            let target = match &c.target {
                Some(t) => {
                    source_host(t.get_ref()).map_err(|m| err(&t.span(), format!("cluster {cname}: target: {m}")))?;
                    Some(t.get_ref().clone())
                }
                None => None,
            };
            let source_password = password_ref("source", &c.source, [&c.source_password_env, &c.source_password_file, &c.source_password_secret])
                .map_err(|(span, m)| err(&span, format!("cluster {cname}: {m}")))?;
            let instance = match (&c.target_instance, &c.target) {
                (Some(i), Some(_)) => return Err(err(&i.span(), format!("cluster {cname}: target_instance: an adopted target and a pool instance exclude each other; give one"))),
                (Some(i), None) => {
                    let host = source_host(i.get_ref()).map_err(|m| err(&i.span(), format!("cluster {cname}: target_instance: {m}")))?;
                    let dbname = database_of(&source).map_err(|m| err(&c.source.span(), format!("cluster {cname}: source: {m}")))?;
                    let key = format!("{host}/{dbname}");
                    if let Some((other, other_line)) = databases.get(&key) {
                        return Err(err(
                            &i.span(),
                            format!("cluster {cname}: target_instance: cluster {other} (line {other_line}) already puts a database {dbname:?} on {host}; place one of them on another instance"),
                        ));
                    }
                    databases.insert(key, (cname.clone(), line));
                    Some(i)
                }
                (None, _) => None,
            };
            let target_password = match c.target.as_ref().or(instance) {
                Some(t) => password_ref("target", t, [&c.target_password_env, &c.target_password_file, &c.target_password_secret])
                    .map_err(|(span, m)| err(&span, format!("cluster {cname}: {m}")))?,
                None if c.target_password_env.is_some() || c.target_password_file.is_some() || c.target_password_secret.is_some() => {
                    return Err(Error::Manifest { file: file.into(), line, message: format!("cluster {cname}: target_password_env/_file/_secret need an adopted target or a target_instance") })
                }
                None => None,
            };
            for (side, dsn) in [("source", Some(&c.source)), ("target", c.target.as_ref()), ("target_instance", instance)] {
                if let Some(dsn) = dsn.filter(|d| dmf_db::secret::has_password(d.get_ref())) {
                    warnings.push(format!(
                        "{file}:{}: cluster {cname}: the {side}'s password is inline: the control plane keeps it in dmf.clusters; give {side}_password_env or {side}_password_file instead",
                        line_of(text, &dsn.span())
                    ));
                }
            }
            let wave = match &c.wave {
                Some(w) if *w.get_ref() < 1 || *w.get_ref() > 10_000 => {
                    return Err(err(&w.span(), format!("cluster {cname}: wave: must be between 1 and 10000, got {}", w.get_ref())))
                }
                Some(w) => *w.get_ref() as i32,
                None => 1,
            };
            let provider = match &c.provider {
                Some(p) if !matches!(p.get_ref().as_str(), "local" | "aws") => {
                    return Err(err(&p.span(), format!("cluster {cname}: provider: {:?} is not supported (supported: \"local\", \"aws\")", p.get_ref())))
                }
                Some(p) => p.get_ref().clone(),
                None => "local".to_string(),
            };
            let aws = match (&c.aws, provider.as_str()) {
                (Some(a), "aws") => {
                    let parsed: dmf_aws::settings::ClusterSettings =
                        a.get_ref().clone().try_into().map_err(|e: toml::de::Error| err(&a.span(), format!("cluster {cname}: aws: {}", e.message())))?;
                    parsed.validate().map_err(|m| err(&a.span(), format!("cluster {cname}: {m}")))?;
                    let id = parsed.target_id(&cname);
                    if let Some(other) = targets.insert(id.clone(), cname.clone()) {
                        return Err(err(&a.span(), format!("cluster {cname}: aws: target cluster {id:?} is also the target of cluster {other}")));
                    }
                    Some(parsed)
                }
                (Some(a), _) => return Err(err(&a.span(), format!("cluster {cname}: an [cluster.aws] table needs provider = \"aws\""))),
                (None, "aws") => {
                    return Err(Error::Manifest { file: file.into(), line, message: format!("cluster {cname}: provider \"aws\" needs a [cluster.aws] table (subnet_ids or subnet_group at least)") })
                }
                (None, _) => None,
            };
            if let (Some(_), Some(i)) = (&aws, instance) {
                return Err(err(&i.span(), format!("cluster {cname}: target_instance: a pool instance and provider \"aws\" exclude each other")));
            }
            if let (Some(_), Some(t)) = (&aws, &c.target) {
                return Err(err(&t.span(), format!("cluster {cname}: target: an adopted target and provider \"aws\" exclude each other (the aws provider provisions the target)")));
            }
            let replication = match &c.replication {
                Some(r) if !matches!(r.get_ref().as_str(), "logical" | "dms") => {
                    return Err(err(&r.span(), format!("cluster {cname}: replication: {:?} is not one of \"logical\", \"dms\"", r.get_ref())))
                }
                Some(r) if r.get_ref() == "dms" && provider != "aws" => {
                    return Err(err(&r.span(), format!("cluster {cname}: replication = \"dms\" needs provider = \"aws\"")))
                }
                Some(r) => r.get_ref().clone(),
                None => "logical".to_string(),
            };
            let mut pause_before = Vec::new();
            for p in &c.pause_before {
                if !PHASES_THAT_CAN_PAUSE.contains(&p.get_ref().as_str()) {
                    return Err(err(&p.span(), format!("cluster {cname}: pause_before: {:?} is not one of {}", p.get_ref(), PHASES_THAT_CAN_PAUSE.join(", "))));
                }
                pause_before.push(p.get_ref().clone());
            }
            let mut settings = serde_json::Map::new();
            if let Some(t) = c.teardown_target {
                settings.insert("teardown_target".into(), t.into());
            }
            settings.insert("replication".into(), replication.into());
            for (key, r) in [("source_password", source_password), ("target_password", target_password)] {
                if let Some(r) = r {
                    settings.insert(key.into(), serde_json::to_value(r).map_err(|e| err(&c.name.span(), format!("cluster {cname}: {key}: {e}")))?);
                }
            }
            if let Some(i) = instance {
                settings.insert("target_instance".into(), i.get_ref().clone().into());
            }
            if let Some(a) = aws {
                settings.insert("aws".into(), serde_json::to_value(a).map_err(|e| err(&c.name.span(), format!("cluster {cname}: aws: {e}")))?);
            }
            if let Some(roles) = &c.roles {
                for (role, r) in roles.get_ref() {
                    let given = [r.password_env.is_some(), r.password_file.is_some(), r.password_secret.is_some()].iter().filter(|g| **g).count();
                    if role.is_empty() || given != 1 {
                        return Err(err(&roles.span(), format!("cluster {cname}: roles.{role}: give exactly one of password_env, password_file and password_secret")));
                    }
                    if let Some(s) = &r.password_secret {
                        PasswordRef::secret(s).map_err(|m| err(&roles.span(), format!("cluster {cname}: roles.{role}: {m}")))?;
                    }
                }
                settings.insert("roles".into(), serde_json::to_value(roles.get_ref()).map_err(|e| err(&roles.span(), format!("cluster {cname}: roles: {e}")))?);
            }
            lines.insert(cname.clone(), line);
            clusters.push(dmf_db::fleet::NewCluster {
                name: cname,
                wave,
                source_dsn: source,
                source_host: host,
                target_dsn: target,
                provider,
                pause_before,
                settings: serde_json::Value::Object(settings),
            });
        }
        Ok(Manifest {
            fleet: dmf_db::fleet::NewFleet {
                name: name.to_string(),
                max_concurrent,
                max_active,
                max_per_source_host,
                breaker_threshold: breaker,
                // inline passwords stay out of the stored copy (the clusters keep them where a
                // warning says)
                manifest: dmf_db::secret::redact(text),
                clusters,
            },
            lines,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[fleet]
name = "payments"
max_concurrent = 4

[[cluster]]
name = "orders"
source = "postgres://app@db1:5432/orders"
wave = 1

[[cluster]]
name = "ledger"
source = "host=db2 port=5433 dbname=ledger user=app"
wave = 2
pause_before = ["hydrating"]
"#;

    #[test]
    fn parses_a_fleet_with_defaults() {
        let m = Manifest::parse("fleet.toml", GOOD).expect("valid");
        assert_eq!(m.fleet.name, "payments");
        assert_eq!(m.fleet.max_concurrent, 4);
        assert_eq!(m.fleet.max_per_source_host, 2);
        assert_eq!(m.fleet.clusters.len(), 2);
        assert_eq!(m.fleet.clusters[1].source_host, "db2:5433");
        assert_eq!(m.fleet.clusters[1].pause_before, vec!["hydrating"]);
        assert_eq!(m.lines["ledger"], 11);
    }

    fn error_of(text: &str) -> String {
        Manifest::parse("fleet.toml", text).expect_err("must fail").to_string()
    }

    #[test]
    fn names_the_line_and_field_of_a_bad_value() {
        let bad = GOOD.replace("wave = 2", "wave = \"two\"");
        let e = error_of(&bad);
        assert!(e.starts_with("fleet.toml:14:") && e.contains("wave = \"two\""), "{e}");
        let m = Manifest::parse("fleet.toml", &GOOD.replace("max_concurrent = 4", "max_concurrent = 4\nmax_active = 60")).expect("valid");
        assert_eq!((m.fleet.max_concurrent, m.fleet.max_active), (4, Some(60)));
        assert_eq!(error_of(&GOOD.replace("max_concurrent = 4", "max_concurrent = 4\nmax_active = 0")), "fleet.toml:5: fleet.max_active: must be a positive integer, got 0");
        let bad = GOOD.replace("max_concurrent = 4", "max_concurrent = 0");
        assert_eq!(error_of(&bad), "fleet.toml:4: fleet.max_concurrent: must be a positive integer, got 0");
    }

    #[test]
    fn aws_clusters_take_their_table_and_replication() {
        let text = format!(
            "{GOOD}\n[[cluster]]\nname = \"billing\"\nsource = \"postgres://app@db3/billing\"\nprovider = \"aws\"\nreplication = \"dms\"\n\n[cluster.aws]\nregion = \"eu-west-1\"\nsubnet_ids = [\"subnet-1\"]\nreaders = 2\n"
        );
        let m = Manifest::parse("fleet.toml", &text).expect("valid");
        let c = &m.fleet.clusters[2];
        assert_eq!(c.provider, "aws");
        assert_eq!(c.settings["replication"], "dms");
        assert_eq!(c.settings["aws"]["readers"], 2);
        assert_eq!(c.settings["aws"]["instance_class"], "db.r6g.large");
        assert_eq!(m.fleet.clusters[0].settings["replication"], "logical");
        let e = error_of(&text.replace("readers = 2", "readers = 2\nreaderz = 1"));
        assert!(e.contains("cluster billing: aws") && e.contains("readerz"), "{e}");
        let e = error_of(&text.replace("subnet_ids = [\"subnet-1\"]\n", ""));
        assert!(e.contains("give subnet_ids") && e.contains("or subnet_group"), "{e}");
        let e = error_of(&text.replace("provider = \"aws\"\n", ""));
        assert!(e.contains("needs provider = \"aws\""), "{e}");
        let twice = format!("{text}\n[[cluster]]\nname = \"billing2\"\nsource = \"postgres://app@db3/b2\"\nprovider = \"aws\"\n\n[cluster.aws]\nsubnet_group = \"g\"\ntarget_cluster = \"dmf-billing\"\n");
        let e = error_of(&twice);
        assert!(e.contains("cluster billing2: aws: target cluster \"dmf-billing\" is also the target of cluster billing"), "{e}");
        let e = error_of(&text.replace("[cluster.aws]", "[cluster.notaws]"));
        assert!(e.contains("needs a [cluster.aws] table") || e.contains("notaws"), "{e}");
    }

    #[test]
    fn pool_instances_take_one_database_of_a_name_each() {
        let pool = "[fleet]\nname = \"p\"\n\n[[cluster]]\nname = \"a\"\nsource = \"postgres://app@db1/orders\"\ntarget_instance = \"postgres://admin@pool1:5433\"\ntarget_password_env = \"POOL_PW\"\n\n[[cluster]]\nname = \"b\"\nsource = \"postgres://app@db2/orders\"\ntarget_instance = \"postgres://admin@pool2:5433\"\n";
        let m = Manifest::parse("fleet.toml", pool).expect("valid");
        assert_eq!(m.fleet.clusters[0].settings["target_instance"], "postgres://admin@pool1:5433");
        assert_eq!(m.fleet.clusters[0].settings["target_password"], serde_json::json!({ "password_env": "POOL_PW" }));
        assert!(m.fleet.clusters[0].target_dsn.is_none());
        let e = error_of(&pool.replace("pool2", "pool1"));
        assert!(e.contains("fleet.toml:13: cluster b: target_instance: cluster a (line 4) already puts a database \"orders\" on pool1:5433"), "{e}");
        let e = error_of(&pool.replace("target_instance = \"postgres://admin@pool2:5433\"\n", "target_instance = \"postgres://admin@pool2:5433\"\ntarget = \"postgres://x@y/z\"\n"));
        assert!(e.contains("cluster b: target_instance: an adopted target and a pool instance exclude each other"), "{e}");
    }

    #[test]
    fn role_passwords_are_references_with_exactly_one_source() {
        let text = format!("{GOOD}\n[cluster.roles.app]\npassword_env = \"APP_PW\"\n[cluster.roles.ro]\npassword_file = \"/run/secrets/ro\"\n");
        let m = Manifest::parse("fleet.toml", &text).expect("valid");
        assert_eq!(m.fleet.clusters[1].settings["roles"], serde_json::json!({ "app": { "password_env": "APP_PW" }, "ro": { "password_file": "/run/secrets/ro" } }));
        let e = error_of(&text.replace("password_env = \"APP_PW\"", "password_env = \"APP_PW\"\npassword_file = \"/x\""));
        assert!(e.contains("cluster ledger: roles.app: give exactly one of password_env, password_file and password_secret"), "{e}");
        let e = error_of(&text.replace("password_env = \"APP_PW\"", "password_secret = \"not-an-arn\""));
        assert!(e.contains("roles.app: password_secret \"not-an-arn\" is not a Secrets Manager ARN"), "{e}");
        let secret = text.replace("password_env = \"APP_PW\"", "password_secret = \"arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf\"");
        let m = Manifest::parse("fleet.toml", &secret).expect("an ARN");
        assert_eq!(m.fleet.clusters[1].settings["roles"]["app"]["password_secret"], "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf");
        let e = error_of(&text.replace("password_env", "password"));
        assert!(e.contains("password"), "{e}");
    }

    #[test]
    fn refuses_unknown_fields_duplicates_and_bad_sources() {
        let e = error_of(&GOOD.replace("wave = 1", "wave = 1\nwaev = 3"));
        assert!(e.contains(":10:") && e.contains("waev"), "{e}");
        let e = error_of(&GOOD.replace("name = \"ledger\"", "name = \"orders\""));
        assert!(e.contains("appears twice (first on line 6)"), "{e}");
        let e = error_of(&GOOD.replace("postgres://app@db1:5432/orders", "mysql://x"));
        assert!(e.contains("cluster orders: source"), "{e}");
        let e = error_of(&GOOD.replace("[\"hydrating\"]", "[\"flipped\"]"));
        assert!(e.contains("pause_before"), "{e}");
    }
}
