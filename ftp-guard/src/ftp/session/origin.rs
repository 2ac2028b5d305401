//! The origin side of the session: reply lines in, assembled and matched to the reply
//! queue front first; passive replies become lease requests, FEAT is filtered, everything
//! is scrubbed, and a long reply that is next in line is passed on in pieces.
use std::net::SocketAddr;

use super::{Action, PassiveForm, Pending, Session};
use crate::ftp::{address, reply::Reply};

/// Features the gateway removes from FEAT: TLS (not carried yet, and a TLS handshake must
/// never reach the line parser); EPRT too when active mode is off.
const HIDDEN_FEATURES: &[&str] = &["AUTH", "PBSZ", "PROT", "CCC", "ADAT"];

impl Session {
    pub(super) fn drain_origin_lines(&mut self) {
        while let Some(line) = self.origin_lines.next_line() {
            if self.closed {
                return;
            }
            let complete = match line {
                Ok(line) => self.replies.push_line(line),
                Err(e) => {
                    self.origin_violation(&format!("reply line: {e}"));
                    return;
                }
            };
            match complete {
                Ok(Some(reply)) => {
                    self.unmatched.push_back(reply);
                    // Matched at once, so that a long reply behind it finds itself next.
                    self.flush();
                }
                Ok(None) => {
                    if self.replies.buffered_bytes() > self.config.max_reply_bytes
                        || self.replies.buffered_lines() + 1 >= self.config.max_reply_lines
                    {
                        self.pass_on_partial_reply();
                    }
                }
                Err(e) => {
                    self.origin_violation(&format!("reply: {e}"));
                    return;
                }
            }
        }
    }

    /// Sends the lines held of a long multi-line reply (a STAT of a big directory) ahead
    /// of its end, so a session never holds more than about `max_reply_bytes` of it: possible
    /// when the reply is the next one owed and is passed on as it is. Replies the gateway
    /// must see whole (FEAT, the 227 for a lease) that are that long break the protocol.
    pub(super) fn pass_on_partial_reply(&mut self) {
        let next_owed = self.unmatched.is_empty()
            && matches!(
                self.pending.front(),
                None | Some(
                    Pending::Greeting
                        | Pending::Forward
                        | Pending::Login
                        | Pending::Transfer { .. }
                        | Pending::Quit
                )
            );
        if !next_owed {
            let limit = self.config.max_reply_bytes;
            return self.origin_violation(&format!(
                "reply: longer than {limit} bytes where it must be read whole"
            ));
        }
        let mut bytes = Vec::new();
        for line in self.replies.take_lines() {
            bytes.extend_from_slice(&self.config.scrubber.scrub(&line));
            bytes.extend_from_slice(b"\r\n");
        }
        self.actions.push_back(Action::ToClient(bytes));
    }

    /// The origin broke the protocol: the stream cannot be trusted to resynchronise.
    pub(super) fn origin_violation(&mut self, what: &str) {
        self.warn(format!("origin sent an invalid {what}"));
        self.say(Reply::new(
            421,
            "The server sent an invalid reply; closing.",
        ));
        self.close();
    }

    /// Matches complete replies and local replies to the queue, front first.
    pub(super) fn flush(&mut self) {
        while !self.closed {
            match self.pending.front() {
                Some(Pending::Local(_)) => {
                    if let Some(Pending::Local(reply)) = self.pending.pop_front() {
                        self.say_local(reply);
                    }
                }
                Some(Pending::AwaitingLease { .. } | Pending::AwaitingActive { .. }) => return,
                Some(_) => {
                    let Some(reply) = self.unmatched.pop_front() else {
                        return;
                    };
                    self.origin_reply(reply);
                }
                None => {
                    // Unsolicited (e.g. "421 timeout" from the origin): pass it on.
                    let Some(reply) = self.unmatched.pop_front() else {
                        return;
                    };
                    let closing = reply.code == 421;
                    self.say_scrubbed(&reply);
                    if closing {
                        self.close();
                    }
                }
            }
        }
    }

    /// Handles an origin reply for the command at the queue's front.
    pub(super) fn origin_reply(&mut self, reply: Reply) {
        if reply.code == 230 {
            self.timers.logged_in();
        }
        // A 1xx reply is preliminary: the command waits for its final reply.
        let preliminary = reply.class() == 1;
        let front = if preliminary {
            if let Some(Pending::Transfer { transfer }) = self.pending.front_mut() {
                transfer.data_opened = true;
            }
            None
        } else {
            self.pending.pop_front()
        };
        match front {
            None => self.say_scrubbed(&reply),
            Some(Pending::Transfer { mut transfer }) => {
                // The origin opened a data connection and reports success: the client
                // hears it once the data has arrived (curl in active mode, for one, fails
                // a transfer whose 226 comes before the data connection).
                if transfer.data_opened && reply.class() == 2 {
                    self.actions.push_back(Action::AwaitData);
                }
                transfer.reply_code = reply.code;
                transfer.ended = self.now;
                self.actions.push_back(Action::TransferDone(*transfer));
                let closing = reply.code == 421;
                self.say_scrubbed(&reply);
                if closing {
                    self.close();
                }
            }
            Some(front @ (Pending::Greeting | Pending::Forward | Pending::Login)) => {
                let closing = reply.code == 421;
                self.say_scrubbed(&reply);
                if matches!(front, Pending::Login) && matches!(reply.code, 430 | 530) {
                    let user = self.user.clone();
                    self.actions.push_back(Action::LoginFailed { user });
                }
                if closing {
                    self.close();
                }
            }
            Some(Pending::Feat) => {
                let filtered = filter_feat(&reply, self.config.active_mode);
                self.say_scrubbed(&filtered);
            }
            Some(Pending::Quit) => {
                self.say_scrubbed(&reply);
                self.close();
            }
            Some(Pending::Passive(form)) => self.passive_reply(form, &reply),
            Some(
                Pending::AwaitingLease { .. } | Pending::AwaitingActive { .. } | Pending::Local(_),
            ) => {
                unreachable!("flush never matches origin replies to these")
            }
        }
    }

    pub(super) fn passive_reply(&mut self, form: PassiveForm, reply: &Reply) {
        if reply.code != 227 {
            // The origin refused (e.g. 425, 530 not logged in): its words, scrubbed.
            self.say_scrubbed(reply);
            return;
        }
        match address::parse_pasv_reply(reply) {
            Ok(announced) => {
                let origin = SocketAddr::new(self.config.origin_ip, announced.port());
                let ticket = self.issue_lease();
                self.actions
                    .push_back(Action::InstallLease { ticket, origin });
                self.pending
                    .push_front(Pending::AwaitingLease { ticket, form });
            }
            Err(e) => {
                self.warn(format!(
                    "origin's 227 reply is unusable ({e}): {}",
                    reply.text()
                ));
                self.say_local(Reply::new(
                    425,
                    "Can't open data connection: the server's passive reply was invalid.",
                ));
            }
        }
    }
}

/// FEAT reply minus [`HIDDEN_FEATURES`] (and EPRT without active mode), plus EPSV (the
/// gateway offers it whatever the origin does). Feature lines start with a space
/// (RFC 2389 §3.2).
fn filter_feat(reply: &Reply, active_mode: bool) -> Reply {
    if reply.code != 211 || !reply.is_multiline() {
        return reply.clone();
    }
    let n = reply.lines.len();
    let mut lines = Vec::with_capacity(n + 1);
    lines.push(reply.lines[0].clone());
    let mut has_epsv = false;
    for line in &reply.lines[1..n - 1] {
        let name = feature_name(line);
        if HIDDEN_FEATURES.iter().any(|h| name.eq_ignore_ascii_case(h))
            || (!active_mode && name.eq_ignore_ascii_case("EPRT"))
        {
            continue;
        }
        has_epsv |= name.eq_ignore_ascii_case("EPSV");
        lines.push(line.clone());
    }
    if !has_epsv {
        lines.push(b" EPSV".to_vec());
    }
    lines.push(reply.lines[n - 1].clone());
    Reply {
        code: reply.code,
        lines,
    }
}

fn feature_name(line: &[u8]) -> &str {
    let text = std::str::from_utf8(line).unwrap_or("");
    text.split_whitespace().next().unwrap_or("")
}
