//! Link extraction and link-check signals on server-visible text.
//!
//! Pure functions: nothing here resolves a name or opens a connection. A message is split on whitespace (and on
//! `<>"(){}|`); each piece, trimmed of surrounding punctuation, is a link when it
//! - starts with `http://` or `https://` (any case) and has a valid host, or
//! - starts with `www.` and has a host of at least two labels, or
//! - is a bare domain (`txttowin.co.uk/x`) whose last label is a known top-level domain, or
//! - is a bare IPv4 address followed by a port or a path (`1.2.3.4/x`; a bare `1.2.3.4` is not a link).
//!
//! An e-mail address (`@` without a scheme) is not a link. Each link adds to the [`LinkStats`] counters, which
//! [`LinkStats::signals`] turns into named [`Signal`]s with fixed weights:
//!
//! | signal | weight | counts links whose host |
//! | --- | --- | --- |
//! | `url` | 0.5 | is any link |
//! | `url_shortener` | 1.5 | is a URL shortener (`bit.ly`, `tinyurl.com`, ...; subdomains too) |
//! | `ip_host` | 2.0 | is a raw IPv4 or bracketed IPv6 address |
//! | `suspicious_tld` | 1.0 | ends in a TLD common in abuse reports (`.tk`, `.xyz`, `.top`, `.zip`, ...) |
//! | `punycode_host` | 2.0 | has a label starting `xn--` (an encoded, possibly lookalike, Unicode name) |
//! | `non_ascii_host` | 1.5 | contains non-ASCII letters (a possible homograph, e.g. Cyrillic `а` for `a`) |
//! | `userinfo_in_url` | 2.0 | is preceded by `user@` (`http://bank.com@evil.example/` goes to `evil.example`) |
//!
//! The weights are hand-set priors for a downstream combiner (the SMS corpus has too few links to learn them);
//! [`LinkStats::score`] is their weighted sum. The classifier also gets each non-zero signal as a feature, so its
//! own weights for them are learned from data.

use serde::Serialize;

/// Hosts of public URL shorteners; a host matches when it equals one or is a subdomain of one.
pub const SHORTENERS: &[&str] = &[
    "adf.ly",
    "bit.ly",
    "bitly.com",
    "bl.ink",
    "buff.ly",
    "clck.ru",
    "cutt.ly",
    "goo.gl",
    "is.gd",
    "lnkd.in",
    "ow.ly",
    "rb.gy",
    "rebrand.ly",
    "s.id",
    "shorte.st",
    "shorturl.at",
    "soo.gd",
    "t.co",
    "t.ly",
    "tiny.cc",
    "tinyurl.com",
    "tr.im",
    "u.to",
    "v.gd",
    "wp.me",
    "x.co",
];

/// Top-level domains over-represented in abuse reports (cheap or free registration, or confusable with file names).
pub const SUSPICIOUS_TLDS: &[&str] = &[
    "accountant",
    "bid",
    "buzz",
    "cam",
    "cf",
    "cfd",
    "click",
    "country",
    "cricket",
    "cyou",
    "date",
    "download",
    "faith",
    "ga",
    "gdn",
    "gq",
    "icu",
    "kim",
    "link",
    "loan",
    "men",
    "ml",
    "monster",
    "mov",
    "party",
    "racing",
    "rest",
    "review",
    "sbs",
    "science",
    "stream",
    "tk",
    "top",
    "trade",
    "win",
    "work",
    "xyz",
    "zip",
];

/// Other top-level domains accepted for a bare domain without `http://` or `www.`.
const COMMON_TLDS: &[&str] = &[
    "ac", "app", "asia", "at", "au", "be", "biz", "br", "ca", "cc", "ch", "cn", "co", "com", "de",
    "dk", "edu", "es", "eu", "fi", "fr", "gov", "hk", "ie", "in", "info", "int", "io", "it", "jp",
    "kr", "ly", "me", "mil", "mobi", "mx", "my", "name", "net", "nl", "no", "nz", "org", "ph",
    "pl", "pro", "ru", "se", "sg", "shop", "site", "tel", "tv", "tw", "uk", "us", "ws", "za",
];

/// A link found in a message. All fields borrow from the message text, as written (not lower-cased).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link<'a> {
    /// The link as written, without surrounding punctuation.
    pub text: &'a str,
    /// Its host, without user info, port, brackets or trailing dot.
    pub host: &'a str,
    /// Whether it starts with `http://` or `https://`.
    pub has_scheme: bool,
    /// Whether its host is preceded by `user@`.
    pub has_userinfo: bool,
    /// Whether its host is an IPv4 or IPv6 address.
    pub is_ip: bool,
}

/// One named link-check signal: how many links raised it, and the weight of each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Signal {
    /// Stable name, e.g. `url_shortener`.
    pub name: &'static str,
    /// Number of links in the message that raised it (at least 1).
    pub count: u32,
    /// Weight per link (see the module documentation).
    pub weight: f64,
}

/// Counters of link-check signals in one message. `LinkStats::of` does not allocate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    /// Links of any kind.
    pub urls: u32,
    /// Links to a URL shortener.
    pub shorteners: u32,
    /// Links whose host is an IP address.
    pub ip_hosts: u32,
    /// Links whose host ends in a suspicious TLD.
    pub suspicious_tlds: u32,
    /// Links with an `xn--` (punycode) label.
    pub punycode: u32,
    /// Links whose host has non-ASCII characters.
    pub non_ascii_hosts: u32,
    /// Links with `user@` before the host.
    pub userinfo: u32,
}

impl LinkStats {
    /// Scans `text` for links and counts their signals.
    pub fn of(text: &str) -> Self {
        let mut stats = Self::default();
        for_each_link(text, |link| stats.add(&link));
        stats
    }

    fn add(&mut self, link: &Link<'_>) {
        self.urls += 1;
        let host = link.host;
        if SHORTENERS.iter().any(|s| host_matches(host, s)) {
            self.shorteners += 1;
        }
        if link.is_ip {
            self.ip_hosts += 1;
        } else {
            let tld = host.rsplit('.').next().unwrap_or(host);
            if SUSPICIOUS_TLDS.iter().any(|t| tld.eq_ignore_ascii_case(t)) {
                self.suspicious_tlds += 1;
            }
        }
        if host.split('.').any(|label| {
            label
                .as_bytes()
                .get(..4)
                .is_some_and(|head| head.eq_ignore_ascii_case(b"xn--"))
        }) {
            self.punycode += 1;
        }
        if !host.is_ascii() {
            self.non_ascii_hosts += 1;
        }
        if link.has_userinfo {
            self.userinfo += 1;
        }
    }

    /// The counters as `(name, count, weight)` triples, in a fixed order, including zero counts.
    pub(crate) fn all(&self) -> [(&'static str, u32, f64); 7] {
        [
            ("url", self.urls, 0.5),
            ("url_shortener", self.shorteners, 1.5),
            ("ip_host", self.ip_hosts, 2.0),
            ("suspicious_tld", self.suspicious_tlds, 1.0),
            ("punycode_host", self.punycode, 2.0),
            ("non_ascii_host", self.non_ascii_hosts, 1.5),
            ("userinfo_in_url", self.userinfo, 2.0),
        ]
    }

    /// The non-zero signals, in the order of the table in the module documentation.
    pub fn signals(&self) -> Vec<Signal> {
        self.all()
            .into_iter()
            .filter(|&(_, count, _)| count > 0)
            .map(|(name, count, weight)| Signal {
                name,
                count,
                weight,
            })
            .collect()
    }

    /// Weighted sum of the signals: 0 for a message without links.
    pub fn score(&self) -> f64 {
        self.all()
            .iter()
            .map(|&(_, count, weight)| f64::from(count) * weight)
            .sum()
    }
}

/// The non-zero link-check signals of `text`; shorthand for `LinkStats::of(text).signals()`.
pub fn signals(text: &str) -> Vec<Signal> {
    LinkStats::of(text).signals()
}

/// All links in `text`, in order of appearance.
pub fn extract(text: &str) -> Vec<Link<'_>> {
    let mut links = Vec::new();
    for_each_link(text, |link| links.push(link));
    links
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '<' | '>' | '"' | '(' | ')' | '{' | '}' | '|')
}

/// Calls `f` for each link in `text`, without allocating.
pub(crate) fn for_each_link<'a>(text: &'a str, mut f: impl FnMut(Link<'a>)) {
    // Cheap pre-check: every link form has a dot or a scheme's colon in it.
    if !text.contains(['.', ':']) {
        return;
    }
    for piece in text.split(is_separator) {
        let piece = piece
            .trim_start_matches(|c: char| !c.is_alphanumeric())
            .trim_end_matches(|c: char| {
                matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | '\'' | '*' | '`')
            });
        if piece.len() >= 4 && piece.contains(['.', ':']) {
            if let Some(link) = parse(piece) {
                f(link);
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    // The prefix is ASCII, so a match ends on a char boundary.
    head.eq_ignore_ascii_case(prefix.as_bytes())
        .then(|| &s[prefix.len()..])
}

/// Whether `host` is `domain` or a subdomain of it, ignoring ASCII case.
fn host_matches(host: &str, domain: &str) -> bool {
    let (h, d) = (host.as_bytes(), domain.as_bytes());
    if h.len() < d.len() || !h[h.len() - d.len()..].eq_ignore_ascii_case(d) {
        return false;
    }
    h.len() == d.len() || h[h.len() - d.len() - 1] == b'.'
}

fn is_ipv4(host: &str) -> bool {
    let mut parts = 0;
    for part in host.split('.') {
        parts += 1;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        // At most three ASCII digits: parsing cannot fail.
        if part.parse::<u16>().map_or(true, |v| v > 255) {
            return false;
        }
    }
    parts == 4
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn parse(piece: &str) -> Option<Link<'_>> {
    let (rest, has_scheme) = match strip_prefix_ignore_case(piece, "https://")
        .or_else(|| strip_prefix_ignore_case(piece, "http://"))
    {
        Some(rest) => (rest, true),
        None => (piece, false),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let (has_userinfo, host_port) = match authority.rfind('@') {
        Some(at) => (true, &authority[at + 1..]),
        None => (false, authority),
    };
    if has_userinfo && !has_scheme {
        // An e-mail address, not a link.
        return None;
    }
    if let Some(bracketed) = host_port.strip_prefix('[') {
        // IPv6 literal: only meaningful with a scheme.
        let (host, after) = bracketed.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        let ipv6_ok = host.contains(':')
            && host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
        return (has_scheme && port_ok && ipv6_ok).then_some(Link {
            text: piece,
            host,
            has_scheme,
            has_userinfo,
            is_ip: true,
        });
    }
    let (host, port) = match host_port.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host_port, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let host = host.trim_end_matches('.');
    if host.is_empty() || !host.split('.').all(valid_label) {
        return None;
    }
    let is_ip = is_ipv4(host);
    let labels = host.split('.').count();
    let tld = host.rsplit('.').next().unwrap_or(host);
    let known_tld = COMMON_TLDS
        .iter()
        .chain(SUSPICIOUS_TLDS)
        .any(|t| tld.eq_ignore_ascii_case(t));
    let accepted = if has_scheme {
        true
    } else if strip_prefix_ignore_case(host, "www.").is_some() {
        labels >= 3 || (labels == 2 && !is_ip)
    } else if is_ip {
        port.is_some() || authority_end < rest.len()
    } else {
        labels >= 2 && known_tld
    };
    accepted.then_some(Link {
        text: piece,
        host,
        has_scheme,
        has_userinfo,
        is_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> Vec<&str> {
        extract(text).into_iter().map(|l| l.host).collect()
    }

    #[test]
    fn finds_links_in_sms_forms() {
        assert_eq!(hosts("18 T&C www.txttowin.co.uk"), ["www.txttowin.co.uk"]);
        assert_eq!(
            hosts("See her: www.SMS.ac/u/nat27081980 STOP?"),
            ["www.SMS.ac"]
        );
        assert_eq!(hosts("wap. mobsi.com is 391784."), ["mobsi.com"]);
        assert_eq!(
            hosts("go to HTTPS://Example.org:8443/a?b=c."),
            ["Example.org"]
        );
        assert_eq!(hosts("(http://x.y/z)"), ["x.y"]);
        assert_eq!(hosts("<www.a.com>, \"b.net\""), ["www.a.com", "b.net"]);
    }

    #[test]
    fn ignores_things_that_are_not_links() {
        for text in [
            "",
            "no dots here",
            "Stupid.its not possible",
            "ok..come to my home",
            "Ms.Suman called",
            "mail me at john@example.com",
            "http://",
            "http:// www.",
            "version 1.2.3.4 installed",
            "www.",
            "price 3.50 today",
            "http://-bad-.com",
            "http://a.com:port/x",
        ] {
            assert!(extract(text).is_empty(), "{text:?} -> {:?}", extract(text));
        }
    }

    #[test]
    fn link_text_excludes_trailing_punctuation() {
        let links = extract("visit bit.ly/abc... now!");
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].text, "bit.ly/abc");
    }

    #[test]
    fn shortener_matches_whole_labels_only() {
        assert_eq!(LinkStats::of("bit.ly/x").shorteners, 1);
        assert_eq!(LinkStats::of("http://WWW.BIT.LY/x").shorteners, 1);
        assert_eq!(LinkStats::of("http://notbit.ly/x").shorteners, 0);
        assert_eq!(LinkStats::of("http://bit.ly.evil.com/x").shorteners, 0);
        assert_eq!(LinkStats::of("t.co/abc").shorteners, 1);
    }

    #[test]
    fn ip_hosts_at_their_edges() {
        assert_eq!(LinkStats::of("http://192.168.0.1/login").ip_hosts, 1);
        assert_eq!(LinkStats::of("10.0.0.255:8080").ip_hosts, 1);
        assert_eq!(LinkStats::of("10.0.0.1/x").ip_hosts, 1);
        // A bare quad is too often a version number to count.
        assert_eq!(LinkStats::of("10.0.0.1").urls, 0);
        // 256 is not an octet: with a scheme it is still a link, but not to an IP host.
        let stats = LinkStats::of("http://256.1.1.1/x");
        assert_eq!((stats.urls, stats.ip_hosts), (1, 0));
        assert_eq!(LinkStats::of("http://1.2.3/x").ip_hosts, 0);
        assert_eq!(LinkStats::of("http://[2001:db8::1]:443/x").ip_hosts, 1);
        assert_eq!(LinkStats::of("[2001:db8::1]/x").urls, 0);
    }

    #[test]
    fn suspicious_tlds_punycode_and_lookalikes() {
        assert_eq!(LinkStats::of("claim at prize.tk").suspicious_tlds, 1);
        assert_eq!(LinkStats::of("claim at prize.TOP/now").suspicious_tlds, 1);
        assert_eq!(LinkStats::of("claim at prize.com").suspicious_tlds, 0);
        // `.tk` is a suffix of the host only when it is the last label.
        assert_eq!(LinkStats::of("http://tk.example.com").suspicious_tlds, 0);
        assert_eq!(LinkStats::of("http://xn--pypal-4ve.com/login").punycode, 1);
        assert_eq!(LinkStats::of("http://a.XN--80AK6AA92E.com").punycode, 1);
        assert_eq!(LinkStats::of("http://xn-.com").punycode, 0);
        // A multi-byte character across the fourth byte of a label.
        let stats = LinkStats::of("http://a\u{431}\u{432}.com/x");
        assert_eq!(
            (stats.urls, stats.punycode, stats.non_ascii_hosts),
            (1, 0, 1)
        );
        // Cyrillic 'а' (U+0430) in "pаypal".
        let stats = LinkStats::of("login at p\u{430}ypal.com now");
        assert_eq!((stats.urls, stats.non_ascii_hosts), (1, 1));
        // Emoji are not host characters.
        assert_eq!(LinkStats::of("http://😀.com").urls, 0);
    }

    #[test]
    fn userinfo_trick() {
        let links = extract("http://paypal.com@evil.example/x");
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].host, "evil.example");
        assert!(links[0].has_userinfo);
        assert_eq!(
            LinkStats::of("http://paypal.com@evil.example/x").userinfo,
            1
        );
    }

    #[test]
    fn random_text_never_panics() {
        let palette: Vec<char> = "ab.:/@[]-xn09 é\u{431}\u{432}😀wWtTkK?#,".chars().collect();
        let mut rng = crate::rng::SplitMix64::new(3);
        for _ in 0..20_000 {
            let len = rng.below(24);
            let text: String = (0..len)
                .map(|_| palette[rng.below(palette.len())])
                .collect();
            for link in extract(&text) {
                assert!(
                    text.contains(link.text) && link.text.contains(link.host),
                    "{text:?}: {link:?}"
                );
            }
            let _ = LinkStats::of(&text).score();
        }
    }

    #[test]
    fn signals_are_named_weighted_and_summed() {
        assert!(signals("hello there").is_empty());
        assert_eq!(LinkStats::of("hello").score(), 0.0);
        let s = signals("go http://1.2.3.4/x and bit.ly/y");
        let names: Vec<_> = s.iter().map(|s| (s.name, s.count)).collect();
        assert_eq!(names, [("url", 2), ("url_shortener", 1), ("ip_host", 1)]);
        assert_eq!(
            LinkStats::of("go http://1.2.3.4/x and bit.ly/y").score(),
            2.0 * 0.5 + 1.5 + 2.0
        );
    }
}
