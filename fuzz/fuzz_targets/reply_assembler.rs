//! Lines in, replies out: every reply is well-formed, within the limit, and reassembles
//! from its own lines to itself.
#![no_main]
use ftp_guard::ftp::reply::{Reply, ReplyAssembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [max, input @ ..] = data else {
        return;
    };
    let max_lines = usize::from(*max % 16);
    let mut assembler = ReplyAssembler::new(max_lines);
    for line in input.split(|&b| b == b'\n') {
        if let Ok(Some(reply)) = assembler.push_line(line.to_vec()) {
            check(&reply, max_lines);
        }
    }
});

fn check(reply: &Reply, max_lines: usize) {
    assert!((100..=599).contains(&reply.code));
    assert!((1..=5).contains(&reply.class()));
    assert!(!reply.lines.is_empty() && reply.lines.len() <= max_lines);
    let code = format!("{}", reply.code);
    assert!(reply.lines[0].starts_with(code.as_bytes()));
    let last = reply.lines.last().map(Vec::as_slice).unwrap_or_default();
    assert!(last.starts_with(code.as_bytes()) && matches!(last.get(3), None | Some(b' ')));
    assert_eq!(reply.is_multiline(), reply.lines[0].get(3) == Some(&b'-'));
    let _ = (reply.text(), reply.first_line_text());
    let mut again = ReplyAssembler::new(max_lines);
    let mut out = None;
    for line in &reply.lines {
        out = again.push_line(line.clone()).expect("own lines reassemble");
    }
    assert_eq!(out.as_ref(), Some(reply));
}
