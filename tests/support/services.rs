//! Real services for the sink tests: the shared Redis and PostgreSQL
//! (started by `tests/services.sh`), queried through their command-line
//! clients, and private throwaway instances on a free port that a test may
//! stop and restart without disturbing tests running in parallel.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn postgres_url() -> String {
    std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name no other test (or test run) uses.
pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000);
    format!("{test}_{}_{nanos}", std::process::id())
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run tests/services.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli -u URL --raw ARGS...`
pub fn redis_cli(url: &str, args: &[&str]) -> String {
    run(Command::new("redis-cli")
        .args(["-u", url, "--raw"])
        .args(args))
}

/// A hash as field -> integer value.
pub fn redis_hash(url: &str, key: &str) -> std::collections::BTreeMap<String, i64> {
    let out = redis_cli(url, &["HGETALL", key]);
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].parse().unwrap_or(i64::MIN)))
        .collect()
}

/// `psql URL -At -c SQL`, rows split on `|`.
pub fn psql(url: &str, sql: &str) -> Vec<Vec<String>> {
    let out = run(Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]));
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

pub fn free_port() -> u16 {
    super::pick_port()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A private redis-server with an append-only file (fsync always), so its
/// data survives a stop; stopped on drop.
pub struct PrivateRedis {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let r = PrivateRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.launch();
        r
    }

    /// Address by host name, so reconnects resolve it again.
    pub fn url(&self) -> String {
        format!("redis://localhost:{}", self.port)
    }

    fn ping(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    /// (Re)starts the server on the same port and directory.
    pub fn launch(&self) {
        let port = self.port.to_string();
        let status = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port, "--daemonize", "yes"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--pidfile")
            .arg(self.dir.path().join("redis.pid"))
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .status()
            .expect("redis-server (run tests/services.sh to install it)");
        assert!(status.success());
        wait_until("the private redis", Duration::from_secs(10), || self.ping());
    }

    /// `SHUTDOWN NOSAVE` (the append-only file keeps the data).
    pub fn stop(&self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .stderr(Stdio::null())
            .output();
        wait_until("the private redis to stop", Duration::from_secs(10), || {
            !self.ping()
        });
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.ping() {
            self.stop();
        }
    }
}

/// A private PostgreSQL cluster (initdb into a temporary directory, trust
/// auth, loopback only); stopped on drop.
pub struct PrivatePostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

/// As root, PostgreSQL must run as the `postgres` user.
fn as_owner(program: &Path) -> Command {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (run tests/services.sh to install them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("no /usr/lib/postgresql/*/bin/initdb");
        let dir = std::env::temp_dir().join(unique("sluice_pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status();
        let ok = as_owner(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("initdb");
        assert!(ok.success(), "initdb failed");
        let pg = PrivatePostgres {
            port: free_port(),
            dir,
            bin,
        };
        pg.launch();
        pg
    }

    /// Address by host name, so reconnects resolve it again.
    pub fn url(&self) -> String {
        format!("postgres://postgres@localhost:{}/postgres", self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.dir)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn launch(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log").display().to_string();
        assert!(
            self.pg_ctl(&["-o", &opts, "-l", &log, "-w", "-t", "30", "start"]),
            "private postgres did not start; see {log}"
        );
    }

    /// Fast shutdown: sessions are terminated, open transactions roll back.
    pub fn stop(&self) {
        assert!(
            self.pg_ctl(&["-m", "fast", "-w", "stop"]),
            "pg_ctl stop failed"
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
