//! Small presentation helpers shared by the pages: sizes, relative times, short digests, the
//! pull command for an owner's preferred client, the request's host and identicons.
//!
//! Everything here returns plain strings or maud markup built with escaping: nothing a user
//! controls is ever written as raw HTML.

use maud::{Markup, PreEscaped, html};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `1.4 MB`, `812 B`: decimal units, like the registries people compare us with.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if value < 10.0 { format!("{value:.1} {}", UNITS[unit]) } else { format!("{value:.0} {}", UNITS[unit]) }
}

/// `1,234` for counts.
pub fn thousands(count: u64) -> String {
    let digits = count.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// `sha256:0123456789ab` — enough to recognise a digest; the full one goes in a title.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) if hex.len() > 12 => format!("{algorithm}:{}", &hex[..12]),
        _ => digest.to_string(),
    }
}

pub fn parse_time(rfc3339: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(rfc3339, &Rfc3339).ok()
}

/// "3 days ago", "in 2 hours" (clock skew), "just now".
pub fn relative_time(then: OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (now - then).whole_seconds();
    let (future, seconds) = (seconds < 0, seconds.unsigned_abs());
    if seconds < 45 {
        return "just now".to_string();
    }
    const STEPS: [(u64, &str); 6] = [
        (60, "minute"),
        (3600, "hour"),
        (86_400, "day"),
        (7 * 86_400, "week"),
        (30 * 86_400, "month"),
        (365 * 86_400, "year"),
    ];
    let mut chosen = STEPS[0];
    for step in STEPS {
        if seconds >= step.0 {
            chosen = step;
        }
    }
    let count = ((seconds as f64) / (chosen.0 as f64)).round().max(1.0) as u64;
    let plural = if count == 1 { "" } else { "s" };
    if future { format!("in {count} {}{plural}", chosen.1) } else { format!("{count} {}{plural} ago", chosen.1) }
}

/// `2025-03-01 14:05 UTC`, for titles and tables.
pub fn absolute_time(at: OffsetDateTime) -> String {
    let utc = at.to_offset(time::UtcOffset::UTC);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", utc.year(), u8::from(utc.month()), utc.day(), utc.hour(), utc.minute())
}

/// A `<time>` element: relative text, machine-readable `datetime`, absolute time as a title.
/// Unparseable input is shown as it came (escaped).
pub fn time_element(rfc3339: &str, now: OffsetDateTime) -> Markup {
    match parse_time(rfc3339) {
        Some(at) => html! { time datetime=(rfc3339) title=(absolute_time(at)) { (relative_time(at, now)) } },
        None => html! { span { (rfc3339) } },
    }
}

/// The registry's own address as the client named it, for pull commands. Only characters a
/// host (name, IPv4, `[IPv6]`, port) can contain are accepted; anything else falls back.
pub fn sanitize_host(host: Option<&str>) -> String {
    const FALLBACK: &str = "localhost";
    let Some(host) = host.map(str::trim) else { return FALLBACK.to_string() };
    let valid = !host.is_empty()
        && host.len() <= 255
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        && !host.starts_with(['.', '-', ':']);
    if valid { host.to_ascii_lowercase() } else { FALLBACK.to_string() }
}

/// The command that pulls `reference` (`host/name:tag` or `host/name@digest`) with the owner's
/// preferred client (`io.atcr.sailor.profile` `ociClient`); `none` shows the bare reference.
pub fn pull_command(oci_client: &str, reference: &str) -> String {
    match oci_client {
        "podman" => format!("podman pull {reference}"),
        "nerdctl" => format!("nerdctl pull {reference}"),
        "buildah" => format!("buildah pull {reference}"),
        "crane" => format!("crane pull {reference} image.tar"),
        "none" => reference.to_string(),
        _ => format!("docker pull {reference}"),
    }
}

/// Human name of a client for labels ("Pull with podman").
pub fn client_label(oci_client: &str) -> &'static str {
    match oci_client {
        "podman" => "podman",
        "nerdctl" => "nerdctl",
        "buildah" => "buildah",
        "crane" => "crane",
        "none" => "any OCI client",
        _ => "docker",
    }
}

/// How an owner is shown: the handle when known, else the DID.
pub fn owner_name<'a>(did: &'a str, handle: Option<&'a str>) -> &'a str {
    handle.filter(|handle| !handle.is_empty()).unwrap_or(did)
}

/// Percent-encodes one path segment (handles and DIDs are URL-safe, but be exact anyway).
pub fn path_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// `a=1&b=x%20y`: form values percent-encoded (everything but unreserved characters).
pub fn query_string(pairs: &[(&str, String)]) -> String {
    let encode = |value: &str| {
        let mut encoded = String::with_capacity(value.len());
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                encoded.push(byte as char);
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
        encoded
    };
    pairs.iter().map(|(key, value)| format!("{}={}", encode(key), encode(value))).collect::<Vec<_>>().join("&")
}

/// A repository path (`web/nginx-mini`): each segment encoded, slashes kept.
pub fn repository_path(repository: &str) -> String {
    repository.split('/').map(path_segment).collect::<Vec<_>>().join("/")
}

pub fn user_url(owner: &str) -> String {
    format!("/u/{}", path_segment(owner))
}

pub fn repository_url(owner: &str, repository: &str) -> String {
    format!("/r/{}/{}", path_segment(owner), repository_path(repository))
}

pub fn tag_url(owner: &str, repository: &str, tag: &str) -> String {
    format!("{}/-/tag/{}", repository_url(owner, repository), path_segment(tag))
}

/// `scheme://host` for absolute links to this registry: plain http for loopback names (a
/// development server), https otherwise.
pub fn site_base_for_host(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let loopback = name == "localhost" || name.ends_with(".localhost") || name.starts_with("127.") || name == "::1";
    format!("{}://{host}", if loopback { "http" } else { "https" })
}

/// The Atom feed of a user's tag changes.
pub fn user_feed_url(owner: &str) -> String {
    format!("{}/feed.atom", user_url(owner))
}

/// The Atom feed of a repository's tag changes.
pub fn repository_feed_url(owner: &str, repository: &str) -> String {
    format!("{}/-/feed.atom", repository_url(owner, repository))
}

/// A README badge of a repository (`latest`, `size` or `tags`).
pub fn badge_url(owner: &str, repository: &str, kind: &str) -> String {
    format!("{}/-/badge/{kind}.svg", repository_url(owner, repository))
}

pub fn manifest_url(owner: &str, repository: &str, digest: &str) -> String {
    format!("{}/-/manifest/{}", repository_url(owner, repository), path_segment(digest))
}

/// A deterministic avatar for a DID (there is no avatar record in `io.atcr.*`): a symmetric
/// 5×5 pattern and a hue, both from the DID's sha256. `size` is in CSS pixels.
pub fn identicon(did: &str, size: u32) -> Markup {
    let hash = Sha256::digest(did.as_bytes());
    let hue = u16::from_be_bytes([hash[0], hash[1]]) % 360;
    let foreground = format!("hsl({hue} 62% 46%)");
    let background = format!("hsl({hue} 70% 92%)");
    let mut cells = String::new();
    for row in 0..5u32 {
        for column in 0..3u32 {
            let bit_index = (row * 3 + column) as usize;
            let on = hash[2 + bit_index / 8] >> (bit_index % 8) & 1 == 1;
            if !on {
                continue;
            }
            for x in [column, 4 - column] {
                cells.push_str(&format!(r#"<rect x="{}" y="{}" width="1" height="1"/>"#, x + 1, row + 1));
                if column == 2 {
                    break;
                }
            }
        }
    }
    html! {
        svg.identicon xmlns="http://www.w3.org/2000/svg" viewBox="0 0 7 7" width=(size) height=(size)
            aria-hidden="true" focusable="false" shape-rendering="crispEdges" {
            rect width="7" height="7" rx="1.2" fill=(background) {}
            g fill=(foreground) { (PreEscaped(cells)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_counts_read_like_other_registries() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1_500), "1.5 kB");
        assert_eq!(human_size(27_400_000), "27 MB");
        assert_eq!(human_size(3_200_000_000), "3.2 GB");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn relative_times_round_to_the_largest_unit() {
        let now = parse_time("2025-03-10T12:00:00Z").unwrap();
        let at = |text: &str| relative_time(parse_time(text).unwrap(), now);
        assert_eq!(at("2025-03-10T11:59:50Z"), "just now");
        assert_eq!(at("2025-03-10T11:58:00Z"), "2 minutes ago");
        assert_eq!(at("2025-03-10T11:00:00Z"), "1 hour ago");
        assert_eq!(at("2025-03-07T12:00:00Z"), "3 days ago");
        assert_eq!(at("2024-03-10T12:00:00+00:00"), "1 year ago");
        assert_eq!(at("2025-03-10T14:00:00Z"), "in 2 hours");
        let element = time_element("2025-03-07T12:00:00.000Z", now).into_string();
        assert!(element.contains(r#"datetime="2025-03-07T12:00:00.000Z""#), "{element}");
        assert!(element.contains(r#"title="2025-03-07 12:00 UTC""#), "{element}");
        assert_eq!(time_element("<b>", now).into_string(), "<span>&lt;b&gt;</span>");
    }

    #[test]
    fn hosts_are_sanitized_before_they_reach_a_command() {
        assert_eq!(sanitize_host(Some("registry.example:8080")), "registry.example:8080");
        assert_eq!(sanitize_host(Some("[::1]:5000")), "[::1]:5000");
        assert_eq!(sanitize_host(Some("Example.COM")), "example.com");
        assert_eq!(sanitize_host(Some("evil.com/<script>")), "localhost");
        assert_eq!(sanitize_host(Some("a b")), "localhost");
        assert_eq!(sanitize_host(Some("")), "localhost");
        assert_eq!(sanitize_host(None), "localhost");
    }

    #[test]
    fn pull_commands_follow_the_owners_client() {
        let reference = "reg.example/alice.test/hello:latest";
        assert_eq!(pull_command("docker", reference), "docker pull reg.example/alice.test/hello:latest");
        assert_eq!(pull_command("podman", reference), "podman pull reg.example/alice.test/hello:latest");
        assert_eq!(pull_command("nerdctl", reference), "nerdctl pull reg.example/alice.test/hello:latest");
        assert_eq!(pull_command("buildah", reference), "buildah pull reg.example/alice.test/hello:latest");
        assert_eq!(pull_command("crane", reference), "crane pull reg.example/alice.test/hello:latest image.tar");
        assert_eq!(pull_command("none", reference), reference);
        assert_eq!(pull_command("something-new", reference), "docker pull reg.example/alice.test/hello:latest");
    }

    #[test]
    fn urls_keep_repository_slashes_and_encode_the_rest() {
        assert_eq!(repository_url("alice.test", "web/nginx-mini"), "/r/alice.test/web/nginx-mini");
        assert_eq!(tag_url("did:plc:abc", "hello", "v1.0"), "/r/did:plc:abc/hello/-/tag/v1.0");
        assert_eq!(manifest_url("a.test", "x", "sha256:ff"), "/r/a.test/x/-/manifest/sha256:ff");
        assert_eq!(user_url("a b"), "/u/a%20b");
        assert_eq!(short_digest("sha256:0123456789abcdef"), "sha256:0123456789ab");
    }

    #[test]
    fn identicons_are_deterministic_per_did() {
        let first = identicon("did:plc:alice", 40).into_string();
        assert_eq!(first, identicon("did:plc:alice", 40).into_string());
        assert_ne!(first, identicon("did:plc:bob", 40).into_string());
        assert!(first.starts_with("<svg"), "{first}");
        assert!(!first.contains("style="), "CSP forbids style attributes: {first}");
    }
}
