//! The client side of the session: command lines in, each either forwarded to the origin
//! (taking its place in the reply queue) or answered here (PASV/EPSV become a PASV to the
//! origin; PORT/EPRT are checked and become a lease request; TLS and long forms are refused).
use std::net::SocketAddr;

use super::{Action, PassiveForm, Pending, Session, Transfer};
use crate::ftp::{
    address::{self, EpsvArg},
    command::{Command, CommandError, parse_command},
    line::LineError,
    reply::Reply,
};

impl Session {
    pub(super) fn drain_client_lines(&mut self) {
        while self.wants_client_input()
            && let Some(line) = self.client_lines.next_line()
        {
            if self.closed {
                return;
            }
            let reply = match line {
                Ok(line) => match parse_command(&line) {
                    Ok(command) => {
                        self.client_command(command);
                        continue;
                    }
                    Err(CommandError::Empty) => continue,
                    Err(CommandError::InvalidUtf8) => {
                        Reply::new(501, "Command is not valid UTF-8.")
                    }
                    Err(e) => Reply::new(500, &format!("Syntax error: {e}.")),
                },
                Err(LineError::TooLong { limit }) => Reply::new(
                    500,
                    &format!("Command line too long (limit {limit} bytes)."),
                ),
                Err(LineError::Nul) => Reply::new(500, "Command contains a NUL byte."),
            };
            self.warn(format!("client: {}", reply.text()));
            self.local(reply);
        }
    }

    pub(super) fn client_command(&mut self, command: Command) {
        let verb = command.verb.as_str();
        match verb {
            "PASV" => {
                if self.epsv_all {
                    self.local(Reply::new(503, "EPSV ALL in effect: use EPSV."));
                } else {
                    self.passive(PassiveForm::Pasv);
                }
            }
            "EPSV" => match address::parse_epsv_arg(command.arg.as_deref()) {
                Ok(EpsvArg::Any | EpsvArg::Proto(1)) => self.passive(PassiveForm::Epsv),
                Ok(EpsvArg::Proto(_)) => {
                    self.local(Reply::new(522, "Network protocol not supported, use (1)"))
                }
                Ok(EpsvArg::All) => {
                    // Answered here: the origin keeps accepting the PASV the gateway sends it.
                    self.epsv_all = true;
                    self.local(Reply::new(200, "EPSV ALL ok."));
                }
                Err(_) => self.local(Reply::new(501, "Syntax error in EPSV argument.")),
            },
            "PORT" | "EPRT" => self.active(&command),
            "LPRT" | "LPSV" => self.local(Reply::new(
                502,
                "Long address forms are not supported: use PASV, EPSV, PORT or EPRT.",
            )),
            "AUTH" => self.local(Reply::new(
                534,
                "TLS is not available through this gateway; continue without it.",
            )),
            "PBSZ" | "PROT" | "CCC" | "ADAT" => self.local(Reply::new(
                503,
                "Security exchange not in effect (no AUTH).",
            )),
            "FEAT" => self.forward(&command, Pending::Feat),
            "USER" => {
                self.user = Some(user_name(command.arg.as_deref()));
                self.forward(&command, Pending::Forward);
            }
            "PASS" => self.forward(&command, Pending::Login),
            "RETR" | "STOR" | "STOU" | "APPE" | "LIST" | "NLST" | "MLSD" => {
                let transfer = self.transfer_of(&command);
                self.forward(&command, Pending::Transfer { transfer })
            }
            "QUIT" => {
                self.revoke_lease();
                self.forward(&command, Pending::Quit);
            }
            "ABOR" => {
                // Telnet IP, then Synch (IAC DM, the DM as urgent data), then ABOR (RFC 959 §4.1.3).
                self.actions
                    .push_back(Action::ToOriginUrgent(vec![0xff, 0xf4, 0xff, 0xf2]));
                self.forward(&command, Pending::Forward);
            }
            _ => self.forward(&command, Pending::Forward),
        }
    }

    /// A transfer starting now over the live lease; its reply is not known yet.
    fn transfer_of(&self, command: &Command) -> Box<Transfer> {
        Box::new(Transfer {
            command: command.verb.clone(),
            path: command.arg.clone(),
            user: self.user.clone(),
            ticket: self.leases.live(),
            data_opened: false,
            reply_code: 0,
            started: self.now,
            ended: self.now,
        })
    }

    /// PORT/EPRT: only the client's own address and an unprivileged port (FTP bounce,
    /// RFC 2577); the origin is told a port of the gateway's instead, once it is leased.
    pub(super) fn active(&mut self, command: &Command) {
        let verb = command.verb.as_str();
        if self.epsv_all {
            return self.local(Reply::new(503, "EPSV ALL in effect: use EPSV."));
        }
        if !self.config.active_mode {
            return self.local(Reply::new(
                502,
                "Active mode is disabled on this service: use PASV or EPSV.",
            ));
        }
        let arg = command.arg.as_deref().unwrap_or("");
        let parsed = if verb == "PORT" {
            address::parse_port_arg(arg).map(SocketAddr::V4)
        } else {
            address::parse_eprt_arg(arg)
        };
        let client_ip = self.config.client_ip;
        let addr = match parsed {
            Ok(a) if a.is_ipv4() == client_ip.is_ipv4() => a,
            // The client's own family only: the data connection must come from the
            // address its control connection does.
            Ok(_) => {
                let family = if client_ip.is_ipv4() { 1 } else { 2 };
                return self.local(Reply::new(
                    522,
                    &format!("Network protocol not supported, use ({family})"),
                ));
            }
            Err(e) => {
                self.warn(format!("client: malformed {verb} ({e})"));
                return self.local(Reply::new(
                    501,
                    &format!("Syntax error in {verb} argument."),
                ));
            }
        };
        if addr.ip() != client_ip {
            self.warn(format!(
                "FTP bounce refused: {verb} names {addr}, the client is {client_ip}"
            ));
            return self.local(Reply::new(
                504,
                &format!("Refused: {verb} must name your own address (no third parties)."),
            ));
        }
        if addr.port() < 1024 {
            self.warn(format!("refused {verb} to privileged port {addr}"));
            return self.local(Reply::new(
                504,
                "Refused: data ports below 1024 are not allowed.",
            ));
        }
        let ticket = self.issue_lease();
        self.actions.push_back(Action::InstallActiveLease {
            ticket,
            client: addr,
        });
        self.pending.push_back(Pending::AwaitingActive { ticket });
        self.holding_client = true;
    }

    pub(super) fn passive(&mut self, form: PassiveForm) {
        self.revoke_lease();
        self.actions
            .push_back(Action::ToOrigin(b"PASV\r\n".to_vec()));
        self.pending.push_back(Pending::Passive(form));
    }

    pub(super) fn forward(&mut self, command: &Command, pending: Pending) {
        self.actions.push_back(Action::ToOrigin(command.to_line()));
        self.pending.push_back(pending);
    }

    /// Queues a reply made here behind every reply still owed to the client.
    pub(super) fn local(&mut self, reply: Reply) {
        self.pending.push_back(Pending::Local(reply));
    }
}

/// Longest user name kept for the log (a line may be up to `max_command_line` long).
const USER_NAME_KEPT: usize = 64;

/// USER's argument as kept for [`Action::LoginFailed`]: at most [`USER_NAME_KEPT`] bytes,
/// cut at a character boundary.
fn user_name(arg: Option<&str>) -> String {
    let arg = arg.unwrap_or("");
    let mut end = arg.len().min(USER_NAME_KEPT);
    while !arg.is_char_boundary(end) {
        end -= 1;
    }
    arg[..end].to_owned()
}
