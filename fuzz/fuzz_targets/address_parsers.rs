//! Every parser on any text, no panic; whatever parses, formats back to the same value.
#![no_main]
use ftp_guard::ftp::{address::*, reply::Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(addr) = parse_port_arg(&text) {
        assert_ne!(addr.port(), 0);
        assert_eq!(parse_port_arg(&port_arg(addr)), Ok(addr));
    }
    if let Ok(addr) = parse_eprt_arg(&text) {
        assert_ne!(addr.port(), 0);
        assert_eq!(parse_eprt_arg(&eprt_arg(addr)), Ok(addr));
    }
    if let Ok(EpsvArg::Proto(p)) = parse_epsv_arg(Some(&text)) {
        assert_eq!(parse_epsv_arg(Some(&p.to_string())), Ok(EpsvArg::Proto(p)));
    }

    // Replies: the input as the text of one line, and as raw lines of a multi-line reply.
    for code in [227, 229] {
        let mut single = format!("{code} ").into_bytes();
        single.extend_from_slice(data);
        let mut multi = vec![format!("{code}-").into_bytes()];
        multi.extend(data.split(|&b| b == b'\n').map(<[u8]>::to_vec));
        multi.push(format!("{code} end").into_bytes());
        for lines in [vec![single.clone()], multi] {
            let reply = Reply { code, lines };
            if let Ok(addr) = parse_pasv_reply(&reply) {
                assert_ne!(addr.port(), 0);
                assert_eq!(parse_pasv_reply(&pasv_reply(addr)), Ok(addr));
            }
            if let Ok(port) = parse_epsv_reply(&reply) {
                assert_ne!(port, 0);
                assert_eq!(parse_epsv_reply(&epsv_reply(port)), Ok(port));
            }
        }
    }
});
