//! Any input split anywhere: same lines as in one piece, limits hold, no panic.
#![no_main]
use ftp_guard::ftp::line::{LineError, LineReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [max, flags, seed, input @ ..] = data else {
        return;
    };
    let max_len = usize::from(*max);
    let telnet = flags & 1 == 1;
    let whole = read(max_len, telnet, &[input]);
    // Split points from a small generator seeded by the input.
    let mut pieces = Vec::new();
    let (mut rest, mut state) = (input, u32::from(*seed) | 1);
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 7).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        pieces.push(piece);
        rest = tail;
    }
    assert_eq!(whole, read(max_len, telnet, &pieces));
});

fn read(max_len: usize, telnet: bool, pieces: &[&[u8]]) -> Vec<Result<Vec<u8>, LineError>> {
    let mut reader = LineReader::new(max_len, telnet);
    let mut out = Vec::new();
    for piece in pieces {
        reader.push(piece);
        while let Some(line) = reader.next_line() {
            if let Ok(line) = &line {
                assert!(line.len() <= max_len);
                assert!(!line.contains(&0) && !line.contains(&b'\n'));
            }
            out.push(line);
        }
        assert!(reader.buffered() <= max_len + 1);
    }
    out
}
