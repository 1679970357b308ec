//! A backend connection's byte stream: TCP, TLS over TCP, or (in the session tests) an in-memory
//! pipe to a scripted server. One type, so that the relay and the protocol client see one stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::frontend::stream::TryWrite;

pub enum BackendStream {
    Tcp(TcpStream),
    /// TLS as the route's connection string asks (`dmf_pgconn::tls`).
    Tls(Box<tokio_rustls::client::TlsStream<Sock>>),
    /// One end of `tokio::io::duplex`, the other held by a test's scripted server.
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

impl AsyncRead for BackendStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(test)]
            BackendStream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(test)]
            BackendStream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(test)]
            BackendStream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(test)]
            BackendStream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl TryWrite for BackendStream {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            BackendStream::Tcp(s) => s.try_write(buf),
            // rustls buffers and encrypts: always through its own writer
            BackendStream::Tls(_) => Err(std::io::ErrorKind::WouldBlock.into()),
            #[cfg(test)]
            BackendStream::Memory(_) => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl BackendStream {
    /// Whether the server sent something (or closed) on an idle connection: readable means gone.
    pub fn readable_now(&self) -> bool {
        match self {
            BackendStream::Tcp(s) => {
                let mut probe = [0u8; 1];
                !matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            // a byte of a TLS record (an alert) means the same: the backend is not used again
            BackendStream::Tls(s) => match &s.get_ref().0 .0 {
                Some(t) => {
                    let mut probe = [0u8; 1];
                    !matches!(t.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                }
                None => true,
            },
            #[cfg(test)]
            BackendStream::Memory(_) => false,
        }
    }

    /// The same socket registered on the runtime this runs on.
    pub fn rehome(self) -> std::io::Result<BackendStream> {
        match self {
            BackendStream::Tcp(s) => Ok(BackendStream::Tcp(TcpStream::from_std(s.into_std()?)?)),
            BackendStream::Tls(mut s) => {
                let sock = &mut s.get_mut().0;
                if let Some(t) = sock.0.take() {
                    sock.0 = Some(TcpStream::from_std(t.into_std()?)?);
                }
                Ok(BackendStream::Tls(s))
            }
            #[cfg(test)]
            other => Ok(other),
        }
    }
}

/// The TCP socket under a backend's TLS, which a move to another relay thread re-registers in
/// place (`rehome`); empty only during that move.
pub struct Sock(pub Option<TcpStream>);

fn moving() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "socket moving between threads")
}

impl AsyncRead for Sock {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Err(moving())),
        }
    }
}

impl AsyncWrite for Sock {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.get_mut().0 {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(moving())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Err(moving())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Err(moving())),
        }
    }
}
