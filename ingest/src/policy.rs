//! The outbound URL policy for every URL taken from user-controlled data (DID documents, PDS
//! and hold endpoints): https only, and never loopback, private, link-local, unique-local or
//! cloud-metadata addresses, unless the operator allows loopback for local development.
//!
//! This checks the URL as written (IP literals and well-known local names). Checking the
//! addresses a hostname resolves to (DNS rebinding) is not done yet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Allow `http://` and loopback hosts (tests and local development only).
    pub allow_loopback: bool,
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64 // carrier-grade NAT 100.64/10
        || ip.octets()[0] == 0
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (ip.segments()[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (ip.segments()[0] & 0xffc0) == 0xfe80 // link local fe80::/10
}

impl UrlPolicy {
    pub fn check(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|error| format!("invalid URL {url:?}: {error}"))?;
        let host = parsed.host_str().ok_or_else(|| format!("URL {url:?} has no host"))?.to_ascii_lowercase();
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!("URL {url:?} carries credentials"));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip.is_loopback(),
            Ok(IpAddr::V6(ip)) => ip.is_loopback(),
            Err(_) => host == "localhost" || host.ends_with(".localhost"),
        };
        if loopback && self.allow_loopback {
            return match parsed.scheme() {
                "http" | "https" => Ok(()),
                other => Err(format!("scheme {other:?} is not allowed")),
            };
        }
        if parsed.scheme() != "https" {
            return Err(format!("only https is allowed, not {url:?}"));
        }
        let forbidden = match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => is_forbidden_v4(ip),
            Ok(IpAddr::V6(ip)) => is_forbidden_v6(ip),
            Err(_) => {
                loopback
                    || host == "metadata.google.internal"
                    || host.ends_with(".internal")
                    || host.ends_with(".local")
            }
        };
        if forbidden {
            return Err(format!("{host} is a local, private or metadata address"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_https_passes_and_local_targets_do_not() {
        let strict = UrlPolicy::default();
        assert!(strict.check("https://pds.example.com/xrpc/x").is_ok());
        for url in [
            "http://pds.example.com/",
            "https://127.0.0.1/",
            "https://localhost:2583/",
            "https://10.0.0.8/",
            "https://172.16.3.1/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://metadata.google.internal/",
            "https://user:pass@pds.example.com/",
            "file:///etc/passwd",
        ] {
            assert!(strict.check(url).is_err(), "{url} must be refused");
        }
        let dev = UrlPolicy { allow_loopback: true };
        assert!(dev.check("http://localhost:2583/xrpc").is_ok());
        assert!(dev.check("http://127.0.0.1:9999/").is_ok());
        assert!(dev.check("http://10.0.0.8/").is_err(), "the dev flag allows loopback only");
        assert!(dev.check("ftp://127.0.0.1/").is_err());
    }
}
