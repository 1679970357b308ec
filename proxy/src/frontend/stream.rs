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

impl ClientStream {
    /// End the connection as PostgreSQL ends its own: over TLS with a close_notify first, which a
    /// client reads as the server closing the connection (without it, libpq reports "SSL error:
    /// unexpected eof" where directly it reports "server closed the connection"). At most
    /// `within`: a client that does not read cannot keep the task.
    pub async fn close(&mut self, within: std::time::Duration) {
        if let ClientStream::Tls(s) = self {
            let _ = tokio::time::timeout(within, s.shutdown()).await;
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
/// the reactor, flushed: TLS keeps what the socket did not take in its own buffer, and nothing
/// would send it until the session's next write (a client waiting for an answer waits forever).
pub async fn send_all<S: TryWrite + AsyncWrite + Unpin>(s: &mut S, buf: &[u8]) -> std::io::Result<()> {
    let sent = match s.try_write(buf) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if sent < buf.len() {
        s.write_all(&buf[sent..]).await?;
        s.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpSocket;

    use super::*;

    /// A certificate and key made by `openssl` in a directory removed on drop.
    struct SelfSigned(std::path::PathBuf);

    impl SelfSigned {
        fn make() -> SelfSigned {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!("dmf-proxy-stream-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("cert dir");
            let out = std::process::Command::new("openssl")
                .current_dir(&dir)
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "cert.pem"])
                .output()
                .expect("openssl");
            assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
            SelfSigned(dir)
        }
    }

    impl Drop for SelfSigned {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A large answer to a TLS client that reads slowly fills the socket, and rustls keeps the
    /// rest: `send_all` must not return before it is sent, because the session writes nothing
    /// more until the client's next statement, which waits for this answer.
    #[tokio::test(flavor = "current_thread")]
    async fn a_tls_answer_the_socket_cannot_take_yet_reaches_the_client_without_another_write() {
        let certs = SelfSigned::make();
        let acceptor = crate::frontend::tls::acceptor(&certs.0.join("cert.pem"), &certs.0.join("key.pem")).expect("acceptor");
        // small socket buffers, as on a busy host: the answer does not fit in them
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(32 * 1024).expect("SO_SNDBUF");
        socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let listener = socket.listen(8).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let (policy, _) = dmf_pgconn::tls::TlsPolicy::split(&format!("postgres://u@127.0.0.1:{port}/d?sslmode=require")).expect("policy");
        let connector = tokio_rustls::TlsConnector::from(policy.config().expect("client config"));
        let client = tokio::spawn(async move {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(32 * 1024).expect("SO_RCVBUF");
            let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connect");
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            connector.connect(name, tcp).await.expect("client handshake")
        });
        let (sock, _) = listener.accept().await.expect("accept");
        let mut proxy_side = ClientStream::Tls(Box::new(acceptor.accept(sock).await.expect("server handshake")));
        let mut app = client.await.expect("client task");

        let answer = vec![7u8; 8 << 20];
        let reader = tokio::spawn(async move {
            let (mut got, mut buf) = (0usize, vec![0u8; 16 * 1024]);
            // slowly, so that the proxy's socket fills; then whatever is still coming
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(3), app.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                got += n;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            got
        });
        send_all(&mut proxy_side, &answer).await.expect("send");
        // the session now waits for the client (it writes nothing more)
        let got = reader.await.expect("reader");
        assert_eq!(got, answer.len(), "the client got {got} of {} bytes", answer.len());
        drop(proxy_side);
    }
}
