//! A throwaway PostgreSQL server from Debian's packages: `initdb` into a temp dir, started on
//! a free 127.0.0.1 port with trust auth, stopped (fast) on drop. Run as the `postgres` user
//! when the tests run as root (PostgreSQL refuses root).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

/// The newest installed server's bin directory.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("pg_ctl").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn as_owner(bin: &Path, tool: &str) -> Command {
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

impl Postgres {
    /// Start a server; panics (with the tool's output) when PostgreSQL is not installed.
    pub async fn start() -> Postgres {
        let bin = bin_dir().expect("PostgreSQL server not installed (apt-get install postgresql)");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        if unsafe { libc::geteuid() } == 0 {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown: {out:?}");
        }
        let out = as_owner(&bin, "initdb")
            .args([
                "-U",
                "tidegate",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = super::free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=on",
            dir.path().display()
        );
        let out = as_owner(&bin, "pg_ctl")
            .args(["-D"])
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(dir.path().join("pg.log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Postgres { port, dir, bin };
        super::wait_for("postgres accepting", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        pg
    }

    /// `postgres://tidegate@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://tidegate@127.0.0.1:{}/postgres", self.port)
    }

    /// Run SQL with psql; stdout.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-d", &self.url(), "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Postgres {
    /// A plain SQL dump of `tables` that re-creates them when run (`--clean`), like a
    /// backup an operator would restore.
    pub fn dump(&self, tables: &[&str]) -> String {
        let mut c = Command::new(self.bin.join("pg_dump"));
        c.args(["--clean", "--if-exists", "-d", &self.url()]);
        for t in tables {
            c.args(["-t", t]);
        }
        let out = c.output().expect("run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run a dump made by [`Postgres::dump`] (one transaction).
    pub fn restore(&self, dump: &str) {
        let file = self.dir.path().join("restore.sql");
        std::fs::write(&file, dump).expect("write dump");
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-1",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(),
                "-f",
            ])
            .arg(&file)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "restore: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start psql running `sql` in the background (a session that holds a lock, say).
    pub fn psql_background(&self, sql: &str) -> std::process::Child {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-d", &self.url(), "-c", sql])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run psql")
    }
}

impl Postgres {
    /// Stop the server at once (the database is gone; dropping it later is harmless).
    pub fn stop(&self) {
        let _ = as_owner(&self.bin, "pg_ctl")
            .args(["-D"])
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
