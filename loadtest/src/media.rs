//! The media API, as the load generator uses it: upload an end-to-end
//! encrypted blob (so nothing is transcoded) and download what was
//! delivered. Plain HTTP/1.1, one request per connection (`http://` only;
//! the media API behind a TLS ingress is out of reach for now).

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The media type the generator declares for its blobs: one every
/// provider plays by default, so E2EE media is delivered unchanged.
pub const CONTENT_TYPE: &str = "image/jpeg";
/// Longest wait for one upload or download.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response read (a download of the largest blob, plus headers).
const MAX_RESPONSE: usize = crate::scenario::MAX_MEDIA_BYTES + 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the media URL {0:?} is not http://host:port")]
    Url(String),
    #[error("the media API: {0}")]
    Io(#[from] std::io::Error),
    #[error("the media API did not answer within {TIMEOUT:?}")]
    Timeout,
    #[error("the media API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the media API's answer is malformed: {0}")]
    Malformed(String),
}

/// An uploaded blob, as a message refers to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Uploaded {
    pub media_id: String,
    pub size: u64,
    pub sha256: bytes::Bytes,
}

/// `host:port` of an `http://host:port[/…]` URL.
fn authority(url: &str) -> Result<&str, MediaError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| MediaError::Url(url.to_owned()))?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(MediaError::Url(url.to_owned()));
    }
    Ok(host)
}

async fn exchange(url: &str, head: String, body: &[u8]) -> Result<(u16, Vec<u8>), MediaError> {
    let host = authority(url)?;
    let run = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut buf = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
            .await?;
        Ok::<_, MediaError>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, run)
        .await
        .map_err(|_| MediaError::Timeout)??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| MediaError::Malformed("no end of headers".into()))?;
    let status = std::str::from_utf8(&buf[..split])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| MediaError::Malformed("no status".into()))?;
    Ok((status, buf[split + 4..].to_vec()))
}

/// Uploads `data` as E2EE media of `provider`.
pub async fn upload(
    url: &str,
    provider: &str,
    token: &str,
    data: &[u8],
) -> Result<Uploaded, MediaError> {
    let host = authority(url)?;
    let sha = Sha256::digest(data);
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nX-Interop-Provider: {provider}\r\n\
         Content-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
         X-Interop-Sha256: {}\r\nX-Interop-Encryption: e2ee\r\n\r\n",
        data.len(),
        hex::encode(sha)
    );
    let (status, body) = exchange(url, head, data).await?;
    if status != 201 {
        return Err(MediaError::Status {
            status,
            body: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
    }
    #[derive(serde::Deserialize)]
    struct Created {
        media_id: String,
    }
    let created: Created =
        serde_json::from_slice(&body).map_err(|e| MediaError::Malformed(e.to_string()))?;
    Ok(Uploaded {
        media_id: created.media_id,
        size: data.len() as u64,
        sha256: bytes::Bytes::copy_from_slice(&sha),
    })
}

/// Downloads media `id` as `user` of `provider`; returns the body's size.
pub async fn download(
    url: &str,
    provider: &str,
    token: &str,
    user: &str,
    id: &str,
) -> Result<usize, MediaError> {
    let host = authority(url)?;
    let head = format!(
        "GET /v1/media/{id} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Authorization: Bearer {token}\r\nX-Interop-Provider: {provider}\r\n\
         X-Interop-As: {user}\r\n\r\n"
    );
    let (status, body) = exchange(url, head, &[]).await?;
    if status != 200 {
        return Err(MediaError::Status {
            status,
            body: String::from_utf8_lossy(&body).chars().take(200).collect(),
        });
    }
    Ok(body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_are_taken() {
        assert_eq!(
            authority("http://127.0.0.1:8082").unwrap(),
            "127.0.0.1:8082"
        );
        assert_eq!(authority("http://h:1/v1/media").unwrap(), "h:1");
        for bad in ["https://h:1", "h:1", "http://", "http:///x"] {
            assert!(matches!(authority(bad), Err(MediaError::Url(_))), "{bad}");
        }
    }
}
