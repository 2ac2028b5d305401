//! The audit log's two line formats: JSON (one object per line, stable keys in a fixed
//! order) and xferlog (the classic wu-ftpd transfer log, read by the usual log tools).
//! Times are UTC.
use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::dataplane::DataBytes;

/// One data transfer, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// When the transfer's final reply came.
    pub time: SystemTime,
    pub service: String,
    /// The control session's id (the `id` of its log lines).
    pub session: u64,
    pub client: IpAddr,
    pub user: Option<String>,
    /// RETR, STOR, STOU, APPE, LIST, NLST or MLSD.
    pub command: String,
    pub path: Option<String>,
    pub bytes: DataBytes,
    /// From the command to its final reply.
    pub duration: Duration,
    pub reply_code: u16,
    /// `kernel` or `userspace`.
    pub data_path: &'static str,
    /// `passive` or `active`; `None` when no lease was live for the transfer.
    pub mode: Option<&'static str>,
}

/// The JSON object, keys in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    service: &'a str,
    session: u64,
    client: String,
    user: Option<&'a str>,
    command: &'a str,
    path: Option<&'a str>,
    bytes_to_client: u64,
    bytes_to_origin: u64,
    duration_secs: f64,
    reply_code: u16,
    data_path: &'a str,
    mode: Option<&'a str>,
}

impl TransferRecord {
    /// Commands that move data to the origin (the rest move it to the client).
    fn is_upload(&self) -> bool {
        matches!(self.command.as_str(), "STOR" | "STOU" | "APPE")
    }

    /// One JSON object, without the newline.
    pub fn to_json(&self) -> String {
        let (secs, millis) = unix_time(self.time);
        let (year, month, day, hour, minute, second) = utc(secs);
        let line = JsonLine {
            time: format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
            ),
            service: &self.service,
            session: self.session,
            client: self.client.to_string(),
            user: self.user.as_deref(),
            command: &self.command,
            path: self.path.as_deref(),
            bytes_to_client: self.bytes.to_client,
            bytes_to_origin: self.bytes.to_origin,
            // Milliseconds are what the log promises.
            duration_secs: self.duration.as_millis() as f64 / 1000.0,
            reply_code: self.reply_code,
            data_path: self.data_path,
            mode: self.mode,
        };
        serde_json::to_string(&line).expect("plain values serialise")
    }

    /// One xferlog line, without the newline: current-time, transfer-time (whole seconds,
    /// rounded up), remote-host, file-size (bytes in the transfer's direction), filename,
    /// transfer-type (`b`: the gateway does not follow TYPE), special-action-flag (`_`),
    /// direction (`o`/`i`), access-mode (`a` for anonymous/ftp, else `r`), username,
    /// service-name, authentication-method (`0`), authenticated-user-id (`*`),
    /// completion-status (`c` for a 2xx final reply, else `i`). Fields that could hold
    /// blanks have them replaced with `_`; a missing one is `-`.
    pub fn to_xferlog(&self) -> String {
        let (secs, _) = unix_time(self.time);
        let (year, month, day, hour, minute, second) = utc(secs);
        // 1970-01-01 was a Thursday.
        let weekday = WEEKDAYS[(secs / 86_400 % 7) as usize];
        let transfer_secs = self.duration.as_secs() + u64::from(self.duration.subsec_nanos() > 0);
        let (direction, size) = if self.is_upload() {
            ('i', self.bytes.to_origin)
        } else {
            ('o', self.bytes.to_client)
        };
        let user = self.user.as_deref().unwrap_or("");
        let anonymous = ["anonymous", "ftp"]
            .iter()
            .any(|a| user.eq_ignore_ascii_case(a));
        format!(
            "{weekday} {} {day:2} {hour:02}:{minute:02}:{second:02} {year} {transfer_secs} {} \
             {size} {} b _ {direction} {} {} {} 0 * {}",
            MONTHS[month as usize - 1],
            self.client,
            field(self.path.as_deref()),
            if anonymous { 'a' } else { 'r' },
            field(self.user.as_deref()),
            field(Some(&self.service)),
            if self.reply_code / 100 == 2 { 'c' } else { 'i' },
        )
    }
}

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A free-text xferlog field: one word (blanks and control characters become `_`).
fn field(text: Option<&str>) -> String {
    match text {
        None | Some("") => "-".into(),
        Some(text) => text
            .chars()
            .map(|c| {
                if c.is_whitespace() || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect(),
    }
}

/// Seconds and milliseconds since the Unix epoch (0 before it).
fn unix_time(time: SystemTime) -> (u64, u32) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_secs(), since.subsec_millis())
}

/// (year, month, day, hour, minute, second) in UTC of a Unix time (proleptic Gregorian;
/// Howard Hinnant's days-to-civil).
pub fn utc(unix: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (unix / 86_400) as i64;
    let secs = (unix % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3600, secs % 3600 / 60, secs % 60)
}
