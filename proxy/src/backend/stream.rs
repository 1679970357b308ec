//! A backend connection's byte stream: TCP, or (in the session tests) an in-memory pipe to a
//! scripted server. One type, so that the relay and the protocol client see one stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::frontend::stream::TryWrite;

pub enum BackendStream {
    Tcp(TcpStream),
    /// One end of `tokio::io::duplex`, the other held by a test's scripted server.
    #[cfg(test)]
    Memory(tokio::io::DuplexStream),
}

impl AsyncRead for BackendStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(test)]
            BackendStream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(test)]
            BackendStream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(test)]
            BackendStream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(test)]
            BackendStream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl TryWrite for BackendStream {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            BackendStream::Tcp(s) => s.try_write(buf),
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
            #[cfg(test)]
            BackendStream::Memory(_) => false,
        }
    }

    /// The same socket registered on the runtime this runs on.
    pub fn rehome(self) -> std::io::Result<BackendStream> {
        match self {
            BackendStream::Tcp(s) => Ok(BackendStream::Tcp(TcpStream::from_std(s.into_std()?)?)),
            #[cfg(test)]
            other => Ok(other),
        }
    }
}
