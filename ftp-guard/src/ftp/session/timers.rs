//! The session's deadlines (quinn-proto style: the caller passes `now`, the core has no
//! clock): the origin's greeting, the client's login, and idleness of the control
//! connection. [`Timers::next`] is when the driver must wake the session next;
//! [`Timers::expired`] says which deadline has passed by then.
use std::time::{Duration, Instant};

/// How long a session waits for each thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// From the start until the origin's first byte (an origin that accepted but never
    /// greets would hold the client in silence: FTP servers speak first).
    pub greeting: Duration,
    /// From the start until the origin's 230.
    pub login: Duration,
    /// Without a byte from either peer.
    pub idle: Duration,
}

/// A deadline that passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    Greeting,
    Login,
    Idle,
}

#[derive(Clone, Debug)]
pub(super) struct Timers {
    /// Until the origin's first byte.
    greeting_due: Option<Instant>,
    /// Until the origin's 230.
    login_due: Option<Instant>,
    idle: Duration,
    last_activity: Instant,
}

impl Timers {
    pub(super) fn new(timeouts: SessionTimeouts, start: Instant) -> Self {
        Self {
            greeting_due: Some(start + timeouts.greeting),
            login_due: Some(start + timeouts.login),
            idle: timeouts.idle,
            last_activity: start,
        }
    }

    /// A peer sent bytes at `now`.
    pub(super) fn activity(&mut self, now: Instant) {
        self.last_activity = self.last_activity.max(now);
    }

    pub(super) fn greeted(&mut self) {
        self.greeting_due = None;
    }

    pub(super) fn logged_in(&mut self) {
        self.login_due = None;
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Instant {
        let idle_due = self.last_activity + self.idle;
        [self.greeting_due, self.login_due]
            .into_iter()
            .flatten()
            .fold(idle_due, Instant::min)
    }

    /// The deadline passed at `now`, if any (the greeting's first, then the login's).
    pub(super) fn expired(&self, now: Instant) -> Option<Timer> {
        let passed = |due: Option<Instant>| due.is_some_and(|due| due <= now);
        if passed(self.greeting_due) {
            Some(Timer::Greeting)
        } else if passed(self.login_due) {
            Some(Timer::Login)
        } else if passed(Some(self.last_activity + self.idle)) {
            Some(Timer::Idle)
        } else {
            None
        }
    }
}
