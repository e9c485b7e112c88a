//! Let's Encrypt's ACME test server, pebble (Debian's package), with its mock DNS
//! (pebble-challtestsrv) answering 127.0.0.1 for every name, so pebble validates HTTP-01
//! against tidegate's plain listener on `http_port` and TLS-ALPN-01 on `tls_port`.

#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::{free_port, tls::Ca};

pub struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    pub dir: tempfile::TempDir,
    /// `https://localhost:PORT/dir`.
    pub directory: String,
    /// Trusts pebble's own HTTPS (directory and management).
    pub ca_file: PathBuf,
    pub port: u16,
    mgmt: u16,
    config: PathBuf,
    dns_port: u16,
}

impl Pebble {
    /// Start pebble issuing certificates valid for `validity_secs`.
    pub fn start(http_port: u16, tls_port: u16, validity_secs: u64) -> Pebble {
        Self::start_with(http_port, tls_port, validity_secs, None)
    }

    /// Also requiring External Account Binding with this key id and HMAC key (base64url).
    pub fn start_with(
        http_port: u16,
        tls_port: u16,
        validity_secs: u64,
        eab: Option<(&str, &str)>,
    ) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let (cert, key) = ca.issue(&["localhost"], 30);
        let ca_file = dir.path().join("pebble-https-ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        let (port, mgmt, dns_port) = (free_port(), free_port(), free_port());
        let config = dir.path().join("pebble.json");
        let json = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab.is_some(),
            "externalAccountMACKeys": eab.map(|(k, v)| serde_json::json!({ k: v })).unwrap_or(serde_json::json!({})),
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(&config, json.to_string()).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble) is needed for ACME tests");
        let mut p = Pebble {
            pebble: None,
            dns,
            dir,
            directory: format!("https://localhost:{port}/dir"),
            ca_file,
            port,
            mgmt,
            config,
            dns_port,
        };
        p.resume();
        p
    }

    /// Start (again) the pebble process (a new one forgets accounts and orders).
    pub fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns_port)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble (Debian package pebble) is needed for ACME tests");
        self.pebble = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pebble did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the pebble process (the directory becomes unreachable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Pebble's root certificate (PEM), which signs what it issues.
    pub fn root(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&self.ca_file)
            .arg(format!("https://localhost:{}/roots/0", self.mgmt))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Orders pebble has seen finalized, from its log (each `Issued certificate` line).
    pub fn issued(&self) -> usize {
        self.log().matches("Issued certificate").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}
