//! Listening: binding, serving HTTP with deadlines on request heads, gRPC servers over
//! plaintext, TLS or the cluster's mutual TLS, and the channels to other nodes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use spindle_cluster_client::Channels;
use spindle_tls::{ClusterTls, Incoming};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;

/// A running server, finished when it has stopped.
pub type Server = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Binds `addr`, saying what for when the port is taken.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Resolves once `rx` says stop.
pub async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Serves `router` on `incoming` until `stop`, then lets open requests finish. A connection
/// must start its request within `header_timeout` (see [`spindle_tls::FirstBytes`]), and each
/// HTTP/1 request head must arrive within it (slowloris clients are cut off; slow bodies are
/// the request timeout's business); idle HTTP/2 connections are pinged.
pub fn serve_http(incoming: Incoming, router: Router, stop: watch::Receiver<bool>, header_timeout: Duration) -> Server {
    Box::pin(async move {
        let mut incoming = incoming;
        let (open_tx, open_rx) = watch::channel(());
        let shutdown = stopped(stop.clone());
        tokio::pin!(shutdown);
        loop {
            let io = tokio::select! {
                (io, _) = axum::serve::Listener::accept(&mut incoming) => io,
                _ = &mut shutdown => break,
            };
            let service = TowerToHyperService::new(router.clone());
            let (stop, open) = (stop.clone(), open_rx.clone());
            tokio::spawn(async move {
                let mut builder = Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .keep_alive_timeout(Duration::from_secs(20));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                tokio::pin!(conn);
                let shutdown = stopped(stop);
                tokio::pin!(shutdown);
                let mut closing = false;
                loop {
                    tokio::select! {
                        result = conn.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "HTTP connection ended with an error");
                            }
                            break;
                        }
                        _ = &mut shutdown, if !closing => {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
                drop(open);
            });
        }
        drop(open_rx);
        drop(incoming);
        // Every connection task holds a receiver: wait until the last one has finished.
        open_tx.closed().await;
        Ok(())
    })
}

/// A gRPC server whose HTTP/2 windows let a request of a few megabytes arrive without waiting
/// for window updates.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
}

/// Mutual TLS among cluster members (`--internal-tls-*`), the node certificate reloaded when
/// its files change.
pub fn cluster_tls(config: &Config) -> anyhow::Result<Option<Arc<ClusterTls>>> {
    let Some(files) = &config.internal_tls else { return Ok(None) };
    let tls = ClusterTls::from_files(&files.ca, &files.cert, &files.key, files.server_name.clone())
        .context("loading the internal TLS certificates")?;
    tokio::spawn(tls.identity().clone().reload_on_change(Duration::from_secs(10)));
    Ok(Some(tls))
}

/// Channels to other nodes carrying the cluster secret, over mutual TLS when configured.
pub fn channels(config: &Config, tls: Option<Arc<ClusterTls>>) -> anyhow::Result<Channels> {
    Ok(Channels::with_secret(config.cluster_secret.as_deref()).context("--cluster-secret")?.with_tls(tls))
}
