//! The API client the server's own components and the agent use: kube-rs's client stack over a
//! connector that offers HTTP/2, as client-go does. kube-rs's default connector speaks only
//! HTTP/1.1, where every watch holds a TLS connection of its own: the controllers' sixty-odd
//! watches were sixty connections, each with its buffers on both ends of the loopback (4 MiB
//! of an idle server's heap). Over HTTP/2 they are streams of one connection.

use hyper_util::client::legacy::connect::HttpConnector;
use kube::client::{retry::RetryPolicy, ConfigExt};
use tower::ServiceBuilder;

/// A client for `config`'s server, multiplexing its requests over one HTTP/2 connection when
/// the server offers it (ALPN), else HTTP/1.1.
pub fn new(config: kube::Config) -> anyhow::Result<kube::Client> {
    let tls = config.rustls_client_config()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    if let Some(t) = config.connect_timeout {
        http.set_connect_timeout(Some(t));
    }
    let mut https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|e| anyhow::anyhow!("tls-server-name {name:?}: {e}"))?;
        https = https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name));
    }
    let https = https.enable_all_versions().wrap_connector(http);
    let hyper = hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
        // Client-go's windows: a watch whose reader lags must not stall the other streams of
        // the connection, and a large list should not wait on window updates.
        .http2_initial_stream_window_size(4 << 20)
        .http2_initial_connection_window_size(64 << 20)
        // A dead peer (a server that went away without a FIN) is noticed, as client-go's
        // ReadIdleTimeout does, and the streams fail over to a new connection.
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .http2_keep_alive_timeout(std::time::Duration::from_secs(15))
        .http2_keep_alive_while_idle(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        // kube-rs's default: 429/503/504 are retried after the server's Retry-After.
        .option_layer(config.default_retry.then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(|e: hyper_util::client::legacy::Error| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}
