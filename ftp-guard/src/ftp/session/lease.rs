//! The session's data leases: which one is live (the session is its one owner), the
//! requests and their results. Every lease it asks for gets a fresh [`LeaseTicket`]; the
//! driver's answer names it, and so does a revocation. At most one lease is live: issuing
//! a new one revokes the old.
use std::net::{SocketAddr, SocketAddrV4};

use super::{Action, LeaseFailure, PassiveForm, Pending, Session};
use crate::ftp::{address, reply::Reply};

/// Names one lease request of a session, in [`super::Action`]s and [`super::Event`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseTicket(pub u64);

#[derive(Clone, Debug, Default)]
pub(super) struct Leases {
    issued: u64,
    /// Asked for and neither failed nor revoked.
    live: Option<LeaseTicket>,
}

impl Leases {
    /// A ticket for a new lease, and the live one it replaces (to revoke).
    pub(super) fn issue(&mut self) -> (LeaseTicket, Option<LeaseTicket>) {
        self.issued += 1;
        let ticket = LeaseTicket(self.issued);
        (ticket, self.live.replace(ticket))
    }

    /// The live lease, to revoke: none is live afterwards.
    pub(super) fn revoke(&mut self) -> Option<LeaseTicket> {
        self.live.take()
    }

    /// `ticket`'s lease was not installed: it is not live (if it was).
    pub(super) fn failed(&mut self, ticket: LeaseTicket) {
        if self.live == Some(ticket) {
            self.live = None;
        }
    }

    /// The live lease, if any.
    pub(super) fn live(&self) -> Option<LeaseTicket> {
        self.live
    }

    pub(super) fn is_live(&self, ticket: LeaseTicket) -> bool {
        self.live == Some(ticket)
    }
}

/// The session's side of lease requests: results matched to the request that holds their
/// ticket, the stale lease revoked.
impl Session {
    /// Routes a failure to the request that holds `ticket`: a passive one waits at the
    /// queue's front, an active one at its back.
    pub(super) fn lease_failed(&mut self, ticket: LeaseTicket, failure: LeaseFailure) {
        if matches!(self.pending.back(), Some(Pending::AwaitingActive { ticket: t }) if *t == ticket)
        {
            self.active_lease_result(ticket, Err(failure));
        } else {
            self.lease_result(ticket, Err(failure));
        }
    }

    pub(super) fn active_lease_result(
        &mut self,
        ticket: LeaseTicket,
        result: Result<SocketAddr, LeaseFailure>,
    ) {
        if !matches!(self.pending.back(), Some(Pending::AwaitingActive { ticket: t }) if *t == ticket)
        {
            self.warn(format!("active lease result for {ticket:?}, not requested"));
            return;
        }
        self.pending.pop_back();
        self.holding_client = false;
        match result {
            Ok(origin_side) => {
                self.keep_if_live(ticket);
                // Every IPv4 server understands PORT; an IPv6 address needs EPRT.
                let line = match origin_side {
                    SocketAddr::V4(v4) => format!("PORT {}\r\n", address::port_arg(v4)),
                    SocketAddr::V6(_) => format!("EPRT {}\r\n", address::eprt_arg(origin_side)),
                };
                self.actions.push_back(Action::ToOrigin(line.into_bytes()));
                self.pending.push_back(Pending::Forward);
            }
            Err(failure) => {
                self.leases.failed(ticket);
                let reply = self.lease_failure_reply(failure);
                self.local(reply);
            }
        }
    }

    /// Logs why a lease could not be had; the 425 the client gets.
    pub(super) fn lease_failure_reply(&mut self, failure: LeaseFailure) -> Reply {
        match failure {
            LeaseFailure::Failed(reason) => {
                self.warn(format!("no data lease: {reason}"));
                Reply::new(425, "Can't open data connection now, try again later.")
            }
            LeaseFailure::ClientLimit => {
                self.warn("no data lease: the client's address holds as many as it may".into());
                Reply::new(
                    425,
                    "Can't open data connection: too many data connections pending for your address.",
                )
            }
        }
    }

    pub(super) fn lease_result(&mut self, ticket: LeaseTicket, result: Result<u16, LeaseFailure>) {
        let form = match self.pending.front() {
            Some(Pending::AwaitingLease { ticket: t, form }) if *t == ticket => *form,
            _ => {
                self.warn(format!("lease result for {ticket:?}, not requested"));
                return;
            }
        };
        self.pending.pop_front();
        match result {
            Ok(port) => {
                self.keep_if_live(ticket);
                self.say_local(match form {
                    PassiveForm::Pasv => {
                        address::pasv_reply(SocketAddrV4::new(self.config.public_ip, port))
                    }
                    PassiveForm::Epsv => address::epsv_reply(port),
                })
            }
            Err(failure) => {
                self.leases.failed(ticket);
                let reply = self.lease_failure_reply(failure);
                self.say_local(reply);
            }
        }
    }

    /// A ticket for a new lease; the live one, if any, is revoked first.
    pub(super) fn issue_lease(&mut self) -> LeaseTicket {
        let (ticket, stale) = self.leases.issue();
        if let Some(stale) = stale {
            self.actions
                .push_back(Action::RevokeLease { ticket: stale });
        }
        ticket
    }

    /// A lease was installed that the session revoked while it was asked for: it goes
    /// again, now that it exists.
    pub(super) fn keep_if_live(&mut self, ticket: LeaseTicket) {
        if !self.leases.is_live(ticket) {
            self.actions.push_back(Action::RevokeLease { ticket });
        }
    }

    pub(super) fn revoke_lease(&mut self) {
        if let Some(ticket) = self.leases.revoke() {
            self.actions.push_back(Action::RevokeLease { ticket });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each step gives and which ticket is live after it.
    #[test]
    fn one_live_lease_at_a_time() {
        #[derive(Debug, PartialEq)]
        enum Out {
            Issued(LeaseTicket, Option<LeaseTicket>),
            Revoked(Option<LeaseTicket>),
            Failed,
        }
        let t = LeaseTicket;
        let steps: [(&str, Out, Option<LeaseTicket>); 7] = [
            ("issue", Out::Issued(t(1), None), Some(t(1))),
            ("issue", Out::Issued(t(2), Some(t(1))), Some(t(2))),
            ("fail 1", Out::Failed, Some(t(2))),
            ("fail 2", Out::Failed, None),
            ("revoke", Out::Revoked(None), None),
            ("issue", Out::Issued(t(3), None), Some(t(3))),
            ("revoke", Out::Revoked(Some(t(3))), None),
        ];
        let mut leases = Leases::default();
        for (step, want, live) in steps {
            let got = match step {
                "issue" => {
                    let (new, old) = leases.issue();
                    Out::Issued(new, old)
                }
                "revoke" => Out::Revoked(leases.revoke()),
                "fail 1" => {
                    leases.failed(t(1));
                    Out::Failed
                }
                _ => {
                    leases.failed(t(2));
                    Out::Failed
                }
            };
            assert_eq!((got, leases.live), (want, live), "{step}");
            assert!(live.is_none_or(|l| leases.is_live(l)));
        }
    }
}
