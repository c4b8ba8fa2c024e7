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
        Self::start_with(bin, None)
    }

    /// A registry as a private one is run: HTTPS with a certificate from
    /// its own CA (returned, PEM) and a login (`user`, `password`).
    pub fn start_secure_or_skip(
        test: &str,
        user: &str,
        password: &str,
    ) -> Option<(Registry, String)> {
        match Self::binary() {
            Ok(bin) => {
                let ca = super::backends::TestCa::new("isobar test registry CA");
                let registry = Self::start_with(&bin, Some((&ca, user, password)));
                Some((registry, ca.cert_pem.clone()))
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: {why}");
                None
            }
        }
    }

    fn start_with(
        bin: &PathBuf,
        secure: Option<(&super::backends::TestCa, &str, &str)>,
    ) -> Registry {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // A port the kernel just gave out; the registry takes it at once.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        if let Some((ca, user, password)) = secure {
            let (cert, key) = ca.leaf(&["127.0.0.1"]);
            let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            text.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: isobar-test\n    path: {}\n",
                cert_path.display(),
                key_path.display(),
                htpasswd.display()
            ));
        }
        std::fs::write(&config, text).unwrap();
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
        if secure.is_some() {
            registry.wait_listening(Duration::from_secs(20));
        } else {
            registry.wait_up(Duration::from_secs(20));
        }
        registry
    }

    /// Waits until the port takes connections (bounded): a registry
    /// behind TLS and a login answers nothing useful to a plain probe.
    fn wait_listening(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while std::net::TcpStream::connect(&self.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}",
                self.host
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
