//! Accepted connections, plaintext or TLS, for axum and tonic.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::FirstBytes;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted connection: plaintext, or TLS after its handshake.
pub enum Connection {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

macro_rules! each {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut *$self {
            Connection::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Connection::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write(cx, buf))
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_flush(cx))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, io => io.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, io => io.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Plain(io) => io.is_write_vectored(),
            Connection::Tls(io) => io.is_write_vectored(),
        }
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Connection::Plain(tcp) => tcp.connect_info(),
            Connection::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

/// The connections of a listener, each of which must send its first bytes within a deadline
/// from when it is handed out.
pub struct Incoming {
    rx: mpsc::Receiver<(FirstBytes<Connection>, SocketAddr)>,
    local: SocketAddr,
}

impl Incoming {
    /// Accepts on `listener` (Nagle off: a gRPC answer goes out in several small writes, and
    /// Nagle would hold the last one back until the client's delayed ACK, ~40 ms); with `tls`,
    /// does each handshake in its own task. A connection must then send its first bytes
    /// within `first_bytes`.
    pub fn new(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        first_bytes: Duration,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = tls.map(TlsAcceptor::from);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Some(acceptor) = &acceptor else {
                    let conn = FirstBytes::new(Connection::Plain(tcp), first_bytes);
                    if tx.send((conn, addr)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let (acceptor, done) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = FirstBytes::new(Connection::Tls(Box::new(stream)), first_bytes);
                            let _ = done.send((conn, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(peer = %addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(peer = %addr, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { rx, local })
    }

    /// The connections, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<FirstBytes<Connection>>> + Send + 'static {
        use futures::StreamExt;
        tokio_stream::wrappers::ReceiverStream::new(self.rx).map(|(c, _)| Ok(c))
    }
}

impl axum::serve::Listener for Incoming {
    type Io = FirstBytes<Connection>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when this receiver is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
