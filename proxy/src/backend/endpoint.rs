//! An endpoint of a route: a connection string from the control plane, parsed once.


use tokio_postgres::config::Host;

use crate::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub dsn: String,
    pub host: String,
    pub port: u16,
    pub dbname: Option<String>,
    pub user: Option<String>,
    /// TLS to this server, as the connection string's `sslmode` and `sslrootcert` say.
    pub tls: dmf_pgconn::tls::TlsPolicy,
}

impl Endpoint {
    /// Parse a URL (`postgres://user@host:port/db`) or key=value connection string.
    pub fn parse(dsn: &str) -> Result<Endpoint, Error> {
        let bad = |m: &str| Error::BadEndpoint(dmf_db::secret::redact(dsn), m.to_string());
        let (tls, cfg) = dmf_pgconn::tls::parse(dsn).map_err(|e| bad(&e))?;
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(_) => return Err(bad("unix-socket hosts are not supported; give host and port")),
            None => "localhost".to_string(),
        };
        Ok(Endpoint {
            dsn: dsn.to_string(),
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            dbname: cfg.get_dbname().map(str::to_string),
            user: cfg.get_user().map(str::to_string),
            tls,
        })
    }

    /// `host:port/db`, without credentials: for logs, errors and metrics.
    pub fn label(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.dbname.as_deref().unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_key_value_strings_parse_and_passwords_never_show() {
        let e = Endpoint::parse("postgres://app:s3cret@10.0.0.5:6432/orders").expect("url");
        assert_eq!((e.host.as_str(), e.port, e.dbname.as_deref(), e.user.as_deref()), ("10.0.0.5", 6432, Some("orders"), Some("app")));
        assert_eq!(e.label(), "10.0.0.5:6432/orders");
        let k = Endpoint::parse("host=db1 port=5433 dbname=x user=u password=p").expect("kv");
        assert_eq!((k.host.as_str(), k.port), ("db1", 5433));
        assert!(Endpoint::parse("host=/var/run/postgresql").is_err());
    }
}
