//! A client of the media API (docs/protocol.md, "Media"): upload a blob
//! before sending a message that references it, download what was
//! delivered to one of your users.
//!
//! Plain HTTP/1.1, one request per connection (`Connection: close`), over
//! TCP for `http://` or TLS for `https://` (with the same rustls config as
//! [`crate::tls_config`]). Bodies stream: an upload reads its file twice (the
//! SHA-256 the API wants in a header first, then the body), a download is
//! written as it arrives and checked against `X-Interop-Sha256` at the end.
//! The token goes in a header only; nothing here logs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), interop_client::media::MediaError> {
//! use interop_client::media::{MediaClient, Upload};
//! let media = MediaClient::new("http://127.0.0.1:8082", None)?;
//! let up = media
//!     .upload_file("signal", "signal-token", std::path::Path::new("photo.jpg"), &Upload::new("image/jpeg"))
//!     .await?;
//! println!("{}", up.media_id);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Errors of the media client.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("media URL must be http://host[:port] or https://host[:port], got {0:?}")]
    BadUrl(String),
    #[error("an https:// media URL needs a TLS config (--ca-file)")]
    NoTls,
    /// A value that would go into a header has a control character.
    #[error("{0} has a control character")]
    BadHeader(&'static str),
    #[error("cannot reach the media API: {0}")]
    Io(#[from] std::io::Error),
    /// The API answered with an error (docs/protocol.md, "Media API errors").
    #[error("the media API answered {status}: {code}: {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
        /// From `Retry-After` (seconds), if the answer had one.
        retry_after_s: Option<u64>,
    },
    #[error("the media API's answer is not understood: {0}")]
    BadAnswer(String),
    /// The downloaded bytes are not what `X-Interop-Sha256` says.
    #[error("the download's SHA-256 is {got}, the gateway said {want}: damaged in transit")]
    HashMismatch { want: String, got: String },
}

/// How to upload: the declared media type and how the message will be sent.
#[derive(Debug, Clone)]
pub struct Upload {
    /// `Content-Type`, e.g. `image/jpeg`.
    pub content_type: String,
    /// `e2ee`: the blob is passed through byte for byte and never converted
    /// (it should be encrypted already); otherwise `transport-only`.
    pub e2ee: bool,
    /// `X-Interop-Sticker: true` (images only).
    pub sticker: bool,
}

impl Upload {
    /// A server-visible (transport-only) upload of `content_type`.
    pub fn new(content_type: &str) -> Self {
        Self {
            content_type: content_type.to_owned(),
            e2ee: false,
            sticker: false,
        }
    }
}

/// The API's answer to an upload (`201 Created`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct Uploaded {
    pub media_id: String,
    pub size: u64,
    pub content_type: String,
    /// 64 hex digits.
    pub sha256: String,
    /// `e2ee` or `transport-only`.
    pub encryption: String,
    pub expires_at_ms: u64,
}

/// What a download wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Downloaded {
    pub content_type: String,
    pub size: u64,
    /// 64 hex digits, checked against the body.
    pub sha256: String,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The media API at one base URL.
pub struct MediaClient {
    host: String,
    /// The TLS server name, for `https://`.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

impl MediaClient {
    /// `base` is e.g. `http://127.0.0.1:8082`; `tls` is needed for
    /// `https://` (see [`crate::tls_config`]).
    pub fn new(base: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, MediaError> {
        let bad = || MediaError::BadUrl(base.to_owned());
        let (https, rest) = if let Some(r) = base.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = base.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(bad());
        }
        let (name, host) = match rest.rsplit_once(':') {
            // `host:port`, `[v6]:port`.
            Some((h, p)) if p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']')) => {
                (h.to_owned(), rest.to_owned())
            }
            _ => (
                rest.to_owned(),
                format!("{rest}:{}", if https { 443 } else { 80 }),
            ),
        };
        let tls = if https {
            let config = tls.ok_or(MediaError::NoTls)?;
            let name = rustls_pki_types::ServerName::try_from(
                name.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|_| bad())?;
            Some((config, name))
        } else {
            None
        };
        Ok(Self { host, tls })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, MediaError> {
        let tcp = tokio::net::TcpStream::connect(&self.host).await?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await?;
                Ok(Box::new(tls))
            }
        }
    }

    /// Uploads the file at `path` as `provider`, announcing its size and
    /// SHA-256, and returns the API's answer (its `media_id` goes into the
    /// message's `Media`).
    pub async fn upload_file(
        &self,
        provider: &str,
        token: &str,
        path: &Path,
        upload: &Upload,
    ) -> Result<Uploaded, MediaError> {
        let mut file = tokio::fs::File::open(path).await?;
        let mut hash = sha2::Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            size += n as u64;
        }
        let file = tokio::fs::File::open(path).await?;
        self.upload(
            provider,
            token,
            upload,
            file.take(size),
            size,
            hash.finalize().into(),
        )
        .await
    }

    /// Uploads `size` bytes read from `body`, whose SHA-256 is `sha256`.
    pub async fn upload(
        &self,
        provider: &str,
        token: &str,
        upload: &Upload,
        mut body: impl AsyncRead + Unpin,
        size: u64,
        sha256: [u8; 32],
    ) -> Result<Uploaded, MediaError> {
        check_headers(&[
            ("the provider", provider),
            ("the token", token),
            ("the content type", &upload.content_type),
        ])?;
        let mut head = format!(
            "POST /v1/media HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nX-Interop-Provider: {provider}\r\n\
             Content-Type: {}\r\nContent-Length: {size}\r\nX-Interop-Sha256: {}\r\n\
             X-Interop-Encryption: {}\r\n",
            self.host,
            token.trim(),
            upload.content_type,
            hex::encode(sha256),
            if upload.e2ee {
                "e2ee"
            } else {
                "transport-only"
            },
        );
        if upload.sticker {
            head.push_str("X-Interop-Sticker: true\r\n");
        }
        head.push_str("\r\n");
        let mut stream = self.connect().await?;
        // The API may refuse before the body is read (size, auth) and
        // close: a failed write is then followed by reading its answer.
        let written = async {
            stream.write_all(head.as_bytes()).await?;
            tokio::io::copy(&mut body, &mut stream).await?;
            stream.flush().await
        }
        .await;
        let answer = read_head(&mut stream).await;
        let (status, headers, rest) = match (answer, written) {
            (Ok(a), _) => a,
            (Err(_), Err(e)) => return Err(e.into()),
            (Err(e), Ok(())) => return Err(e),
        };
        let body = read_small(&mut stream, rest).await?;
        if status != 201 {
            return Err(refused(status, &headers, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| MediaError::BadAnswer(format!("upload answer: {e}")))
    }

    /// Downloads `media_id` as `user` (one of `provider`'s users it was
    /// delivered to) into `out`, checking it against the SHA-256 the
    /// gateway announces. On a mismatch `out` holds damaged bytes: discard
    /// them.
    pub async fn download(
        &self,
        provider: &str,
        token: &str,
        user: &str,
        media_id: &str,
        mut out: impl AsyncWrite + Unpin,
    ) -> Result<Downloaded, MediaError> {
        if media_id.is_empty()
            || !media_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(MediaError::Refused {
                status: 404,
                code: "NOT_FOUND".into(),
                detail: "not a media id".into(),
                retry_after_s: None,
            });
        }
        check_headers(&[
            ("the provider", provider),
            ("the token", token),
            ("the user", user),
        ])?;
        let head = format!(
            "GET /v1/media/{media_id} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nX-Interop-Provider: {provider}\r\nX-Interop-As: {user}\r\n\r\n",
            self.host,
            token.trim(),
        );
        let mut stream = self.connect().await?;
        stream.write_all(head.as_bytes()).await?;
        stream.flush().await?;
        let (status, headers, rest) = read_head(&mut stream).await?;
        if status != 200 {
            let body = read_small(&mut stream, rest).await?;
            return Err(refused(status, &headers, &body));
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let want = header("x-interop-sha256")
            .ok_or_else(|| MediaError::BadAnswer("no X-Interop-Sha256".into()))?
            .to_ascii_lowercase();
        let length: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| MediaError::BadAnswer("no Content-Length".into()))?;
        let content_type = header("content-type").unwrap_or_default().to_owned();
        let mut hash = sha2::Sha256::new();
        let mut got = 0u64;
        let mut chunk = rest;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let take = (length - got).min(chunk.len() as u64) as usize;
            hash.update(&chunk[..take]);
            out.write_all(&chunk[..take]).await?;
            got += take as u64;
            if got == length {
                break;
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(MediaError::BadAnswer(format!(
                    "the download ended after {got} of {length} bytes"
                )));
            }
            chunk = buf[..n].to_vec();
        }
        out.flush().await?;
        let sha256 = hex::encode(hash.finalize());
        if sha256 != want {
            return Err(MediaError::HashMismatch { want, got: sha256 });
        }
        Ok(Downloaded {
            content_type,
            size: length,
            sha256,
        })
    }
}

/// Values go into headers as they are: none may end a header early.
fn check_headers(values: &[(&'static str, &str)]) -> Result<(), MediaError> {
    match values
        .iter()
        .find(|(_, v)| v.trim().chars().any(char::is_control))
    {
        Some((what, _)) => Err(MediaError::BadHeader(what)),
        None => Ok(()),
    }
}

type Head = (u16, Vec<(String, String)>, Vec<u8>);

/// Reads the status line and headers; returns them and the body bytes
/// read past them.
async fn read_head(stream: &mut Box<dyn Io>) -> Result<Head, MediaError> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if raw.len() > 64 * 1024 {
            return Err(MediaError::BadAnswer(
                "the answer's header is too long".into(),
            ));
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(MediaError::BadAnswer(
                "the connection closed before an answer".into(),
            ));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| MediaError::BadAnswer("no HTTP status".into()))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok((status, headers, raw[end + 4..].to_vec()))
}

/// The rest of a small body (a JSON answer): until the connection closes,
/// at most 1 MiB.
async fn read_small(stream: &mut Box<dyn Io>, mut body: Vec<u8>) -> Result<Vec<u8>, MediaError> {
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: what came is it.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&buf[..n]);
        if body.len() > 1 << 20 {
            return Err(MediaError::BadAnswer("the answer is too long".into()));
        }
    }
}

fn refused(status: u16, headers: &[(String, String)], body: &[u8]) -> MediaError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    MediaError::Refused {
        status,
        code: v["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
        detail: v["detail"].as_str().unwrap_or_default().to_owned(),
        retry_after_s: headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            .and_then(|(_, v)| v.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_host_and_port_and_https_needs_tls() {
        assert_eq!(
            MediaClient::new("http://127.0.0.1:8082/", None)
                .unwrap()
                .host,
            "127.0.0.1:8082"
        );
        assert_eq!(
            MediaClient::new("http://media.example", None).unwrap().host,
            "media.example:80"
        );
        assert!(matches!(
            MediaClient::new("https://media.example", None),
            Err(MediaError::NoTls)
        ));
        for bad in ["ftp://x", "http://", "http://x/v1/media", "x:80"] {
            assert!(
                matches!(MediaClient::new(bad, None), Err(MediaError::BadUrl(_))),
                "{bad}"
            );
        }
    }

    /// A one-shot HTTP server: reads a request (head and `Content-Length`
    /// body), answers `answer`; the request it read.
    async fn serve_once(answer: Vec<u8>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(&answer).await.unwrap();
            s.shutdown().await.ok();
            req
        });
        (url, task)
    }

    #[tokio::test]
    async fn an_upload_announces_size_and_hash_and_reads_the_answer() {
        let body = br#"{"media_id":"m-1","size":5,"content_type":"text/plain","sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","encryption":"e2ee","expires_at_ms":9}"#;
        let answer = [
            format!(
                "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            body,
        ]
        .concat();
        let (url, server) = serve_once(answer).await;
        let upload = Upload {
            content_type: "text/plain".into(),
            e2ee: true,
            sticker: false,
        };
        let up = MediaClient::new(&url, None)
            .unwrap()
            .upload(
                "signal",
                "tok",
                &upload,
                &b"hello"[..],
                5,
                sha2::Sha256::digest(b"hello").into(),
            )
            .await
            .unwrap();
        assert_eq!(up.media_id, "m-1");
        let req = String::from_utf8(server.await.unwrap()).unwrap();
        for header in [
            "POST /v1/media HTTP/1.1\r\n",
            "Authorization: Bearer tok\r\n",
            "X-Interop-Provider: signal\r\n",
            "Content-Type: text/plain\r\n",
            "Content-Length: 5\r\n",
            "X-Interop-Sha256: 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\r\n",
            "X-Interop-Encryption: e2ee\r\n",
        ] {
            assert!(req.contains(header), "{header:?} not in {req:?}");
        }
        assert!(req.ends_with("\r\n\r\nhello"));
    }

    #[tokio::test]
    async fn a_download_is_checked_against_its_announced_hash_and_length() {
        let good = sha2::Sha256::digest(b"hello");
        let ok = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Interop-Sha256: {}\r\n\r\nhello",
            hex::encode(good)
        );
        let (url, _) = serve_once(ok.into_bytes()).await;
        let mut out = Vec::new();
        let d = MediaClient::new(&url, None)
            .unwrap()
            .download("home", "tok", "home:+4915112345678", "m-1", &mut out)
            .await
            .unwrap();
        assert_eq!(
            (out.as_slice(), d.size, d.content_type.as_str()),
            (&b"hello"[..], 5, "text/plain")
        );

        let damaged = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Interop-Sha256: {}\r\n\r\nhellO",
            hex::encode(good)
        );
        let (url, _) = serve_once(damaged.into_bytes()).await;
        let e = MediaClient::new(&url, None)
            .unwrap()
            .download("home", "tok", "home:+4915112345678", "m-1", Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(e, MediaError::HashMismatch { .. }), "{e}");

        let short = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Interop-Sha256: {}\r\n\r\nhello",
            hex::encode(good)
        );
        let (url, _) = serve_once(short.into_bytes()).await;
        let e = MediaClient::new(&url, None)
            .unwrap()
            .download("home", "tok", "home:+4915112345678", "m-1", Vec::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("ended after 5 of 9 bytes"), "{e}");

        let refused =
            b"HTTP/1.1 404 Not Found\r\n\r\n{\"code\":\"NOT_FOUND\",\"detail\":\"no such media\"}";
        let (url, _) = serve_once(refused.to_vec()).await;
        let e = MediaClient::new(&url, None)
            .unwrap()
            .download("home", "tok", "home:+4915112345678", "m-1", Vec::new())
            .await
            .unwrap_err();
        assert!(
            matches!(e, MediaError::Refused { status: 404, ref code, .. } if code == "NOT_FOUND"),
            "{e}"
        );
        // Not even sent: an id that is no media id cannot walk the path.
        let e = MediaClient::new("http://127.0.0.1:1", None)
            .unwrap()
            .download("home", "tok", "home:+1", "../admin", Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(e, MediaError::Refused { status: 404, .. }), "{e}");
        // Nor a header that would end early.
        let e = MediaClient::new("http://127.0.0.1:1", None)
            .unwrap()
            .upload(
                "signal",
                "tok",
                &Upload::new("text/plain\r\nX-Interop-Sticker: true"),
                &b""[..],
                0,
                [0; 32],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, MediaError::BadHeader("the content type")),
            "{e}"
        );
    }

    #[test]
    fn a_refusal_carries_the_apis_code_detail_and_retry_after() {
        let e = refused(
            503,
            &[("Retry-After".into(), "2".into())],
            br#"{"code":"UNAVAILABLE","detail":"try again"}"#,
        );
        assert!(matches!(
            e,
            MediaError::Refused { status: 503, ref code, ref detail, retry_after_s: Some(2) }
                if code == "UNAVAILABLE" && detail == "try again"
        ));
        assert!(matches!(
            refused(500, &[], b"not json"),
            MediaError::Refused { ref code, .. } if code == "UNKNOWN"
        ));
    }
}
