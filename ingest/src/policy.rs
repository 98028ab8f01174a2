//! The outbound URL policy for every URL taken from user-controlled data (DID documents, PDS
//! and hold endpoints): https only, and never loopback, private, link-local, unique-local,
//! carrier-grade NAT or cloud-metadata addresses, unless the operator allows loopback for local
//! development (`--dev-allow-loopback`, which allows loopback and nothing else).
//!
//! Two gates, both needed: [`UrlPolicy::check`] refuses a URL by what it says (scheme,
//! credentials, IP literals, local names) before any connection; [`PolicyResolver`] is the DNS
//! resolver of every policy-bound HTTP client and refuses a hostname whose addresses include a
//! forbidden one, so a public name pointing at `10.0.0.1` (or rebinding to it) gets no
//! connection either. Both decide with the pure functions [`UrlPolicy::ip_allowed`] and
//! [`UrlPolicy::filter_resolved`], which the tests exercise without sending any traffic.
//!
//! Addresses that embed an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
//! `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the IPv4 address inside.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlPolicy {
    /// Allow `http://` and loopback hosts (tests and local development only).
    pub allow_loopback: bool,
}

/// Why an address is refused, or `None` when it is a public unicast address.
fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_link_local() {
        // 169.254.0.0/16 holds the cloud metadata endpoint 169.254.169.254.
        return Some("link-local or metadata");
    }
    if ip.is_private() {
        return Some("private");
    }
    if a == 100 && (b & 0xc0) == 64 {
        return Some("carrier-grade NAT");
    }
    if a == 0 || ip.is_unspecified() || ip.is_broadcast() {
        return Some("unspecified or broadcast");
    }
    if ip.is_multicast() || a >= 240 {
        return Some("multicast or reserved");
    }
    if a == 192 && b == 0 && ip.octets()[2] == 0 {
        return Some("IETF protocol assignment");
    }
    if a == 198 && (b & 0xfe) == 18 {
        return Some("benchmarking");
    }
    None
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = ip.segments();
    let octets = ip.octets();
    let tail = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks); not :: or ::1.
    if segments[..6] == [0; 6] && segments[6] != 0 {
        return Some(tail);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    // 6to4 2002:aabb:ccdd::/48.
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    if (first & 0xfe00) == 0xfc00 {
        return Some("unique local (fc00::/7)");
    }
    if (first & 0xffc0) == 0xfe80 || (first & 0xffc0) == 0xfec0 {
        return Some("link-local or site-local");
    }
    if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        return Some("documentation");
    }
    None
}

/// Why `ip` is refused, whatever the flag says.
fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback() || embedded_v4(ip).is_some_and(|v4| v4.is_loopback()),
    }
}

impl UrlPolicy {
    /// Whether a connection to `ip` is allowed: public unicast only, plus loopback with the
    /// development flag.
    pub fn ip_allowed(&self, ip: IpAddr) -> Result<(), String> {
        if self.allow_loopback && is_loopback(ip) {
            return Ok(());
        }
        match forbidden(ip) {
            Some(kind) => Err(format!("{ip} is a {kind} address")),
            None => Ok(()),
        }
    }

    /// What a resolved hostname may connect to. One forbidden address refuses the whole name
    /// (a name that mixes public and private addresses is a rebinding or misconfiguration, and
    /// connecting to "the public one" would depend on the client's address order).
    pub fn filter_resolved(&self, host: &str, addresses: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
        if addresses.is_empty() {
            return Err(format!("{host} resolves to no address"));
        }
        for address in addresses {
            self.ip_allowed(address.ip()).map_err(|reason| format!("{host} resolves to {reason}"))?;
        }
        Ok(addresses.to_vec())
    }

    /// A DNS resolver for HTTP clients that enforces this policy on every resolved address.
    pub fn resolver(&self) -> Arc<PolicyResolver> {
        Arc::new(PolicyResolver { policy: *self })
    }

    /// Checks a URL by what it says, before any connection: scheme, credentials, IP literals
    /// and local names. Hostnames are checked again, by address, by [`PolicyResolver`].
    pub fn check(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|error| format!("invalid URL {url:?}: {error}"))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!("URL {url:?} carries credentials"));
        }
        let host = match parsed.host() {
            Some(url::Host::Domain(domain)) => Host::Name(domain.to_ascii_lowercase()),
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            None => return Err(format!("URL {url:?} has no host")),
        };
        let loopback = match &host {
            Host::Ip(ip) => is_loopback(*ip),
            Host::Name(name) => name == "localhost" || name.ends_with(".localhost"),
        };
        let allowed_scheme = if loopback && self.allow_loopback { &["http", "https"][..] } else { &["https"][..] };
        if !allowed_scheme.contains(&parsed.scheme()) {
            return Err(format!("only https is allowed, not {url:?}"));
        }
        match host {
            Host::Ip(ip) => self.ip_allowed(ip),
            Host::Name(_) if loopback && self.allow_loopback => Ok(()),
            Host::Name(name) => {
                let local_name = loopback
                    || name == "metadata.google.internal"
                    || name.ends_with(".internal")
                    || name.ends_with(".local")
                    || name.ends_with(".localdomain")
                    || !name.contains('.');
                if local_name {
                    return Err(format!("{name} is a local, private or metadata name"));
                }
                Ok(())
            }
        }
    }
}

enum Host {
    Name(String),
    Ip(IpAddr),
}

/// The DNS resolver of policy-bound HTTP clients: the system resolver, then
/// [`UrlPolicy::filter_resolved`]. IP-literal URLs never reach a resolver; [`UrlPolicy::check`]
/// has judged them already.
#[derive(Debug)]
pub struct PolicyResolver {
    policy: UrlPolicy,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = policy.filter_resolved(&host, &resolved).map_err(PolicyRefused)?;
            let addresses: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

/// A resolved address the policy refused (the error reqwest reports for the request).
#[derive(Debug, thiserror::Error)]
#[error("refused by the outbound URL policy: {0}")]
pub struct PolicyRefused(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 443)).collect()
    }

    #[test]
    fn public_https_passes_and_local_targets_do_not() {
        let strict = UrlPolicy::default();
        assert!(strict.check("https://pds.example.com/xrpc/x").is_ok());
        assert!(strict.check("https://8.8.8.8/").is_ok());
        assert!(strict.check("https://[2606:4700::1111]/").is_ok());
        for url in [
            "http://pds.example.com/",
            "https://127.0.0.1/",
            "https://127.8.9.10:8443/",
            "https://localhost:2583/",
            "https://sub.localhost/",
            "https://10.0.0.8/",
            "https://172.16.3.1/",
            "https://172.31.255.254/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fc00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:c0a8:0101::1]/",
            "https://[::]/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://0x7f000001/",
            "https://2130706433/",
            "https://017700000001/",
            "https://metadata.google.internal/",
            "https://printer.local/",
            "https://intranet/",
            "https://user:pass@pds.example.com/",
            "file:///etc/passwd",
            "gopher://pds.example.com/",
        ] {
            assert!(strict.check(url).is_err(), "{url} must be refused");
        }
        let dev = UrlPolicy { allow_loopback: true };
        assert!(dev.check("http://localhost:2583/xrpc").is_ok());
        assert!(dev.check("http://127.0.0.1:9999/").is_ok());
        assert!(dev.check("http://[::1]:9999/").is_ok());
        assert!(dev.check("http://10.0.0.8/").is_err(), "the dev flag allows loopback only");
        assert!(dev.check("https://169.254.169.254/").is_err(), "the dev flag allows loopback only");
        assert!(dev.check("http://pds.example.com/").is_err(), "http stays refused for other hosts");
        assert!(dev.check("ftp://127.0.0.1/").is_err());
    }

    #[test]
    fn the_issue_ranges_are_refused_by_address() {
        let strict = UrlPolicy::default();
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "::1",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.0.1",
            "192.168.255.255",
            "169.254.169.254",
            "fc00::1",
            "fdff:ffff::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:192.168.1.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:0001::",
            "fe80::1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(strict.ip_allowed(ip).is_err(), "{ip} must be refused");
        }
        for ip in ["172.15.255.255", "172.32.0.1", "8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(strict.ip_allowed(ip).is_ok(), "{ip} is public");
        }
    }

    #[test]
    fn a_name_resolving_to_any_forbidden_address_is_refused() {
        let strict = UrlPolicy::default();
        let host = "pds.example.com";
        assert_eq!(strict.filter_resolved(host, &addresses(&["93.184.216.34"])).unwrap().len(), 1);
        for resolved in [
            &["127.0.0.1"][..],
            &["::1"],
            &["10.0.0.7"],
            &["172.20.1.1"],
            &["192.168.4.4"],
            &["169.254.169.254"],
            &["fd12:3456::1"],
            &["::ffff:10.0.0.1"],
            // Rebinding-style answers that mix a public and a private address.
            &["93.184.216.34", "10.0.0.1"],
            &["2606:4700::1111", "::ffff:127.0.0.1"],
            &[],
        ] {
            let error = strict.filter_resolved(host, &addresses(resolved)).unwrap_err();
            assert!(error.starts_with(host), "{error}");
        }
        let dev = UrlPolicy { allow_loopback: true };
        assert!(dev.filter_resolved("localhost", &addresses(&["127.0.0.1", "::1"])).is_ok());
        assert!(dev.filter_resolved("evil.example", &addresses(&["192.168.1.1"])).is_err());
    }
}
