//! Static assets, embedded in the binary (no build step, nothing fetched at run time) and served
//! under content-hashed URLs (`/static/app.3f9c1a2b7d4e.css`): a URL never changes meaning, so
//! browsers may keep each file for a year without asking again. Compression happens in the
//! router's `CompressionLayer`, like for the pages.
//!
//! The inline theme script (applied before first paint so a dark-mode user never sees a light
//! flash) lives here too: the Content-Security-Policy allows exactly its sha256.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

/// One embedded file.
pub struct Asset {
    /// `app.css`: the name in the source tree.
    pub logical_name: &'static str,
    /// `app.<12 hex>.css`: the name it is served under.
    pub hashed_name: String,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    pub etag: String,
}

const SOURCES: [(&str, &str, &[u8]); 6] = [
    ("app.css", "text/css; charset=utf-8", include_bytes!("../../static/app.css")),
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../static/app.js")),
    ("htmx.min.js", "text/javascript; charset=utf-8", include_bytes!("../../static/vendor/htmx.min.js")),
    // The htmx SSE extension: the live home and repository pages.
    (
        "htmx-ext-sse.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/vendor/htmx-ext-sse.min.js"),
    ),
    ("favicon.svg", "image/svg+xml", include_bytes!("../../static/favicon.svg")),
    // RapiDoc: the API explorer at `/api/docs` (web/src/api.rs).
    ("rapidoc-min.js", "text/javascript; charset=utf-8", include_bytes!("../../static/vendor/rapidoc-min.js")),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|&(logical_name, content_type, bytes)| {
            let digest = Sha256::digest(bytes);
            let hex: String = digest.iter().take(6).map(|byte| format!("{byte:02x}")).collect();
            let (stem, extension) = logical_name.split_once('.').unwrap_or((logical_name, ""));
            Asset {
                logical_name,
                hashed_name: format!("{stem}.{hex}.{extension}"),
                content_type,
                bytes,
                etag: format!("\"{hex}\""),
            }
        })
        .collect()
});

/// The URL of an embedded asset by its source name (`app.css` → `/static/app.<hash>.css`).
pub fn url(logical_name: &str) -> String {
    match ASSETS.iter().find(|asset| asset.logical_name == logical_name) {
        Some(asset) => format!("/static/{}", asset.hashed_name),
        None => format!("/static/{logical_name}"),
    }
}

/// Runs in `<head>` before the stylesheet applies: the remembered theme choice, if any.
pub const THEME_SCRIPT: &str = "(function(){try{var t=localStorage.getItem(\"atcr-theme\");\
if(t===\"dark\"||t===\"light\"){document.documentElement.setAttribute(\"data-theme\",t)}}catch(e){}})();";

/// `'sha256-…'` of [`THEME_SCRIPT`], for the CSP's `script-src`.
pub static THEME_SCRIPT_HASH: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(THEME_SCRIPT.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest))
});

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// `GET /static/{file}`: hashed names only; a stale hash is a 404 (the page that named it is
/// older than this binary and will be reloaded).
pub async fn serve(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|asset| asset.hashed_name == file) else {
        return (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "no-store")], "no such asset").into_response();
    };
    let etag = HeaderValue::from_str(&asset.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let cache_headers = [(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)), (header::ETAG, etag)];
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == asset.etag || tag.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, cache_headers).into_response();
    }
    (StatusCode::OK, cache_headers, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.bytes)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_urls_change_with_content_and_keep_the_extension() {
        let css = url("app.css");
        assert!(css.starts_with("/static/app.") && css.ends_with(".css"), "{css}");
        assert_eq!(css.len(), "/static/app.".len() + 12 + ".css".len());
        assert_ne!(url("app.js"), url("htmx.min.js"));
    }

    #[test]
    fn theme_script_hash_is_the_csp_form() {
        assert!(THEME_SCRIPT_HASH.starts_with("'sha256-") && THEME_SCRIPT_HASH.ends_with("='"));
    }

    #[test]
    fn htmx_is_vendored_with_its_license_and_version() {
        let htmx = std::str::from_utf8(SOURCES[2].2).unwrap();
        assert!(htmx.starts_with("/* htmx 2."), "{}", &htmx[..80]);
        assert!(htmx.contains("Zero-Clause BSD"));
        let sse = std::str::from_utf8(SOURCES[3].2).unwrap();
        assert!(sse.starts_with("/* htmx-ext-sse 2."), "{}", &sse[..80]);
        assert!(sse.contains("Zero-Clause BSD") && sse.contains("defineExtension(\"sse\""));
        assert!(url("htmx-ext-sse.min.js").ends_with(".min.js"));
    }
}
