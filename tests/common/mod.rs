//! Test bed: independent `nisshi` brokers, each one "cluster", on free
//! loopback ports, started and stopped by the test (stopped by PID in
//! `Drop`, so also when the test panics). Random names let tests share
//! nothing and run in parallel.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub use kmirror::devcluster::free_port;
pub use kmirror::devcluster::BrokerSecurity;
use kmirror::devcluster::{Nisshi, Storage};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this test run: `prefix-<pid>-<n>-<random>`.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    format!("{prefix}-{}-{n}-{r:08x}", std::process::id())
}

/// A scratch directory for one test's configs and logs. Removed when
/// dropped, unless `KMIRROR_TEST_KEEP_LOGS` is set: then it stays and its
/// path is printed, so a failed run's kmirror logs can be read.
pub fn test_dir() -> tempfile::TempDir {
    let mut d = tempfile::tempdir().unwrap();
    if std::env::var_os("KMIRROR_TEST_KEEP_LOGS").is_some() {
        d.disable_cleanup(true);
        eprintln!("test directory kept: {}", d.path().display());
    }
    d
}

/// One running nisshi broker: one "cluster". Stopped (by PID) on drop, so
/// also when the test panics. A missing `nisshi` binary fails the test
/// with the install command; tests never skip.
pub struct Broker {
    pub name: String,
    pub port: u16,
    inner: Nisshi,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a broker with in-memory storage and waits until it answers.
    pub fn start(name: &str) -> Broker {
        Self::start_with(name, false)
    }

    /// Starts a broker with its data in a sqlite file (for restart tests).
    pub fn start_sqlite(name: &str) -> Broker {
        Self::start_with(name, true)
    }

    fn start_with(name: &str, sqlite: bool) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let storage = if sqlite {
            Storage::Sqlite(dir.path().join(format!("{name}.db")))
        } else {
            Storage::Memory
        };
        let log = dir.path().join(format!("{name}.log"));
        let inner = Nisshi::start(name, 0, storage, &log).unwrap_or_else(|e| panic!("{e}"));
        Broker {
            name: name.to_string(),
            port: inner.port,
            inner,
            _dir: dir,
        }
    }

    /// Starts a broker on sqlite storage, creates `users` (name,
    /// password, `scram256`|`scram512`) while it speaks plaintext, then
    /// restarts it with `security`; the harness's own clients use
    /// `client_properties` from then on.
    pub fn start_secure(
        name: &str,
        users: &[(&str, &str, &str)],
        security: BrokerSecurity,
        client_properties: &[(&str, &str)],
    ) -> Broker {
        let mut b = Self::start_with(name, true);
        for (u, p, m) in users {
            b.inner
                .create_user(u, p, m)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        b.inner.security = security;
        b.inner.client_properties = client_properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        b.restart();
        b
    }

    /// Sets a SCRAM user's password on a broker started with
    /// [`Broker::start_secure`]: restarts it plaintext, runs `nisshi user
    /// create`, and restarts it with its security again (data kept).
    pub fn set_password(&mut self, user: &str, password: &str, mechanism: &str) {
        let security = std::mem::take(&mut self.inner.security);
        let props = std::mem::take(&mut self.inner.client_properties);
        self.restart();
        self.inner
            .create_user(user, password, mechanism)
            .unwrap_or_else(|e| panic!("{e}"));
        self.inner.security = security;
        self.inner.client_properties = props;
        self.restart();
    }

    /// `127.0.0.1:PORT`.
    pub fn bootstrap(&self) -> String {
        self.inner.bootstrap()
    }

    /// PID of the broker process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.pid()
    }

    /// Stops the broker (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        self.inner.kill();
    }

    /// Starts it again on the same port (data kept with sqlite storage).
    pub fn restart(&mut self) {
        self.inner.kill();
        self.inner.spawn().unwrap_or_else(|e| panic!("{e}"));
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.inner.log).unwrap_or_default()
    }

    /// An admin client.
    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.inner.admin()
    }

    /// Creates a topic and waits until metadata shows all its partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        self.inner
            .create_topic(topic, partitions, configs)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Partition count of a topic, if the metadata lists it.
    pub fn partitions(&self, topic: &str) -> Option<usize> {
        self.inner.partitions(topic)
    }

    /// Names of all topics.
    pub fn topics(&self) -> Vec<String> {
        let c = self.consumer(None);
        let md = c.fetch_metadata(None, Duration::from_secs(5)).unwrap();
        md.topics().iter().map(|t| t.name().to_string()).collect()
    }

    /// A consumer (with a group when given; no auto commit).
    pub fn consumer(&self, group: Option<&str>) -> BaseConsumer {
        let mut cfg = self.inner.client_config();
        cfg.set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.queue.backoff.ms", "1");
        cfg.set("group.id", group.unwrap_or("kmirror-test-reader"));
        cfg.create().unwrap()
    }

    /// An idempotent producer.
    pub fn producer(&self) -> ThreadedProducer<DefaultProducerContext> {
        self.inner
            .client_config()
            .set("enable.idempotence", "true")
            .set("message.max.bytes", "10000000")
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// Produces records and waits until all are acknowledged.
    pub fn produce(&self, topic: &str, records: &[Rec]) {
        let p = self.producer();
        for r in records {
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(r.partition);
            if let Some(k) = &r.key {
                rec = rec.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                rec = rec.payload(v.as_slice());
            }
            if let Some(ts) = r.timestamp {
                rec = rec.timestamp(ts);
            }
            if !r.headers.is_empty() {
                let mut hs = rdkafka::message::OwnedHeaders::new();
                for (k, v) in &r.headers {
                    hs = hs.insert(rdkafka::message::Header {
                        key: k,
                        value: v.as_deref(),
                    });
                }
                rec = rec.headers(hs);
            }
            let mut rec = rec;
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        assert!(
                            matches!(
                                e,
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull
                                )
                            ),
                            "produce failed: {e}"
                        );
                        rec = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(60)).expect("flush");
    }

    /// Reads every record of `topic` (all partitions) up to the high
    /// watermark at the time of the call.
    pub fn read_all(&self, topic: &str) -> Vec<Rec> {
        let parts = self
            .partitions(topic)
            .unwrap_or_else(|| panic!("no topic {topic}"));
        let c = self.consumer(None);
        let mut tpl = TopicPartitionList::new();
        let mut remaining = 0usize;
        let mut ends = Vec::new();
        let mut done = Vec::new();
        for p in 0..parts as i32 {
            let (lo, hi) = c
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap();
            ends.push(hi);
            done.push(hi <= lo);
            if hi > lo {
                remaining += (hi - lo) as usize;
                tpl.add_partition_offset(topic, p, Offset::Offset(lo))
                    .unwrap();
            }
        }
        let mut out = Vec::new();
        if remaining == 0 {
            return out;
        }
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.iter().any(|d| !d) {
            assert!(Instant::now() < deadline, "timed out reading {topic}");
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.expect("consume error");
                let p = m.partition() as usize;
                out.push(Rec::from_message(&m));
                if m.offset() + 1 >= ends[p] {
                    done[p] = true;
                }
            }
        }
        out
    }
}

/// A record as produced or read back, every field compared by tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Rec {
    /// A record to produce.
    pub fn new(partition: i32, key: Option<&[u8]>, value: Option<&[u8]>) -> Rec {
        Rec {
            partition,
            offset: -1,
            key: key.map(|k| k.to_vec()),
            value: value.map(|v| v.to_vec()),
            timestamp: None,
            headers: Vec::new(),
        }
    }

    fn from_message<M: Message>(m: &M) -> Rec {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(|v| v.to_vec())))
                    .collect()
            })
            .unwrap_or_default();
        Rec {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| k.to_vec()),
            value: m.payload().map(|v| v.to_vec()),
            timestamp: m.timestamp().to_millis(),
            headers,
        }
    }
}

/// Waits until `cond` holds, polling every 100 ms; panics after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True when a process with this PID exists.
pub fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
}

/// Writes a kmirror config for a source/target pair into `dir`.
pub fn write_config(dir: &Path, source: &Broker, target: &Broker, extra: &str) -> PathBuf {
    let path = dir.join("kmirror.toml");
    // Debugging aid: `KMIRROR_TEST_RDKAFKA_DEBUG=cgrp` (with
    // `KMIRROR_TEST_LOG=info,librdkafka=debug`) logs librdkafka's debug
    // contexts of the source clients. Not for tests whose `extra` sets
    // `[source.properties]` itself (the table would be defined twice).
    let dbg = std::env::var("KMIRROR_TEST_RDKAFKA_DEBUG")
        .map(|d| format!("properties = {{ debug = \"{d}\" }}\n"))
        .unwrap_or_default();
    let text = format!(
        "[source]\nalias = \"src\"\nbootstrap_servers = \"{}\"\n{dbg}\n[target]\nalias = \"dst\"\nbootstrap_servers = \"{}\"\n\n{extra}\n",
        source.bootstrap(),
        target.bootstrap()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Path of the built kmirror binary; `KMIRROR_TEST_BIN` runs the tests
/// against another build (e.g. an older one, to see a test fail before a
/// fix).
pub fn kmirror_bin() -> PathBuf {
    std::env::var_os("KMIRROR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kmirror")))
}

/// A `kmirror run` child process; killed (SIGKILL) on drop.
pub struct KmirrorProc {
    child: Option<Child>,
    pub log: PathBuf,
}

impl KmirrorProc {
    /// Starts `kmirror run --config PATH`, logging to `log` (appended).
    pub fn start(config: &Path, log: &Path) -> KmirrorProc {
        Self::start_env(config, log, &[])
    }

    /// Like [`KmirrorProc::start`], with extra environment variables.
    pub fn start_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> KmirrorProc {
        Self::start_with(config, log, env, &[])
    }

    /// Like [`KmirrorProc::start_env`], with extra `run` arguments.
    pub fn start_with(
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> KmirrorProc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(kmirror_bin())
            .args(["run", "--config"])
            .arg(config)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("KMIRROR_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start kmirror");
        KmirrorProc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// PID while running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (by number) to the process.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the exit code (None on timeout).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(st) = c.try_wait().unwrap() {
                    self.child = None;
                    use std::os::unix::process::ExitStatusExt;
                    return Some(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)));
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KmirrorProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sum of (high − low) watermarks over all partitions of a topic; 0 when
/// the topic does not exist.
pub fn count(broker: &Broker, topic: &str) -> i64 {
    broker.inner.records(topic)
}

/// Waits until `topic` on `broker` holds at least `n` records.
pub fn wait_count(broker: &Broker, topic: &str, n: i64, timeout: Duration, k: &KmirrorProc) {
    let deadline = Instant::now() + timeout;
    loop {
        let have = count(broker, topic);
        if have >= n {
            return;
        }
        if Instant::now() > deadline {
            let log = k.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "{topic}: {have} of {n} records after {timeout:?}; kmirror log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` small records numbered from `start`, spread over `partitions`;
/// the value is `v-<i>`, which tests use to count copies.
pub fn numbered(start: usize, n: usize, partitions: i32) -> Vec<Rec> {
    (start..start + n)
        .map(|i| {
            Rec::new(
                (i % partitions as usize) as i32,
                Some(format!("k-{i}").as_bytes()),
                Some(format!("v-{i}").as_bytes()),
            )
        })
        .collect()
}

/// How many times each value occurs in a topic.
pub fn value_counts(broker: &Broker, topic: &str) -> std::collections::HashMap<Vec<u8>, usize> {
    let mut m = std::collections::HashMap::new();
    for r in broker.read_all(topic) {
        *m.entry(r.value.unwrap_or_default()).or_insert(0) += 1;
    }
    m
}

/// A free `127.0.0.1:PORT` for kmirror's HTTP server.
pub fn http_listen() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// GET a path from kmirror's HTTP server: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Runs the kmirror binary to completion: (exit code, stdout, stderr).
pub fn run_kmirror(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kmirror_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kmirror");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `[http]` table and one `[[flow]]` named `f` that mirrors the topics
/// matching `topics` (a regex, as written in TOML), refreshing every second;
/// `extra` adds flow keys. `listen = ""` turns the HTTP server off.
pub fn flow_toml(listen: &str, topics: &str, extra: &str) -> String {
    format!(
        "[http]\nlisten = \"{listen}\"\n\n[[flow]]\nname = \"f\"\ntopics = [\"{topics}\"]\nrefresh_topics_interval = \"1s\"\n{extra}\n"
    )
}

/// Explicitly set topic configs, as the broker describes them.
pub fn topic_configs(b: &Broker, topic: &str) -> std::collections::BTreeMap<String, String> {
    let admin = b.admin();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let spec = rdkafka::admin::ResourceSpecifier::Topic(topic);
    let res = rt
        .block_on(admin.describe_configs([&spec], &rdkafka::admin::AdminOptions::new()))
        .unwrap();
    let mut out = std::collections::BTreeMap::new();
    for r in res {
        for e in r.unwrap().entries {
            if !e.is_default {
                if let Some(v) = e.value {
                    out.insert(e.name, v);
                }
            }
        }
    }
    out
}

/// The values of `recs` as strings, sorted.
pub fn sorted_values(recs: &[Rec]) -> Vec<String> {
    let mut v: Vec<String> = recs
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap_or_default()).unwrap())
        .collect();
    v.sort();
    v
}

/// A config text (with an `[http]` table, as from [`flow_toml`]) with
/// per-partition metrics (`[http] metrics_level = "partition"`; the
/// default is one series per flow).
pub fn detailed(toml: &str) -> String {
    toml.replacen("[http]\n", "[http]\nmetrics_level = \"partition\"\n", 1)
}

/// The values of partition `p`'s records, in order.
pub fn values_of(recs: &[Rec], p: i32) -> Vec<Option<Vec<u8>>> {
    recs.iter()
        .filter(|r| r.partition == p)
        .map(|r| r.value.clone())
        .collect()
}

/// Sets one topic config with IncrementalAlterConfigs (the test broker has
/// no legacy AlterConfigs).
pub fn set_topic_config(broker: &Broker, topic: &str, key: &str, value: &str) {
    let admin = broker.admin();
    let res = kmirror::kafka::incremental::incremental_alter_topic_configs(
        admin.inner(),
        &[(
            topic.to_string(),
            vec![kmirror::kafka::incremental::ConfigOp::Set(
                key.into(),
                value.into(),
            )],
        )],
        Duration::from_secs(10),
    )
    .expect("IncrementalAlterConfigs");
    assert_eq!(res, vec![(topic.to_string(), Ok(()))]);
}

/// Checks that `target` holds exactly the records of `source`, in source
/// order, once each, per partition (exactly-once); panics naming the first
/// difference.
pub fn assert_exact_copy(src: &Broker, topic: &str, dst: &Broker, target: &str) {
    let (s, t) = (src.read_all(topic), dst.read_all(target));
    let parts = src.partitions(topic).unwrap() as i32;
    for p in 0..parts {
        let (sv, tv) = (values_of(&s, p), values_of(&t, p));
        if sv != tv {
            let first = sv.iter().zip(&tv).position(|(a, b)| a != b);
            panic!(
                "{target}/{p}: not an exact copy: source {} records, target {}, first difference at index {first:?}",
                sv.len(),
                tv.len()
            );
        }
    }
}

/// Commits `offsets` (one per partition, from 0) for `group` on `b`, as a
/// consumer that read up to them.
pub fn commit_group(b: &Broker, group: &str, topic: &str, offsets: &[i64]) {
    use rdkafka::consumer::CommitMode;
    let c = b.consumer(Some(group));
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets.iter().enumerate() {
        tpl.add_partition_offset(topic, p as i32, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// The committed offsets of `group` on `b` for partitions `0..parts` (-1:
/// none).
pub fn committed(b: &Broker, group: &str, topic: &str, parts: i32) -> Vec<i64> {
    let c = b.consumer(Some(group));
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..parts)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

/// Waits until `kmirror offsets translate` shows a checkpoint with these
/// source offsets (one per partition, from 0) for `group`.
pub fn wait_checkpoints(cfg: &Path, group: &str, want_upstream: &[i64], k: &KmirrorProc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out, _) = run_kmirror(&[
            "offsets",
            "translate",
            "--config",
            cfg.to_str().unwrap(),
            "--group",
            group,
            "--format",
            "json",
        ]);
        if code == 0 {
            let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
            let ups: std::collections::BTreeMap<i64, i64> = v["offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| {
                    (
                        o["partition"].as_i64().unwrap(),
                        o["source_offset"].as_i64().unwrap(),
                    )
                })
                .collect();
            if want_upstream
                .iter()
                .enumerate()
                .all(|(p, u)| ups.get(&(p as i64)) == Some(u))
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoints {want_upstream:?} for {group}: {out}\nkmirror log:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Wall-clock time in milliseconds since the Unix epoch (record timestamps).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
