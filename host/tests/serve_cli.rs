//! `isobar serve`, the binary: flags, the bound addresses in its log, the
//! admin endpoint, and a clean exit on SIGTERM (what Kubernetes sends).
//! The behaviour itself is tested through the library in tests/serve.rs.

mod common;
use common::{plugin, target_dir};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The log without terminal colours.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn field(line: &str, name: &str) -> Option<SocketAddr> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

#[cfg(unix)]
#[test]
fn serve_binary_serves_and_stops_on_sigterm() {
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut child = Command::new(env!("CARGO_BIN_EXE_isobar"))
        .args(["serve", "--manifests"])
        .arg(&manifests)
        .arg("--plugin")
        .arg(plugin("isobar_plugin_ingress"))
        .args([
            "--xds-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("ISOBAR_LOG", "info")
        .env("XDG_CACHE_HOME", target_dir().join("isobar-test-cache-cli"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("running isobar serve");

    // Whatever happens below, the server does not outlive the test.
    struct Guard(u32, bool);
    impl Drop for Guard {
        fn drop(&mut self) {
            if self.1 {
                let _ = Command::new("kill")
                    .args(["-KILL", &self.0.to_string()])
                    .status();
            }
        }
    }
    let mut guard = Guard(child.id(), true);

    // The bound addresses, from the log (read on a thread: bounded wait).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(plain(&line));
        }
    });
    let mut log = Vec::new();
    let (xds, admin) = loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no `serving` line in the log: {log:#?}"));
        log.push(line.clone());
        if line.contains("serving") {
            if let (Some(x), Some(a)) = (field(&line, "xds"), field(&line, "admin")) {
                break (x, a);
            }
        }
    };
    assert_ne!(xds.port(), 0);

    // Ready once the first snapshot is built: wait for the log line.
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no first snapshot: {log:#?}"));
        log.push(line.clone());
        if line.contains("first snapshot built") {
            break;
        }
    }
    let (code, body) = get(admin, "/readyz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(admin, "/debug/plugins");
    assert_eq!(code, 200);
    assert!(body.contains("\"name\":\"ingress\""), "{body}");

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx
        .recv_timeout(WAIT)
        .expect("isobar serve did not exit on SIGTERM")
        .unwrap();
    guard.1 = false;
    assert!(status.success(), "exit status {status}");
}
