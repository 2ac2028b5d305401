//! No internal address or name in any reply: real FTP servers behind ftp-guard, in network
//! namespaces (client 203.0.113.2 — gateway 203.0.113.1 | 198.51.100.1 — origin
//! 198.51.100.2), asked what makes servers talk about themselves and about their client
//! (greeting, STAT, HELP, SITE HELP, errors, paths). The origin's client is the gateway's
//! origin-side address (vsftpd's STAT says `Connected to 198.51.100.1`): that address, the
//! origin's own and the origin's configured host name must all reach the client as the
//! public address, 203.0.113.1.
//!
//! The replies that carry one of them are compared whole, so a rendering that drops or
//! mangles the rest of the line fails as well as a leak does; every reply is also searched
//! for the hidden items, plainly and with the scrubber's own detector (all its forms).
use std::net::IpAddr;

use ftp_guard::ftp::scrub::Scrubber;
use ftp_guard_testbed::{
    ftp_servers::ServerKind,
    netns::{GATEWAY_PRIVATE_IP, ORIGIN_IP},
    require_privileged,
    scenario::{Control, Env, VIP},
};

/// The origin's host name the service is told to hide. The probe creates a directory of
/// that name (in another letter case), so that replies naming it (257, 250) reach the
/// client.
const HOST_NAME: &str = "ftp.internal.example";
const HOST_NAME_AS_TYPED: &str = "Ftp.Internal.EXAMPLE";

/// What must not reach the client, as plain text.
const NEEDLES: &[&str] = &[
    "198.51.100.1",
    "198,51,100,1",
    "198.51.100.2",
    "198,51,100,2",
    "ftp.internal.example",
];

/// The commands sent after login, in order. `{name}` is the hidden host name as typed.
const COMMANDS: &[&str] = &[
    "SYST",
    "STAT",
    "HELP",
    "SITE HELP",
    "BOGUS",
    "PORT 1,2,3",
    "PORT 198,51,100,2,200,10",
    "EPRT |1|198.51.100.1|50000|",
    "MKD {name}",
    "CWD {name}",
    "PWD",
    "CWD ..",
    "STAT .",
    "STAT /",
    "NOOP",
];

/// Logs in through the gateway (with `hide_names`), sends [`COMMANDS`] and returns
/// (command, reply with `\n` line ends), the greeting first.
fn transcript(env: &mut Env, dataplane: &str) -> Vec<(String, String)> {
    env.reconfigure(dataplane, &format!("hide_names = [\"{HOST_NAME}\"]\n"));
    let mut control = Control::login(env);
    let mut replies = vec![("(greeting)".to_owned(), control.greeting.clone())];
    for command in COMMANDS {
        let command = command.replace("{name}", HOST_NAME_AS_TYPED);
        let reply = control.cmd(&command);
        replies.push((command, reply));
    }
    replies.push(("QUIT".into(), control.cmd("QUIT")));
    replies
        .into_iter()
        .map(|(c, r)| (c, r.replace("\r\n", "\n")))
        .collect()
}

/// The replies every server gives the same way (the gateway answers the PORT/EPRT
/// itself), and the codes of the others.
fn check_common(kind: ServerKind, replies: &[(String, String)]) {
    let oracle = Scrubber::new(
        &[IpAddr::V4(GATEWAY_PRIVATE_IP), IpAddr::V4(ORIGIN_IP)],
        VIP,
    )
    .with_names(&[HOST_NAME]);
    let all: String = replies
        .iter()
        .map(|(c, r)| format!(">>> {c}\n{r}"))
        .collect();
    for (command, reply) in replies {
        for needle in NEEDLES {
            assert!(
                !reply.to_ascii_lowercase().contains(needle),
                "{}: `{needle}` leaked in the reply to {command}:\n{all}",
                kind.name()
            );
        }
        assert!(
            !oracle.leaks(reply.as_bytes()),
            "{}: the reply to {command} leaks:\n{all}",
            kind.name()
        );
    }
    let reply = |command: &str| -> &str {
        &replies
            .iter()
            .find(|(c, _)| c == command)
            .unwrap_or_else(|| panic!("no {command} in\n{all}"))
            .1
    };
    assert!(reply("(greeting)").starts_with("220"), "{all}");
    assert_eq!(reply("SYST"), "215 UNIX Type: L8\n", "{all}");
    assert!(reply("STAT").starts_with("211"), "{all}");
    assert!(reply("HELP").starts_with("214"), "{all}");
    assert!(reply("SITE HELP").starts_with("214"), "{all}");
    assert!(reply("BOGUS").starts_with("500 "), "{all}");
    assert_eq!(
        reply("PORT 1,2,3"),
        "501 Syntax error in PORT argument.\n",
        "{all}"
    );
    let bounce = "504 Refused: PORT must name your own address (no third parties).\n";
    assert_eq!(reply("PORT 198,51,100,2,200,10"), bounce, "{all}");
    assert!(
        reply("EPRT |1|198.51.100.1|50000|").starts_with("504 "),
        "{all}"
    );
    assert!(
        reply(&format!("MKD {HOST_NAME_AS_TYPED}")).starts_with("257 "),
        "{all}"
    );
    assert!(
        reply(&format!("CWD {HOST_NAME_AS_TYPED}")).starts_with("250 "),
        "{all}"
    );
    assert!(reply("STAT .").starts_with("21"), "{all}");
    assert!(reply("STAT /").starts_with("21"), "{all}");
    // The directory named like the origin is listed under the public address.
    if kind != ServerKind::Vsftpd {
        assert!(
            reply("STAT .").lines().any(|l| l.ends_with(" 203.0.113.1")),
            "{all}"
        );
    }
    assert!(reply("QUIT").starts_with("221"), "{all}");
}

/// Whole replies that carry a scrubbed item, per server: (command, reply).
fn expected(env: &Env) -> Vec<(String, String)> {
    let mkd = format!("MKD {HOST_NAME_AS_TYPED}");
    let cwd = format!("CWD {HOST_NAME_AS_TYPED}");
    let pairs: Vec<(&str, String)> =
        match env.server.kind() {
            ServerKind::Vsftpd => {
                // Not chrooted: paths are the real ones.
                let root = env.server.root().display().to_string();
                vec![
                    (
                        "STAT",
                        "211-FTP server status:\n     Connected to 203.0.113.1\n     Logged in as \
                     fgtest\n     TYPE: BINARY\n     No session bandwidth limit\n     Session \
                     timeout in seconds is 300\n     Control connection is plain text\n     \
                     Data connections will be plain text\n     At session startup, client \
                     count was 1\n     vsFTPd 3.0.3 - secure, fast, stable\n211 End of status\n"
                            .into(),
                    ),
                    (&mkd, format!("257 \"{root}/203.0.113.1\" created\n")),
                    (
                        "PWD",
                        format!("257 \"{root}/203.0.113.1\" is the current directory\n"),
                    ),
                    (
                        "STAT .",
                        String::new(), // checked by shape below
                    ),
                ]
            }
            ServerKind::Pyftpdlib => vec![
            (
                "STAT",
                "211-FTP server status:\n Connected to: 203.0.113.1:21\n Logged in as: fgtest\n \
                 TYPE: Binary; STRUcture: File; MODE: Stream\n Data connection closed.\n211 End \
                 of status.\n"
                    .into(),
            ),
            (&mkd, "257 \"/203.0.113.1\" directory created.\n".into()),
            (&cwd, "250 \"/203.0.113.1\" is the current directory.\n".into()),
            ("PWD", "257 \"/203.0.113.1\" is the current directory.\n".into()),
        ],
            ServerKind::Proftpd => vec![
            (
                "(greeting)",
                "220 ProFTPD Server (ftp-guard test origin) [203.0.113.1]\n".into(),
            ),
            (
                "STAT",
                "211-Status of 'ftp-guard test origin'\n Connected from 203.0.113.1 \
                 (203.0.113.1)\n Logged in as fgtest\n TYPE: BINARY, STRUcture: File, Mode: \
                 Stream\n No data connection\n211 End of status\n"
                    .into(),
            ),
            (
                "SITE HELP",
                "214-The following SITE commands are recognized (* =>'s unimplemented)\n HELP\n \
                 CHGRP\n CHMOD\n214 Direct comments to root@203.0.113.1\n"
                    .into(),
            ),
            (
                &mkd,
                "257 \"/203.0.113.1\" - Directory successfully created\n".into(),
            ),
            ("PWD", "257 \"/203.0.113.1\" is the current directory\n".into()),
        ],
            ServerKind::PureFtpd => vec![
                ("STAT", "211 https://www.pureftpd.org/\n".into()),
                (
                    &mkd,
                    "257 \"203.0.113.1\" : The directory was successfully created\n".into(),
                ),
                (&cwd, "250 OK. Current directory is /203.0.113.1\n".into()),
                (
                    "PWD",
                    "257 \"/203.0.113.1\" is your current location\n".into(),
                ),
            ],
        };
    pairs
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(c, r)| (c.to_owned(), r))
        .collect()
}

fn no_internal_address_or_name(kind: ServerKind, dataplane: &str) {
    let tag = format!("rp{}{}", &kind.name()[..2], &dataplane[..1]);
    let mut env = Env::start(&tag, kind, dataplane);
    let replies = transcript(&mut env, dataplane);
    let all: String = replies
        .iter()
        .map(|(c, r)| format!(">>> {c}\n{r}"))
        .collect();
    check_common(kind, &replies);
    for (command, whole) in expected(&env) {
        let got = &replies
            .iter()
            .find(|(c, _)| *c == command)
            .unwrap_or_else(|| panic!("no {command} in\n{all}"))
            .1;
        assert_eq!(got, &whole, "{}: {command}\n{all}", kind.name());
    }
    if kind == ServerKind::Proftpd {
        let help = &replies.iter().find(|(c, _)| c == "HELP").unwrap().1;
        assert!(
            help.ends_with("\n214 Direct comments to root@203.0.113.1\n"),
            "{all}"
        );
    }
    if kind == ServerKind::Vsftpd {
        // vsftpd lists the login directory (not chrooted: `STAT .` after `CWD ..`).
        let stat = &replies.iter().find(|(c, _)| c == "STAT .").unwrap().1;
        assert!(stat.lines().any(|l| l.ends_with(" 203.0.113.1")), "{all}");
    }
}

#[test]
fn kernel_path_vsftpd() {
    if !require_privileged() {
        return;
    }
    no_internal_address_or_name(ServerKind::Vsftpd, "kernel");
}

#[test]
fn kernel_path_pyftpdlib() {
    if !require_privileged() {
        return;
    }
    no_internal_address_or_name(ServerKind::Pyftpdlib, "kernel");
}

#[test]
fn kernel_path_proftpd() {
    if !require_privileged() {
        return;
    }
    no_internal_address_or_name(ServerKind::Proftpd, "kernel");
}

#[test]
fn kernel_path_pure_ftpd() {
    if !require_privileged() {
        return;
    }
    no_internal_address_or_name(ServerKind::PureFtpd, "kernel");
}

#[test]
fn userspace_relay_vsftpd() {
    if !require_privileged() {
        return;
    }
    no_internal_address_or_name(ServerKind::Vsftpd, "userspace");
}

#[test]
fn userspace_relay_pyftpdlib() {
    if !require_privileged() {
        return;
    }
    no_internal_address_or_name(ServerKind::Pyftpdlib, "userspace");
}
