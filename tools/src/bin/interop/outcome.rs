//! What the matrix found: a cell's operation and outcome, why it failed, and the per-server
//! and port-reuse results the report is written from.
use std::time::Duration;

use ftp_guard_testbed::{
    ftp_clients::{ClientKind, DataMode},
    ftp_servers::ServerKind,
};

/// What one client run tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    List,
    Retr,
    Stor,
    Rest,
}

impl Op {
    pub(crate) const ALL: [Op; 4] = [Op::List, Op::Retr, Op::Stor, Op::Rest];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::List => "LIST",
            Op::Retr => "RETR",
            Op::Stor => "STOR",
            Op::Rest => "REST",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Pass,
    Fail(String),
    NotApplicable(String),
}

/// Why a cell failed: a one-line reason for the table, the whole story for the details.
pub(crate) struct Failure {
    pub(crate) reason: String,
    pub(crate) detail: String,
}

impl Failure {
    pub(crate) fn new(reason: impl Into<String>, detail: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn from_error(e: &anyhow::Error) -> Failure {
        let full = format!("{e:#}");
        let first = full.lines().next().unwrap_or("").to_owned();
        Failure::new(first, full)
    }
}

/// One row of a server's table: a client in a mode, its four operations.
pub(crate) struct Row {
    pub(crate) client: ClientKind,
    pub(crate) mode: DataMode,
    pub(crate) cells: Vec<(Op, Outcome)>,
    pub(crate) note: Option<String>,
}

/// A failed cell's details for the report.
pub(crate) struct FailureReport {
    pub(crate) what: String,
    pub(crate) reason: String,
    pub(crate) detail: String,
    pub(crate) server_log: String,
}

pub(crate) struct ServerReport {
    pub(crate) kind: ServerKind,
    pub(crate) dataplane: &'static str,
    pub(crate) version: String,
    pub(crate) started: Option<String>,
    pub(crate) rows: Vec<Row>,
    pub(crate) many_files: Option<Bulk>,
    pub(crate) concurrent: Option<Bulk>,
    pub(crate) failures: Vec<FailureReport>,
    pub(crate) elapsed: Duration,
    pub(crate) attachments: String,
    pub(crate) counters: String,
    /// The origin kernel's accept-queue trouble during this server's run (empty if none).
    pub(crate) origin_tcp: String,
    /// Only in the first server's report: the harness check (failures are detected).
    pub(crate) self_check: Option<Outcome>,
}

/// A bulk cell: its outcome, how long it took, what it measured.
pub(crate) struct Bulk {
    pub(crate) outcome: Outcome,
    pub(crate) elapsed: Duration,
    pub(crate) note: String,
}

/// The data-port reuse check of one data path.
pub(crate) struct ReuseReport {
    pub(crate) dataplane: &'static str,
    pub(crate) server: ServerKind,
    pub(crate) outcome: Outcome,
    pub(crate) elapsed: Duration,
    pub(crate) failures: Vec<FailureReport>,
}
