//! What dmf's long-running processes show the outside: Prometheus metrics (`metrics`) and the
//! small HTTP/1.1 server that serves them and the dashboard (`http`).

pub mod http;
pub mod metrics;

pub use metrics::Registry;

/// Serve `registry` on `GET /metrics` at `addr` until `cancel`; anything else is 404.
pub async fn serve_metrics(addr: std::net::SocketAddr, registry: std::sync::Arc<Registry>, cancel: tokio_util::sync::CancellationToken) -> Result<std::net::SocketAddr, http::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| http::Error::Bind { addr: addr.to_string(), source: e })?;
    let bound = listener.local_addr().map_err(|e| http::Error::Bind { addr: addr.to_string(), source: e })?;
    tokio::spawn(http::serve(listener, cancel, move |req: http::Request| {
        let registry = registry.clone();
        async move {
            match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/metrics") => http::Reply::ok(metrics::CONTENT_TYPE, registry.render()),
                _ => http::Reply::not_found(),
            }
        }
    }));
    Ok(bound)
}
