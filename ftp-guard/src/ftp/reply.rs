//! Server replies (RFC 959 §4.2): `ddd SP text`, or a multi-line reply from `ddd-text` to
//! the first line that starts with the same `ddd` and a space.
//!
//! Lines are kept raw (bytes, prefixes included) so that a reply passed through unchanged
//! is byte-for-byte what the origin sent, minus nothing but the line endings.

/// One complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, 100..=599.
    pub code: u16,
    /// The raw lines without CRLF, including the `ddd-` / `ddd ` prefixes of the first and
    /// last lines. Never empty for a reply made by this module.
    pub lines: Vec<Vec<u8>>,
}

/// Why a reply could not be assembled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The first line of a reply is not `ddd`, `ddd SP ...` or `ddd-...` with a code
    /// in 100..=599.
    #[error("malformed reply line")]
    Malformed,
    /// A multi-line reply went on for more lines than the limit.
    #[error("multi-line reply longer than {limit} lines")]
    TooManyLines { limit: usize },
}

impl Reply {
    /// A single-line reply `CODE text`. CR, LF and NUL in `text` become spaces, so no
    /// caller can split a reply by accident.
    pub fn new(code: u16, text: &str) -> Reply {
        debug_assert!((100..=599).contains(&code), "reply code {code}");
        Reply {
            code,
            lines: vec![prefixed(code, b' ', text)],
        }
    }

    /// A multi-line reply: `CODE-first`, the middle lines, `CODE last`. Middle lines that
    /// start with a digit get a leading space (RFC 959 §4.2 asks the server to pad them so
    /// they cannot be taken for the end). With fewer than two lines it is single-line.
    pub fn multi(code: u16, lines: &[&str]) -> Reply {
        let [first, middle @ .., last] = lines else {
            return Reply::new(code, lines.first().copied().unwrap_or(""));
        };
        debug_assert!((100..=599).contains(&code), "reply code {code}");
        let mut out = Vec::with_capacity(lines.len());
        out.push(prefixed(code, b'-', first));
        for line in middle {
            let mut raw = Vec::with_capacity(line.len() + 1);
            if line.starts_with(|c: char| c.is_ascii_digit()) {
                raw.push(b' ');
            }
            raw.extend(line.bytes().map(sanitize));
            out.push(raw);
        }
        out.push(prefixed(code, b' ', last));
        Reply { code, lines: out }
    }

    /// The reply as sent on the wire: every line followed by CRLF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let len = self.lines.iter().map(|l| l.len() + 2).sum();
        let mut out = Vec::with_capacity(len);
        for line in &self.lines {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// The text for logs and messages: lines joined by `\n`, prefixes of the first and last
    /// lines removed, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        let last = self.lines.len().saturating_sub(1);
        let mut text = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            let line = if i == 0 || i == last {
                strip_prefix(line)
            } else {
                line
            };
            text.push_str(&String::from_utf8_lossy(line));
        }
        text
    }

    /// The first line after its `CODE ` or `CODE-` prefix (empty for a bare `CODE`).
    pub fn first_line_text(&self) -> &[u8] {
        self.lines.first().map_or(&[], |line| strip_prefix(line))
    }

    /// True if the reply has more than one line.
    pub fn is_multiline(&self) -> bool {
        self.lines.len() > 1
    }

    /// The reply's class, the first digit of its code (RFC 959 §4.2.1): 1 preliminary,
    /// 2 completion, 3 intermediate, 4 transient failure, 5 permanent failure.
    pub fn class(&self) -> u8 {
        // A u16 / 100 is at most 655: the cast only truncates codes that are not replies.
        (self.code / 100) as u8
    }
}

/// `CODE` + separator + text, with line breaks and NULs made spaces.
fn prefixed(code: u16, separator: u8, text: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(text.len() + 4);
    line.extend_from_slice(format!("{code:03}").as_bytes());
    line.push(separator);
    line.extend(text.bytes().map(sanitize));
    line
}

fn sanitize(byte: u8) -> u8 {
    match byte {
        b'\r' | b'\n' | 0 => b' ',
        b => b,
    }
}

/// The line without its first four bytes when they are `ddd ` or `ddd-`.
fn strip_prefix(line: &[u8]) -> &[u8] {
    match line {
        [a, b, c, rest @ ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => match rest {
            [b' ' | b'-', text @ ..] => text,
            [] => rest,
            _ => line,
        },
        _ => line,
    }
}

/// The code and separator of a line: `(code, Some(b' ' | b'-'))`, or `(code, None)` for a
/// bare `ddd`; `None` if the line does not start a reply.
fn reply_start(line: &[u8]) -> Option<(u16, Option<u8>)> {
    let (digits, rest) = line.split_first_chunk::<3>()?;
    if !(b'1'..=b'5').contains(&digits[0]) || !digits[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match rest.first() {
        None => Some((code, None)),
        Some(&sep @ (b' ' | b'-')) => Some((code, Some(sep))),
        Some(_) => None,
    }
}

/// Collects lines into replies.
#[derive(Clone, Debug)]
pub struct ReplyAssembler {
    max_lines: usize,
    /// The multi-line reply in progress: its code and the lines held (those not yet
    /// taken by [`ReplyAssembler::take_lines`]).
    partial: Option<Reply>,
    /// Bytes of the lines held.
    partial_bytes: usize,
}

impl ReplyAssembler {
    /// `max_lines`: the most lines of one reply held at once (bounds memory together with
    /// the line length limit); lines taken by [`ReplyAssembler::take_lines`] no longer count.
    pub fn new(max_lines: usize) -> Self {
        ReplyAssembler {
            max_lines,
            partial: None,
            partial_bytes: 0,
        }
    }

    /// Bytes held of the multi-line reply in progress.
    pub fn buffered_bytes(&self) -> usize {
        self.partial_bytes
    }

    /// Lines held of the multi-line reply in progress.
    pub fn buffered_lines(&self) -> usize {
        self.partial.as_ref().map_or(0, |r| r.lines.len())
    }

    /// Takes the lines held of the multi-line reply in progress, so that a long reply can
    /// be passed on as it comes instead of being held whole. The reply goes on: the one
    /// [`ReplyAssembler::push_line`] completes later has only the lines after these.
    pub fn take_lines(&mut self) -> Vec<Vec<u8>> {
        self.partial_bytes = 0;
        self.partial
            .as_mut()
            .map(|r| std::mem::take(&mut r.lines))
            .unwrap_or_default()
    }

    /// Adds one line (no CRLF); returns the reply it completes, if any. After an error the
    /// assembler is empty and expects the first line of a new reply.
    pub fn push_line(&mut self, line: Vec<u8>) -> Result<Option<Reply>, ReplyError> {
        let Some(mut reply) = self.partial.take() else {
            return match reply_start(&line) {
                Some((code, Some(b'-'))) => {
                    if self.max_lines < 2 {
                        return Err(ReplyError::TooManyLines {
                            limit: self.max_lines,
                        });
                    }
                    self.partial_bytes = line.len();
                    self.partial = Some(Reply {
                        code,
                        lines: vec![line],
                    });
                    Ok(None)
                }
                Some((code, _)) if self.max_lines >= 1 => Ok(Some(Reply {
                    code,
                    lines: vec![line],
                })),
                Some(_) => Err(ReplyError::TooManyLines {
                    limit: self.max_lines,
                }),
                None => Err(ReplyError::Malformed),
            };
        };
        // Middle lines may look like anything, even other codes or `ddd-`; only the same
        // code followed by a space (or nothing) ends the reply.
        let ends =
            matches!(reply_start(&line), Some((code, None | Some(b' '))) if code == reply.code);
        self.partial_bytes += line.len();
        reply.lines.push(line);
        if ends {
            self.partial_bytes = 0;
            return Ok(Some(reply));
        }
        if reply.lines.len() >= self.max_lines {
            self.partial_bytes = 0;
            // The next line would be one too many, whatever it is.
            return Err(ReplyError::TooManyLines {
                limit: self.max_lines,
            });
        }
        self.partial = Some(reply);
        Ok(None)
    }

    /// True while a multi-line reply is incomplete.
    pub fn in_progress(&self) -> bool {
        self.partial.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Raw reply lines.
    type Lines = &'static [&'static [u8]];

    /// What one `push_line` is expected to give.
    #[derive(Debug, PartialEq)]
    enum Step {
        /// `Ok(None)`: more lines needed.
        More,
        /// `Ok(Some(reply))` with these lines.
        Done(Lines),
        Fail(ReplyError),
    }
    use Step::*;

    /// Feeds the lines in order and checks each push's outcome.
    fn check(max_lines: usize, lines: &[&[u8]], expected: &[Step]) {
        assert_eq!(lines.len(), expected.len(), "bad case {lines:?}");
        let mut assembler = ReplyAssembler::new(max_lines);
        for (line, step) in lines.iter().zip(expected) {
            let got = assembler.push_line(line.to_vec());
            let ok = match (&got, step) {
                (Ok(None), More) => true,
                (Ok(Some(reply)), Done(want)) => {
                    // The code is the one the lines carry.
                    assert_eq!(reply_start(&reply.lines[0]).map(|c| c.0), Some(reply.code));
                    reply
                        .lines
                        .iter()
                        .map(Vec::as_slice)
                        .eq(want.iter().copied())
                }
                (Err(e), Fail(want)) => e == want,
                _ => false,
            };
            assert!(
                ok,
                "limit {max_lines}, {lines:?}: got {got:?} at {line:?}, want {step:?}"
            );
        }
    }

    #[test]
    fn assemble() {
        use ReplyError::*;
        let cases: &[(Lines, &[Step])] = &[
            (&[b"220 ready"], &[Done(&[b"220 ready"])]),
            (&[b"220"], &[Done(&[b"220"])]),
            (&[b"220 "], &[Done(&[b"220 "])]),
            (
                &[b"100 x", b"599 y"],
                &[Done(&[b"100 x"]), Done(&[b"599 y"])],
            ),
            (&[b"220-a", b"220 b"], &[More, Done(&[b"220-a", b"220 b"])]),
            // Middle lines: digits, other codes, the same code with '-', empty lines.
            (
                &[
                    b"220-a", b"123 x", b"220-c", b"", b"  220 d", b"2201", b"220",
                ],
                &[
                    More,
                    More,
                    More,
                    More,
                    More,
                    More,
                    Done(&[
                        b"220-a", b"123 x", b"220-c", b"", b"  220 d", b"2201", b"220",
                    ]),
                ],
            ),
            // The first line after a complete reply starts a new one.
            (
                &[b"211-x", b"211 y", b"200 z"],
                &[More, Done(&[b"211-x", b"211 y"]), Done(&[b"200 z"])],
            ),
            (&[b""], &[Fail(Malformed)]),
            (&[b"22"], &[Fail(Malformed)]),
            (&[b"2200 x"], &[Fail(Malformed)]),
            (&[b"220x"], &[Fail(Malformed)]),
            (&[b"220\tx"], &[Fail(Malformed)]),
            (&[b" 220 x"], &[Fail(Malformed)]),
            (&[b"099 x"], &[Fail(Malformed)]),
            (&[b"600 x"], &[Fail(Malformed)]),
            (&[b"000 x"], &[Fail(Malformed)]),
            (&[b"2a0 x"], &[Fail(Malformed)]),
            (&[b"\xff\xff\xff x"], &[Fail(Malformed)]),
            // After an error the next line starts afresh.
            (
                &[b"hello", b"220 ok"],
                &[Fail(Malformed), Done(&[b"220 ok"])],
            ),
        ];
        for (lines, expected) in cases {
            check(10, lines, expected);
        }
    }

    #[test]
    fn line_limit() {
        let too_many = |limit| Fail(ReplyError::TooManyLines { limit });
        let cases: &[(usize, Lines, &[Step])] = &[
            (
                3,
                &[b"220-a", b"b", b"220 c"],
                &[More, More, Done(&[b"220-a", b"b", b"220 c"])],
            ),
            // Two lines that do not end the reply: a third is needed, one too many.
            (
                2,
                &[b"220-a", b"b", b"220 c"],
                &[More, too_many(2), Done(&[b"220 c"])],
            ),
            (
                2,
                &[b"220-a", b"220 c"],
                &[More, Done(&[b"220-a", b"220 c"])],
            ),
            (1, &[b"220-a", b"220 c"], &[too_many(1), Done(&[b"220 c"])]),
            (0, &[b"220 a"], &[too_many(0)]),
        ];
        for (limit, lines, expected) in cases {
            check(*limit, lines, expected);
        }
        let mut assembler = ReplyAssembler::new(2);
        assert_eq!(assembler.push_line(b"220-a".to_vec()), Ok(None));
        assert!(assembler.in_progress());
        assert!(assembler.push_line(b"b".to_vec()).is_err());
        assert!(!assembler.in_progress());
    }

    #[test]
    fn build_and_render() {
        /// (reply, wire bytes, text(), first_line_text(), multi-line)
        type Case = (Reply, &'static [u8], &'static str, &'static [u8], bool);
        let cases: &[Case] = &[
            (Reply::new(200, "OK."), b"200 OK.\r\n", "OK.", b"OK.", false),
            (Reply::new(200, ""), b"200 \r\n", "", b"", false),
            (
                Reply::new(500, "a\r\n421 injected\0"),
                b"500 a  421 injected \r\n",
                "a  421 injected ",
                b"a  421 injected ",
                false,
            ),
            (Reply::multi(211, &[]), b"211 \r\n", "", b"", false),
            (
                Reply::multi(211, &["only"]),
                b"211 only\r\n",
                "only",
                b"only",
                false,
            ),
            (
                Reply::multi(211, &["Features:", " EPSV", "211 x", "End"]),
                b"211-Features:\r\n EPSV\r\n 211 x\r\n211 End\r\n",
                "Features:\n EPSV\n 211 x\nEnd",
                b"Features:",
                true,
            ),
        ];
        for (reply, wire, text, first, multi) in cases {
            assert_eq!(reply.to_bytes(), *wire, "{reply:?}");
            assert_eq!(reply.text(), *text, "{reply:?}");
            assert_eq!(reply.first_line_text(), *first, "{reply:?}");
            assert_eq!(reply.is_multiline(), *multi, "{reply:?}");
            // What is built parses back to the same reply.
            let mut assembler = ReplyAssembler::new(100);
            let mut parsed = None;
            for line in &reply.lines {
                parsed = assembler.push_line(line.clone()).unwrap();
            }
            assert_eq!(parsed.as_ref(), Some(reply));
        }
    }

    #[test]
    fn accessors_on_raw_replies() {
        let cases: &[(Lines, &str, &[u8], u8)] = &[
            (
                &[b"227 Entering (1,2,3,4,5,6)"],
                "Entering (1,2,3,4,5,6)",
                b"Entering (1,2,3,4,5,6)",
                2,
            ),
            (&[b"150"], "", b"", 1),
            (
                &[b"220-caf\xe9", b"220 end"],
                "caf\u{fffd}\nend",
                b"caf\xe9",
                2,
            ),
            (&[b"550-a", b"550-b", b"550"], "a\n550-b\n", b"a", 5),
        ];
        for (lines, text, first, class) in cases {
            let mut assembler = ReplyAssembler::new(10);
            let mut reply = None;
            for line in *lines {
                reply = assembler.push_line(line.to_vec()).unwrap();
            }
            let reply = reply.unwrap();
            assert_eq!(reply.text(), *text);
            assert_eq!(reply.first_line_text(), *first);
            assert_eq!(reply.class(), *class);
        }
        let empty = Reply {
            code: 200,
            lines: vec![],
        };
        assert_eq!(empty.first_line_text(), b"");
        assert_eq!(empty.text(), "");
        assert_eq!(empty.to_bytes(), b"");
    }
}
