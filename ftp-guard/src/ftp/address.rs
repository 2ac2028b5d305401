//! The data-address forms of FTP: the 227 reply to PASV (RFC 959 §4.1.2, parsed the loose
//! way RFC 1123 §4.1.2.6 asks for), the 229 reply to EPSV and the EPRT/EPSV arguments
//! (RFC 2428), and the PORT argument (RFC 959 §4.1.2).
//!
//! What servers send is parsed loosely (the proxy must understand every real server); what
//! clients send is parsed strictly (a half-parseable PORT is how nf_conntrack_ftp got
//! stuck, and anything the proxy accepts it must be able to reason about). Port 0 is never
//! a valid data port and is rejected everywhere.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use super::reply::Reply;

/// Why a data address could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The reply has another code than the one that carries this address form.
    #[error("expected a {expected} reply, got {got}")]
    WrongCode { expected: u16, got: u16 },
    /// No address at all: no digit in a 227 text, no `(` in a 229 text, empty argument.
    #[error("no address found")]
    NotFound,
    /// A number was expected (signs, letters and empty fields are not numbers).
    #[error("expected a decimal number")]
    NotANumber,
    /// A byte above 255, a port above 65535, or too many digits.
    #[error("number out of range")]
    NumberOutOfRange,
    /// Too few or too many fields (six numbers for 227/PORT, four fields for EPRT).
    #[error("wrong number of fields")]
    WrongFieldCount,
    /// Port 0: not a port anyone can connect to.
    #[error("port 0")]
    PortZero,
    /// The delimiter is not ASCII 33..=126 minus digits, or the delimiters differ.
    #[error("invalid delimiter")]
    BadDelimiter,
    /// EPRT network protocol other than 1 (IPv4) or 2 (IPv6).
    #[error("unsupported network protocol")]
    UnsupportedProtocol,
    /// The EPRT address does not parse for its protocol.
    #[error("invalid network address")]
    BadAddress,
    /// A 229 reply without its final delimiter and `)`.
    #[error("unterminated address")]
    Unterminated,
    /// Characters after the end of a strict form.
    #[error("trailing characters after the address")]
    TrailingGarbage,
    /// An EPSV argument other than none, a protocol number or `ALL`.
    #[error("invalid EPSV argument")]
    BadEpsvArg,
}

use AddressError::*;

/// Reads the address of a 227 reply (RFC 1123 §4.1.2.6: "scan for the first digit").
///
/// Accepts `(h1,h2,h3,h4,p1,p2)` with or without parentheses, `=h1,...`, spaces around
/// the commas, any text before and after. Rejects numbers above 255, a sign before a
/// number, fewer or more than six numbers, and port 0. The address itself is returned as
/// sent (often 0.0.0.0 or private): the caller decides what to trust.
pub fn parse_pasv_reply(reply: &Reply) -> Result<SocketAddrV4, AddressError> {
    check_code(reply, 227)?;
    for text in reply_texts(reply) {
        if let Some(start) = text.iter().position(u8::is_ascii_digit) {
            if start > 0 && matches!(text[start - 1], b'-' | b'+') {
                return Err(NotANumber);
            }
            return parse_six_loose(&text[start..]);
        }
    }
    Err(NotFound)
}

/// The 227 reply the gateway sends (the form every client understands).
pub fn pasv_reply(addr: SocketAddrV4) -> Reply {
    Reply::new(227, &format!("Entering Passive Mode ({}).", port_arg(addr)))
}

/// Reads the port of a 229 reply: `(<d><d><d>port<d>)` (RFC 2428 §3), where `<d>` is any
/// ASCII 33..=126 but a digit and the same all four times. Text before and after may be
/// anything; if several `(` appear, the first that parses wins.
pub fn parse_epsv_reply(reply: &Reply) -> Result<u16, AddressError> {
    check_code(reply, 229)?;
    let mut first_error = None;
    for text in reply_texts(reply) {
        for (i, _) in text.iter().enumerate().filter(|(_, b)| **b == b'(') {
            match parse_epsv_body(&text[i + 1..]) {
                Ok(port) => return Ok(port),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    Err(first_error.unwrap_or(NotFound))
}

/// The 229 reply the gateway sends.
pub fn epsv_reply(port: u16) -> Reply {
    Reply::new(229, &format!("Entering Extended Passive Mode (|||{port}|)"))
}

/// Reads a PORT argument: exactly `h1,h2,h3,h4,p1,p2`, each 1 to 3 digits and at most 255,
/// with optional spaces around the whole (RFC 959 §4.1.2 `<host-port>`).
pub fn parse_port_arg(arg: &str) -> Result<SocketAddrV4, AddressError> {
    let arg = arg.trim_matches(' ');
    if arg.is_empty() {
        return Err(NotFound);
    }
    let mut n = [0u8; 6];
    let mut fields = arg.split(',');
    for slot in &mut n {
        let field = fields.next().ok_or(WrongFieldCount)?;
        *slot = u8::try_from(decimal(field.as_bytes(), 3)?).map_err(|_| NumberOutOfRange)?;
    }
    if fields.next().is_some() {
        return Err(WrongFieldCount);
    }
    socket_v4(n)
}

/// The PORT argument for `addr`: `h1,h2,h3,h4,p1,p2`.
pub fn port_arg(addr: SocketAddrV4) -> String {
    let [a, b, c, d] = addr.ip().octets();
    let [p1, p2] = addr.port().to_be_bytes();
    format!("{a},{b},{c},{d},{p1},{p2}")
}

/// Reads an EPRT argument: `<d>proto<d>address<d>port<d>` (RFC 2428 §2), where proto 1 is
/// IPv4 (dotted decimal) and 2 is IPv6 (RFC 4291 text), with optional spaces around the
/// whole. A delimiter that also occurs in the address makes it unparseable, as RFC 2428
/// intends ("|" is recommended because it occurs in neither).
pub fn parse_eprt_arg(arg: &str) -> Result<SocketAddr, AddressError> {
    let arg = arg.trim_matches(' ');
    let Some(&d) = arg.as_bytes().first() else {
        return Err(NotFound);
    };
    if !is_delimiter(d) {
        return Err(BadDelimiter);
    }
    // `d` is ASCII, so splitting on it keeps UTF-8 boundaries.
    let fields: Vec<&str> = arg[1..].split(char::from(d)).collect();
    let [proto, addr, port, end] = fields[..] else {
        return Err(WrongFieldCount);
    };
    if !end.is_empty() {
        return Err(TrailingGarbage);
    }
    let ip = match proto {
        "1" => IpAddr::V4(addr.parse::<Ipv4Addr>().map_err(|_| BadAddress)?),
        "2" => IpAddr::V6(addr.parse::<Ipv6Addr>().map_err(|_| BadAddress)?),
        _ => return Err(UnsupportedProtocol),
    };
    Ok(SocketAddr::new(ip, port_number(port.as_bytes())?))
}

/// The EPRT argument for `addr`, with `|` as the delimiter (RFC 2428 §2).
pub fn eprt_arg(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("|1|{}|{}|", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("|2|{}|{}|", a.ip(), a.port()),
    }
}

/// The argument of an EPSV command (RFC 2428 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpsvArg {
    /// `EPSV`: any protocol, the one of the control connection.
    Any,
    /// `EPSV <net-prt>`: 1 IPv4, 2 IPv6; other numbers are syntactically valid and must be
    /// answered 522 (RFC 2428 §3), so they are returned rather than refused here.
    Proto(u8),
    /// `EPSV ALL`: from now on only EPSV (RFC 2428 §4).
    All,
}

/// Reads an EPSV argument: none or empty, a protocol number 1..=255, or `ALL` in any case;
/// surrounding spaces are ignored.
pub fn parse_epsv_arg(arg: Option<&str>) -> Result<EpsvArg, AddressError> {
    let arg = arg.unwrap_or("").trim_matches(' ');
    if arg.is_empty() {
        return Ok(EpsvArg::Any);
    }
    if arg.eq_ignore_ascii_case("ALL") {
        return Ok(EpsvArg::All);
    }
    match decimal(arg.as_bytes(), 3).map(u8::try_from) {
        Ok(Ok(proto)) if proto > 0 => Ok(EpsvArg::Proto(proto)),
        _ => Err(BadEpsvArg),
    }
}

fn check_code(reply: &Reply, expected: u16) -> Result<(), AddressError> {
    if reply.code == expected {
        Ok(())
    } else {
        Err(WrongCode {
            expected,
            got: reply.code,
        })
    }
}

/// The text of each line of a reply, without the code prefix of the first and last lines
/// (so that the code's digits are never taken for an address).
fn reply_texts(reply: &Reply) -> impl Iterator<Item = &[u8]> {
    let last = reply.lines.len().saturating_sub(1);
    reply.lines.iter().enumerate().map(move |(i, line)| {
        let is_prefixed = (i == 0 || i == last)
            && line.len() >= 3
            && line[..3].iter().all(u8::is_ascii_digit)
            && matches!(line.get(3), None | Some(b' ' | b'-'));
        if is_prefixed {
            line.get(4..).unwrap_or(&[])
        } else {
            line.as_slice()
        }
    })
}

/// RFC 2428's delimiter: ASCII 33..=126, not a digit.
fn is_delimiter(byte: u8) -> bool {
    (33..=126).contains(&byte) && !byte.is_ascii_digit()
}

/// A decimal number of 1 to `max_digits` digits and nothing else.
fn decimal(field: &[u8], max_digits: usize) -> Result<u32, AddressError> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return Err(NotANumber);
    }
    if field.len() > max_digits {
        return Err(NumberOutOfRange);
    }
    Ok(field.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

/// A TCP port in decimal, 1..=65535.
fn port_number(field: &[u8]) -> Result<u16, AddressError> {
    match u16::try_from(decimal(field, 5)?) {
        Ok(0) => Err(PortZero),
        Ok(port) => Ok(port),
        Err(_) => Err(NumberOutOfRange),
    }
}

fn socket_v4([a, b, c, d, p1, p2]: [u8; 6]) -> Result<SocketAddrV4, AddressError> {
    let port = u16::from_be_bytes([p1, p2]);
    if port == 0 {
        return Err(PortZero);
    }
    Ok(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
}

/// Six numbers 0..=255 separated by commas with optional spaces around them, starting at a
/// digit. Whatever follows the sixth is ignored unless it is a seventh number.
fn parse_six_loose(text: &[u8]) -> Result<SocketAddrV4, AddressError> {
    let mut n = [0u8; 6];
    let mut rest = text;
    for (i, slot) in n.iter_mut().enumerate() {
        if i > 0 {
            rest = skip_spaces(rest);
            let Some(after_comma) = rest.strip_prefix(b",") else {
                return Err(WrongFieldCount);
            };
            rest = skip_spaces(after_comma);
        }
        let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (digits, after) = rest.split_at(len);
        // Leading zeros are tolerated ("010"), values above 255 are not.
        let trimmed = match digits.iter().position(|&d| d != b'0') {
            Some(first) => &digits[first..],
            None => digits.get(..1).unwrap_or(&[]),
        };
        *slot = u8::try_from(decimal(trimmed, 3)?).map_err(|_| NumberOutOfRange)?;
        rest = after;
    }
    // "…,p2.5" or "…,p2,7": the sixth number is not the last one.
    match skip_spaces(rest) {
        [b',', more @ ..] if skip_spaces(more).first().is_some_and(u8::is_ascii_digit) => {
            return Err(WrongFieldCount);
        }
        [b'.', d, ..] if d.is_ascii_digit() => return Err(NumberOutOfRange),
        _ => {}
    }
    socket_v4(n)
}

fn skip_spaces(text: &[u8]) -> &[u8] {
    let n = text.iter().take_while(|&&b| b == b' ').count();
    &text[n..]
}

/// The part of a 229 reply after `(`: `<d><d><d>port<d>)`.
fn parse_epsv_body(body: &[u8]) -> Result<u16, AddressError> {
    let [d, d2, d3, rest @ ..] = body else {
        return Err(Unterminated);
    };
    if !is_delimiter(*d) || d2 != d || d3 != d {
        return Err(BadDelimiter);
    }
    let end = rest.iter().position(|b| b == d).ok_or(Unterminated)?;
    let port = port_number(&rest[..end])?;
    if rest.get(end + 1) != Some(&b')') {
        return Err(Unterminated);
    }
    Ok(port)
}

#[cfg(test)]
mod tests;
