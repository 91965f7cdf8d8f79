//! Host side of a vsock connection through the vmm's Unix socket (the Firecracker
//! convention): connect to the socket, write `CONNECT <port>\n`, read `OK <hostport>\n`;
//! from then on the stream carries the guest port's bytes.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest acknowledgement line accepted (`OK 4294967295\n` is 14 bytes).
const MAX_ACK: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("connecting to {path}: {err}")]
    Connect {
        path: String,
        #[source]
        err: std::io::Error,
    },
    #[error("vsock handshake on {path}: {msg}")]
    Handshake { path: String, msg: String },
    #[error("vsock handshake on {path} timed out")]
    Timeout { path: String },
}

/// Connects to guest `port` through the vmm's vsock socket at `socket`.
pub async fn connect(
    socket: &Path,
    port: u32,
    timeout: Duration,
) -> Result<UnixStream, VsockError> {
    let path = socket.display().to_string();
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|err| VsockError::Connect {
            path: path.clone(),
            err,
        })?;
    let shake = async {
        let hs = |msg: String| VsockError::Handshake {
            path: path.clone(),
            msg,
        };
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(|e| hs(e.to_string()))?;
        // Byte by byte, so nothing after the newline (the guest's first bytes) is eaten.
        let mut line = Vec::with_capacity(MAX_ACK);
        loop {
            let b = stream.read_u8().await.map_err(|e| hs(e.to_string()))?;
            if b == b'\n' {
                break;
            }
            if line.len() == MAX_ACK {
                return Err(hs("acknowledgement line too long".into()));
            }
            line.push(b);
        }
        parse_ack(&line).map_err(hs)
    };
    match tokio::time::timeout(timeout, shake).await {
        Ok(Ok(_host_port)) => Ok(stream),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(VsockError::Timeout { path }),
    }
}

/// Parses `OK <port>` (without the newline).
fn parse_ack(line: &[u8]) -> Result<u32, String> {
    let text = std::str::from_utf8(line).map_err(|_| "acknowledgement is not text".to_string())?;
    text.strip_prefix("OK ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(|| format!("expected \"OK <port>\", got {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    fn sock(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("husk-vsock-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A fake vmm: answers `reply` to the CONNECT line, then sends `after`.
    async fn fake_vmm(
        path: &Path,
        reply: &'static [u8],
        after: &'static [u8],
    ) -> tokio::task::JoinHandle<String> {
        let l = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = tokio::io::BufReader::new(s);
            let mut line = String::new();
            s.read_line(&mut line).await.unwrap();
            s.get_mut().write_all(reply).await.unwrap();
            s.get_mut().write_all(after).await.unwrap();
            // keep the stream open until the client is done
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            line
        })
    }

    #[tokio::test]
    async fn handshake_then_guest_bytes() {
        let p = sock("ok");
        let vmm = fake_vmm(&p, b"OK 1073741824\n", b"hello").await;
        let mut s = connect(&p, 1024, Duration::from_secs(5)).await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        drop(s);
        assert_eq!(vmm.await.unwrap(), "CONNECT 1024\n");
        let _ = std::fs::remove_file(&p);
    }

    #[tokio::test]
    async fn refused_and_garbage() {
        let p = sock("bad");
        let _vmm = fake_vmm(&p, b"NO\n", b"").await;
        let e = connect(&p, 1024, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("expected \"OK <port>\""), "{e}");
        let _ = std::fs::remove_file(&p);

        let p = sock("long");
        let _vmm = fake_vmm(&p, &[b'x'; 100], b"").await;
        let e = connect(&p, 1024, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        let _ = std::fs::remove_file(&p);

        let e = connect(&sock("none"), 1024, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, VsockError::Connect { .. }));
    }

    #[tokio::test]
    async fn silent_vmm_times_out() {
        let p = sock("silent");
        let l = UnixListener::bind(&p).unwrap();
        let _keep = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(s);
        });
        let e = connect(&p, 1024, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, VsockError::Timeout { .. }));
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn ack_parsing() {
        assert_eq!(parse_ack(b"OK 5"), Ok(5));
        assert!(parse_ack(b"OK").is_err());
        assert!(parse_ack(b"OK x").is_err());
        assert!(parse_ack(&[0xff, 0xfe]).is_err());
    }
}
