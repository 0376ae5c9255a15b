//! Small helpers shared by the benchmark binaries (`npanel-bench`, `npanel-api-load`,
//! `npanel-store-bench`, `npanel-chaos`, `npanel-soak`).

pub mod drive;
pub mod metrics;
pub mod plot;
pub mod procs;
pub mod serve;

/// `k` from the environment as a number, else `d`.
pub fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Whether phase `p` is selected by `PHASES` (comma separated; unset = all).
pub fn phase_on(p: &str) -> bool {
    std::env::var("PHASES")
        .map(|v| v.split(',').any(|x| x.trim() == p))
        .unwrap_or(true)
}

/// The `p`th percentile of sorted samples (NaN when there are none).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize]
}

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The `npanel` binary to measure: `NPANEL_BIN`, else the one beside this binary, else
/// `target/release/npanel`.
pub fn npanel_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("NPANEL_BIN") {
        return p.into();
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("npanel")));
    match beside {
        Some(p) if p.exists() => p,
        _ => std::path::PathBuf::from("target/release/npanel"),
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A small deterministic PRNG (xorshift64*): generated data sets are the same on every run.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    /// One of `v`.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// A `redis-server` of the benchmark's own, on a Unix socket in a temp dir, killed when
/// dropped. (The benches used the test support's; a workspace build would then have carried
/// the test support into the release binaries.)
pub struct PrivateRedis {
    dir: tempfile::TempDir,
    child: std::process::Child,
    /// `redis+unix://` URL of the socket.
    pub url: String,
}

impl PrivateRedis {
    /// Starts one (`NPANEL_REDIS_SERVER` or `redis-server` from `PATH`) and waits until it
    /// answers; panics with the reason when it cannot.
    pub fn start() -> PrivateRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let sock = dir.path().join("redis.sock");
        let bin = std::env::var("NPANEL_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args([
                "--port",
                "0",
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--unixsocket")
            .arg(&sock)
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (apt-get install redis-server)"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{bin} did not open {} within 10 s",
                sock.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let url = format!("redis+unix://{}", sock.display());
        PrivateRedis { dir, child, url }
    }

    /// The server's directory (its socket and files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_own_cpu() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 50.0), 51.0);
        assert_eq!(pct(&v, 99.0), 99.0);
        assert!(pct(&[], 50.0).is_nan());
        assert!(cpu_ticks(std::process::id()).is_some());
    }
}
