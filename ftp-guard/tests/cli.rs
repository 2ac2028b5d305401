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
