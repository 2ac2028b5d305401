//! Line framing for the control connection (RFC 959 §4: commands and replies are Telnet
//! lines ending in CRLF), with a hard length limit and Telnet IAC handling.
//!
//! Bytes go in with [`LineReader::push`] in whatever pieces TCP delivers them; complete
//! lines come out of [`LineReader::next_line`]. Partial lines and partial Telnet sequences
//! are held as state, so any split of the stream gives the same lines.
//!
//! Lenient on input where peers differ: a bare LF ends a line too (many clients and servers
//! send one), a CR not followed by LF stays in the line for the caller to judge.
//! Strict where a naive proxy stalls or can be abused: an overlong line or a NUL is an error
//! right away (not when the line ends, which may be never), then the reader skips to the
//! next LF and goes on.

/// Line feed: ends a line.
const LF: u8 = b'\n';
/// Carriage return: removed when it comes right before the LF.
const CR: u8 = b'\r';
/// Telnet "Interpret As Command" (RFC 854).
const IAC: u8 = 255;
/// Telnet Interrupt Process: BSD clients send `IAC IP` before ABOR (RFC 959 §4.1.3).
const IP: u8 = 244;
/// Telnet Data Mark: the urgent byte of the Telnet Synch that follows `IAC IP`.
const DM: u8 = 242;
/// Telnet commands without an option byte: SE (240) ... GA (249), SB (250).
const TWO_BYTE: std::ops::RangeInclusive<u8> = 240..=250;
/// WILL, WONT, DO, DONT: followed by one option byte (RFC 854).
const NEGOTIATION: std::ops::RangeInclusive<u8> = 251..=254;

/// Why a line was rejected. After either error the reader has discarded the line (up to
/// and including its LF) and continues with the next one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line is longer than the limit (CRLF not counted).
    #[error("line longer than {limit} bytes")]
    TooLong { limit: usize },
    /// The line contains a NUL byte (RFC 959 lines are NVT-ASCII text; a NUL is never
    /// meaningful and is a classic way to cut a string short in a C server).
    #[error("line contains a NUL byte")]
    Nul,
}

/// Where the Telnet decoder is inside an IAC sequence; a sequence split across reads is
/// held here rather than as buffered bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Telnet {
    /// Plain data.
    Data,
    /// An IAC was seen.
    Iac,
    /// `IAC WILL|WONT|DO|DONT` was seen: the next byte is the option, dropped.
    Option,
}

/// Splits a byte stream into lines. See the module documentation for the rules.
#[derive(Clone, Debug)]
pub struct LineReader {
    max_len: usize,
    strip_telnet: bool,
    /// Bytes pushed but not yet looked at; `input[pos..]` is pending.
    input: Vec<u8>,
    pos: usize,
    /// The line being assembled (Telnet sequences already removed). Holds at most
    /// `max_len + 1` bytes: the content plus a CR waiting for its LF.
    line: Vec<u8>,
    telnet: Telnet,
    /// Skipping the rest of a rejected line, up to and including its LF.
    discarding: bool,
}

impl LineReader {
    /// `max_len`: the longest line accepted, CRLF not counted (pf's ftp-proxy uses 500).
    /// `strip_telnet`: true on the client side, where RFC 959 §4.1.3 has clients send Telnet
    /// IP and Synch with ABOR; false for replies, where 0xFF is just data.
    pub fn new(max_len: usize, strip_telnet: bool) -> Self {
        LineReader {
            max_len,
            strip_telnet,
            input: Vec::new(),
            pos: 0,
            line: Vec::new(),
            telnet: Telnet::Data,
            discarding: false,
        }
    }

    /// Appends bytes received from the peer, split anywhere.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(data);
    }

    /// The next complete line without its line ending, an error for a rejected line, or
    /// `None` when more bytes are needed. Call until `None` after each [`push`](Self::push):
    /// only then is [`buffered`](Self::buffered) bounded.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, LineError>> {
        while self.pos < self.input.len() {
            let byte = self.input[self.pos];
            self.pos += 1;
            let Some(byte) = self.telnet_decode(byte) else {
                continue;
            };
            if self.discarding {
                self.discarding = byte != LF;
                continue;
            }
            if byte == LF {
                if self.line.last() == Some(&CR) {
                    self.line.pop();
                }
                let line = self.line.to_vec();
                self.line.clear();
                return Some(Ok(line));
            }
            if byte == 0 {
                return Some(Err(self.reject(LineError::Nul)));
            }
            // One byte over the limit is allowed only as the CR of the final CRLF.
            let len = self.line.len();
            if len > self.max_len || (len == self.max_len && byte != CR) {
                let limit = self.max_len;
                return Some(Err(self.reject(LineError::TooLong { limit })));
            }
            self.line.push(byte);
        }
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        None
    }

    /// Bytes held: pushed but not yet read, plus the partial line. After `next_line`
    /// returned `None` this is at most `max_len + 1`.
    pub fn buffered(&self) -> usize {
        self.input.len() - self.pos + self.line.len()
    }

    /// Drops the current line and skips to the next LF.
    fn reject(&mut self, error: LineError) -> LineError {
        self.line.clear();
        self.discarding = true;
        error
    }

    /// Feeds one byte through the Telnet decoder (RFC 854); returns the data byte, if any.
    fn telnet_decode(&mut self, byte: u8) -> Option<u8> {
        if !self.strip_telnet {
            return Some(byte);
        }
        match self.telnet {
            Telnet::Data if byte == IAC => {
                self.telnet = Telnet::Iac;
                None
            }
            Telnet::Data => Some(byte),
            Telnet::Iac => {
                self.telnet = Telnet::Data;
                match byte {
                    // Escaped 0xFF data byte.
                    IAC => Some(IAC),
                    // The session sends its own Synch with every ABOR.
                    IP | DM => None,
                    b if TWO_BYTE.contains(&b) => None,
                    b if NEGOTIATION.contains(&b) => {
                        self.telnet = Telnet::Option;
                        None
                    }
                    // Not a Telnet command (RFC 854 leaves it undefined): drop the IAC and
                    // keep the byte, so an LF after a stray IAC still ends the line.
                    b => Some(b),
                }
            }
            Telnet::Option => {
                self.telnet = Telnet::Data;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Out = Result<&'static [u8], LineError>;

    fn too_long(limit: usize) -> Out {
        Err(LineError::TooLong { limit })
    }

    /// Feeds `input` in one piece, then byte by byte, then in pieces of 2 and 3 bytes, and
    /// checks every split gives the same lines.
    fn run(max_len: usize, telnet: bool, input: &[u8]) -> Vec<Result<Vec<u8>, LineError>> {
        let mut all = Vec::new();
        for chunk in [input.len().max(1), 1, 2, 3] {
            let mut reader = LineReader::new(max_len, telnet);
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                reader.push(piece);
                while let Some(line) = reader.next_line() {
                    out.push(line);
                }
                assert!(
                    reader.buffered() <= max_len + 1,
                    "buffered {}",
                    reader.buffered()
                );
            }
            all.push(out);
        }
        for other in &all[1..] {
            assert_eq!(&all[0], other, "split changed the result for {input:?}");
        }
        all.swap_remove(0)
    }

    fn check(max_len: usize, telnet: bool, input: &[u8], expected: &[Out]) {
        let got = run(max_len, telnet, input);
        let expected: Vec<_> = expected
            .iter()
            .map(|r| r.clone().map(<[u8]>::to_vec))
            .collect();
        assert_eq!(got, expected, "input {:?}", String::from_utf8_lossy(input));
    }

    #[test]
    fn framing() {
        let cases: &[(&[u8], &[Out])] = &[
            (b"", &[]),
            (b"USER a\r\n", &[Ok(b"USER a")]),
            (b"USER a\n", &[Ok(b"USER a")]),
            (b"USER a", &[]),
            (b"USER a\r", &[]),
            (b"\r\n", &[Ok(b"")]),
            (b"\n\n", &[Ok(b""), Ok(b"")]),
            (b"A\r\nB\r\nC", &[Ok(b"A"), Ok(b"B")]),
            // A bare CR is kept; only the one before LF goes.
            (b"A\rB\r\n", &[Ok(b"A\rB")]),
            (b"A\r\r\n", &[Ok(b"A\r")]),
            (b"\r\r\n", &[Ok(b"\r")]),
            // Without Telnet stripping, 0xFF is data.
            (b"A\xff\xf4B\r\n", &[Ok(b"A\xff\xf4B")]),
            (b"caf\xc3\xa9\r\n", &[Ok(b"caf\xc3\xa9")]),
        ];
        for (input, expected) in cases {
            check(100, false, input, expected);
        }
    }

    #[test]
    fn limits_and_nul() {
        let cases: &[(usize, &[u8], &[Out])] = &[
            (4, b"ABCD\r\n", &[Ok(b"ABCD")]),
            (4, b"ABCD\n", &[Ok(b"ABCD")]),
            (4, b"ABCDE\r\nX\r\n", &[too_long(4), Ok(b"X")]),
            // The error comes at once, not when the line ends.
            (4, b"ABCDEFGHIJKLMNOP", &[too_long(4)]),
            (4, b"ABCDEFGHIJKLMNOP\nOK\n", &[too_long(4), Ok(b"OK")]),
            // CR at the limit is the CRLF's; a second CR is content.
            (4, b"ABCD\r\r\n", &[too_long(4)]),
            (4, b"ABCD\rX\n", &[too_long(4)]),
            (0, b"\r\n", &[Ok(b"")]),
            (0, b"A\r\n\r\n", &[too_long(0), Ok(b"")]),
            (10, b"A\0B\r\nC\r\n", &[Err(LineError::Nul), Ok(b"C")]),
            (10, b"\0", &[Err(LineError::Nul)]),
            (
                10,
                b"\0\0\0\n\0\n",
                &[Err(LineError::Nul), Err(LineError::Nul)],
            ),
            // One error per line, whichever comes first.
            (2, b"ABC\0\n", &[too_long(2)]),
            (2, b"\0ABC\n", &[Err(LineError::Nul)]),
        ];
        for (max, input, expected) in cases {
            check(*max, false, input, expected);
            check(*max, true, input, expected);
        }
    }

    #[test]
    fn telnet() {
        let cases: &[(&[u8], &[Out])] = &[
            (b"A\xff\xffB\r\n", &[Ok(b"A\xffB")]),
            // IAC IP, IAC DM, then ABOR: the BSD client's Synch (RFC 959 §4.1.3).
            (b"\xff\xf4\xff\xf2ABOR\r\n", &[Ok(b"ABOR")]),
            (b"\xff\xf4ABOR\r\n", &[Ok(b"ABOR")]),
            (b"AB\xff\xf2OR\r\n", &[Ok(b"ABOR")]),
            // NOP, GA, SB, SE: two bytes each.
            (b"A\xff\xf1B\xff\xf9C\xff\xfaD\xff\xf0\r\n", &[Ok(b"ABCD")]),
            // WILL/WONT/DO/DONT + option byte, even if the option is LF or IAC.
            (
                b"A\xff\xfb\x01B\xff\xfc\nC\xff\xfd\xffD\xff\xfe\x00\r\n",
                &[Ok(b"ABCD")],
            ),
            // IAC + non-command byte: the IAC goes, the byte stays.
            (b"A\xff\nB\xffC\n", &[Ok(b"A"), Ok(b"BC")]),
            (b"A\xff", &[]),
            // Escaped 0xFF counts towards the limit.
            (
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\n",
                &[too_long(4)],
            ),
            // Telnet commands do not count.
            (
                b"\xff\xf1\xff\xf1\xff\xf1\xff\xf1\xff\xf1\xff\xf1ABCD\n",
                &[Ok(b"ABCD")],
            ),
        ];
        for (input, expected) in cases {
            check(4, true, input, expected);
        }
    }

    #[test]
    fn bounded_under_floods() {
        let floods: &[&[u8]] = &[b"A", b"\xff", b"\xff\xff", b"\xff\xf1", b"\xff\xfb", b"\0"];
        for unit in floods {
            let mut reader = LineReader::new(16, true);
            let mut errors = 0;
            for _ in 0..10_000 {
                reader.push(unit);
                while let Some(line) = reader.next_line() {
                    assert!(line.is_err());
                    errors += 1;
                }
                assert!(reader.buffered() <= 17);
            }
            assert!(errors <= 1, "{unit:?}: {errors} errors");
            // The reader resynchronises at the next LF.
            reader.push(b"\xff\xf1\nOK\r\n");
            let mut last = None;
            while let Some(line) = reader.next_line() {
                last = Some(line);
            }
            assert_eq!(last, Some(Ok(b"OK".to_vec())), "{unit:?}");
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            LineError::TooLong { limit: 500 }.to_string(),
            "line longer than 500 bytes"
        );
        assert_eq!(LineError::Nul.to_string(), "line contains a NUL byte");
    }
}
