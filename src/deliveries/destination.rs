//! Where a webhook may be sent. A destination is refused when it is not a plain
//! `http`/`https` URL, or when its host is — or resolves to — an address inside the
//! network kiln runs in (loopback, private, link-local, shared CGNAT space, IPv6
//! unique-local), unless an admin allowed private destinations
//! (`webhooks.allow_private`). A few addresses are refused whatever the setting: the
//! cloud metadata service, the unspecified address, multicast, broadcast and reserved
//! space are never a webhook receiver.
//!
//! A name could answer a public address to a check and a private one to the connection
//! made a moment later (DNS rebinding). So the check *is* the resolution: [`Guard`] is
//! the HTTP client's resolver; it resolves each name once, refuses the name when any of
//! its addresses is refused, and hands the connector exactly the addresses it checked.
//! An IP literal never reaches a resolver, so [`check_destination`] checks it before a
//! request is made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// The longest accepted webhook URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// The link-local address where cloud providers serve instance metadata and credentials.
const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// AWS's IPv6 instance metadata address (inside fc00::/7).
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// What kind of non-public address a destination would reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, and IPv6 site-local fec0::/10.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 100.64/10, the carrier-grade NAT range.
    Shared,
    /// fc00::/7.
    UniqueLocal,
    /// 169.254.169.254 and fd00:ec2::254.
    Metadata,
    /// 0.0.0.0/8 and `::` (connecting to 0.0.0.0 reaches this host on Linux).
    Unspecified,
    Multicast,
    Broadcast,
    /// 240.0.0.0/4.
    Reserved,
}

impl AddressClass {
    /// Whether `webhooks.allow_private` lets a destination of this class through: the
    /// ranges where a team's own receiver may live, never the metadata service nor
    /// addresses that are no receiver at all.
    pub fn allowable(self) -> bool {
        matches!(
            self,
            AddressClass::Loopback
                | AddressClass::Private
                | AddressClass::LinkLocal
                | AddressClass::Shared
                | AddressClass::UniqueLocal
        )
    }

    fn name(self) -> &'static str {
        match self {
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Shared => "a shared (carrier-grade NAT) address",
            AddressClass::UniqueLocal => "a unique-local IPv6 address",
            AddressClass::Metadata => "the cloud metadata address",
            AddressClass::Unspecified => "the unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Reserved => "a reserved address",
        }
    }
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.allowable() {
            write!(
                f,
                "{}; webhooks are not sent inside kiln's own network unless an admin sets `webhooks.allow_private`",
                self.name()
            )
        } else {
            write!(f, "{}, where webhooks are never sent", self.name())
        }
    }
}

/// Why a webhook destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("the webhook URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("the webhook URL is not a valid URL: {0}")]
    Malformed(String),
    #[error("the webhook URL must use http or https, not `{0}`")]
    Scheme(String),
    #[error("the webhook URL must not carry a user name or password")]
    Credentials,
    #[error("the webhook URL has no host")]
    NoHost,
    #[error(
        "`{host}` names this machine; webhooks are not sent inside kiln's own network unless an admin sets `webhooks.allow_private`"
    )]
    LocalName { host: String },
    #[error("`{host}` is {addr}, {class}")]
    Forbidden { host: String, addr: IpAddr, class: AddressClass },
    /// The name did not resolve. Unlike every other refusal, this one may pass.
    #[error("cannot resolve `{host}`: {cause}")]
    Unresolvable { host: String, cause: String },
}

impl DestinationError {
    /// Whether the same destination would be refused again: everything but a failed
    /// resolution.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DestinationError::Unresolvable { .. })
    }
}

impl From<DestinationError> for crate::error::ApiError {
    fn from(err: DestinationError) -> Self {
        crate::error::ApiError::with_message(crate::error::Code::InvalidWebhookUrl, err.to_string())
    }
}

/// Checks a webhook URL without resolving it: an absolute `http`/`https` URL of at most
/// [`MAX_URL_LEN`] bytes, without credentials, whose host is not a refused IP literal
/// nor `localhost`. Used when a task or a token names a URL, for a clear answer then;
/// names are checked again, by their addresses, each time a webhook is sent.
pub fn check_destination(url: &str, allow_private: bool) -> Result<Url, DestinationError> {
    if url.len() > MAX_URL_LEN {
        return Err(DestinationError::TooLong);
    }
    let parsed = Url::parse(url).map_err(|err| DestinationError::Malformed(err.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(DestinationError::Scheme(parsed.scheme().to_owned()));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(DestinationError::Credentials);
    }
    match parsed.host() {
        None => return Err(DestinationError::NoHost),
        // The URL parser already turned every spelling of an address (`2130706433`,
        // `0x7f.1`, `[::ffff:7f00:1]`) into the address itself.
        Some(Host::Ipv4(ip)) => check_ip(&ip.to_string(), IpAddr::V4(ip), allow_private)?,
        Some(Host::Ipv6(ip)) => check_ip(&ip.to_string(), IpAddr::V6(ip), allow_private)?,
        Some(Host::Domain(name)) => check_name(name, allow_private)?,
    }
    Ok(parsed)
}

/// Checks a destination and resolves it, checking every address: what a sender may
/// connect to. [`Guard`] does the same inside the HTTP client; this is the same check
/// for callers that want the addresses or the reason ahead of a request.
pub async fn resolve_destination(url: &str, allow_private: bool) -> Result<Vec<SocketAddr>, DestinationError> {
    let parsed = check_destination(url, allow_private)?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    match parsed.host() {
        Some(Host::Ipv4(ip)) => Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)]),
        Some(Host::Ipv6(ip)) => Ok(vec![SocketAddr::new(IpAddr::V6(ip), port)]),
        Some(Host::Domain(name)) => resolve(name, port, allow_private).await,
        None => Err(DestinationError::NoHost),
    }
}

/// The class of a non-public address; `None` for a public one.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, ..] = ip.octets();
    Some(if ip == METADATA_V4 {
        AddressClass::Metadata
    } else if a == 0 {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::Shared
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if a >= 240 {
        AddressClass::Reserved
    } else {
        return None;
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    // An IPv4 address written as IPv6 reaches that IPv4 address: `::ffff:a.b.c.d`
    // (mapped), `::a.b.c.d` (the deprecated compatible form), and 64:ff9b::a.b.c.d (a
    // NAT64 gateway, which may sit inside the network).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip.is_unspecified() {
        return Some(AddressClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    let segments = ip.segments();
    let embedded = || Ipv4Addr::from(((u32::from(segments[6])) << 16) | u32::from(segments[7]));
    if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded());
    }
    Some(if ip == METADATA_V6 {
        AddressClass::Metadata
    } else if segments[0] & 0xfe00 == 0xfc00 {
        AddressClass::UniqueLocal
    } else if segments[0] & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if segments[0] & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else {
        return None;
    })
}

/// Refuses `ip` (reached through `host`) unless it is public, or allowed.
pub fn check_ip(host: &str, ip: IpAddr, allow_private: bool) -> Result<(), DestinationError> {
    match classify(ip) {
        Some(class) if !(allow_private && class.allowable()) => {
            Err(DestinationError::Forbidden { host: host.to_owned(), addr: ip, class })
        }
        _ => Ok(()),
    }
}

/// Refuses names that mean this machine whatever DNS says (RFC 6761), so a submission
/// naming one gets a clear answer at once. Everything else is judged by its addresses.
fn check_name(name: &str, allow_private: bool) -> Result<(), DestinationError> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if !allow_private && (name == "localhost" || name.ends_with(".localhost")) {
        return Err(DestinationError::LocalName { host: name });
    }
    Ok(())
}

/// Resolves `host` once and checks every address: one refused address refuses the name,
/// since the connector could pick any of them.
async fn resolve(host: &str, port: u16, allow_private: bool) -> Result<Vec<SocketAddr>, DestinationError> {
    let unresolvable = |cause: String| DestinationError::Unresolvable { host: host.to_owned(), cause };
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((host, port)).await.map_err(|err| unresolvable(err.to_string()))?.collect();
    if addrs.is_empty() {
        return Err(unresolvable("no addresses".to_owned()));
    }
    for addr in &addrs {
        check_ip(host, addr.ip(), allow_private)?;
    }
    Ok(addrs)
}

/// The resolver of the webhook client: the addresses it returns are the only ones the
/// client connects to, and each was checked. A refusal comes back as the request's
/// error, with the [`DestinationError`] in its source chain ([`refusal`]).
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            check_name(&host, allow_private)?;
            // Port 0: the connector puts the URL's port in.
            let addrs = resolve(&host, 0, allow_private).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The destination refusal behind a failed request, if that is why it failed.
pub fn refusal(err: &reqwest::Error) -> Option<&DestinationError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<DestinationError>() {
            return Some(refused);
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use reqwest::dns::Resolve;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        IpAddr::from_str(text).expect("address")
    }

    #[test]
    fn addresses_inside_the_network_are_classified() {
        use AddressClass::*;
        let table: &[(&str, Option<AddressClass>)] = &[
            ("127.0.0.1", Some(Loopback)),
            ("127.255.0.9", Some(Loopback)),
            ("::1", Some(Loopback)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.254", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("169.254.169.254", Some(Metadata)),
            ("169.254.1.1", Some(LinkLocal)),
            ("fe80::1", Some(LinkLocal)),
            ("fc00::1", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fd00:ec2::254", Some(Metadata)),
            ("fec0::1", Some(Private)),
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:169.254.169.254", Some(Metadata)),
            ("::127.0.0.1", Some(Loopback)),
            ("64:ff9b::10.0.0.1", Some(Private)),
            ("100.64.0.1", Some(Shared)),
            ("100.127.255.254", Some(Shared)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("::", Some(Unspecified)),
            ("224.0.0.1", Some(Multicast)),
            ("ff02::1", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            // Public: next to the ranges above, and well-known addresses.
            ("93.184.216.34", None),
            ("8.8.8.8", None),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("169.253.255.255", None),
            ("2606:4700:4700::1111", None),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::8.8.8.8", None),
        ];
        for (text, expected) in table {
            assert_eq!(classify(ip(text)), *expected, "{text}");
        }
    }

    #[test]
    fn refused_literals_unless_allowed_and_some_never() {
        for url in [
            "http://127.0.0.1/hook",
            "http://[::1]:8080/hook",
            "http://10.0.0.5/",
            "http://172.16.3.4/",
            "http://192.168.0.10/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://[fc00::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://100.64.0.1/",
            "http://0.0.0.0:9000/",
            // Other spellings of 127.0.0.1, which the URL parser normalises.
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
        ] {
            let err = check_destination(url, false).expect_err(url);
            assert!(matches!(err, DestinationError::Forbidden { .. }), "{url}: {err}");
        }
        for url in ["http://127.0.0.1:3000/hook", "http://10.0.0.5/", "http://[fc00::1]/", "http://100.64.0.1/"] {
            assert!(check_destination(url, true).is_ok(), "{url} allowed by allow_private");
        }
        for url in
            ["http://169.254.169.254/", "http://0.0.0.0/", "http://[::ffff:169.254.169.254]/", "http://224.0.0.1/"]
        {
            let err = check_destination(url, true).expect_err(url);
            assert!(err.to_string().contains("never"), "{url}: {err}");
        }
        assert!(check_destination("https://93.184.216.34/hook", false).is_ok());
        assert!(check_destination("https://example.com/hooks/kiln?x=1", false).is_ok());
    }

    #[test]
    fn local_names_are_refused_before_any_lookup() {
        for url in ["http://localhost/", "http://LOCALHOST:8080/", "http://localhost./", "http://api.localhost/"] {
            let err = check_destination(url, false).expect_err(url);
            assert!(matches!(err, DestinationError::LocalName { .. }), "{url}: {err}");
            assert!(err.to_string().contains("webhooks.allow_private"), "{err}");
        }
        assert!(check_destination("http://localhost:9/", true).is_ok());
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert_eq!(check_destination("ftp://example.com/", false), Err(DestinationError::Scheme("ftp".into())));
        assert_eq!(check_destination("file:///etc/passwd", false), Err(DestinationError::Scheme("file".into())));
        assert_eq!(check_destination("https://user:pw@example.com/", false), Err(DestinationError::Credentials));
        assert_eq!(check_destination("https://user@example.com/", false), Err(DestinationError::Credentials));
        assert!(matches!(check_destination("example.com/hook", false), Err(DestinationError::Malformed(_))));
        assert!(matches!(check_destination("http://", false), Err(DestinationError::Malformed(_))));
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(check_destination(&long, false), Err(DestinationError::TooLong));
        let fits = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - "https://example.com/".len()));
        assert!(check_destination(&fits, false).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_inside_the_network_are_refused() {
        // `localhost` resolves to loopback; `resolve` judges it by its addresses alone.
        let err = resolve("localhost", 80, false).await.expect_err("loopback");
        assert!(matches!(err, DestinationError::Forbidden { class: AddressClass::Loopback, .. }), "{err}");
        let addrs = resolve("localhost", 80, true).await.expect("allowed");
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80), "{addrs:?}");
        let addrs = resolve_destination("http://127.0.0.1:4321/x", true).await.expect("literal");
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 4321))]);
        assert!(resolve_destination("http://127.0.0.1:4321/x", false).await.is_err());
    }

    #[tokio::test]
    async fn the_guard_resolver_returns_only_checked_addresses() {
        let refused = Guard { allow_private: false }
            .resolve(reqwest::dns::Name::from_str("localhost").expect("name"))
            .await
            .err()
            .expect("refused");
        assert!(refused.downcast_ref::<DestinationError>().is_some(), "{refused}");
        let addrs: Vec<SocketAddr> = Guard { allow_private: true }
            .resolve(reqwest::dns::Name::from_str("localhost").expect("name"))
            .await
            .expect("allowed")
            .collect();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn a_client_with_the_guard_refuses_a_name_and_says_why() {
        // Straight to the client, past `check_destination`: the resolver alone refuses.
        let client =
            reqwest::Client::builder().dns_resolver(Guard { allow_private: false }).no_proxy().build().expect("client");
        let err = client.get("http://localhost:9/").send().await.expect_err("refused");
        let refused = refusal(&err).expect("the refusal is in the error chain");
        assert!(matches!(refused, DestinationError::LocalName { .. }), "{refused}");
    }
}
