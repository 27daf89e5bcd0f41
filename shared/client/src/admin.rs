//! A client of the provider admin API (see `services/ingest/src/admin.rs`):
//! plain HTTP/1.1 inside the cluster, bearer token, JSON.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin URL must be http://host:port, got {0:?}")]
    BadUrl(String),
    #[error("cannot reach the admin API: {0}")]
    Io(#[from] std::io::Error),
    #[error("the admin API answered {status}: {code}: {detail}")]
    Refused {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("the admin API's answer is not understood: {0}")]
    BadAnswer(String),
}

/// The admin API at `base` (e.g. `http://127.0.0.1:8090`).
pub struct AdminClient {
    host: String,
    token: String,
}

impl AdminClient {
    pub fn new(base: &str, token: &str) -> Result<Self, AdminError> {
        let host = base
            .strip_prefix("http://")
            .map(|h| h.trim_end_matches('/').to_owned())
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| AdminError::BadUrl(base.to_owned()))?;
        Ok(Self {
            host,
            token: token.trim().to_owned(),
        })
    }

    /// Sends one request and returns the JSON answer of a 2xx.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.host,
            self.token,
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(&self.host).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| AdminError::BadAnswer("no HTTP header".into()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| AdminError::BadAnswer("no status".into()))?;
        let value: Value =
            serde_json::from_str(body.trim()).map_err(|e| AdminError::BadAnswer(e.to_string()))?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(AdminError::Refused {
                status,
                code: value["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
                detail: value["detail"].as_str().unwrap_or_default().to_owned(),
            })
        }
    }
}
