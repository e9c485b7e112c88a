//! Docker helpers shared by the Docker suites: the engine check, the image (built once per
//! test binary with `scripts/docker-image`), and a scene of containers on a network of its
//! own, removed on drop.
#![allow(dead_code)]

use std::{
    path::Path,
    process::{Command, Output},
    sync::{Mutex, OnceLock},
};

use super::free_port;

pub const IMAGE: &str = "tidegate:test";
pub const TOKEN: &str = "docker-test-token";

/// One scenario at a time: they share the image and the machine's two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

pub fn ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(
        o.status.success(),
        "docker {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn engine() -> bool {
    let up = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !up {
        // In CI the engine is part of the machine: its absence is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no Docker engine answers (docker info failed)"
        );
        eprintln!("SKIPPED: no Docker engine answers; the Docker tests did not run");
    }
    up
}

/// Build the image once per test run, with the documented command.
pub fn image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let o = Command::new(Path::new(root).join("scripts/docker-image"))
            .arg(IMAGE)
            .current_dir(root)
            .output()
            .expect("run scripts/docker-image");
        assert!(
            o.status.success(),
            "scripts/docker-image: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&o.stdout).trim());
    });
}

/// Containers and a network, removed on drop.
pub struct Scene {
    pub name: String,
    pub containers: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Scene {
    pub fn new() -> Scene {
        let name = format!("tg-test-{}-{}", std::process::id(), free_port());
        let subnet = format!("10.231.{}.0/24", std::process::id() % 250);
        ok(&["network", "create", "--subnet", &subnet, &name]);
        Scene {
            name,
            containers: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An address of the scene's subnet.
    pub fn ip(&self, host: u8) -> String {
        format!("10.231.{}.{host}", std::process::id() % 250)
    }

    /// `docker run -d` on the scene's network with `alias`; returns the container name.
    pub fn run(&mut self, alias: &str, extra: &[&str], cmd: &[&str]) -> String {
        let cname = format!("{}-{alias}", self.name);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &cname,
            "--network",
            &self.name,
            "--network-alias",
            alias,
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        ok(&args);
        self.containers.push(cname.clone());
        cname
    }

    pub fn app(&mut self, name: &str) -> String {
        self.run(
            &format!("app-{name}"),
            &["--no-healthcheck"],
            &["backend", "--listen", "0.0.0.0:3000", "--name", name],
        )
    }

    /// tidegate with `yaml` in a mounted config directory; (container, listen, admin).
    pub fn tidegate(&mut self, yaml: &str) -> (String, String, String) {
        let conf = self.dir.path().join("config");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(conf.join("tidegate.yaml"), yaml).unwrap();
        let mount = format!("{}:/etc/tidegate:ro", conf.display());
        let token = format!("TIDEGATE_ADMIN_TOKEN={TOKEN}");
        let c = self.run(
            "tidegate",
            &[
                "-v",
                &mount,
                "-e",
                &token,
                "-p",
                "127.0.0.1::8080",
                "-p",
                "127.0.0.1::9901",
            ],
            &[],
        );
        let port = |p: &str| ok(&["port", &c, p]).lines().next().unwrap().to_string();
        (
            c.clone(),
            format!("http://{}", port("8080")),
            format!("http://{}", port("9901")),
        )
    }

    /// Replace the mounted config the way an editor does (temp file + rename).
    pub fn rewrite(&self, yaml: &str) {
        let conf = self.dir.path().join("config");
        std::fs::write(conf.join(".tidegate.yaml.tmp"), yaml).unwrap();
        std::fs::rename(conf.join(".tidegate.yaml.tmp"), conf.join("tidegate.yaml")).unwrap();
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &self.containers {
            if std::thread::panicking() {
                let logs = docker(&["logs", "--tail", "30", c]);
                eprintln!("--- {c} ---\n{}", String::from_utf8_lossy(&logs.stderr));
            }
            let _ = docker(&["rm", "-f", c]);
        }
        let _ = docker(&["network", "rm", &self.name]);
    }
}

pub fn inspect(c: &str, fmt: &str) -> String {
    ok(&["inspect", "-f", fmt, c])
}
