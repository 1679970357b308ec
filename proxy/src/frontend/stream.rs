//! A client connection, plain TCP or TLS after an SSLRequest, as one stream type.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// One end of `tokio::io::duplex`, the other held by a test playing the client.
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            ClientStream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(test)]
            ClientStream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            ClientStream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            ClientStream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A stream that can take bytes without the reactor when its socket has room.
pub trait TryWrite {
    /// Write what the socket takes now; `WouldBlock` when it takes nothing.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
}

impl TryWrite for TcpStream {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}

impl TryWrite for ClientStream {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.try_write(buf),
            // rustls buffers and encrypts: always through its own writer
            ClientStream::Tls(_) => Err(std::io::ErrorKind::WouldBlock.into()),
            #[cfg(test)]
            ClientStream::Memory(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Write all of `buf`: straight to the socket first (a relay's writes are small and the socket
/// nearly always has room, so this is one syscall and no future), then whatever is left through
/// the reactor.
pub async fn send_all<S: TryWrite + AsyncWrite + Unpin>(s: &mut S, buf: &[u8]) -> std::io::Result<()> {
    let sent = match s.try_write(buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if sent < buf.len() {
        s.write_all(&buf[sent..]).await?;
    }
    Ok(())
}
