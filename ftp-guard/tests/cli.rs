//! The command line as an operator meets it: exit codes and messages.
use std::process::{Command, Output};

fn ftp_guard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ftp-guard"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run ftp-guard")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_and_help() {
    let out = ftp_guard(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("ftp-guard {}", env!("CARGO_PKG_VERSION"))
    );
    let out = ftp_guard(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for sub in ["run", "check", "guard"] {
        assert!(help.contains(sub), "{help}");
    }
}

#[test]
fn check_accepts_the_example() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/ftp-guard.example.toml"
    );
    let out = ftp_guard(&["check", "--config", example]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ok (1 service)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_names_the_line_and_key_of_an_error() {
    let dir = std::env::temp_dir().join(format!("fg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[service]]\nname = \"x\"\nlisten = \"203.0.113.1:21\"\norigin = \"198.51.100.2:21\"\n\
         data_ports = \"40000-40099\"\nclient_interface = \"eth0\"\nmax_comand_line = 10\n",
    )
    .unwrap();
    for args in [
        vec!["check", "--config", bad.to_str().unwrap()],
        vec!["run", "--config", bad.to_str().unwrap()],
    ] {
        let out = ftp_guard(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("line 7") && err.contains("max_comand_line"),
            "{err}"
        );
    }
    let out = ftp_guard(&["check", "--config", "/nonexistent/ftp-guard.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A one-request admin endpoint: answers `status line` + `body`, gives back the request head.
fn fake_admin(
    status_line: &'static str,
    body: &'static str,
) -> (String, std::thread::JoinHandle<String>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        let response = format!(
            "HTTP/1.1 {status_line}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).unwrap();
        String::from_utf8(head).unwrap()
    });
    (addr, served)
}

/// `ftp-guard unban ADDRESS`: one POST to the unban route with the token; the endpoint's
/// answer on stdout (exit 0), or its refusal on stderr (exit 1); a bad address is a usage
/// error (exit 2) that reaches no endpoint.
#[test]
fn unban_posts_to_the_admin_endpoint_with_the_token() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("fg-cli-unban-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token = token.to_str().unwrap();

    // (the address, the endpoint's answer) → the exit code, stdout, stderr's last line.
    let unban = |address: &str, status_line: &'static str, body: &'static str| {
        let (addr, served) = fake_admin(status_line, body);
        let out = ftp_guard(&["unban", address, "--admin", &addr, "--token-file", token]);
        let head = served.join().unwrap();
        assert_eq!(
            head,
            format!(
                "POST /bans/unban?addr={address} HTTP/1.1\r\nhost: {addr}\r\n\
                 connection: close\r\nauthorization: Bearer t0ken\r\n\r\n"
            )
        );
        let stderr = text(&out.stderr).lines().last().map(str::to_owned);
        (out.status.code(), text(&out.stdout), stderr)
    };
    assert_eq!(
        unban("192.0.2.7", "200 OK", "unbanned 192.0.2.7\n"),
        (Some(0), "unbanned 192.0.2.7\n".to_owned(), None)
    );
    assert_eq!(
        unban(
            "2001:db8::7",
            "404 Not Found",
            "2001:db8::7 is not banned\n"
        ),
        (
            Some(1),
            String::new(),
            Some("ftp-guard: HTTP/1.1 404 Not Found: 2001:db8::7 is not banned".to_owned())
        )
    );

    let out = ftp_guard(&["unban", "192.0.2.x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value '192.0.2.x'"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
