//! Local `nisshi` brokers for the demo, the benchmark and the tests: each
//! broker is one "cluster" on a loopback port, started as a child process
//! and killed (by PID) when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

/// The one command that installs the test broker.
pub const INSTALL: &str = "cargo install nisshi --version 0.8.1 --locked --ignore-rust-version";

/// Path of the `nisshi` binary: `$NISSHI_BIN`, then `PATH`, then
/// `~/.cargo/bin`; the error says how to install it.
pub fn nisshi_bin() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("NISSHI_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "NISSHI_BIN={} does not exist. Install the test broker with: {INSTALL}",
                p.display()
            ))
        };
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nisshi"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/nisshi"));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        format!(
            "the nisshi test broker is not installed (not on PATH, not in ~/.cargo/bin). Install it with: {INSTALL} \
             (about 9 minutes on 2 cores), or run `bash scripts/install-nisshi.sh`"
        )
    })
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// Records held by `topic` on the cluster at `bootstrap`: the sum over its
/// partitions of high − low watermark; 0 when the topic does not exist
/// (or the cluster does not answer).
pub fn records_in(bootstrap: &str, topic: &str) -> i64 {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap);
    records_with(cfg, topic)
}

/// [`records_in`] with a client made from `cfg`.
fn records_with(mut cfg: ClientConfig, topic: &str) -> i64 {
    let Ok(c) = cfg.set("log_level", "0").create::<BaseConsumer>() else {
        return 0;
    };
    let Ok(md) = c.fetch_metadata(None, Duration::from_secs(5)) else {
        return 0;
    };
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return 0;
    };
    (0..t.partitions().len() as i32)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(5))
                .map(|(lo, hi)| hi - lo)
                .unwrap_or(0)
        })
        .sum()
}

/// Where a broker keeps its data.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In memory: gone when the broker stops.
    Memory,
    /// In a sqlite file: survives a restart.
    Sqlite(PathBuf),
}

/// One running nisshi broker.
pub struct Nisshi {
    /// Cluster id and memory-store name.
    pub name: String,
    /// Loopback port.
    pub port: u16,
    /// Storage engine.
    pub storage: Storage,
    /// Where stdout/stderr go.
    pub log: PathBuf,
    /// Runs the broker in a process group of its own, so that a Ctrl-C in
    /// the terminal does not stop it before its owner (the demo) has
    /// stopped kmirror; the owner still kills it by PID on drop.
    pub own_process_group: bool,
    /// TLS listener (`--cert`, `--key`) and SASL (`--authentication`);
    /// applied at the next (re)start.
    pub security: BrokerSecurity,
    /// librdkafka properties of the clients this harness makes (admin,
    /// readiness probe): what the broker's security demands.
    pub client_properties: Vec<(String, String)>,
    child: Option<Child>,
}

/// What a test broker demands of its clients.
#[derive(Debug, Clone, Default)]
pub struct BrokerSecurity {
    /// Certificate chain and private key (PEM): the listener speaks TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Clients must authenticate with SASL (users made with
    /// [`Nisshi::create_user`] while the broker ran without it).
    pub authentication: bool,
}

impl Nisshi {
    /// Starts a broker on `port` (0 = pick a free one) and waits until it
    /// answers a metadata request.
    pub fn start(name: &str, port: u16, storage: Storage, log: &Path) -> Result<Nisshi, String> {
        Self::start_with(name, port, storage, log, false)
    }

    /// Like [`Nisshi::start`], in a process group of its own (see
    /// [`Nisshi::own_process_group`]).
    pub fn start_own_group(
        name: &str,
        port: u16,
        storage: Storage,
        log: &Path,
    ) -> Result<Nisshi, String> {
        Self::start_with(name, port, storage, log, true)
    }

    fn start_with(
        name: &str,
        port: u16,
        storage: Storage,
        log: &Path,
        own_process_group: bool,
    ) -> Result<Nisshi, String> {
        let mut n = Nisshi {
            name: name.to_string(),
            port,
            storage,
            log: log.to_path_buf(),
            own_process_group,
            security: BrokerSecurity::default(),
            client_properties: Vec::new(),
            child: None,
        };
        n.spawn()?;
        Ok(n)
    }

    /// (Re)starts the process; keeps the port when one was chosen.
    pub fn spawn(&mut self) -> Result<(), String> {
        let bin = nisshi_bin()?;
        let fixed = self.port != 0;
        let mut last = String::new();
        for _ in 0..3 {
            if !fixed {
                self.port = free_port();
            }
            let url = format!("tcp://127.0.0.1:{}", self.port);
            let engine = match &self.storage {
                Storage::Memory => format!("memory://{}/", self.name),
                Storage::Sqlite(p) => format!("sqlite:///{}", p.display()),
            };
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| format!("{}: {e}", self.log.display()))?;
            let err = log.try_clone().map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&bin);
            if self.own_process_group {
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            }
            cmd.args(["broker", "--cluster-id", &self.name])
                .args(["--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", &engine])
                .args(["--group-initial-rebalance-delay", "0s"]);
            if let Some((cert, key)) = &self.security.tls {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
            if self.security.authentication {
                cmd.arg("--authentication");
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .map_err(|e| {
                    format!(
                        "cannot start {}: {e}. Install with: {INSTALL}",
                        bin.display()
                    )
                })?;
            self.child = Some(child);
            match self.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    last = e;
                    self.kill();
                }
            }
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        Err(format!(
            "broker {} did not become ready: {last}\nlog tail:\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("broker exited: {st}"));
            }
            let c: BaseConsumer = self
                .client_config()
                .set("log_level", "0")
                .create()
                .map_err(|e| e.to_string())?;
            match c.fetch_metadata(None, Duration::from_millis(1000)) {
                Ok(md) if !md.brokers().is_empty() => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e.to_string()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err("timeout".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client config for this broker: bootstrap, log level 3 and
    /// [`Nisshi::client_properties`].
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap())
            .set("log_level", "3");
        for (k, v) in &self.client_properties {
            c.set(k, v);
        }
        c
    }

    /// Records held by `topic` (see [`records_in`]).
    pub fn records(&self, topic: &str) -> i64 {
        records_with(self.client_config(), topic)
    }

    /// An admin client.
    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client_config().create().expect("admin client")
    }

    /// Creates a SCRAM user (`nisshi user create`, which talks plaintext
    /// without authentication: call it while the broker runs without TLS
    /// and SASL, on durable storage, then restart it with them).
    /// `mechanism`: `scram256` or `scram512`.
    pub fn create_user(&self, name: &str, password: &str, mechanism: &str) -> Result<(), String> {
        let bin = nisshi_bin()?;
        let out = Command::new(&bin)
            .args(["user", "create", "--mechanism", mechanism, "--broker"])
            .arg(format!("tcp://{}", self.bootstrap()))
            .args([name, password])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {} user create: {e}", bin.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nisshi user create {name} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Partition count of a topic, listing all topics (naming one can
    /// auto-create it).
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        let c: BaseConsumer = self.client_config().create().ok()?;
        let md = c.fetch_metadata(None, Duration::from_secs(5)).ok()?;
        md.topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
    }

    /// Creates a topic ("already exists" is fine) and waits until metadata
    /// shows all its partitions.
    pub fn create_topic(
        &self,
        topic: &str,
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), String> {
        let admin = self.admin();
        let mut nt = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            nt = nt.set(k, v);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let res = rt
            .block_on(admin.create_topics([&nt], &AdminOptions::new()))
            .map_err(|e| e.to_string())?;
        for r in res {
            if let Err((t, e)) = r {
                if e != RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(format!("create topic {t}: {e}"));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.partitions(topic) != Some(partitions as usize) {
            if Instant::now() > deadline {
                return Err(format!("topic {topic} not visible in metadata"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Nisshi {
    fn drop(&mut self) {
        self.kill();
    }
}
