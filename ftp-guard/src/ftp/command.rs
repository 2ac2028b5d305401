//! Client command lines: `VERB` or `VERB SP argument` (RFC 959 §5.3.1).
//!
//! The argument is kept verbatim, spaces included: pathnames may start or end with spaces,
//! and the origin, not the gateway, decides what they mean. What is checked is what a
//! proxy must not pass on blindly: a verb that is not a word, non-UTF-8 text (RFC 2640
//! makes pathnames UTF-8) and control characters, which could smuggle a second command
//! past the proxy to a server that splits lines on a bare CR.

/// One parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The verb, ASCII uppercased (RFC 959 §5.3: verbs are case-insensitive).
    pub verb: String,
    /// Everything after the first space, verbatim; `None` when there was no space.
    pub arg: Option<String>,
}

/// Why a command line was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The line is empty.
    #[error("empty command line")]
    Empty,
    /// The argument is not UTF-8.
    #[error("command is not valid UTF-8")]
    InvalidUtf8,
    /// The verb is not 1 to 8 ASCII letters.
    #[error("command verb must be 1 to 8 ASCII letters")]
    BadVerb,
    /// The argument contains a control character other than TAB.
    #[error("control character in command argument")]
    ControlCharacter,
}

/// Longest verb accepted. RFC 959 verbs have 3 or 4 letters; extensions are no longer
/// (XCWD, MLSD, OPTS, HOST, ...). 8 leaves room without letting text pose as a verb.
pub const MAX_VERB_LEN: usize = 8;

/// Parses one line as given by [`LineReader`](super::line::LineReader) (no CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    if line.is_empty() {
        return Err(CommandError::Empty);
    }
    let (verb, arg) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], Some(&line[space + 1..])),
        None => (line, None),
    };
    if verb.is_empty() || verb.len() > MAX_VERB_LEN || !verb.iter().all(u8::is_ascii_alphabetic) {
        return Err(CommandError::BadVerb);
    }
    let arg = match arg {
        None => None,
        Some(arg) => {
            if arg.iter().any(|&b| b < 0x20 && b != b'\t') {
                return Err(CommandError::ControlCharacter);
            }
            let arg = std::str::from_utf8(arg).map_err(|_| CommandError::InvalidUtf8)?;
            Some(arg.to_owned())
        }
    };
    // The verb is ASCII letters only, so this cannot fail or change its length.
    let verb = String::from_utf8_lossy(verb).to_ascii_uppercase();
    Ok(Command { verb, arg })
}

impl Command {
    /// A command with an argument.
    pub fn new(verb: &str, arg: Option<&str>) -> Command {
        Command {
            verb: verb.to_ascii_uppercase(),
            arg: arg.map(str::to_owned),
        }
    }

    /// The command as sent on the wire: `VERB` or `VERB arg`, then CRLF.
    pub fn to_line(&self) -> Vec<u8> {
        let arg_len = self.arg.as_ref().map_or(0, |a| a.len() + 1);
        let mut line = Vec::with_capacity(self.verb.len() + arg_len + 2);
        line.extend_from_slice(self.verb.as_bytes());
        if let Some(arg) = &self.arg {
            line.push(b' ');
            line.extend_from_slice(arg.as_bytes());
        }
        line.extend_from_slice(b"\r\n");
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(verb: &str, arg: Option<&str>) -> Result<Command, CommandError> {
        Ok(Command::new(verb, arg))
    }

    #[test]
    fn parse() {
        use CommandError::*;
        let cases: &[(&[u8], Result<Command, CommandError>)] = &[
            (b"", Err(Empty)),
            (b"NOOP", ok("NOOP", None)),
            (b"noop", ok("NOOP", None)),
            (b"UsEr anonymous", ok("USER", Some("anonymous"))),
            (b"XCWD dir", ok("XCWD", Some("dir"))),
            (b"A", ok("A", None)),
            (b"ABCDEFGH x", ok("ABCDEFGH", Some("x"))),
            // The argument is verbatim: leading, trailing and inner spaces stay.
            (b"RETR  two  spaces ", ok("RETR", Some(" two  spaces "))),
            (b"CWD ", ok("CWD", Some(""))),
            (b"STOR a\tb", ok("STOR", Some("a\tb"))),
            (b"RETR caf\xc3\xa9.txt", ok("RETR", Some("café.txt"))),
            (b"RETR \x7f", ok("RETR", Some("\x7f"))),
            (b"ABCDEFGHI", Err(BadVerb)),
            (b" NOOP", Err(BadVerb)),
            (b"NO OP", ok("NO", Some("OP"))),
            (b"US3R a", Err(BadVerb)),
            (b"USER\ta", Err(BadVerb)),
            (b"NOOP\r", Err(BadVerb)),
            (b"\xc3\xa9 x", Err(BadVerb)),
            (b"\xff\xf4ABOR", Err(BadVerb)),
            (b"USER a\rPASS b", Err(ControlCharacter)),
            (b"USER a\n", Err(ControlCharacter)),
            (b"USER \0", Err(ControlCharacter)),
            (b"USER \x1b[2J", Err(ControlCharacter)),
            (b"RETR \xff", Err(InvalidUtf8)),
            (b"RETR caf\xe9", Err(InvalidUtf8)),
            (b"RETR \xc3", Err(InvalidUtf8)),
        ];
        for (line, expected) in cases {
            assert_eq!(
                &parse_command(line),
                expected,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn to_line_round_trips() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"noop", b"NOOP\r\n"),
            (b"user anonymous", b"USER anonymous\r\n"),
            (b"RETR  a b ", b"RETR  a b \r\n"),
            (b"CWD ", b"CWD \r\n"),
        ];
        for (line, wire) in cases {
            let command = parse_command(line).unwrap();
            assert_eq!(command.to_line(), *wire);
            let again = parse_command(&wire[..wire.len() - 2]).unwrap();
            assert_eq!(again, command);
        }
    }

    /// The session matches verbs in upper case, whatever case the client used.
    #[test]
    fn verbs_are_upper_case() {
        for line in [&b"epsv ALL"[..], b"Epsv ALL", b"EPSV ALL"] {
            let command = parse_command(line).unwrap();
            assert_eq!(
                (command.verb.as_str(), command.arg.as_deref()),
                ("EPSV", Some("ALL"))
            );
        }
    }
}
