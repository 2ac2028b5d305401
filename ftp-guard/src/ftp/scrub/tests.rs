//! The scrubber by example: each form of an internal address or name, and what clients see instead.

use super::*;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

fn scrubber(hide: &[&str]) -> Scrubber {
    let hide: Vec<IpAddr> = hide.iter().map(|h| h.parse().unwrap()).collect();
    Scrubber::new(&hide, PUBLIC)
}

/// (hidden addresses, line, expected line; None = unchanged and borrowed)
type Case = (
    &'static [&'static str],
    &'static [u8],
    Option<&'static [u8]>,
);

fn check(cases: &[Case]) {
    for (hide, line, expected) in cases {
        check_one(&scrubber(hide), line, *expected);
    }
}

fn check_one(s: &Scrubber, line: &[u8], expected: Option<&[u8]>) {
    let out = s.scrub(line);
    let shown = String::from_utf8_lossy(line);
    match expected {
        None => {
            assert!(
                matches!(out, Cow::Borrowed(_)),
                "{shown}: changed to {out:?}"
            );
            assert!(!s.leaks(line), "{shown}: leaks() disagrees");
        }
        Some(expected) => {
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(expected),
                "{shown}"
            );
            assert!(s.leaks(line), "{shown}: leaks() disagrees");
        }
    }
    assert!(!s.leaks(&out), "{shown}: still leaks after scrubbing");
}

const V4: &[&str] = &["198.51.100.2"];

#[test]
fn ipv4_forms() {
    check(&[
        (
            V4,
            b"220 ProFTPD Server [198.51.100.2]",
            Some(b"220 ProFTPD Server [203.0.113.7]"),
        ),
        (V4, b"198.51.100.2", Some(b"203.0.113.7")),
        (
            V4,
            b"Connected to 198.51.100.2.",
            Some(b"Connected to 203.0.113.7."),
        ),
        (V4, b"from 198.51.100.2:21", Some(b"from 203.0.113.7:21")),
        (V4, b"198.051.100.002", Some(b"203.0.113.7")),
        (V4, b"(198,51,100,2,156,64)", Some(b"(203,0,113,7,156,64)")),
        (V4, b"=198, 51, 100,  2,1,2", Some(b"=203,0,113,7,1,2")),
        (V4, b"::ffff:198.51.100.2", Some(b"203.0.113.7")),
        (V4, b"::FFFF:198.51.100.2 ok", Some(b"203.0.113.7 ok")),
        (V4, b"::ffff:c633:6402", Some(b"203.0.113.7")),
        (V4, b"0:0:0:0:0:ffff:c633:6402", Some(b"203.0.113.7")),
        (V4, b"64:ff9b::198.51.100.2", Some(b"64:ff9b::203.0.113.7")),
        // Four in a row of a longer run: address.port (BSD netstat), or a prefix.
        (V4, b"198.51.100.2.21", Some(b"203.0.113.7.21")),
        (V4, b"v1.198.51.100.2", Some(b"v1.203.0.113.7")),
        (
            V4,
            b"a 198.51.100.2 b 198,51,100,2 c",
            Some(b"a 203.0.113.7 b 203,0,113,7 c"),
        ),
        (V4, b"198.51.100.2198.51.100.2", None),
        (V4, b"\xff198.51.100.2\xfe", Some(b"\xff203.0.113.7\xfe")),
        // Boundaries: other numbers are other addresses.
        (V4, b"198.51.100.23", None),
        (V4, b"1198.51.100.2", None),
        (V4, b"198.51.100.20 and 98.51.100.2", None),
        (V4, b"198.51.100", None),
        (V4, b"198.51.1002", None),
        (V4, b"198. 51.100.2", None),
        (V4, b"198,51,100,23", None),
        (V4, b"198 ,51,100,2", None),
        (V4, b"198,51.100,2", None),
        (V4, b"198.51.100.258", None),
        (V4, b"198.51.100.4294967298", None),
        (V4, b"::ffff:c633:6403", None),
        (V4, b"220 Service ready \xc3\xa9\xff", None),
        (V4, b"", None),
    ]);
}

#[test]
fn ipv6_forms() {
    const V6: &[&str] = &["2001:db8::1"];
    check(&[
        (
            V6,
            b"220 [2001:db8::1] ready",
            Some(b"220 [203.0.113.7] ready"),
        ),
        (V6, b"2001:DB8::1", Some(b"203.0.113.7")),
        (
            V6,
            b"2001:0db8:0000:0000:0000:0000:0000:0001",
            Some(b"203.0.113.7"),
        ),
        (V6, b"2001:db8:0:0:0:0:0:1", Some(b"203.0.113.7")),
        (V6, b"at 2001:db8::1.", Some(b"at 203.0.113.7.")),
        (
            V6,
            b"at 2001:db8::1: refused",
            Some(b"at 203.0.113.7: refused"),
        ),
        (V6, b"2001:db8::1%eth0", Some(b"203.0.113.7%eth0")),
        // Address:port without brackets: the port goes, a hidden prefix is enough.
        (V6, b"2001:db8::1:21", Some(b"203.0.113.7:21")),
        (V6, b"2001:db8::11", None),
        (V6, b"2001:db8::1:ab", None),
        (V6, b"12001:db8::1", None),
        (V6, b"2001:db8::", None),
        (V6, b"198.51.100.2", None),
        (V6, b"12:30:45", None),
        // A hidden mapped address hides its IPv4 address too.
        (
            &["::ffff:198.51.100.2"],
            b"198.51.100.2",
            Some(b"203.0.113.7"),
        ),
        (
            &["2001:db8::1", "198.51.100.2"],
            b"2001:db8::1 198.51.100.2",
            Some(b"203.0.113.7 203.0.113.7"),
        ),
    ]);
}

#[test]
fn no_reappearing_addresses() {
    // Replacing one address next to other numbers forms another hidden one.
    check(&[
        (
            &["1.2.3.4", "7.5.6.7"],
            b"1.2.3.4.5.6.7",
            Some(b"203.0.113.203.0.113.7"),
        ),
        (
            &["1.2.3.4", "0.113.7.5"],
            b"1.2.3.4.5",
            Some(b"203.203.0.113.7"),
        ),
    ]);
    // Each replacement forms the next hidden address: after MAX_PASSES, masking.
    let chain = &[
        "1.2.3.4",
        "0.113.7.5",
        "0.113.7.6",
        "0.113.7.7",
        "0.113.7.8",
    ];
    check(&[(
        chain,
        b"1.2.3.4.5.6.7.8.9",
        Some(b"203.203.203.203.*********.9"),
    )]);
    // A hidden replacement is not used.
    let s = Scrubber::new(&["203.0.113.7".parse().unwrap()], PUBLIC);
    assert_eq!(s.replacement(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(s.scrub(b"203.0.113.7").as_ref(), b"0.0.0.0");
    let hide = ["203.0.113.7".parse().unwrap(), "0.0.0.0".parse().unwrap()];
    assert_eq!(
        Scrubber::new(&hide, PUBLIC).replacement(),
        Ipv4Addr::new(0, 0, 0, 1)
    );
    // Nothing hidden: nothing changes.
    assert!(matches!(
        Scrubber::new(&[], PUBLIC).scrub(b"1.2.3.4"),
        Cow::Borrowed(_)
    ));
}

#[test]
fn replies() {
    let s = scrubber(V4);
    let reply = Reply::multi(
        211,
        &[
            "Status of 198.51.100.2:",
            "Connected to 198,51,100,2,0,21",
            "End",
        ],
    );
    let clean = s.scrub_reply(&reply);
    assert_eq!(
        clean.to_bytes(),
        b"211-Status of 203.0.113.7:\r\nConnected to 203,0,113,7,0,21\r\n211 End\r\n"
    );
    assert!(!s.leaks(&clean.to_bytes()));
    // A hidden address that looks like a code does not touch the code.
    let s = scrubber(&["227.1.2.3"]);
    let reply = Reply::new(227, "Entering Passive Mode (227,1,2,3,4,5)");
    assert_eq!(
        s.scrub_reply(&reply).to_bytes(),
        b"227 Entering Passive Mode (203,0,113,7,4,5)\r\n"
    );
}

/// (hidden names, line, expected line; None = unchanged and borrowed); the origin's
/// address 198.51.100.2 is hidden too.
type NameCase = (
    &'static [&'static str],
    &'static [u8],
    Option<&'static [u8]>,
);

#[test]
fn host_names() {
    const NAME: &[&str] = &["ftp.internal.example"];
    let cases: &[NameCase] = &[
        (
            NAME,
            b"220 ftp.internal.example FTP server ready",
            Some(b"220 203.0.113.7 FTP server ready"),
        ),
        // Any case, in the line and in the configuration.
        (NAME, b"FTP.Internal.EXAMPLE", Some(b"203.0.113.7")),
        (
            &["FTP.INTERNAL.Example"],
            b"ftp.internal.example",
            Some(b"203.0.113.7"),
        ),
        // A trailing dot in the configuration is the same name.
        (
            &["ftp.internal.example."],
            b"ftp.internal.example",
            Some(b"203.0.113.7"),
        ),
        // Punctuation and dots around it are boundaries.
        (NAME, b"at ftp.internal.example.", Some(b"at 203.0.113.7.")),
        (
            NAME,
            b"[ftp.internal.example]:21",
            Some(b"[203.0.113.7]:21"),
        ),
        (
            NAME,
            b"user@ftp.internal.example",
            Some(b"user@203.0.113.7"),
        ),
        (
            NAME,
            b"257 \"/ftp.internal.example\" created",
            Some(b"257 \"/203.0.113.7\" created"),
        ),
        (NAME, b"www.ftp.internal.example", Some(b"www.203.0.113.7")),
        (NAME, b"ftp.internal.example.com", Some(b"203.0.113.7.com")),
        (
            NAME,
            b"\xffftp.internal.example\xfe",
            Some(b"\xff203.0.113.7\xfe"),
        ),
        (
            NAME,
            b"ftp.internal.example [198.51.100.2] ftp.internal.example",
            Some(b"203.0.113.7 [203.0.113.7] 203.0.113.7"),
        ),
        // A short name as well.
        (
            &["ftp.internal.example", "ftp01"],
            b"ftp01 (ftp.internal.example) ready",
            Some(b"203.0.113.7 (203.0.113.7) ready"),
        ),
        (&["ftp01"], b"ftp01.lan", Some(b"203.0.113.7.lan")),
        // Other names are other hosts.
        (NAME, b"sftp.internal.example", None),
        (NAME, b"ftp.internal.example2", None),
        (NAME, b"ftp.internal.example-old", None),
        (NAME, b"ftp_ftp.internal.example", None),
        (NAME, b"ftp-internal.example", None),
        (NAME, b"ftp.internal.exampl", None),
        (NAME, b"ftp.internal", None),
        (&["ftp01"], b"ftp012 ftp0 xftp01", None),
        (NAME, b"", None),
        // Names without a letter, or with other bytes, are not names: ignored.
        (&["100.2", "a*b", "", "."], b"198.51.100.3 a*b 100.2", None),
    ];
    for (names, line, expected) in cases {
        let s = scrubber(V4).with_names(names);
        check_one(&s, line, *expected);
    }
}

#[test]
fn host_names_do_not_reappear() {
    // Replacing one name forms another hidden name.
    let s = scrubber(V4).with_names(&["ftp.internal.example", "113.7.com"]);
    check_one(&s, b"ftp.internal.example.com", Some(b"203.0.203.0.113.7"));
    // A name and an address chained: after MAX_PASSES, masking ends it.
    let s = Scrubber::new(
        &["1.2.3.4".parse().unwrap(), "0.113.7.5".parse().unwrap()],
        PUBLIC,
    )
    .with_names(&["203.x", "x.5"]);
    let out = s.scrub(b"1.2.3.4.5 x.5.203.x");
    assert!(!s.leaks(&out), "{:?}", String::from_utf8_lossy(&out));
}

#[test]
fn addresses_added_later() {
    // The gateway's origin-side address, known only once a session has connected.
    let mut s = scrubber(V4);
    s.hide_address("198.51.100.1".parse().unwrap());
    check_one(
        &s,
        b"     Connected to 198.51.100.1",
        Some(b"     Connected to 203.0.113.7"),
    );
    check_one(
        &s,
        b"remote address: 198.51.100.1:50000 local 198,51,100,2,0,21",
        Some(b"remote address: 203.0.113.7:50000 local 203,0,113,7,0,21"),
    );
    check_one(&s, b"::ffff:198.51.100.1", Some(b"203.0.113.7"));
    // Hiding the replacement later picks another one, as `new` does.
    s.hide_address(IpAddr::V4(PUBLIC));
    assert_eq!(s.replacement(), Ipv4Addr::UNSPECIFIED);
    check_one(&s, b"203.0.113.7", Some(b"0.0.0.0"));
}
