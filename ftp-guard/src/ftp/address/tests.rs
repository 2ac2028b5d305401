//! The data-address forms by example: parsing and rendering of 227, 229, PORT, EPRT and EPSV.

use super::*;

fn v4(a: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), port)
}

/// A reply from raw lines (prefixes included).
fn reply(code: u16, lines: &[&str]) -> Reply {
    Reply {
        code,
        lines: lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
    }
}

#[test]
fn pasv_replies() {
    let cases: &[(&str, Result<SocketAddrV4, AddressError>)] = &[
        (
            "227 Entering Passive Mode (198,51,100,2,156,64).",
            Ok(v4([198, 51, 100, 2], 40000)),
        ),
        (
            "227 Entering Passive Mode (198,51,100,2,156,64)",
            Ok(v4([198, 51, 100, 2], 40000)),
        ),
        (
            "227 Entering Passive Mode 198,51,100,2,156,64",
            Ok(v4([198, 51, 100, 2], 40000)),
        ),
        ("227 =198,51,100,2,156,64", Ok(v4([198, 51, 100, 2], 40000))),
        ("227 198,51,100,2,156,64", Ok(v4([198, 51, 100, 2], 40000))),
        (
            "227 ok (198, 51, 100, 2, 156, 64)",
            Ok(v4([198, 51, 100, 2], 40000)),
        ),
        (
            "227 ok (198 ,51 , 100,2,156,64)",
            Ok(v4([198, 51, 100, 2], 40000)),
        ),
        (
            "227 Entering Passive Mode (0,0,0,0,4,1)",
            Ok(v4([0, 0, 0, 0], 1025)),
        ),
        (
            "227 Entering Passive Mode (127,0,0,1,255,255)",
            Ok(v4([127, 0, 0, 1], 65535)),
        ),
        (
            "227 Entering Passive Mode (10,0,0,7,0,21).",
            Ok(v4([10, 0, 0, 7], 21)),
        ),
        ("227 (010,000,000,007,000,021)", Ok(v4([10, 0, 0, 7], 21))),
        ("227 (1,2,3,4,5,6) and 7,8,9", Ok(v4([1, 2, 3, 4], 1286))),
        ("227 (1,2,3,4,5,6), 7", Ok(v4([1, 2, 3, 4], 1286))),
        ("227", Err(NotFound)),
        ("227 ", Err(NotFound)),
        ("227 Entering Passive Mode", Err(NotFound)),
        ("227 Entering Passive Mode (a,b,c,d,e,f)", Err(NotFound)),
        ("227 (256,0,0,1,4,1)", Err(NumberOutOfRange)),
        ("227 (1,2,3,4,5,999)", Err(NumberOutOfRange)),
        (
            "227 (1,2,3,4,5,99999999999999999999)",
            Err(NumberOutOfRange),
        ),
        ("227 (1,2,3,4,5,6.5)", Err(NumberOutOfRange)),
        ("227 (-1,2,3,4,5,6)", Err(NotANumber)),
        ("227 (+1,2,3,4,5,6)", Err(NotANumber)),
        ("227 (1,-2,3,4,5,6)", Err(NotANumber)),
        ("227 (1,2,3,4,5,)", Err(NotANumber)),
        ("227 (1,2,3,4,5)", Err(WrongFieldCount)),
        ("227 (1,2,3,4)", Err(WrongFieldCount)),
        ("227 (1.2.3.4,5,6)", Err(WrongFieldCount)),
        ("227 (1,2,3,4,5,6,7)", Err(WrongFieldCount)),
        ("227 (1,2,3,4,5,6, 7)", Err(WrongFieldCount)),
        ("227 (1,2,3,4,0,0)", Err(PortZero)),
    ];
    for (line, expected) in cases {
        assert_eq!(&parse_pasv_reply(&reply(227, &[line])), expected, "{line}");
    }
}

#[test]
fn pasv_reply_shapes() {
    let cases: &[(Reply, Result<SocketAddrV4, AddressError>)] = &[
        (
            reply(200, &["200 (1,2,3,4,5,6)"]),
            Err(WrongCode {
                expected: 227,
                got: 200,
            }),
        ),
        // The code's own digits are not the address.
        (
            reply(227, &["227-Entering", "227 (1,2,3,4,5,6)"]),
            Ok(v4([1, 2, 3, 4], 1286)),
        ),
        (
            reply(227, &["227-passive:", " (1,2,3,4,5,6)", "227 ok"]),
            Ok(v4([1, 2, 3, 4], 1286)),
        ),
        (reply(227, &["227-x", "227 y"]), Err(NotFound)),
        (
            pasv_reply(v4([203, 0, 113, 7], 50000)),
            Ok(v4([203, 0, 113, 7], 50000)),
        ),
    ];
    for (reply, expected) in cases {
        assert_eq!(&parse_pasv_reply(reply), expected, "{reply:?}");
    }
    assert_eq!(
        pasv_reply(v4([203, 0, 113, 7], 50000)).to_bytes(),
        b"227 Entering Passive Mode (203,0,113,7,195,80).\r\n"
    );
}

#[test]
fn epsv_replies() {
    let cases: &[(&str, Result<u16, AddressError>)] = &[
        ("229 Entering Extended Passive Mode (|||6446|)", Ok(6446)),
        ("229 Entering Extended Passive Mode (|||6446|).", Ok(6446)),
        ("229 (!!!1!)", Ok(1)),
        ("229 ok (###65535#)", Ok(65535)),
        ("229 ok (~~~2121~)", Ok(2121)),
        ("229 ok ()))21))", Ok(21)),
        ("229 see (RFC 2428) (|||5000|)", Ok(5000)),
        ("229 (|||5000|) then (|||6000|)", Ok(5000)),
        ("229 Entering Extended Passive Mode", Err(NotFound)),
        ("229 |||6446|", Err(NotFound)),
        ("229 (111211)", Err(BadDelimiter)),
        ("229 (   21 )", Err(BadDelimiter)),
        ("229 (\t\t\t21\t)", Err(BadDelimiter)),
        ("229 (|!|21|)", Err(BadDelimiter)),
        ("229 (||21|)", Err(BadDelimiter)),
        ("229 (|1|1.2.3.4|21|)", Err(BadDelimiter)),
        ("229 (|||0|)", Err(PortZero)),
        ("229 (|||65536|)", Err(NumberOutOfRange)),
        ("229 (|||123456|)", Err(NumberOutOfRange)),
        ("229 (||||)", Err(NotANumber)),
        ("229 (|||-1|)", Err(NotANumber)),
        ("229 (||| 21|)", Err(NotANumber)),
        ("229 (|||21!)", Err(Unterminated)),
        ("229 (|||21|", Err(Unterminated)),
        ("229 (|||21|]", Err(Unterminated)),
        ("229 (||", Err(Unterminated)),
    ];
    for (line, expected) in cases {
        assert_eq!(&parse_epsv_reply(&reply(229, &[line])), expected, "{line}");
    }
    assert_eq!(
        parse_epsv_reply(&reply(227, &["227 (|||21|)"])),
        Err(WrongCode {
            expected: 229,
            got: 227
        })
    );
    for port in [1, 21, 1024, 65535] {
        assert_eq!(parse_epsv_reply(&epsv_reply(port)), Ok(port));
    }
    assert_eq!(
        epsv_reply(6446).to_bytes(),
        b"229 Entering Extended Passive Mode (|||6446|)\r\n"
    );
}

#[test]
fn port_args() {
    let cases: &[(&str, Result<SocketAddrV4, AddressError>)] = &[
        ("192,0,2,7,4,1", Ok(v4([192, 0, 2, 7], 1025))),
        ("  192,0,2,7,4,1 ", Ok(v4([192, 0, 2, 7], 1025))),
        ("0,0,0,0,0,1", Ok(v4([0, 0, 0, 0], 1))),
        ("255,255,255,255,255,255", Ok(v4([255; 4], 65535))),
        ("010,0,2,7,4,1", Ok(v4([10, 0, 2, 7], 1025))),
        ("", Err(NotFound)),
        ("   ", Err(NotFound)),
        ("192,0,2,7,4", Err(WrongFieldCount)),
        ("192,0,2,7,4,1,9", Err(WrongFieldCount)),
        ("192,0,2,7,4,1,", Err(WrongFieldCount)),
        ("192,0,2,7,,1", Err(NotANumber)),
        ("192,0,2,7,4,1.", Err(NotANumber)),
        ("192, 0,2,7,4,1", Err(NotANumber)),
        ("192,0,2,7,-4,1", Err(NotANumber)),
        ("192,0,2,7,+4,1", Err(NotANumber)),
        ("(192,0,2,7,4,1)", Err(NotANumber)),
        ("192.0.2.7,4,1", Err(NotANumber)),
        ("0x1,0,2,7,4,1", Err(NotANumber)),
        ("١٩٢,0,2,7,4,1", Err(NotANumber)),
        ("256,0,2,7,4,1", Err(NumberOutOfRange)),
        ("0192,0,2,7,4,1", Err(NumberOutOfRange)),
        ("192,0,2,7,4,99999999999", Err(NumberOutOfRange)),
        ("192,0,2,7,0,0", Err(PortZero)),
    ];
    for (arg, expected) in cases {
        assert_eq!(&parse_port_arg(arg), expected, "{arg:?}");
        if let Ok(addr) = expected {
            assert_eq!(parse_port_arg(&port_arg(*addr)), Ok(*addr));
        }
    }
    assert_eq!(port_arg(v4([192, 0, 2, 7], 1025)), "192,0,2,7,4,1");
}

#[test]
fn eprt_args() {
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    let cases: &[(&str, Result<SocketAddr, AddressError>)] = &[
        ("|1|132.235.1.2|6275|", Ok(sa("132.235.1.2:6275"))),
        (
            "|2|1080::8:800:200C:417A|5282|",
            Ok(sa("[1080::8:800:200c:417a]:5282")),
        ),
        ("!1!132.235.1.2!6275!", Ok(sa("132.235.1.2:6275"))),
        ("~2~::1~21~", Ok(sa("[::1]:21"))),
        ("|2|::ffff:192.0.2.1|21|", Ok(sa("[::ffff:192.0.2.1]:21"))),
        (" |1|1.2.3.4|21| ", Ok(sa("1.2.3.4:21"))),
        ("", Err(NotFound)),
        ("1|1.2.3.4|21|", Err(BadDelimiter)),
        (" 1.2.3.4 ", Err(BadDelimiter)),
        ("\t1\t1.2.3.4\t21\t", Err(BadDelimiter)),
        ("é1é1.2.3.4é21é", Err(BadDelimiter)),
        ("|1|1.2.3.4|21", Err(WrongFieldCount)),
        ("|1|1.2.3.4|", Err(WrongFieldCount)),
        ("|1|1.2.3.4|21||", Err(WrongFieldCount)),
        ("|1|1.2.3.4|21|x", Err(TrailingGarbage)),
        // A delimiter that occurs in the address breaks it apart.
        (".1.1.2.3.4.21.", Err(WrongFieldCount)),
        (":2:::1:21:", Err(WrongFieldCount)),
        ("|3|1.2.3.4|21|", Err(UnsupportedProtocol)),
        ("|01|1.2.3.4|21|", Err(UnsupportedProtocol)),
        ("||1.2.3.4|21|", Err(UnsupportedProtocol)),
        ("|1|::1|21|", Err(BadAddress)),
        ("|2|1.2.3.4|21|", Err(BadAddress)),
        ("|1|1.2.3.256|21|", Err(BadAddress)),
        ("|1|01.2.3.4|21|", Err(BadAddress)),
        ("|1| 1.2.3.4|21|", Err(BadAddress)),
        ("|2|fe80::1%eth0|21|", Err(BadAddress)),
        ("|1||21|", Err(BadAddress)),
        ("|1|1.2.3.4|0|", Err(PortZero)),
        ("|1|1.2.3.4|65536|", Err(NumberOutOfRange)),
        ("|1|1.2.3.4|000021|", Err(NumberOutOfRange)),
        ("|1|1.2.3.4|+21|", Err(NotANumber)),
        ("|1|1.2.3.4||", Err(NotANumber)),
    ];
    for (arg, expected) in cases {
        assert_eq!(&parse_eprt_arg(arg), expected, "{arg:?}");
        if let Ok(addr) = expected {
            assert_eq!(parse_eprt_arg(&eprt_arg(*addr)), Ok(*addr));
        }
    }
    assert_eq!(eprt_arg(sa("1.2.3.4:21")), "|1|1.2.3.4|21|");
    assert_eq!(eprt_arg(sa("[2001:DB8::1]:21")), "|2|2001:db8::1|21|");
}

#[test]
fn epsv_args() {
    let cases: &[(Option<&str>, Result<EpsvArg, AddressError>)] = &[
        (None, Ok(EpsvArg::Any)),
        (Some(""), Ok(EpsvArg::Any)),
        (Some("  "), Ok(EpsvArg::Any)),
        (Some("1"), Ok(EpsvArg::Proto(1))),
        (Some("2"), Ok(EpsvArg::Proto(2))),
        (Some(" 2 "), Ok(EpsvArg::Proto(2))),
        (Some("3"), Ok(EpsvArg::Proto(3))),
        (Some("255"), Ok(EpsvArg::Proto(255))),
        (Some("ALL"), Ok(EpsvArg::All)),
        (Some("all"), Ok(EpsvArg::All)),
        (Some("aLl"), Ok(EpsvArg::All)),
        (Some("0"), Err(BadEpsvArg)),
        (Some("256"), Err(BadEpsvArg)),
        (Some("0001"), Err(BadEpsvArg)),
        (Some("-1"), Err(BadEpsvArg)),
        (Some("ALL 1"), Err(BadEpsvArg)),
        (Some("ALLL"), Err(BadEpsvArg)),
        (Some("any"), Err(BadEpsvArg)),
        (Some("\t1"), Err(BadEpsvArg)),
    ];
    for (arg, expected) in cases {
        assert_eq!(&parse_epsv_arg(*arg), expected, "{arg:?}");
    }
}
