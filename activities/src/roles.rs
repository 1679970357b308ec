//! Roles: the source's roles that the database's objects, ACLs, policies and default privileges
//! name, made on the target with the same attributes, memberships and passwords before the schema
//! is restored with its owners and grants (see `schema`).
//!
//! Passwords: where dmf's source role can read `pg_authid` (a self-managed source), each role's
//! verifier is copied as it is. Where it cannot (RDS, Aurora), the manifest gives each login
//! role's password by reference (`[cluster.roles.<name>] password_env` or `password_file`),
//! resolved here, by the process that connects, and sent to the target only as a SCRAM verifier
//! made here. The control plane keeps the references, never a password.
//!
//! A role that already exists on the target with other attributes, or without one of the source's
//! memberships, is reported and left alone: dmf never changes a role it did not make.

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::{Client, Row};

use crate::error::Error;
use crate::pg;

/// A role's attributes, as `pg_roles` has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub superuser: bool,
    pub inherit: bool,
    pub createrole: bool,
    pub createdb: bool,
    pub login: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub connlimit: i32,
    pub valid_until: Option<String>,
}

impl Role {
    fn from_row(r: &Row) -> Role {
        Role {
            name: r.get("name"),
            superuser: r.get("superuser"),
            inherit: r.get("inherit"),
            createrole: r.get("createrole"),
            createdb: r.get("createdb"),
            login: r.get("login"),
            replication: r.get("replication"),
            bypassrls: r.get("bypassrls"),
            connlimit: r.get("connlimit"),
            valid_until: r.get("valid_until"),
        }
    }

    /// A predefined role (`pg_read_all_data`, ...): every server has it; only memberships count.
    pub fn predefined(name: &str) -> bool {
        name.starts_with("pg_")
    }

    fn flags(&self) -> [(&'static str, bool); 7] {
        [
            ("SUPERUSER", self.superuser),
            ("INHERIT", self.inherit),
            ("CREATEROLE", self.createrole),
            ("CREATEDB", self.createdb),
            ("LOGIN", self.login),
            ("REPLICATION", self.replication),
            ("BYPASSRLS", self.bypassrls),
        ]
    }

    /// `CREATE ROLE` options for these attributes.
    pub(crate) fn options(&self) -> String {
        let mut out: Vec<String> = self.flags().iter().map(|(f, on)| if *on { f.to_string() } else { format!("NO{f}") }).collect();
        out.push(format!("CONNECTION LIMIT {}", self.connlimit));
        if let Some(v) = &self.valid_until {
            out.push(format!("VALID UNTIL {}", pg::literal(v)));
        }
        out.join(" ")
    }

    /// How `other` (the same role elsewhere) differs, attribute by attribute.
    pub fn differences(&self, other: &Role) -> Vec<String> {
        let mut out: Vec<String> = self
            .flags()
            .iter()
            .zip(other.flags())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((f, a), (_, b))| format!("{f} is {a} on the source, {b} on the target"))
            .collect();
        if self.connlimit != other.connlimit {
            out.push(format!("CONNECTION LIMIT is {} on the source, {} on the target", self.connlimit, other.connlimit));
        }
        if self.valid_until != other.valid_until {
            out.push(format!("VALID UNTIL is {:?} on the source, {:?} on the target", self.valid_until, other.valid_until));
        }
        out
    }
}

/// `member` belongs to `group`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Membership {
    pub group: String,
    pub member: String,
    pub admin: bool,
}

pub use dmf_db::secret::PasswordRef;

/// A role's password, resolved by this worker from its reference; the error names the cluster,
/// the role and the reference, never a value.
pub fn resolve(reference: &PasswordRef, cluster: &str, role: &str) -> Result<String, Error> {
    reference.resolve("worker").map_err(|why| Error::NeedsOperator(format!("cluster {cluster}: role {role}: {why}")))
}

/// The password references of a cluster's settings (`settings.roles`, written by the manifest).
pub fn references(settings: &serde_json::Value) -> Result<BTreeMap<String, PasswordRef>, String> {
    let mut out = BTreeMap::new();
    let Some(roles) = settings.get("roles").and_then(|r| r.as_object()) else { return Ok(out) };
    for (name, spec) in roles {
        let r = PasswordRef::from_json(Some(spec)).map_err(|why| format!("role {name}: {why}"))?;
        if let Some(r) = r {
            out.insert(name.clone(), r);
        }
    }
    Ok(out)
}

/// What the source has: the roles the database needs, their memberships, and their verifiers
/// (`None` when dmf's role cannot read `pg_authid`).
#[derive(Debug, Clone)]
pub struct SourceRoles {
    pub roles: Vec<Role>,
    pub memberships: Vec<Membership>,
    pub verifiers: Option<BTreeMap<String, Option<String>>>,
}

impl SourceRoles {
    /// The roles to make or check on the target (predefined ones exist everywhere).
    fn own(&self) -> impl Iterator<Item = &Role> {
        self.roles.iter().filter(|r| !Role::predefined(&r.name))
    }

    /// Login roles whose password dmf can neither read nor resolve from a reference.
    pub fn without_password(&self, refs: &BTreeMap<String, PasswordRef>) -> Vec<String> {
        if self.verifiers.is_some() {
            return Vec::new();
        }
        self.own().filter(|r| r.login && !refs.contains_key(&r.name)).map(|r| r.name.clone()).collect()
    }
}

/// Read the roles the source database needs.
pub async fn read(source: &Client) -> Result<SourceRoles, Error> {
    let names: Vec<String> =
        source.query(include_str!("sql/roles_named.sql"), &[]).await.map_err(pg::err("list the roles the source database names"))?.iter().map(|r| r.get(0)).collect();
    let roles = attributes(source, &names, "read the source's roles").await?;
    let memberships = memberships(source, &names, "read the source's role memberships").await?;
    // pg_authid is readable by superusers only; RDS and Aurora never allow it
    let verifiers = match source.query("SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = ANY ($1)", &[&names]).await {
        Ok(rows) => Some(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))).collect()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => None,
        Err(e) => return Err(pg::err("read the source's role passwords")(e)),
    };
    Ok(SourceRoles { roles, memberships, verifiers })
}

/// The attributes of the roles named in `names` that exist where `client` is connected.
async fn attributes(client: &Client, names: &[String], what: &str) -> Result<Vec<Role>, Error> {
    Ok(client.query(include_str!("sql/roles_of.sql"), &[&names]).await.map_err(pg::err(what))?.iter().map(Role::from_row).collect())
}

async fn memberships(client: &Client, names: &[String], what: &str) -> Result<Vec<Membership>, Error> {
    let rows = client.query(include_str!("sql/role_memberships.sql"), &[&names]).await.map_err(pg::err(what))?;
    let names: HashSet<&String> = names.iter().collect();
    Ok(rows
        .iter()
        .map(|r| Membership { group: r.get("group"), member: r.get("member"), admin: r.get("admin") })
        .filter(|m| names.contains(&m.group) || Role::predefined(&m.group))
        .collect())
}

/// The roles the source database needs that the target does not have yet.
pub async fn missing_on(target: &Client, source: &SourceRoles) -> Result<Vec<String>, Error> {
    let names: Vec<String> = source.own().map(|r| r.name.clone()).collect();
    let existing: HashSet<String> = attributes(target, &names, "read the target's roles").await?.into_iter().map(|r| r.name).collect();
    Ok(names.into_iter().filter(|n| !existing.contains(n)).collect())
}

/// Make on the target every role the source database needs, with its attributes, memberships and
/// password, in one transaction. Roles that exist already must agree with the source; what does
/// not is the error, and nothing is changed. Returns the roles it made.
pub async fn copy(cluster: &str, source: &SourceRoles, refs: &BTreeMap<String, PasswordRef>, target: &Client) -> Result<Vec<String>, Error> {
    let names: Vec<String> = source.own().map(|r| r.name.clone()).collect();
    let existing: BTreeMap<String, Role> = attributes(target, &names, "read the target's roles").await?.into_iter().map(|r| (r.name.clone(), r)).collect();
    let existing_memberships: HashSet<(String, String)> =
        memberships(target, &names, "read the target's role memberships").await?.into_iter().map(|m| (m.group, m.member)).collect();
    // dmf's role on a target where it is not a superuser (Aurora) can give a role objects, and use
    // them afterwards, only as a member of that role
    let superuser: bool = target
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(pg::err("read dmf's role on the target"))?
        .get(0);
    let mut problems = Vec::new();
    // one statement per role, so that a server that logs a failing statement logs one verifier
    let mut statements = Vec::new();
    for role in source.own() {
        match existing.get(&role.name) {
            Some(there) => problems.extend(role.differences(there).into_iter().map(|d| format!("role {}: {d}", role.name))),
            None => {
                let mut create = format!("CREATE ROLE {} WITH {}", pg::ident(&role.name), role.options());
                if let Some(verifier) = password(cluster, role, source, refs)? {
                    create.push_str(&format!(" PASSWORD {}", pg::literal(&verifier)));
                }
                statements.push(create);
                if !superuser {
                    statements.push(format!("GRANT {} TO CURRENT_USER", pg::ident(&role.name)));
                }
            }
        }
    }
    let made: Vec<String> = source.own().filter(|r| !existing.contains_key(&r.name)).map(|r| r.name.clone()).collect();
    for m in &source.memberships {
        if existing_memberships.contains(&(m.group.clone(), m.member.clone())) {
            continue;
        }
        if existing.contains_key(&m.member) {
            problems.push(format!("role {} exists on the target but is not a member of {} as on the source", m.member, m.group));
            continue;
        }
        let admin = if m.admin { " WITH ADMIN OPTION" } else { "" };
        statements.push(format!("GRANT {} TO {}{admin}", pg::ident(&m.group), pg::ident(&m.member)));
    }
    if !problems.is_empty() {
        return Err(Error::NeedsOperator(format!(
            "cluster {cluster}: roles on the target disagree with the source, and dmf does not change roles it did not make: {}",
            problems.join("; ")
        )));
    }
    if !statements.is_empty() {
        // one transaction: a retry finds all of these or none
        let failed = |e: tokio_postgres::Error| Error::NeedsOperator(format!("cluster {cluster}: make the source's roles on the target: {}", crate::error::describe(&e)));
        target.batch_execute("BEGIN").await.map_err(failed)?;
        // another cluster sharing the instance may make the same role at the same moment (its
        // commit before our CREATE ROLE: 42710, during it: 23505): then this attempt is undone
        // and the next one finds the role there and compares it
        let raced = |e: &tokio_postgres::Error| {
            matches!(e.code(), Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION || *c == tokio_postgres::error::SqlState::DUPLICATE_OBJECT)
        };
        for statement in &statements {
            if let Err(e) = target.batch_execute(statement).await {
                let _ = target.batch_execute("ROLLBACK").await;
                if raced(&e) {
                    return Err(Error::NotReady(format!("cluster {cluster}: a role it needs was being made on the target by another cluster at the same moment")));
                }
                return Err(failed(e));
            }
        }
        if let Err(e) = target.batch_execute("COMMIT").await {
            if raced(&e) {
                return Err(Error::NotReady(format!("cluster {cluster}: a role it needs was being made on the target by another cluster at the same moment")));
            }
            return Err(failed(e));
        }
    }
    Ok(made)
}

/// The verifier to give `role` on the target: from its reference (made into a SCRAM verifier
/// here), else the source's own verifier, else none (the role has no password on the source).
fn password(cluster: &str, role: &Role, source: &SourceRoles, refs: &BTreeMap<String, PasswordRef>) -> Result<Option<String>, Error> {
    if let Some(r) = refs.get(&role.name) {
        let clear = resolve(r, cluster, &role.name)?;
        return Ok(Some(postgres_protocol::password::scram_sha_256(clear.as_bytes())));
    }
    match &source.verifiers {
        Some(v) => Ok(v.get(&role.name).cloned().flatten()),
        None if role.login => Err(Error::NeedsOperator(format!(
            "cluster {cluster}: role {} logs in, dmf cannot read its password on the source, and the manifest has no [cluster.roles.{}] password_env or password_file",
            role.name, role.name
        ))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str) -> Role {
        Role {
            name: name.into(),
            superuser: false,
            inherit: true,
            createrole: false,
            createdb: false,
            login: true,
            replication: false,
            bypassrls: false,
            connlimit: -1,
            valid_until: None,
        }
    }

    #[test]
    fn options_and_differences_name_every_attribute() {
        let a = role("app");
        assert_eq!(a.options(), "NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1");
        let mut b = a.clone();
        b.login = false;
        b.connlimit = 5;
        assert_eq!(a.differences(&b), vec!["LOGIN is true on the source, false on the target", "CONNECTION LIMIT is -1 on the source, 5 on the target"]);
        assert!(a.differences(&a).is_empty());
    }

    #[test]
    fn references_are_read_from_settings_and_never_show_a_value() {
        let settings = serde_json::json!({ "roles": { "app": { "password_env": "DMF_TEST_ROLES_PW" }, "ro": { "password_file": "/nonexistent/pw" } } });
        let refs = references(&settings).expect("valid");
        assert_eq!(refs["app"], PasswordRef::Env("DMF_TEST_ROLES_PW".into()));
        let e = resolve(&refs["ro"], "orders", "ro").expect_err("no file").to_string();
        assert!(e.contains("cluster orders: role ro: password_file /nonexistent/pw: cannot be read"), "{e}");
        assert!(references(&serde_json::json!({ "roles": { "x": {} } })).is_err());
        let src = SourceRoles { roles: vec![role("app"), role("other")], memberships: vec![], verifiers: None };
        assert_eq!(src.without_password(&refs), vec!["other".to_string()]);
    }
}
