//! Kafka clients: the one place where cluster settings become librdkafka
//! settings, the client context that routes librdkafka's logs and errors to
//! `tracing`, and a reachability probe.

pub mod acls;
pub mod brokers;
pub mod fault;
pub mod group_offsets;
pub mod incremental;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{ClusterConfig, RuntimeConfig};

/// Which client a configuration is for; decides the defaults kmirror sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Admin and metadata requests.
    Admin,
    /// The source consumer of a flow.
    Consumer,
    /// The target producer of a flow.
    Producer,
}

/// Builds the librdkafka configuration of a client of `cluster`.
///
/// Order: kmirror's defaults, then the user's `properties` (which may tune
/// anything not reserved, see `config::validate::RESERVED_PROPERTIES`),
/// then the settings a guarantee depends on.
pub fn client_config(cluster: &ClusterConfig, role: Role, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("client.id", client_id);
    c.set("log_level", "6");
    match role {
        // rust-rdkafka's AdminClient is a librdkafka producer underneath.
        Role::Admin => {
            c.set("allow.auto.create.topics", "false");
        }
        Role::Consumer => {
            // librdkafka's 1 s backoff after a full local queue halves a
            // back-pressured pipe; fetch again as soon as there is room.
            c.set("fetch.queue.backoff.ms", "1");
            c.set("fetch.wait.max.ms", "100");
            c.set("auto.offset.reset", "earliest");
            c.set("session.timeout.ms", "45000");
        }
        Role::Producer => {
            c.set("linger.ms", "5");
            c.set("batch.size", "1000000");
            // Retry forever: a refused or timed-out record must never be
            // dropped; the flow stops the partition on permanent errors.
            c.set("message.timeout.ms", "2147483647");
            // A producer's metadata request for a topic that does not
            // exist yet must not create it with the broker's defaults
            // (librdkafka asks with auto-creation allowed by default):
            // target topics are created by config sync alone, with the
            // source's partition count and configs.
            c.set("allow.auto.create.topics", "false");
        }
    }
    for (k, v) in cluster.properties.iter() {
        c.set(k, v);
    }
    c.set("bootstrap.servers", cluster.bootstrap_servers.trim());
    c
}

/// Whether the cluster of `admin` answers a metadata request within
/// `timeout` (the error otherwise).
///
/// Ask before controller-bound admin requests (DescribeConfigs,
/// CreateTopics, ...): sent to a cluster that is down, such a request
/// keeps librdkafka's main and broker threads busy until it times out
/// (its admin worker looks for the controller again on every broker state
/// change; about 90% of a core here), whereas a metadata request just
/// waits.
pub async fn reachable<C: ClientContext + 'static>(
    admin: &Arc<AdminClient<C>>,
    timeout: Duration,
) -> Result<(), String> {
    let a = admin.clone();
    // A Metadata request for no topics (see `brokers`): the answer does
    // not grow with the cluster's topics.
    tokio::task::spawn_blocking(move || brokers::answer(a.inner(), timeout))
        .await
        .map_err(|e| e.to_string())?
}

/// Adds the settings of a flow's source consumer that kmirror owns.
pub fn apply_consumer_owned(c: &mut ClientConfig, group: &str, runtime: &RuntimeConfig) {
    c.set("group.id", group);
    c.set("enable.auto.commit", "true");
    c.set(
        "auto.commit.interval.ms",
        runtime.commit_interval.as_millis().max(1).to_string(),
    );
    c.set("enable.auto.offset.store", "false");
    c.set("enable.partition.eof", "false");
    c.set("isolation.level", "read_committed");
    c.set("partition.assignment.strategy", "cooperative-sticky");
    c.set(
        "queued.max.messages.kbytes",
        runtime.consumer_queue_kbytes.to_string(),
    );
    if !runtime.group_instance_id.is_empty() {
        c.set("group.instance.id", &runtime.group_instance_id);
    }
}

/// Adds the settings of a flow's target producer that kmirror owns.
pub fn apply_producer_owned(c: &mut ClientConfig, compression: &str, runtime: &RuntimeConfig) {
    c.set("enable.idempotence", "true");
    c.set("acks", "all");
    c.set("compression.type", compression);
    c.set(
        "queue.buffering.max.kbytes",
        runtime.producer_queue_kbytes.to_string(),
    );
}

/// Routes a librdkafka log line to `tracing` (target `librdkafka`) at the
/// matching level; every kmirror client context uses it.
pub fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", facility = fac, "{msg}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility = fac, "{msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", facility = fac, "{msg}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility = fac, "{msg}"),
    }
}

/// Client context shared by kmirror's clients: librdkafka logs go to
/// `tracing` (target `librdkafka`) and the last error is kept so that a
/// failed request can say why.
#[derive(Default)]
pub struct KContext {
    last_error: Mutex<Option<String>>,
    /// The last error whose cause [`explain`] knows (a later "all brokers
    /// are down" says less).
    known_error: Mutex<Option<String>>,
    /// The last connection failure the broker threads logged.
    last_fail: Mutex<Option<String>>,
    /// Keep librdkafka's log lines to the last error only (a probe whose
    /// caller reports the failure once, in words).
    quiet: bool,
}

impl KContext {
    /// A context that does not log librdkafka's lines (see `quiet`).
    pub fn quiet() -> Self {
        Self {
            quiet: true,
            ..Self::default()
        }
    }

    /// The last error librdkafka reported on this client whose cause is
    /// known, else the last one, if any.
    pub fn last_error(&self) -> Option<String> {
        let get = |m: &Mutex<Option<String>>| m.lock().ok().and_then(|g| g.clone());
        get(&self.known_error)
            .or_else(|| get(&self.last_fail))
            .or_else(|| get(&self.last_error))
    }

    fn keep_error(&self, text: &str, fail: bool) {
        let slot = if explain(text).is_some() {
            &self.known_error
        } else if fail {
            &self.last_fail
        } else {
            &self.last_error
        };
        if let Ok(mut g) = slot.lock() {
            *g = Some(text.to_string());
        }
    }
}

impl ClientContext for KContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        // Connection failures (TLS, SASL) are logged by the broker threads
        // as they happen; keep the last one for the error of the request.
        if (level as i32) <= (RDKafkaLogLevel::Error as i32) || (self.quiet && fac == "FAIL") {
            self.keep_error(msg, fac == "FAIL");
        }
        if !self.quiet {
            log_librdkafka(level, fac, msg)
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
        self.keep_error(reason, false);
    }
}

impl ConsumerContext for KContext {}

/// The internal producers' delivery reports go to the sender's channel
/// (see [`send_acked`]).
impl ProducerContext for KContext {
    type DeliveryOpaque = Box<tokio::sync::oneshot::Sender<Result<(), String>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, tx: Self::DeliveryOpaque) {
        let _ = tx.send(result.as_ref().map(|_| ()).map_err(|(e, _)| redact(e)));
    }
}

/// Sends one record with an internal producer and waits (at most
/// `timeout`) until the target acknowledged it: an async send, like
/// rdkafka's `FutureProducer`, without its 100 ms polling thread.
pub async fn send_acked(
    producer: &Polled<KContext>,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: &[u8],
    timestamp: Option<i64>,
    timeout: Duration,
) -> Result<(), String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut rec = BaseRecord::with_opaque_to(topic, Box::new(tx))
        .partition(partition)
        .key(key)
        .payload(value);
    if let Some(ts) = timestamp {
        rec = rec.timestamp(ts);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match producer.send(rec) {
            Ok(()) => break,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                if tokio::time::Instant::now() < deadline =>
            {
                rec = back;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err((e, _)) => return Err(redact(&e)),
        }
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the producer closed before the acknowledgement".into()),
        Err(_) => Err(format!("not acknowledged within {timeout:?}")),
    }
}

/// What a reachability probe found.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    /// Cluster id reported by the brokers, when they report one.
    pub cluster_id: Option<String>,
    /// Number of brokers in the metadata.
    pub brokers: usize,
    /// Number of topics in the metadata.
    pub topics: usize,
}

/// Reaches a cluster with a metadata request. The error says why it failed
/// in words when the cause is known (see [`explain`]; a certificate that
/// fails verification is tried once more without host name verification,
/// to tell a host name mismatch from an unknown CA), with librdkafka's own
/// text after it.
pub fn probe(cluster: &ClusterConfig, timeout: Duration) -> Result<ClusterInfo, String> {
    let mut cfg = client_config(cluster, Role::Admin, "kmirror-probe");
    if cfg.get("debug").is_none() {
        // The broker threads' connection failures (logged at debug level)
        // say why a connection closed; the quiet context keeps them.
        cfg.set("debug", "broker,security");
        cfg.set("log_level", "7");
        // (rdkafka sets the level from the `log` crate's otherwise.)
        cfg.set_log_level(RDKafkaLogLevel::Debug);
    }
    let (e, why) = match probe_with(&cfg, timeout)? {
        Ok(info) => return Ok(info),
        Err(failure) => failure,
    };
    let Some(w) = why else {
        return Err(format!("{e} (no broker answered within {timeout:?})"));
    };
    let verify_off = cfg
        .get("ssl.endpoint.identification.algorithm")
        .is_some_and(|v| v.eq_ignore_ascii_case("none"));
    if w.contains("certificate verify failed") && !verify_off {
        let mut relaxed = cfg.clone();
        relaxed.set("ssl.endpoint.identification.algorithm", "none");
        if let Ok(Ok(_)) = probe_with(&relaxed, timeout) {
            return Err(format!(
                "the broker's certificate is for another host name: its subject alternative names do not include the host in bootstrap_servers (or the one the broker advertises); use that name, or reissue the certificate ({w})"
            ));
        }
    }
    if cause_of(&w) == Some(Cause::Certificate) {
        // Not a host name mismatch (tried above).
        return Err(format!(
            "the broker's certificate is not signed by a CA in ssl.ca.location (unknown CA), or it expired ({w})"
        ));
    }
    Err(failure_text(&e, Some(&w)).0)
}

/// One metadata request: the cluster's figures, or (the request's error,
/// the client's last error). `Err` only when no client could be made.
#[allow(clippy::type_complexity)]
fn probe_with(
    cfg: &ClientConfig,
    timeout: Duration,
) -> Result<Result<ClusterInfo, (String, Option<String>)>, String> {
    let consumer: BaseConsumer<KContext> =
        create(cfg, KContext::quiet()).map_err(|e| format!("cannot create a client: {e}"))?;
    Ok(match consumer.client().fetch_metadata(None, timeout) {
        Ok(md) => {
            let cluster_id = consumer.client().fetch_cluster_id(timeout);
            Ok(ClusterInfo {
                cluster_id,
                brokers: md.brokers().len(),
                topics: md.topics().len(),
            })
        }
        Err(e) => {
            // Serve the error events queued meanwhile.
            let _ = consumer.poll(Duration::from_millis(100));
            Err((e.to_string(), consumer.context().last_error()))
        }
    })
}

/// A known cause of a connection failure (TLS and SASL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// SASL authentication refused (wrong user or password).
    Authentication,
    /// The broker does not offer the configured SASL mechanism.
    Mechanism,
    /// The broker's certificate did not verify.
    Certificate,
    /// The TLS handshake failed otherwise (often: not a TLS listener).
    TlsHandshake,
    /// The broker closed the connection at once (often: a plaintext client
    /// to a TLS or SASL listener).
    ExpectsTls,
}

impl Cause {
    /// Metric label (`kmirror_cluster_errors_total{cause}`).
    pub fn label(self) -> &'static str {
        match self {
            Cause::Authentication => "authentication",
            Cause::Mechanism => "sasl_mechanism",
            Cause::Certificate => "tls_certificate",
            Cause::TlsHandshake => "tls_handshake",
            Cause::ExpectsTls => "closed_at_once",
        }
    }

    /// The cause in words.
    pub fn words(self) -> &'static str {
        match self {
            Cause::Authentication => "authentication failed: wrong user name or password, or the user does not exist for this SASL mechanism",
            Cause::Mechanism => "the broker does not offer this SASL mechanism (sasl.mechanism)",
            Cause::Certificate => "the broker's certificate is not signed by a CA in ssl.ca.location (unknown CA), or it expired, or it is for another host name (`kmirror validate --connect` tells which)",
            Cause::TlsHandshake => "the TLS handshake failed: does this listener speak TLS (security.protocol = ssl or sasl_ssl only for a TLS listener)?",
            Cause::ExpectsTls => "the broker closed the connection at once: it may expect TLS (set security.protocol = ssl or sasl_ssl) or SASL",
        }
    }
}

/// The cause of a connection failure, from librdkafka's text of it, when
/// it is a known one.
pub fn cause_of(text: &str) -> Option<Cause> {
    let t = text.to_ascii_lowercase();
    let has = |s: &str| t.contains(s);
    if has("sasl authentication error")
        || has("authentication failed")
        || has("invalid credentials")
    {
        return Some(Cause::Authentication);
    }
    if has("unsupported sasl mechanism") || has("sasl mechanism") && has("not supported") {
        return Some(Cause::Mechanism);
    }
    if has("certificate verify failed")
        || has("unable to get local issuer")
        || has("self-signed certificate")
        || has("self signed certificate")
    {
        return Some(Cause::Certificate);
    }
    if has("ssl handshake failed") || has("wrong version number") || has("packet length too long") {
        return Some(Cause::TlsHandshake);
    }
    if has("connecting to a ssl listener")
        || has("disconnected while requesting apiversion")
        || has("disconnected") && has("in state apiversion_query")
    {
        return Some(Cause::ExpectsTls);
    }
    None
}

/// The cause of a connection failure in words, when it is a known one.
pub fn explain(text: &str) -> Option<&'static str> {
    cause_of(text).map(Cause::words)
}

/// A failed request of `consumer`'s, in words: serves the log and error
/// events queued meanwhile (they often say why, e.g. a TLS or SASL
/// refusal) and puts the cause first when it is known ([`failure_text`]).
pub fn failure_of(consumer: &BaseConsumer<KContext>, err: &str) -> String {
    let _ = consumer.poll(Duration::from_millis(100));
    failure_text(err, consumer.context().last_error().as_deref()).0
}

/// A failed request's error (`err`) with the client's last error: the
/// cause in words first when it is known.
pub fn failure_text(err: &str, last: Option<&str>) -> (String, Option<Cause>) {
    match last {
        Some(w) => match cause_of(w) {
            Some(c) => (format!("{} ({w})", c.words()), Some(c)),
            None => (format!("{err}: {w}"), None),
        },
        None => (err.to_string(), None),
    }
}

/// Reads records `[from, to)` of one partition with a group-less
/// consumer (offsets may have gaps: compaction, transaction markers).
pub fn read_range(
    c: &BaseConsumer<KContext>,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<Vec<OwnedMessage>, String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| e.to_string())?;
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut failing: Option<Instant> = None;
    while out.last().map_or(from, |m: &OwnedMessage| m.offset() + 1) < to {
        if Instant::now() > deadline {
            let _ = c.unassign();
            return Err(format!(
                "timed out reading {topic}/{partition} [{from}, {to})"
            ));
        }
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                failing = None;
                if m.topic() == topic && m.partition() == partition && m.offset() < to {
                    out.push(m.detach());
                }
            }
            Some(Err(e)) => {
                // Error events can be stale (AllBrokersDown queued during an
                // outage that has ended): keep reading, and give up only
                // when errors go on for 10 s without a record.
                let first = *failing.get_or_insert_with(Instant::now);
                if first.elapsed() > Duration::from_secs(10) || !transient(&e) {
                    let _ = c.unassign();
                    return Err(format!("reading {topic}/{partition}: {e}"));
                }
            }
            None => {
                // No record within the timeout: the rest are offsets without
                // records (compaction, transaction markers) only if the
                // position moved past them.
                let pos = c.position().ok().and_then(|p| {
                    p.find_partition(topic, partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                });
                if pos.is_some_and(|p| p >= to) {
                    break;
                }
            }
        }
    }
    let _ = c.unassign();
    Ok(out)
}

/// Errors of a consumer that go away by themselves (connections).
fn transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
        )
    )
}

/// A group-less reader of one cluster: assigns partitions and polls, never
/// joins or commits (the group id is only a placeholder librdkafka wants).
pub fn reader(
    cluster: &ClusterConfig,
    client_id: &str,
) -> Result<BaseConsumer<KContext>, ClientError> {
    let mut cfg = client_config(cluster, Role::Consumer, client_id);
    cfg.set("group.id", format!("{client_id}-unused"));
    cfg.set("enable.auto.commit", "false");
    cfg.set("enable.partition.eof", "false");
    create(&cfg, KContext::default())
}

/// Follows partition 0 of a single-partition internal topic: each
/// [`Follower::poll`] returns the records written since the last one (all
/// of them the first time); a topic that does not exist yet reads as empty.
pub struct Follower {
    topic: String,
    pos: i64,
    /// The first poll reads at most this many records (the newest).
    window: i64,
}

impl Follower {
    /// Starts at the beginning of `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        Self::tail(topic, i64::MAX)
    }

    /// Starts `window` records before the end of `topic` (or at its
    /// beginning when it holds fewer): what a restart reads is bounded
    /// whatever the topic's age.
    pub fn tail(topic: impl Into<String>, window: i64) -> Self {
        Self {
            topic: topic.into(),
            pos: -1,
            window: window.max(1),
        }
    }

    /// New records since the last call.
    pub fn poll(&mut self, c: &BaseConsumer<KContext>) -> Result<Vec<OwnedMessage>, String> {
        let mut all = Vec::new();
        self.poll_chunks(c, i64::MAX, |recs| all.extend(recs))?;
        Ok(all)
    }

    /// Like [`Follower::poll`], handing the new records to `f` in chunks
    /// of at most `chunk` (memory stays bounded by the chunk); returns how
    /// many were read. A failed chunk keeps the position after the last
    /// chunk handed over.
    pub fn poll_chunks(
        &mut self,
        c: &BaseConsumer<KContext>,
        chunk: i64,
        mut f: impl FnMut(Vec<OwnedMessage>),
    ) -> Result<usize, String> {
        let timeout = Duration::from_secs(10);
        let md = c
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| e.to_string())?;
        if !md
            .topics()
            .iter()
            .any(|t| t.name() == self.topic && !t.partitions().is_empty())
        {
            return Ok(0);
        }
        let (lo, hi) = c
            .fetch_watermarks(&self.topic, 0, timeout)
            .map_err(|e| e.to_string())?;
        let start = if self.pos < 0 {
            hi.saturating_sub(self.window)
        } else {
            self.pos
        };
        let mut from = start.max(lo);
        let mut n = 0;
        while from < hi {
            let to = hi.min(from.saturating_add(chunk.max(1)));
            let recs = read_range(c, &self.topic, 0, from, to)?;
            n += recs.len();
            f(recs);
            from = to;
            self.pos = to;
        }
        self.pos = self.pos.max(from);
        Ok(n)
    }
}

/// A producer with its own polling thread (delivery callbacks run there),
/// like rdkafka's `ThreadedProducer` but polling with a 1 s timeout.
///
/// rdkafka's poll loop truncates the remaining wait to whole milliseconds
/// and then spins through the last one; with `ThreadedProducer`'s 100 ms
/// polls that is about 1% of a core per idle producer (measured: four
/// idle producers took 0.25 CPU-s in 8 s). With 1 s polls it is ten times
/// less; delivery callbacks still run as soon as reports arrive. Dropping
/// the last clone stops and joins the thread (within a second).
pub struct Polled<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    _poller: Arc<Poller>,
}

impl<C: ProducerContext + 'static> Clone for Polled<C> {
    fn clone(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            _poller: self._poller.clone(),
        }
    }
}

struct Poller {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl<C: ProducerContext + 'static> Polled<C> {
    /// Creates the producer (through [`create`]) and its polling thread.
    pub fn create(cfg: &ClientConfig, ctx: C) -> Result<Self, ClientError> {
        Self::create_with_purge(cfg, ctx, Arc::new(AtomicBool::new(false)))
    }

    /// Like [`Polled::create`]; when a delivery callback sets `purge`, the
    /// polling thread purges the producer's queue as soon as the callback
    /// returns (before librdkafka sends what is queued behind a record that
    /// was not written), and clears it.
    pub fn create_with_purge(
        cfg: &ClientConfig,
        ctx: C,
        purge: Arc<AtomicBool>,
    ) -> Result<Self, ClientError> {
        let producer: Arc<BaseProducer<C>> = Arc::new(create(cfg, ctx)?);
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (producer, stop, purge) = (producer.clone(), stop.clone(), purge.clone());
            std::thread::Builder::new()
                .name("kmirror-producer-poll".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        producer.poll(Duration::from_secs(1));
                        if purge.swap(false, Ordering::AcqRel) {
                            producer.purge(rdkafka::producer::PurgeConfig::default().queue());
                        }
                    }
                })
                .map_err(|e| ClientError(format!("cannot start a producer thread: {e}")))?
        };
        Ok(Self {
            producer,
            _poller: Arc::new(Poller {
                stop,
                handle: Some(handle),
            }),
        })
    }
}

impl<C: ProducerContext + 'static> std::ops::Deref for Polled<C> {
    type Target = BaseProducer<C>;
    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

/// A client that could not be created; the message never holds a secret.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

/// Creates a client. Use this instead of `create_with_context`: when
/// librdkafka rejects a property, rdkafka's error text holds the value,
/// which is masked here for secret properties (`config::is_secret_key`).
pub fn create<C, T>(cfg: &ClientConfig, ctx: C) -> Result<T, ClientError>
where
    C: ClientContext,
    T: rdkafka::config::FromClientConfigAndContext<C>,
{
    cfg.create_with_context(ctx)
        .map_err(|e| ClientError(redact(&e)))
}

/// The text of a Kafka error with secret property values masked.
pub fn redact(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, key, value) => {
            let (desc, value) = if crate::config::is_secret_key(key) && !value.is_empty() {
                (
                    desc.replace(value.as_str(), crate::config::MASK),
                    crate::config::MASK.to_string(),
                )
            } else {
                (desc.clone(), value.clone())
            };
            format!("invalid client property `{key}` = {value:?}: {desc}")
        }
        other => other.to_string(),
    }
}

/// ListOffsets by time: per partition of `query` (offsets holding
/// timestamps in ms), the first offset whose record is at or after the
/// time, or `None` when there is none (the end).
pub fn offsets_by_time<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    query: rdkafka::TopicPartitionList,
    timeout: Duration,
) -> Result<std::collections::BTreeMap<(String, i32), Option<i64>>, String> {
    use rdkafka::consumer::Consumer;
    let got = consumer
        .offsets_for_times(query, timeout)
        .map_err(|e| format!("offsets by time: {e}"))?;
    got.elements()
        .iter()
        .map(|e| {
            e.error().map_err(|err| {
                format!("offsets by time of {}/{}: {err}", e.topic(), e.partition())
            })?;
            let o = match e.offset() {
                rdkafka::Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            };
            Ok(((e.topic().to_string(), e.partition()), o))
        })
        .collect()
}

/// `a, b, c and N more`: a short list for one log line about many items.
pub fn summary(items: &[String], shown: usize) -> String {
    let head: Vec<&str> = items.iter().take(shown).map(String::as_str).collect();
    match items.len().saturating_sub(shown) {
        0 => head.join(", "),
        more => format!("{} and {more} more", head.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_secret_properties_are_masked() {
        let mut cfg = ClientConfig::new();
        cfg.set("sasl.jaas.config", "org.X required password=\"p4ss\";");
        cfg.set("bootstrap.servers", "127.0.0.1:1");
        let err = create::<_, BaseConsumer<KContext>>(&cfg, KContext::default())
            .err()
            .expect("librdkafka has no sasl.jaas.config property");
        assert!(!err.to_string().contains("p4ss"), "{err}");
        assert!(err.to_string().contains("sasl.jaas.config"), "{err}");
    }
}
