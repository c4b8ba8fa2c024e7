//! A real OCI registry for the tests: Debian's `docker-registry` (CNCF
//! Distribution 2.8) on loopback, storage in a temporary directory, one per
//! test. `make test` installs the package; `ISOBAR_REGISTRY` names another
//! binary. Without one the tests say SKIPPED and pass.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    /// `127.0.0.1:PORT`: what references start with.
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// The binary, or why there is none (then the caller says SKIPPED).
    pub fn binary() -> Result<PathBuf, String> {
        if let Ok(p) = std::env::var("ISOBAR_REGISTRY") {
            return Ok(PathBuf::from(p));
        }
        let debian = PathBuf::from("/usr/bin/docker-registry");
        if debian.exists() {
            return Ok(debian);
        }
        Err("no docker-registry (apt-get install docker-registry, or set ISOBAR_REGISTRY)".into())
    }

    /// Starts a registry, or says SKIPPED for `test` and gives none.
    pub fn start_or_skip(test: &str) -> Option<Registry> {
        match Self::binary() {
            Ok(bin) => Some(Self::start(&bin)),
            Err(why) => {
                eprintln!("SKIPPED {test}: {why}");
                None
            }
        }
    }

    pub fn start(bin: &PathBuf) -> Registry {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A port the kernel just gave out; the registry takes it at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let registry = Registry {
            host,
            child,
            _dir: dir,
        };
        registry.wait_up(Duration::from_secs(20));
        registry
    }

    /// Waits until `/v2/` answers (bounded).
    fn wait_up(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&self.host) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host);
                let mut answer = String::new();
                if s.write_all(req.as_bytes()).is_ok()
                    && s.read_to_string(&mut answer).is_ok()
                    && answer.split_whitespace().nth(1) == Some("200")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {}",
                self.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `HOST/REPO:TAG`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
