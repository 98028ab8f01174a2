//! `HttpFetcher::hold_blob`: a hold's `getBlob` answered with a redirect to its storage is
//! followed, and every hop passes the URL policy (a redirect to a metadata address is refused);
//! a trusted URL (presigned for a bucket the operator configured) is fetched without it; the
//! size cap holds. Against a tiny HTTP server on loopback.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use atcr_ingest::enrich::{FetchError, Fetcher, HttpFetcher};
use atcr_ingest::policy::UrlPolicy;

/// Answers `/redirect` with a 307 to `/blob`, `/metadata` with a 307 to 169.254.169.254,
/// `/blob` with 1000 bytes.
async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(count) => request.extend_from_slice(&buffer[..count]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let response = if path.starts_with("/redirect") {
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: /blob\r\nContent-Length: 0\r\n\r\n".to_string()
                } else if path.starts_with("/metadata") {
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://169.254.169.254/latest/meta-data\r\nContent-Length: 0\r\n\r\n"
                        .to_string()
                } else if path.starts_with("/blob") {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{}", "x".repeat(1000))
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    address
}

#[tokio::test]
async fn redirects_are_followed_and_every_hop_is_checked() {
    #[allow(deprecated)] // ring lacks only post-quantum key exchange (see src/main.rs)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let address = serve().await;
    let base = format!("http://{address}");
    let open = HttpFetcher::new("https://plc.invalid", UrlPolicy { allow_loopback: true }).unwrap();
    let strict = HttpFetcher::new("https://plc.invalid", UrlPolicy { allow_loopback: false }).unwrap();

    let bytes = open.hold_blob(&format!("{base}/redirect?did=x&cid=y"), false, 4096).await.unwrap();
    assert_eq!(bytes.len(), 1000);
    assert!(matches!(open.hold_blob(&format!("{base}/blob"), false, 999).await, Err(FetchError::TooLarge(999))));
    assert!(matches!(open.hold_blob(&format!("{base}/missing"), false, 4096).await, Err(FetchError::NotFound)));
    let refused = open.hold_blob(&format!("{base}/metadata"), false, 4096).await;
    assert!(matches!(refused, Err(FetchError::Policy(_))), "a redirect to a metadata address: {refused:?}");

    // Without the development flag, loopback is refused — unless the URL is the operator's own
    // (a presigned URL of a configured bucket), which is trusted for its first hop only.
    assert!(matches!(strict.hold_blob(&format!("{base}/blob"), false, 4096).await, Err(FetchError::Policy(_))));
    assert_eq!(strict.hold_blob(&format!("{base}/blob"), true, 4096).await.unwrap().len(), 1000);
    let hop = strict.hold_blob(&format!("{base}/redirect"), true, 4096).await;
    assert!(matches!(hop, Err(FetchError::Policy(_))), "the redirect target is data, not configuration: {hop:?}");
}
