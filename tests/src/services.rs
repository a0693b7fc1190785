//! Private service processes for the tests that break them on purpose: a
//! Redis the test can kill and start again on the same port, and a
//! PostgreSQL cluster of its own (initdb on a free port, as
//! `.ci/start-postgres.sh` does) that it can restart with `pg_ctl`, so
//! that no other test running against the shared servers is disturbed.
//! Both listen on loopback only and are stopped when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, up: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if open == up {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "port {port} never went {}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` of the test's own.
#[derive(Debug)]
pub struct RedisProcess {
    pub port: u16,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts one on a free port; `None` (skipped) when `redis-server` is
    /// not installed, unless `APITOKEN_REQUIRE_REDIS` is set.
    pub fn start() -> Option<RedisProcess> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !installed {
            assert!(
                std::env::var("APITOKEN_REQUIRE_REDIS").is_err(),
                "APITOKEN_REQUIRE_REDIS is set but redis-server is not installed"
            );
            eprintln!("skipped: redis-server is not installed");
            return None;
        }
        let mut redis = RedisProcess {
            port: free_port(),
            child: None,
        };
        redis.resume();
        Some(redis)
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: an outage, not a shutdown) and waits until the
    /// port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for_port(self.port, false);
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        wait_for_port(self.port, true);
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A PostgreSQL cluster of the test's own, on a free port, trust auth.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    bin: PathBuf,
    data: tempfile::TempDir,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// initdb and start; `None` (skipped) without PostgreSQL's binaries
    /// (`/usr/lib/postgresql/*/bin`) unless `APITOKEN_REQUIRE_POSTGRES`.
    pub fn start() -> Option<PrivatePostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("initdb").exists())
            .max();
        let Some(bin) = bin else {
            assert!(
                std::env::var("APITOKEN_REQUIRE_POSTGRES").is_err(),
                "APITOKEN_REQUIRE_POSTGRES is set but PostgreSQL's binaries are not installed"
            );
            eprintln!("skipped: no PostgreSQL binaries in /usr/lib/postgresql");
            return None;
        };
        // initdb refuses to run as root: run it as `postgres` then.
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"0\n"));
        let data = tempfile::tempdir().expect("data dir");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(data.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the data dir");
        }
        let postgres = PrivatePostgres {
            port: free_port(),
            bin,
            data,
            as_postgres,
        };
        let pgdata = postgres.pgdata();
        postgres.run(
            "initdb",
            &[
                "-D",
                &pgdata,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        postgres.pg_ctl("start");
        Some(postgres)
    }

    fn pgdata(&self) -> String {
        self.data.path().join("pg").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let output = if self.as_postgres {
            let mut line = shell_quote(&program);
            for arg in args {
                line.push(' ');
                line.push_str(&shell_quote(Path::new(arg)));
            }
            Command::new("su").args(["postgres", "-c", &line]).output()
        } else {
            Command::new(&program).args(args).output()
        }
        .expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl(&self, action: &str) {
        let pgdata = self.pgdata();
        let log = self.data.path().join("server.log").display().to_string();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.data.path().display()
        );
        let mut args = vec!["-D", &pgdata, "-l", &log, "-w"];
        if action != "stop" {
            args.extend(["-o", &options]);
        }
        args.extend(["-m", "fast", action]);
        self.run("pg_ctl", &args);
    }

    /// The admin URL (`postgres://postgres@127.0.0.1:port/postgres`).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl restart -m fast`: every connection is cut, the server is
    /// back when it returns.
    pub fn restart(&self) {
        self.pg_ctl("restart");
    }
}

fn shell_quote(text: &Path) -> String {
    format!("'{}'", text.display().to_string().replace('\'', "'\\''"))
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let pgdata = self.pgdata();
        let program = self.bin.join("pg_ctl");
        let _ = if self.as_postgres {
            Command::new("su")
                .args([
                    "postgres",
                    "-c",
                    &format!(
                        "{} -D {} -m immediate stop",
                        shell_quote(&program),
                        shell_quote(Path::new(&pgdata))
                    ),
                ])
                .output()
        } else {
            Command::new(program)
                .args(["-D", &pgdata, "-m", "immediate", "stop"])
                .output()
        };
    }
}
