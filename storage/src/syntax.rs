//! The string formats of atproto (DID, handle, NSID, record key, TID, AT-URI, CID, datetime,
//! at-identifier, language), checked as the specs and the interop vectors define them.
//!
//! Why hand-written: atrium-api's string types were the candidate, but they do not cover the
//! vectors (no AT-URI type; record keys `.` and `..` accepted; no DID length limit; datetimes
//! parsed by chrono, which accepts more than atproto) and would bring the regex, chrono and
//! langtag crates and the generated lexicon code for a few dozen lines of checks. Each function
//! is a plain scan with the spec's limits; `storage/tests/interop.rs` runs every vector.

/// A DID: `did:<lowercase method>:<identifier>`, identifier chars `[a-zA-Z0-9._:%-]`, not
/// ending in `:` or `%`, at most 2,048 characters.
pub fn is_valid_did(did: &str) -> bool {
    if did.len() > 2048 {
        return false;
    }
    let Some(rest) = did.strip_prefix("did:") else {
        return false;
    };
    let Some((method, identifier)) = rest.split_once(':') else {
        return false;
    };
    if method.is_empty() || !method.bytes().all(|byte| byte.is_ascii_lowercase()) {
        return false;
    }
    if identifier.is_empty() || !identifier.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._:%-".contains(&byte))
    {
        return false;
    }
    !identifier.ends_with(':') && !identifier.ends_with('%')
}

/// A handle: a DNS name of at least two labels, each 1–63 of `[a-zA-Z0-9-]` not starting or
/// ending with `-`, the last (TLD) starting with a letter, at most 253 characters.
pub fn is_valid_handle(handle: &str) -> bool {
    if handle.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = handle.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let tld_starts_with_letter =
        labels.last().is_some_and(|tld| tld.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()));
    labels.iter().all(|label| label_ok(label)) && tld_starts_with_letter
}

/// An NSID: a reversed domain authority (at least two segments, the first starting with a
/// letter) and a name (a letter, then letters and digits, at most 63), at most 317 characters.
pub fn is_valid_nsid(nsid: &str) -> bool {
    if nsid.len() > 317 {
        return false;
    }
    let segments: Vec<&str> = nsid.split('.').collect();
    if segments.len() < 3 {
        return false;
    }
    let Some((name, authority)) = segments.split_last() else {
        return false;
    };
    let authority_ok = authority.iter().enumerate().all(|(index, segment)| {
        (1..=63).contains(&segment.len())
            && segment.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !segment.starts_with('-')
            && !segment.ends_with('-')
            && (index > 0 || segment.bytes().next().is_some_and(|byte| byte.is_ascii_alphabetic()))
    });
    let name_ok = (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|byte| byte.is_ascii_alphabetic())
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric());
    authority_ok && name_ok
}

/// A record key: 1–512 of `[a-zA-Z0-9._:~-]`, not `.` or `..`.
pub fn is_valid_record_key(rkey: &str) -> bool {
    (1..=512).contains(&rkey.len())
        && rkey != "."
        && rkey != ".."
        && rkey.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._:~-".contains(&byte))
}

const TID_ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";

/// A TID: 13 characters of base32-sortable, the first at most `j` (the top bit is 0).
pub fn is_valid_tid(tid: &str) -> bool {
    let bytes = tid.as_bytes();
    bytes.len() == 13
        && bytes.iter().all(|byte| TID_ALPHABET.contains(byte))
        && bytes.first().is_some_and(|first| b"234567abcdefghij".contains(first))
}

/// An at-identifier: a handle or a DID.
pub fn is_valid_at_identifier(identifier: &str) -> bool {
    if identifier.starts_with("did:") { is_valid_did(identifier) } else { is_valid_handle(identifier) }
}

/// An AT-URI in the restricted form Lexicon's `at-uri` uses: `at://<did or handle>`, optionally
/// `/<nsid>` and then `/<record key>`; no query, no fragment, at most 8 KB.
pub fn is_valid_at_uri(uri: &str) -> bool {
    if uri.len() > 8 * 1024 {
        return false;
    }
    let Some(rest) = uri.strip_prefix("at://") else {
        return false;
    };
    let mut parts = rest.split('/');
    let authority = parts.next().unwrap_or_default();
    if !is_valid_at_identifier(authority) {
        return false;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => true,
        (Some(collection), None, _) => is_valid_nsid(collection),
        (Some(collection), Some(rkey), None) => is_valid_nsid(collection) && is_valid_record_key(rkey),
        (Some(_), Some(_), Some(_)) => false,
    }
}

/// A generic URI as Lexicon's `uri` format checks it: a scheme (a letter, then letters, digits,
/// `+`, `.`, `-`), `:`, optionally `//`, then at least one character that is not `/`, and no
/// whitespace anywhere; at most 8 KB.
pub fn is_valid_uri(uri: &str) -> bool {
    if uri.len() > 8 * 1024 || uri.chars().any(char::is_whitespace) {
        return false;
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme.bytes().next().is_some_and(|byte| byte.is_ascii_alphabetic())
        && scheme.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"+.-".contains(&byte));
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    scheme_ok && rest.chars().next().is_some_and(|first| first != '/')
}

/// A CID string, as Lexicon's `cid` format checks it: 8–256 characters of `[a-zA-Z0-9+=]`, and
/// not a CIDv0 (`Qm…`, which atproto does not use).
pub fn is_valid_cid_syntax(cid: &str) -> bool {
    (8..=256).contains(&cid.len())
        && cid.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'=')
        && !cid.starts_with("Qmb")
}

/// An atproto datetime: RFC 3339 with uppercase `T` and a `Z` or `±hh:mm` offset (not
/// `-00:00`), seconds required, any number of fractional digits, and a real date and time
/// (month 1–12, the month's days, hour ≤ 23, minute and second ≤ 59) not before year 0 in UTC.
pub fn is_valid_datetime(datetime: &str) -> bool {
    parse_datetime(datetime).is_some()
}

/// Seconds since 0000-01-01T00:00:00Z of a valid atproto datetime.
fn parse_datetime(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes.len() > 64 {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let slice = bytes.get(range)?;
        if !slice.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(slice.iter().fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|(index, separator)| bytes[*index] != *separator) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let mut position = 19;
    if bytes.get(position) == Some(&b'.') {
        let fraction = bytes[position + 1..].iter().take_while(|byte| byte.is_ascii_digit()).count();
        if fraction == 0 {
            return None;
        }
        position += 1 + fraction;
    }
    let offset_minutes = match &bytes[position..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let offset_digits = [*h1, *h2, *m1, *m2];
            if !offset_digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let hours = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let minutes = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            if hours > 23 || minutes > 59 || (*sign == b'-' && hours == 0 && minutes == 0) {
                return None;
            }
            let total = hours * 60 + minutes;
            if *sign == b'-' { -total } else { total }
        }
        _ => return None,
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 0000-01-01 (proleptic Gregorian), then the instant in UTC.
    let days_before_year = year * 365 + (year + 3) / 4 - (year + 99) / 100 + (year + 399) / 400;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let month_index = usize::try_from(month - 1).ok()?;
    let days = days_before_year + cumulative[month_index] + i64::from(leap && month > 2) + day - 1;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    (seconds >= 0).then_some(seconds)
}

/// A BCP 47 language tag as atproto accepts it: a lowercase 2–3 letter primary language (or a
/// grandfathered `i-…` / registered irregular tag, or a private-use `x-…` tag), then optional
/// extended language, script, region, variants, extensions and private use, with no variant or
/// extension singleton repeated (case-insensitively).
pub fn is_valid_language(tag: &str) -> bool {
    const GRANDFATHERED: [&str; 26] = [
        "en-GB-oed",
        "i-ami",
        "i-bnn",
        "i-default",
        "i-enochian",
        "i-hak",
        "i-klingon",
        "i-lux",
        "i-mingo",
        "i-navajo",
        "i-pwn",
        "i-tao",
        "i-tay",
        "i-tsu",
        "sgn-BE-FR",
        "sgn-BE-NL",
        "sgn-CH-DE",
        "art-lojban",
        "cel-gaulish",
        "no-bok",
        "no-nyn",
        "zh-guoyu",
        "zh-hakka",
        "zh-min",
        "zh-min-nan",
        "zh-xiang",
    ];
    if GRANDFATHERED.contains(&tag) {
        return true;
    }
    let subtags: Vec<&str> = tag.split('-').collect();
    let alpha = |s: &str, range: std::ops::RangeInclusive<usize>| {
        range.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphabetic())
    };
    let alnum = |s: &str, range: std::ops::RangeInclusive<usize>| {
        range.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    let private_use = |rest: &[&str]| !rest.is_empty() && rest.iter().all(|s| alnum(s, 1..=8));
    let Some((first, rest)) = subtags.split_first() else {
        return false;
    };
    if first.eq_ignore_ascii_case("x") {
        return private_use(rest);
    }
    if !(alpha(first, 2..=3) && first.bytes().all(|b| b.is_ascii_lowercase())) {
        return false;
    }
    let mut index = 0;
    // Up to three extended language subtags.
    while index < rest.len() && index < 3 && alpha(rest[index], 3..=3) {
        index += 1;
    }
    if index < rest.len() && alpha(rest[index], 4..=4) {
        index += 1;
    }
    if index < rest.len()
        && (alpha(rest[index], 2..=2) || (rest[index].len() == 3 && rest[index].bytes().all(|b| b.is_ascii_digit())))
    {
        index += 1;
    }
    let mut variants: Vec<String> = Vec::new();
    while index < rest.len() {
        let subtag = rest[index];
        let is_variant = alnum(subtag, 5..=8)
            || (subtag.len() == 4 && subtag.as_bytes()[0].is_ascii_digit() && alnum(subtag, 4..=4));
        if !is_variant {
            break;
        }
        let lower = subtag.to_ascii_lowercase();
        if variants.contains(&lower) {
            return false;
        }
        variants.push(lower);
        index += 1;
    }
    let mut singletons: Vec<u8> = Vec::new();
    while index < rest.len() {
        let subtag = rest[index];
        if subtag.len() != 1 || !subtag.as_bytes()[0].is_ascii_alphanumeric() {
            return false;
        }
        let singleton = subtag.as_bytes()[0].to_ascii_lowercase();
        if singleton == b'x' {
            return private_use(&rest[index + 1..]);
        }
        if singletons.contains(&singleton) {
            return false;
        }
        singletons.push(singleton);
        index += 1;
        let start = index;
        while index < rest.len() && alnum(rest[index], 2..=8) {
            index += 1;
        }
        if index == start {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_of_each_format() {
        assert!(is_valid_did("did:plc:7iza6de2dwap2sbkpav7c6c6"));
        assert!(!is_valid_did("did:METHOD:val"));
        assert!(is_valid_handle("alice.test") && !is_valid_handle("john.0"));
        assert!(is_valid_nsid("io.atcr.manifest") && !is_valid_nsid("com.example.fooBar.2"));
        assert!(is_valid_record_key("self") && !is_valid_record_key(".."));
        assert!(is_valid_tid("3jzfcijpj2z2a") && !is_valid_tid("kjzfcijpj2z2a"));
        assert!(is_valid_at_uri("at://did:plc:asdf123/com.atproto.feed.post/record"));
        assert!(!is_valid_at_uri("at://did:plc:asdf123/com.atproto.feed.post/%30"));
        assert!(is_valid_datetime("1985-04-12T23:20:50.123+01:45"));
        assert!(!is_valid_datetime("1985-04-12T23:20:50.123-00:00"));
        assert!(!is_valid_datetime("0000-01-01T00:00:00+01:00"), "before year 0 in UTC");
        assert!(is_valid_datetime("0000-01-01T00:00:00-01:00"));
        assert!(!is_valid_datetime("2023-02-29T00:00:00Z") && is_valid_datetime("2024-02-29T00:00:00Z"));
        assert!(is_valid_language("pt-BR") && !is_valid_language("JA") && !is_valid_language("de-DE-1901-1901"));
    }
}
