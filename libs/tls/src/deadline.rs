//! A connection that must send its first bytes within a deadline.
//!
//! hyper times out slow HTTP/1 request heads once it knows the connection speaks HTTP/1, but
//! the protocol detection before that (up to the 24 bytes of the HTTP/2 preface), and an
//! HTTP/2 handshake, wait forever: a client that connects and sends nothing, or one byte now
//! and then, would hold a connection and its file descriptor for good. [`FirstBytes`] fails
//! the read with `TimedOut` when those first bytes have not all arrived in time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How many bytes must arrive before the deadline: the length of the HTTP/2 preface, which
/// is all protocol detection reads.
pub const FIRST_BYTES: usize = 24;

/// `io`, whose first [`FIRST_BYTES`] bytes must arrive within a deadline.
pub struct FirstBytes<T> {
    io: T,
    deadline: Option<Pin<Box<Sleep>>>,
    missing: usize,
}

impl<T> FirstBytes<T> {
    /// Wraps `io`; reads fail with `TimedOut` if the first bytes take longer than `within`.
    pub fn new(io: T, within: Duration) -> Self {
        Self { io, deadline: Some(Box::pin(tokio::time::sleep(within))), missing: FIRST_BYTES }
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstBytes<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.missing = this.missing.saturating_sub(read);
                if this.missing == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let late = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if late {
                    let e = io::Error::new(io::ErrorKind::TimedOut, "the client did not start its request in time");
                    return Poll::Ready(Err(e));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstBytes<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected for FirstBytes<T> {
    type ConnectInfo = T::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn silence_times_out_and_a_prompt_client_is_left_alone() {
        let (client, server) = tokio::io::duplex(64);
        let mut server = FirstBytes::new(server, Duration::from_millis(50));
        let mut buf = [0u8; 64];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut server = FirstBytes::new(server, Duration::from_millis(50));
        client.write_all(&[b'x'; FIRST_BYTES]).await.unwrap();
        let mut got = 0;
        while got < FIRST_BYTES {
            got += server.read(&mut buf).await.unwrap();
        }
        // After the first bytes the connection may stay quiet for as long as it likes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"y").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
    }
}
