use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, UNIX_EPOCH},
};

use super::*;
use crate::dataplane::DataBytes;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2));

/// A download that ended on Thursday 2026-12-03 23:08:48.250 UTC.
fn download() -> TransferRecord {
    TransferRecord {
        time: UNIX_EPOCH + Duration::from_millis(1_796_339_328_250),
        service: "ftp".into(),
        session: 7,
        client: CLIENT,
        user: Some("alice".into()),
        command: "RETR".into(),
        path: Some("/pub/a file.bin".into()),
        bytes: DataBytes {
            to_client: 1_048_576,
            to_origin: 0,
        },
        duration: Duration::from_millis(1_500),
        reply_code: 226,
        data_path: "kernel",
        mode: Some("passive"),
    }
}

#[test]
fn json_lines_have_every_key_in_order() {
    let upload = TransferRecord {
        user: None,
        command: "STOR".into(),
        path: Some("up\t\"q\".txt".into()),
        bytes: DataBytes {
            to_client: 0,
            to_origin: 42,
        },
        duration: Duration::from_micros(12_345),
        reply_code: 451,
        data_path: "userspace",
        mode: None,
        ..download()
    };
    assert_eq!(
        [download().to_json(), upload.to_json()],
        [
            r#"{"time":"2026-12-03T23:08:48.250Z","service":"ftp","session":7,"client":"203.0.113.2","user":"alice","command":"RETR","path":"/pub/a file.bin","bytes_to_client":1048576,"bytes_to_origin":0,"duration_secs":1.5,"reply_code":226,"data_path":"kernel","mode":"passive"}"#,
            r#"{"time":"2026-12-03T23:08:48.250Z","service":"ftp","session":7,"client":"203.0.113.2","user":null,"command":"STOR","path":"up\t\"q\".txt","bytes_to_client":0,"bytes_to_origin":42,"duration_secs":0.012,"reply_code":451,"data_path":"userspace","mode":null}"#,
        ]
    );
}

#[test]
fn xferlog_lines_follow_wu_ftpd() {
    let anonymous_upload = TransferRecord {
        user: Some("Anonymous".into()),
        command: "APPE".into(),
        path: Some("in/new file".into()),
        bytes: DataBytes {
            to_client: 3,
            to_origin: 99,
        },
        duration: Duration::from_secs(2),
        reply_code: 426,
        ..download()
    };
    let listing = TransferRecord {
        user: None,
        command: "LIST".into(),
        path: None,
        time: UNIX_EPOCH + Duration::from_secs(951_782_400), // 2000-02-29 00:00:00, a Tuesday
        duration: Duration::ZERO,
        ..download()
    };
    assert_eq!(
        [
            download().to_xferlog(),
            anonymous_upload.to_xferlog(),
            listing.to_xferlog()
        ],
        [
            "Thu Dec  3 23:08:48 2026 2 203.0.113.2 1048576 /pub/a_file.bin b _ o r alice ftp 0 * c",
            "Thu Dec  3 23:08:48 2026 2 203.0.113.2 99 in/new_file b _ i a Anonymous ftp 0 * i",
            "Tue Feb 29 00:00:00 2000 0 203.0.113.2 1048576 - b _ o r - ftp 0 * c",
        ]
    );
}

/// A full queue drops the record, counts it, and the session never waits.
#[test]
fn a_full_queue_drops_and_counts() {
    let dropped = Counter::default();
    let (log, mut queue) = AuditLog::with_queue(1, true, dropped.clone());
    log.record(download());
    log.record(download());
    log.record(download());
    let mut queued = 0;
    while queue.try_recv().is_ok() {
        queued += 1;
    }
    assert_eq!((queued, dropped.get()), (1, 2));
}

/// Records go to the file; after the file is moved away (logrotate) and the log is
/// configured again, new records go to a new file at the old path; off writes nothing.
#[tokio::test]
async fn the_writer_appends_and_reopens() {
    let dir = std::env::temp_dir().join(format!("ftp-guard-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.log");
    let rotated = dir.join("audit.log.1");
    let settings = Some((AuditTarget::File(path.clone()), AuditFormat::Json));
    let log = AuditLog::start(settings.clone(), Counter::default()).unwrap();
    log.record(download());
    // Configuring waits for the writer, so what was queued before is written by then.
    log.configure(settings.clone()).await.unwrap();
    std::fs::rename(&path, &rotated).unwrap();
    log.configure(settings.clone()).await.unwrap();
    let second = TransferRecord {
        session: 8,
        ..download()
    };
    log.record(second.clone());
    log.configure(None).await.unwrap();
    log.record(download());
    log.configure(settings).await.unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    assert_eq!(
        (read(&rotated), read(&path), log.enabled()),
        (
            format!("{}\n", download().to_json()),
            format!("{}\n", second.to_json()),
            true
        )
    );
    let missing = Some((
        AuditTarget::File(dir.join("no/such/dir/audit.log")),
        AuditFormat::Json,
    ));
    let error = log.configure(missing).await.unwrap_err().to_string();
    assert!(
        error.starts_with("audit_log: ")
            && error.ends_with("No such file or directory (os error 2)"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
