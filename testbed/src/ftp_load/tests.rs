//! Reply parsing, address parsers, quantiles and the control client against a scripted
//! server on loopback.
use super::*;
use std::net::{Ipv4Addr, TcpListener};

#[test]
fn epsv_ports() {
    assert_eq!(
        epsv_port("229 Entering Extended Passive Mode (|||40001|)"),
        Some(40001)
    );
    assert_eq!(epsv_port("229 ok (!!!21!)"), Some(21));
    assert_eq!(epsv_port("229 ok (|||x|)"), None);
    assert_eq!(epsv_port("229 ok (||40001|)"), None);
    assert_eq!(epsv_port("229 no parentheses"), None);
}

#[test]
fn pasv_addresses() {
    assert_eq!(
        pasv_addr("227 Entering Passive Mode (203,0,113,1,156,64)."),
        Some("203.0.113.1:40000".parse().unwrap())
    );
    assert_eq!(
        pasv_addr("227 =198,51,100,2,117,48"),
        Some("198.51.100.2:30000".parse().unwrap())
    );
    assert_eq!(pasv_addr("227 (1,2,3,4,5)"), None);
    assert_eq!(pasv_addr("227 (1,2,3,4,5,256)"), None);
    assert_eq!(pasv_addr("227 nothing"), None);
}

#[test]
fn passive_retr_tells_failures_apart() {
    let timeout = Duration::from_secs(5);
    // A 425 to EPSV: the control connection goes on.
    let addr = scripted(&[
        "220 hi\r\n",
        "425 Can't open data connection now, try again later.\r\n",
        "200 ok\r\n",
    ]);
    let mut c = FtpControl::connect(addr, timeout).unwrap();
    let e = c.passive_retr(Passive::Epsv, "f").unwrap_err();
    assert_eq!(e.kind(), "425 on EPSV");
    assert!(e.control_usable(), "{e}");
    assert_eq!(c.command("NOOP").unwrap().code, 200);
    // A data port nobody listens on.
    let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let reply: &'static str = Box::leak(
        format!(
            "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
            port >> 8,
            port & 0xff
        )
        .into_boxed_str(),
    );
    let script: &'static [&'static str] = Box::leak(Box::new(["220 hi\r\n", reply]));
    let mut c = FtpControl::connect(scripted(script), timeout).unwrap();
    let e = c.passive_retr(Passive::Pasv, "f").unwrap_err();
    assert_eq!(e.kind(), "data connection", "{e}");
    assert!(e.control_usable());
    // The server closes the control connection.
    let mut c = FtpControl::connect(scripted(&["220 hi\r\n"]), timeout).unwrap();
    let e = c.passive_retr(Passive::Epsv, "f").unwrap_err();
    assert_eq!(e.kind(), "control connection", "{e}");
    assert!(!e.control_usable());
}

#[test]
fn quantiles() {
    let v: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(quantile(&v, 0.5), Some(50.0));
    assert_eq!(quantile(&v, 0.99), Some(99.0));
    assert_eq!(quantile(&v, 1.0), Some(100.0));
    assert_eq!(quantile(&v, 0.0), Some(1.0));
    assert_eq!(quantile(&[], 0.5), None);
}

/// A scripted server on loopback: sends `script` after each line it reads (the first
/// entry right away), so replies can be checked without an FTP daemon.
fn scripted(script: &'static [&'static str]) -> SocketAddrV4 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        for (i, out) in script.iter().enumerate() {
            if i > 0 {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    return;
                }
            }
            s.write_all(out.as_bytes()).unwrap();
        }
    });
    addr
}

#[test]
fn multi_line_replies_and_codes() {
    let addr = scripted(&[
        "220-hello\r\n220-more\r\n220 there\r\n",
        "211-Features:\r\n EPSV\r\n 211 not the end\r\n211 End\r\n",
        "500 no\r\n",
    ]);
    let mut c = FtpControl::connect(addr, Duration::from_secs(5)).unwrap();
    assert_eq!(
        c.greeting(),
        &Reply {
            code: 220,
            text: "220-hello\n220-more\n220 there".into()
        }
    );
    assert_eq!(c.greeting().raw(), "220-hello\r\n220-more\r\n220 there\r\n");
    let feat = c.command("FEAT").unwrap();
    assert_eq!(feat.code, 211);
    assert_eq!(feat.text.lines().count(), 4, "{feat:?}");
    let err = c.expect("NOOP", 200).unwrap_err();
    assert!(format!("{err:#}").contains("500 no"), "{err:#}");
}

#[test]
fn a_closed_connection_or_garbage_is_an_error() {
    let addr = scripted(&["220 hi\r\n", "garbage\r\n"]);
    let mut c = FtpControl::connect(addr, Duration::from_secs(5)).unwrap();
    assert!(c.command("NOOP").is_err());
    let addr = scripted(&["220 hi\r\n"]);
    let mut c = FtpControl::connect(addr, Duration::from_secs(5)).unwrap();
    assert!(c.command("NOOP").is_err());
    let addr = scripted(&["421 busy\r\n"]);
    assert!(FtpControl::connect(addr, Duration::from_secs(5)).is_err());
}
