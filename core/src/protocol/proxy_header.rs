//! The PROXY protocol, version 2 (HAProxy's binary header): how a load
//! balancer in front of ferry tells it who the client really is, and how
//! ferry tells a backend the same.
//!
//! A header is 16 fixed bytes (signature, version and command, address family
//! and transport, length of the rest) followed by the addresses and optional
//! TLVs. ferry reads TCP over IPv4 and IPv6 and the `LOCAL` command (a
//! connection of the balancer's own, such as a health check); TLVs are
//! skipped; any other family or transport carries no address ferry can use.
//! Headers are bounded ([`MAX_HEADER_LEN`]) so a peer cannot make ferry
//! buffer more than that before it has logged in.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version/command, family/transport, length.
pub const FIXED_LEN: usize = 16;
/// The longest header ferry accepts, TLVs included (the format allows 64 KiB).
pub const MAX_HEADER_LEN: usize = 4096;
/// How a version 1 (text) header starts; ferry recognises it only to refuse it.
pub const V1_PREFIX: &[u8] = b"PROXY ";

const VERSION_2: u8 = 0x20;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const FAMILY_UNSPEC: u8 = 0x00;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;
const IPV4_ADDRS_LEN: usize = 12;
const IPV6_ADDRS_LEN: usize = 36;

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The balancer's own connection (a health check): use the connection's own addresses.
    Local,
    /// A relayed connection; `None` when its address family is not one ferry
    /// carries (UNIX, UDP, unspecified): then the connection's own addresses stand.
    Proxy(Option<Addresses>),
}

/// The two ends of the client's original connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// Where the client connected to.
    pub destination: SocketAddr,
}

/// Why bytes are not an acceptable v2 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// The bytes do not start with the v2 signature (`v1`: they start as a text header).
    NotAHeader {
        /// A version 1 text header (`PROXY TCP4 ...`), which ferry does not read.
        v1: bool,
    },
    /// The version nibble is not 2.
    Version(u8),
    /// The command nibble is neither LOCAL nor PROXY.
    Command(u8),
    /// The header announces more than [`MAX_HEADER_LEN`] bytes.
    TooLong(usize),
    /// The address block is shorter than its family needs.
    Truncated {
        /// Bytes the family needs.
        needed: usize,
        /// Bytes the header has after its fixed part.
        got: usize,
    },
}

impl fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyHeaderError::NotAHeader { v1: true } => {
                write!(f, "a PROXY protocol v1 (text) header; only v2 is accepted")
            }
            ProxyHeaderError::NotAHeader { v1: false } => {
                write!(f, "no PROXY protocol v2 header")
            }
            ProxyHeaderError::Version(v) => write!(f, "PROXY header version {v}, expected 2"),
            ProxyHeaderError::Command(c) => write!(f, "PROXY header command {c} is unknown"),
            ProxyHeaderError::TooLong(n) => write!(
                f,
                "PROXY header of {n} bytes exceeds the maximum of {MAX_HEADER_LEN}"
            ),
            ProxyHeaderError::Truncated { needed, got } => write!(
                f,
                "PROXY header address block has {got} bytes, its family needs {needed}"
            ),
        }
    }
}

impl std::error::Error for ProxyHeaderError {}

/// What [`parse`] made of the bytes so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header that took the first `len` bytes.
    Header(ProxyHeader, usize),
    /// Not enough bytes yet: the header needs at least this many in all.
    Incomplete(usize),
}

/// Parses a v2 header at the start of `buf`; bytes after it are not looked at.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let sig = buf.len().min(SIGNATURE.len());
    if buf[..sig] != SIGNATURE[..sig] {
        return Err(not_a_header(buf));
    }
    if buf.len() < FIXED_LEN {
        return Ok(Parsed::Incomplete(FIXED_LEN));
    }
    let total = total_len(buf)?;
    if buf.len() < total {
        return Ok(Parsed::Incomplete(total));
    }
    let body = &buf[FIXED_LEN..total];
    let header = match buf[12] & 0x0F {
        CMD_LOCAL => ProxyHeader::Local,
        _ => ProxyHeader::Proxy(addresses(buf[13], body)?),
    };
    Ok(Parsed::Header(header, total))
}

/// The whole length of the header whose fixed part starts `fixed` (at least
/// [`FIXED_LEN`] bytes): checks signature, version, command and the bound.
pub fn total_len(fixed: &[u8]) -> Result<usize, ProxyHeaderError> {
    if fixed.len() < FIXED_LEN || fixed[..12] != SIGNATURE {
        return Err(not_a_header(fixed));
    }
    if fixed[12] & 0xF0 != VERSION_2 {
        return Err(ProxyHeaderError::Version(fixed[12] >> 4));
    }
    let command = fixed[12] & 0x0F;
    if command != CMD_LOCAL && command != CMD_PROXY {
        return Err(ProxyHeaderError::Command(command));
    }
    let total = FIXED_LEN + u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    if total > MAX_HEADER_LEN {
        return Err(ProxyHeaderError::TooLong(total));
    }
    Ok(total)
}

fn not_a_header(buf: &[u8]) -> ProxyHeaderError {
    let n = buf.len().min(V1_PREFIX.len());
    ProxyHeaderError::NotAHeader {
        v1: n > 0 && buf[..n] == V1_PREFIX[..n],
    }
}

fn addresses(family: u8, body: &[u8]) -> Result<Option<Addresses>, ProxyHeaderError> {
    let needed = match family {
        TCP_OVER_IPV4 => IPV4_ADDRS_LEN,
        TCP_OVER_IPV6 => IPV6_ADDRS_LEN,
        // UNIX, UDP or unspecified: nothing ferry can use; the rest is skipped.
        _ => return Ok(None),
    };
    if body.len() < needed {
        return Err(ProxyHeaderError::Truncated {
            needed,
            got: body.len(),
        });
    }
    let ip_len = (needed - 4) / 2;
    let ip = |b: &[u8]| -> IpAddr {
        match <[u8; 4]>::try_from(b) {
            Ok(v4) => Ipv4Addr::from(v4).into(),
            Err(_) => Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")).into(),
        }
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    Ok(Some(Addresses {
        source: SocketAddr::new(ip(&body[..ip_len]), port(2 * ip_len)),
        destination: SocketAddr::new(ip(&body[ip_len..2 * ip_len]), port(2 * ip_len + 2)),
    }))
}

/// Appends `header` in v2 form. Two addresses of different families are both
/// written as IPv6 (the IPv4 one mapped), as the format needs one family.
pub fn write(header: &ProxyHeader, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIGNATURE);
    let (command, addrs) = match header {
        ProxyHeader::Local => (CMD_LOCAL, None),
        ProxyHeader::Proxy(addrs) => (CMD_PROXY, addrs.as_ref()),
    };
    out.push(VERSION_2 | command);
    let Some(a) = addrs else {
        out.extend_from_slice(&[FAMILY_UNSPEC, 0, 0]);
        return;
    };
    match (a.source.ip(), a.destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(TCP_OVER_IPV4);
            out.extend_from_slice(&(IPV4_ADDRS_LEN as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(TCP_OVER_IPV6);
            out.extend_from_slice(&(IPV6_ADDRS_LEN as u16).to_be_bytes());
            out.extend_from_slice(&as_v6(s).octets());
            out.extend_from_slice(&as_v6(d).octets());
        }
    }
    out.extend_from_slice(&a.source.port().to_be_bytes());
    out.extend_from_slice(&a.destination.port().to_be_bytes());
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Watches the first bytes of a connection that may not send a header, to
/// refuse one as soon as it shows (a balancer ferry does not trust).
#[derive(Clone, Debug, Default)]
pub struct HeaderSniffer {
    seen: usize,
    v2: bool,
    v1: bool,
    done: bool,
}

/// What [`HeaderSniffer::feed`] concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// The connection starts with a PROXY header (`v1`: the text form).
    Header {
        /// The text form.
        v1: bool,
    },
    /// It does not: stop watching.
    NoHeader,
    /// Too few bytes to tell yet.
    Undecided,
}

impl HeaderSniffer {
    /// Looks at the next bytes read (the caller stops after a verdict).
    pub fn feed(&mut self, data: &[u8]) -> Sniffed {
        if self.done {
            return Sniffed::NoHeader;
        }
        if self.seen == 0 {
            self.v1 = true;
            self.v2 = true;
        }
        for &b in data {
            self.v2 &= SIGNATURE.get(self.seen) == Some(&b);
            self.v1 &= V1_PREFIX.get(self.seen) == Some(&b);
            self.seen += 1;
            if self.v2 && self.seen == SIGNATURE.len() {
                self.done = true;
                return Sniffed::Header { v1: false };
            }
            if self.v1 && self.seen == V1_PREFIX.len() {
                self.done = true;
                return Sniffed::Header { v1: true };
            }
            if !self.v1 && !self.v2 {
                self.done = true;
                return Sniffed::NoHeader;
            }
        }
        Sniffed::Undecided
    }
}

/// A network in CIDR form (`127.0.0.0/8`, `::1/128`; a bare address is one host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is inside (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = prefix as usize / 8;
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

impl std::str::FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("'{text}' is not a network such as \"127.0.0.0/8\" or \"::1\"");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl serde::Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(s: &str, d: &str) -> Addresses {
        Addresses {
            source: s.parse().unwrap(),
            destination: d.parse().unwrap(),
        }
    }

    #[test]
    fn the_example_from_the_spec_parses() {
        // PROXY TCP4 192.168.0.1 -> 192.168.0.11, ports 56324 -> 443.
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 168, 0, 1, 192, 168, 0, 11]);
        b.extend_from_slice(&56324u16.to_be_bytes());
        b.extend_from_slice(&443u16.to_be_bytes());
        b.extend_from_slice(b"after");
        assert_eq!(
            parse(&b),
            Ok(Parsed::Header(
                ProxyHeader::Proxy(Some(addrs("192.168.0.1:56324", "192.168.0.11:443"))),
                28
            ))
        );
    }

    #[test]
    fn headers_round_trip() {
        for h in [
            ProxyHeader::Local,
            ProxyHeader::Proxy(None),
            ProxyHeader::Proxy(Some(addrs("10.1.2.3:4000", "127.0.0.1:6009"))),
            ProxyHeader::Proxy(Some(addrs("[2001:db8::7]:1", "[::1]:6009"))),
        ] {
            let mut out = Vec::new();
            write(&h, &mut out);
            assert_eq!(parse(&out), Ok(Parsed::Header(h, out.len())));
            for cut in 0..out.len() {
                assert!(matches!(parse(&out[..cut]), Ok(Parsed::Incomplete(n)) if n > cut));
            }
        }
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let mut out = Vec::new();
        write(
            &ProxyHeader::Proxy(Some(addrs("10.0.0.1:5", "[::1]:6"))),
            &mut out,
        );
        let Ok(Parsed::Header(ProxyHeader::Proxy(Some(a)), _)) = parse(&out) else {
            panic!("{out:?}")
        };
        assert_eq!(a.source, "[::ffff:10.0.0.1]:5".parse().unwrap());
    }

    #[test]
    fn tlvs_are_skipped_and_other_families_carry_no_address() {
        let mut b = SIGNATURE.to_vec();
        // PROXY over UNIX stream with 216 address bytes and a TLV.
        b.extend_from_slice(&[0x21, 0x31, 0, 219]);
        b.extend_from_slice(&[0; 216]);
        b.extend_from_slice(&[0x04, 0, 0]);
        assert_eq!(
            parse(&b),
            Ok(Parsed::Header(ProxyHeader::Proxy(None), b.len()))
        );
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4"),
            Err(ProxyHeaderError::NotAHeader { v1: true })
        );
        assert_eq!(
            parse(b"\x10\0\0\x01"),
            Err(ProxyHeaderError::NotAHeader { v1: false })
        );
        let mut b = SIGNATURE.to_vec();
        b.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert_eq!(parse(&b), Err(ProxyHeaderError::Version(1)));
        b[12] = 0x2F;
        assert_eq!(parse(&b), Err(ProxyHeaderError::Command(0xF)));
        b[12] = 0x21;
        b[14] = 0xFF;
        assert_eq!(parse(&b), Err(ProxyHeaderError::TooLong(16 + 0xFF00)));
        b[14] = 0;
        b[15] = 4;
        b.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            parse(&b),
            Err(ProxyHeaderError::Truncated { needed: 12, got: 4 })
        );
    }

    #[test]
    fn the_sniffer_spots_headers_split_anywhere() {
        let mut v2 = Vec::new();
        write(&ProxyHeader::Local, &mut v2);
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        for (data, prefix) in [(&v2[..], 12), (&v1[..], 6)] {
            for cut in 0..prefix {
                let mut s = HeaderSniffer::default();
                let first = s.feed(&data[..cut]);
                assert_eq!(first, Sniffed::Undecided, "cut {cut}");
                assert!(matches!(s.feed(&data[cut..]), Sniffed::Header { .. }));
            }
        }
        let mut s = HeaderSniffer::default();
        assert_eq!(s.feed(b"\x2a\0\0\x01"), Sniffed::NoHeader);
        let mut s = HeaderSniffer::default();
        assert_eq!(s.feed(b"\r\n\r\n\0\r\nQUIX"), Sniffed::NoHeader);
    }

    #[test]
    fn networks_contain_their_addresses() {
        let n: Network = "127.0.0.0/8".parse().unwrap();
        assert!(n.contains("127.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("128.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let n: Network = "10.1.2.3".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.1.2.4".parse().unwrap()));
        let n: Network = "2001:db8::/33".parse().unwrap();
        assert!(n.contains("2001:db8:7fff::1".parse().unwrap()));
        assert!(!n.contains("2001:db8:8000::1".parse().unwrap()));
        assert!("0.0.0.0/0"
            .parse::<Network>()
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        for bad in ["127.0.0.0/33", "localhost", "1.2.3.4/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }
}
