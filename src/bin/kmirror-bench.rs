//! Benchmark: kmirror against a raw consume→produce pipe, side by side in
//! one run, on two local nisshi brokers.
//!
//! ```text
//! cargo run --release --bin kmirror-bench -- [--records N] [--size BYTES] [--partitions P] [--rss-partitions P2] [--rss-records N2] [--rounds R]
//! cargo run --release --bin kmirror-bench -- scale [--topics 5000] [--partitions 2] [--groups 200]
//! cargo run --release --bin kmirror-bench -- throttle [--rates 10,50] [--seconds 10] [--size 1024] [--partitions 8]
//! ```
//!
//! Both contenders run as child processes, so that their CPU time
//! (utime + stime from /proc) and peak RSS (VmHWM) are their own:
//! (a) the raw pipe: one group-less librdkafka consumer reading every
//!     source partition and one producer writing the same partition of the
//!     target, nothing else (`kmirror-bench pipe ...`, tuned like kmirror:
//!     `fetch.queue.backoff.ms=1`, idempotent, acks=all, linger 5 ms);
//! (b) `kmirror run` with a one-flow config.
//! `--rounds R` (default 3) runs (a) then (b) R times, each into a fresh
//! target broker of its own, and reports the median ratios: on a shared
//! 2-core machine single runs vary by ±20%.
//! Then a latency phase (records produced at a steady rate while kmirror
//! runs; p50/p99 from `kmirror_replication_latency_seconds`) and an RSS
//! phase with many partitions (`--rss-records` records of each, a backlog
//! that fills kmirror's queues).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kmirror::devcluster::{free_port, records_in, Nisshi, Storage};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

struct Args {
    records: usize,
    size: usize,
    partitions: i32,
    rss_partitions: i32,
    rounds: usize,
    rss_records: usize,
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}")))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("pipe") {
        // Child mode: the raw pipe.
        let n = raw_pipe(
            &args[2],
            &args[3],
            &args[4],
            args[5].parse().unwrap(),
            args[6].parse().unwrap(),
        );
        println!("{n}");
        return;
    }
    if args.get(1).map(String::as_str) == Some("points") {
        // Offset-sync points written per partition, under load and idle.
        let secs: u64 = arg(&args, "--seconds", 60);
        let rate: u64 = arg(&args, "--rate", 2000);
        if let Err(e) = points_bench(secs, rate) {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("throttle") {
        // Bandwidth limits: the achieved rate against max_bytes_per_second.
        let rates: String = arg(&args, "--rates", "10,50".to_string());
        let rates: Vec<f64> = rates
            .split(',')
            .map(|r| r.trim().parse().expect("--rates: MB/s, comma-separated"))
            .collect();
        let secs: u64 = arg(&args, "--seconds", 10);
        let size: usize = arg(&args, "--size", 1024);
        let partitions: i32 = arg(&args, "--partitions", 8);
        if let Err(e) = throttle_bench(&rates, secs, size, partitions) {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("scale") {
        // Many topics: time to create, mirror and checkpoint; RSS; /metrics.
        let topics: usize = arg(&args, "--topics", 5000);
        let partitions: i32 = arg(&args, "--partitions", 2);
        let groups: usize = arg(&args, "--groups", 200);
        if let Err(e) = scale_bench(topics, partitions, groups) {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("restart") {
        // Restart time with a long offset-sync history.
        let points: usize = arg(&args, "--points", 2_000_000);
        let history_partitions: usize = arg(&args, "--history-partitions", 1000);
        if let Err(e) = restart_bench(points, history_partitions) {
            eprintln!("bench failed: {e}");
            std::process::exit(1);
        }
        return;
    }
    let a = Args {
        records: arg(&args, "--records", 500_000),
        size: arg(&args, "--size", 1024),
        partitions: arg(&args, "--partitions", 8),
        rss_partitions: arg(&args, "--rss-partitions", 1000),
        rounds: arg(&args, "--rounds", 3),
        rss_records: arg(&args, "--rss-records", 200),
    };
    if let Err(e) = run(&a) {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

/// /proc figures of a child: (cpu seconds, peak RSS bytes).
fn proc_stats(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let cpu = stat_cpu(&stat).map_or(0.0, |(_, cpu)| cpu);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (cpu, hwm)
}

/// The command name and CPU seconds (utime + stime) of a /proc `stat` line.
fn stat_cpu(stat: &str) -> Option<(&str, f64)> {
    // The name is in parentheses; the numbered fields follow it.
    let (head, rest) = stat.rsplit_once(") ")?;
    let name = head.split_once(" (").map_or("", |(_, n)| n);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // sysconf(_SC_CLK_TCK) is 100 on Linux
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((name, (t(11)? + t(12)?) / ticks))
}

/// CPU seconds per thread of a process: (thread id, name, seconds).
fn thread_stats(pid: u32) -> Vec<(u32, String, f64)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if let Some((name, cpu)) = stat_cpu(&stat) {
            out.push((tid, name.to_string(), cpu));
        }
    }
    out.sort_by_key(|t| t.0);
    out
}

/// Prints the threads that used at least 0.05 CPU-seconds, and the sum of
/// the others
/// (`KMIRROR_BENCH_THREADS=1`).
fn print_threads(name: &str, threads: &[(u32, String, f64)]) {
    if std::env::var_os("KMIRROR_BENCH_THREADS").is_none() {
        return;
    }
    println!("{name}: CPU-seconds per thread (thread id order)");
    for (tid, n, cpu) in threads.iter().filter(|t| t.2 >= 0.05) {
        println!("  {tid:>8} {n:<16} {cpu:>6.2}");
    }
    let rest: Vec<_> = threads.iter().filter(|t| t.2 < 0.05).collect();
    println!(
        "  {} other threads  {:>6.2}",
        rest.len(),
        rest.iter().map(|t| t.2).sum::<f64>()
    );
}

fn preload(bootstrap: &str, topic: &str, partitions: i32, n: usize, size: usize) {
    let p = bulk_producer(bootstrap);
    let payload = vec![b'x'; size];
    for i in 0..n {
        let key = format!("k{i}");
        let rec: BaseRecord<'_, String, [u8]> = BaseRecord::to(topic)
            .partition((i % partitions as usize) as i32)
            .key(&key)
            .payload(&payload[..]);
        send_retrying(&p, rec);
    }
    p.flush(Duration::from_secs(300)).expect("preload flush");
}

/// A producer for loading data fast (linger 20 ms, 1 MB batches).
fn bulk_producer(bootstrap: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .expect("bulk producer")
}

/// Sends `rec`, waiting while the producer queue is full.
fn send_retrying<K, P>(p: &ThreadedProducer<DefaultProducerContext>, mut rec: BaseRecord<'_, K, P>)
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, back)) => {
                rec = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The raw pipe (child mode): reads `n` records, writes them, exits after
/// the last acknowledgement. Returns the number written.
fn raw_pipe(source: &str, target: &str, topic: &str, partitions: i32, n: i64) -> i64 {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", source)
        .set("group.id", "raw-pipe")
        .set("enable.auto.commit", "false")
        .set("fetch.queue.backoff.ms", "1")
        .set("log_level", "3");
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", target)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("log_level", "3");
    // KMIRROR_BENCH_RAW=c:k=v,p:k=v sets extra consumer (c:) and producer
    // (p:) properties of the raw pipe, to tune it.
    for kv in std::env::var("KMIRROR_BENCH_RAW")
        .unwrap_or_default()
        .split(',')
    {
        if let Some((k, v)) = kv.split_once('=') {
            match k.split_once(':') {
                Some(("c", k)) => cc.set(k, v),
                Some(("p", k)) => pc.set(k, v),
                _ => panic!("KMIRROR_BENCH_RAW: {kv}: want c:key=value or p:key=value"),
            };
        }
    }
    let c: BaseConsumer = cc.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let p: ThreadedProducer<DefaultProducerContext> = pc.create().unwrap();
    let out = format!("raw.{topic}");
    let mut sent = 0i64;
    while sent < n {
        let Some(Ok(m)) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&out).partition(m.partition());
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(v) = m.payload() {
            rec = rec.payload(v);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        sent += 1;
    }
    p.flush(Duration::from_secs(300)).unwrap();
    sent
}

struct Figures {
    /// Wall seconds from process start to the last record.
    secs: f64,
    /// Seconds from the first record in the target to the last.
    steady: f64,
    cpu: f64,
    /// CPU seconds until the first record was in the target.
    startup_cpu: f64,
    rss: u64,
}

/// Follows a contender started at `start` until `progress` reaches `n`
/// records (`perf` attached as `perf_name` when asked, stopped also on
/// failure), then prints its CPU per thread under `label`.
fn measure(
    child: &mut Child,
    label: &str,
    perf_name: &str,
    start: Instant,
    n: i64,
    progress: impl FnMut() -> i64,
) -> Result<Figures, String> {
    let mut threads = Vec::new();
    let perf = perf_attach(child, perf_name);
    let waited = wait_child_until(child, progress, n, Duration::from_secs(600), &mut threads);
    perf_stop(perf);
    let (cpu, rss, steady, startup_cpu) = waited?;
    print_threads(label, &threads);
    Ok(Figures {
        secs: start.elapsed().as_secs_f64(),
        steady,
        cpu,
        startup_cpu,
        rss,
    })
}

fn wait_child_until(
    child: &mut Child,
    mut progress: impl FnMut() -> i64,
    n: i64,
    timeout: Duration,
    threads: &mut Vec<(u32, String, f64)>,
) -> Result<(f64, u64, f64, f64), String> {
    let deadline = Instant::now() + timeout;
    let mut last = (0.0, 0);
    let mut first: Option<Instant> = None;
    let mut startup_cpu = 0.0;
    loop {
        let s = proc_stats(child.id());
        if s.0 > 0.0 || s.1 > 0 {
            last = s;
            let t = thread_stats(child.id());
            if !t.is_empty() {
                *threads = t;
            }
        }
        let have = progress();
        if have > 0 && first.is_none() {
            first = Some(Instant::now());
            // CPU until the first record is in the target (start-up).
            startup_cpu = last.0;
            if std::env::var_os("KMIRROR_BENCH_THREADS").is_some() {
                let busy: Vec<String> = thread_stats(child.id())
                    .into_iter()
                    .filter(|t| t.2 >= 0.01)
                    .map(|t| format!("{} {:.2}", t.1, t.2))
                    .collect();
                println!(
                    "  CPU-seconds per thread at the first record: {}",
                    busy.join(", ")
                );
            }
        }
        if have >= n {
            // Seconds from the first record seen in the target to the last.
            let steady = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
            return Ok((last.0, last.1, steady, startup_cpu));
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("process exited early: {st}"));
        }
        if Instant::now() > deadline {
            return Err("timed out".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `KMIRROR_BENCH_PERF=PREFIX` attaches `perf record` to each contender
/// for its throughput phase, writing `PREFIX.raw` and `PREFIX.kmirror-<flow>`
/// (perf's own CPU is not counted in the contender's), sampling at
/// `KMIRROR_BENCH_PERF_FREQ` Hz (default 999; 9999 resolves per-record
/// costs of a few tens of nanoseconds).
fn perf_attach(child: &Child, name: &str) -> Option<Child> {
    let prefix = std::env::var("KMIRROR_BENCH_PERF").ok()?;
    let freq = std::env::var("KMIRROR_BENCH_PERF_FREQ").unwrap_or_else(|_| "999".into());
    Command::new("perf")
        .args([
            "record",
            "-F",
            &freq,
            "-g",
            "-o",
            &format!("{prefix}.{name}"),
            "-p",
        ])
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn perf_stop(perf: Option<Child>) {
    if let Some(mut perf) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &perf.id().to_string()])
            .status();
        let _ = perf.wait();
    }
}

/// One raw-pipe run into a fresh target broker.
fn raw_round(
    me: &Path,
    dir: &Path,
    src: &Nisshi,
    topic: &str,
    partitions: i32,
    n: i64,
) -> Result<Figures, String> {
    let dst = Nisshi::start(
        "bench-raw-dst",
        0,
        Storage::Memory,
        &dir.join("raw-dst.log"),
    )?;
    dst.create_topic(&format!("raw.{topic}"), partitions, &[])?;
    let start = Instant::now();
    let mut pipe = Command::new(me)
        .args([
            "pipe",
            &src.bootstrap(),
            &dst.bootstrap(),
            topic,
            &partitions.to_string(),
            &n.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let fig = measure(&mut pipe, "raw pipe", "raw", start, n, || {
        records_in(&dst.bootstrap(), &format!("raw.{topic}"))
    })?;
    let _ = pipe.wait();
    Ok(fig)
}

/// One `kmirror run` into a fresh target broker (a flow name of its own,
/// so a fresh consumer group); kmirror is left running.
fn kmirror_round(
    kmirror: &Path,
    dir: &Path,
    src: &Nisshi,
    topic: &str,
    partitions: i32,
    n: i64,
    flow: &str,
) -> Result<(Figures, Child, Nisshi, String), String> {
    let dst = Nisshi::start("bench-dst", 0, Storage::Memory, &dir.join("dst.log"))?;
    dst.create_topic(&format!("src.{topic}"), partitions, &[])?;
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = kmirror_config(
        dir,
        &src.bootstrap(),
        &dst.bootstrap(),
        topic,
        &listen,
        flow,
    );
    let start = Instant::now();
    let mut km = Command::new(kmirror)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.join(format!("kmirror-{flow}.log")))
                .map_err(|e| e.to_string())?,
        )
        .spawn()
        .map_err(|e| e.to_string())?;
    let fig = measure(
        &mut km,
        "kmirror",
        &format!("kmirror-{flow}"),
        start,
        n,
        || records_in(&dst.bootstrap(), &format!("src.{topic}")),
    )?;
    Ok((fig, km, dst, listen))
}

fn kmirror_config(
    dir: &Path,
    source: &str,
    target: &str,
    topic: &str,
    listen: &str,
    flow: &str,
) -> PathBuf {
    let p = dir.join(format!("bench-{topic}-{flow}.toml"));
    std::fs::write(
        &p,
        format!(
            "[source]\nalias = \"src\"\nbootstrap_servers = \"{source}\"\n[target]\nalias = \"dst\"\nbootstrap_servers = \"{target}\"\n[http]\nlisten = \"{listen}\"\n{}\n[[flow]]\nname = \"{flow}\"\ntopics = [\"{topic}\"]\nrefresh_topics_interval = \"1s\"\n",
            // KMIRROR_BENCH_EXTRA: extra TOML tables, e.g. "[runtime]\nproducer_queue_kbytes = 65536",
            // to compare settings.
            std::env::var("KMIRROR_BENCH_EXTRA").unwrap_or_default().replace("\\n", "\n")
        ),
    )
    .unwrap();
    p
}

fn metrics_text(listen: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(listen) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut b = String::new();
    let _ = s.read_to_string(&mut b);
    b
}

/// Cumulative bucket counts of the replication latency histogram.
fn latency_buckets(text: &str) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = Vec::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("kmirror_replication_latency_seconds_bucket{"))
    {
        let le = l
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(0.0)
        };
        let c: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0);
        match v.iter_mut().find(|(b, _)| *b == le) {
            Some(e) => e.1 += c,
            None => v.push((le, c)),
        }
    }
    v.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    v
}

fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let d: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            (
                *le,
                c - before.iter().find(|(b, _)| b == le).map_or(0.0, |x| x.1),
            )
        })
        .collect();
    let n = d.last().map_or(0.0, |x| x.1);
    if n <= 0.0 {
        return f64::NAN;
    }
    d.iter()
        .find(|(_, c)| *c >= q * n)
        .map_or(f64::INFINITY, |x| x.0)
}

fn run(a: &Args) -> Result<(), String> {
    let dir = tempfile_dir()?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let kmirror = me.with_file_name("kmirror");
    if !kmirror.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release --bins`",
            kmirror.display()
        ));
    }
    println!(
        "kmirror bench: {} records x {} bytes, {} partitions (two local nisshi brokers, 2 cores shared)",
        a.records, a.size, a.partitions
    );
    let src = Nisshi::start("bench-src", 0, Storage::Memory, &dir.join("src.log"))?;
    let topic = "bench";
    src.create_topic(topic, a.partitions, &[])?;
    let t = Instant::now();
    preload(&src.bootstrap(), topic, a.partitions, a.records, a.size);
    println!("preloaded in {:.1}s", t.elapsed().as_secs_f64());
    let n = a.records as i64;
    let gb = (a.records * a.size) as f64 / 1e9;

    let row = |name: &str, f: &Figures| {
        println!(
            "{name:<14} {:>9.0} rec/s {:>8.1} MB/s {:>7.2} CPU-s ({:.2} to the first record) {:>7.2} CPU-s/GB {:>8.1} MiB peak RSS {:>6.2}s wall incl. start-up",
            n as f64 / f.steady,
            gb * 1000.0 / f.steady,
            f.cpu,
            f.startup_cpu,
            f.cpu / gb,
            f.rss as f64 / 1048576.0,
            f.secs
        )
    };
    println!("rec/s, MB/s: first record in the target to the last; CPU, RSS: the whole process");
    // Rounds of (a) the raw pipe then (b) kmirror, each writing into a
    // fresh target broker of its own (same conditions for both; a broker
    // already holding the other's gigabyte is markedly slower). The last
    // kmirror keeps running for the latency phase.
    let mut pairs: Vec<(Figures, Figures)> = Vec::new();
    let run_kmirror = |round: usize| -> Result<Figures, String> {
        let (fig, mut km, dst, _) = kmirror_round(
            &kmirror,
            &dir,
            &src,
            topic,
            a.partitions,
            n,
            &format!("bench{round}"),
        )?;
        let _ = km.kill();
        let _ = km.wait();
        drop(dst);
        row(&format!("kmirror #{round}"), &fig);
        Ok(fig)
    };
    for round in 1..=a.rounds {
        // Odd rounds run the raw pipe first, even rounds kmirror first.
        let (raw, kfig) = if round % 2 == 1 {
            let raw = raw_round(&me, &dir, &src, topic, a.partitions, n)?;
            row(&format!("raw pipe #{round}"), &raw);
            (raw, run_kmirror(round)?)
        } else {
            let kfig = run_kmirror(round)?;
            let raw = raw_round(&me, &dir, &src, topic, a.partitions, n)?;
            row(&format!("raw pipe #{round}"), &raw);
            (raw, kfig)
        };
        println!(
            "{:<14} throughput {:.2}, CPU-s/GB {:.2}",
            format!("ratio #{round}"),
            raw.steady / kfig.steady,
            kfig.cpu / raw.cpu
        );
        pairs.push((raw, kfig));
    }
    if pairs.is_empty() {
        return Err("--rounds must be at least 1".into());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let throughput = median(pairs.iter().map(|(r, k)| r.steady / k.steady).collect());
    let cpu = median(pairs.iter().map(|(r, k)| k.cpu / r.cpu).collect());
    println!(
        "ratio kmirror/raw, median of {} rounds: throughput {throughput:.2} (target >= 0.90), CPU-s/GB {cpu:.2} (target <= 1.10)",
        pairs.len()
    );

    // Latency: steady 2,000 records/s for 5 s into a topic of its own,
    // mirrored by a kmirror that has nothing else to do.
    let lat_topic = "bench-latency";
    src.create_topic(lat_topic, a.partitions, &[])?;
    let (_, mut km, dst, listen) =
        kmirror_round(&kmirror, &dir, &src, lat_topic, a.partitions, 0, "latency")?;
    std::thread::sleep(Duration::from_secs(3));
    let before = latency_buckets(&metrics_text(&listen));
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", src.bootstrap())
        .set("log_level", "3")
        .set("linger.ms", "0")
        .create()
        .map_err(|e| e.to_string())?;
    let payload = vec![b'y'; a.size];
    for i in 0..10_000 {
        let key = format!("lat{i}");
        let rec: BaseRecord<'_, String, [u8]> =
            BaseRecord::to(lat_topic).key(&key).payload(&payload[..]);
        let _ = p.send(rec);
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = p.flush(Duration::from_secs(30));
    let want = 10_000;
    let deadline = Instant::now() + Duration::from_secs(60);
    while records_in(&dst.bootstrap(), &format!("src.{lat_topic}")) < want
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = latency_buckets(&metrics_text(&listen));
    let (p50, p99) = (
        quantile(&before, &after, 0.5),
        quantile(&before, &after, 0.99),
    );
    let _ = km.kill();
    let _ = km.wait();
    drop(dst);
    println!("kmirror replication latency at 2,000 records/s: p50 <= {p50}s, p99 <= {p99}s (histogram bucket bounds)");

    // RSS with many partitions.
    if a.rss_partitions > 0 {
        let many = "bench-many";
        src.create_topic(many, a.rss_partitions, &[])?;
        let per = a.rss_records;
        preload(
            &src.bootstrap(),
            many,
            a.rss_partitions,
            per * a.rss_partitions as usize,
            a.size,
        );
        let want = (per * a.rss_partitions as usize) as i64;
        let (fig, mut km, _dst, _) =
            kmirror_round(&kmirror, &dir, &src, many, a.rss_partitions, want, "many")?;
        let rss = fig.rss;
        std::thread::sleep(Duration::from_secs(3));
        let (_, rss2) = proc_stats(km.id());
        let _ = km.kill();
        let _ = km.wait();
        println!(
            "kmirror peak RSS with {} partitions and a backlog of {} records of each: {:.1} MiB (target <= 100 MiB)",
            a.rss_partitions,
            per,
            rss.max(rss2) as f64 / 1048576.0
        );
    }
    Ok(())
}

/// `kmirror-bench restart --points N --history-partitions P`: the target's
/// offset-sync topic holds N points of P partitions (the history of a long
/// run: 30 days at P partitions is far more than N, and what a restart
/// reads is bounded by `SYNC_READ_WINDOW` anyway), then kmirror starts on a
/// fresh source topic and a committed group: prints the time from the
/// start to the first checkpoint of that group, and kmirror's peak RSS.
fn restart_bench(points: usize, history_partitions: usize) -> Result<(), String> {
    use kmirror::offsets::codec::OffsetSync;
    use rdkafka::consumer::CommitMode;
    let dir = tempfile_dir()?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let kmirror = me.with_file_name("kmirror");
    let src = Nisshi::start("restart-src", 0, Storage::Memory, &dir.join("src.log"))?;
    let dst = Nisshi::start("restart-dst", 0, Storage::Memory, &dir.join("dst.log"))?;
    let syncs = kmirror::offsets::offset_syncs_topic("src");
    dst.create_topic(&syncs, 1, &[("cleanup.policy", "delete")])?;
    let t = Instant::now();
    let p = bulk_producer(&dst.bootstrap());
    for i in 0..points {
        let part = (i % history_partitions) as i32;
        let up = (i / history_partitions) as i64 * 1000;
        let s = OffsetSync {
            topic: format!("history-{}", part % 50),
            partition: part,
            upstream_offset: up,
            downstream_offset: up,
        };
        let (k, v) = (s.key(), s.value());
        let rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&syncs)
            .partition(0)
            .key(&k[..])
            .payload(&v[..]);
        send_retrying(&p, rec);
    }
    p.flush(Duration::from_secs(600))
        .map_err(|e| e.to_string())?;
    println!(
        "restart bench: {points} offset-sync points of {history_partitions} partitions written in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let topic = "orders";
    src.create_topic(topic, 8, &[])?;
    preload(&src.bootstrap(), topic, 8, 8000, 100);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", src.bootstrap())
        .set("group.id", "app-restart")
        .set("log_level", "3")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for part in 0..8 {
        tpl.add_partition_offset(topic, part, Offset::Offset(500))
            .map_err(|e| e.to_string())?;
    }
    c.commit(&tpl, CommitMode::Sync)
        .map_err(|e| e.to_string())?;
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("restart.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\nalias = \"src\"\nbootstrap_servers = \"{}\"\n[target]\nalias = \"dst\"\nbootstrap_servers = \"{}\"\n[http]\nlisten = \"{listen}\"\n[[flow]]\nname = \"f\"\ntopics = [\"{topic}\"]\ngroups = [\"app-.*\"]\ncheckpoint_interval = \"1s\"\nrefresh_topics_interval = \"1s\"\n",
            src.bootstrap(),
            dst.bootstrap()
        ),
    )
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut km = Command::new(&kmirror)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("kmirror-restart.log")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = loop {
        let text = metrics_text(&listen);
        let done = text.lines().any(|l| {
            l.starts_with("kmirror_checkpoints_total{")
                && l.contains("app-restart")
                && !l.ends_with(" 0")
        });
        if done {
            break Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(600) {
            break Err("no checkpoint within 600 s".to_string());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, rss) = proc_stats(km.id());
    let _ = km.kill();
    let _ = km.wait();
    let took = result?;
    println!(
        "restart bench: first checkpoint {:.1}s after start with {points} points in the offset-sync topic (a restart reads at most the newest {}); kmirror peak RSS {:.1} MiB",
        took.as_secs_f64(),
        kmirror::offsets::SYNC_READ_WINDOW,
        rss as f64 / 1048576.0
    );
    Ok(())
}

/// `kmirror-bench points --seconds S --rate R`: kmirror mirrors a topic of
/// 8 partitions fed R records/s for S seconds, then idle for S seconds;
/// prints the offset-sync points written per partition per hour in each
/// phase.
fn points_bench(secs: u64, rate: u64) -> Result<(), String> {
    let dir = tempfile_dir()?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let kmirror = me.with_file_name("kmirror");
    let src = Nisshi::start("points-src", 0, Storage::Memory, &dir.join("src.log"))?;
    let dst = Nisshi::start("points-dst", 0, Storage::Memory, &dir.join("dst.log"))?;
    let topic = "steady";
    let parts = 8;
    src.create_topic(topic, parts, &[])?;
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = kmirror_config(
        &dir,
        &src.bootstrap(),
        &dst.bootstrap(),
        topic,
        &listen,
        "points",
    );
    let mut km = Command::new(&kmirror)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(5));
    let syncs = kmirror::offsets::offset_syncs_topic("src");
    let count = || records_in(&dst.bootstrap(), &syncs);
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", src.bootstrap())
        .set("log_level", "3")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| e.to_string())?;
    let before = count();
    let t = Instant::now();
    let mut sent = 0u64;
    while t.elapsed() < Duration::from_secs(secs) {
        let due = (t.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let key = format!("k{sent}");
            let rec: BaseRecord<'_, String, [u8]> = BaseRecord::to(topic)
                .partition((sent % parts as u64) as i32)
                .key(&key)
                .payload(&b"x"[..]);
            if p.send(rec).is_err() {
                break;
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = p.flush(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let loaded = count() - before;
    let idle_from = count();
    std::thread::sleep(Duration::from_secs(secs));
    let idle = count() - idle_from;
    let _ = km.kill();
    let _ = km.wait();
    let per_hour = |n: i64, s: u64| n as f64 / parts as f64 * 3600.0 / s as f64;
    println!(
        "points bench: {rate} records/s over {parts} partitions for {secs}s: {:.0} points per partition per hour; idle {secs}s: {:.0} per partition per hour ({loaded} and {idle} points)",
        per_hour(loaded, secs + 3),
        per_hour(idle, secs)
    );
    Ok(())
}

/// Per-partition values of a counter of one flow, keyed by partition.
fn per_partition(text: &str, name: &str, flow: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{flow=\"{flow}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let part = l.split("partition=\"").nth(1)?.split('"').next()?;
            let v = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((part.to_string(), v))
        })
        .collect()
}

fn flow_value(text: &str, name: &str, flow: &str) -> f64 {
    let prefix = format!("{name}{{flow=\"{flow}\"}}");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// For each rate (MB/s, 10^6 bytes): a backlog larger than the window,
/// kmirror with `max_bytes_per_second` on its flow, and the rate achieved
/// over `secs` seconds after a 3 s warm-up (from `kmirror_bytes_total`,
/// which counts the same bytes as the limit), with each partition's share.
fn throttle_bench(rates: &[f64], secs: u64, size: usize, partitions: i32) -> Result<(), String> {
    let dir = tempfile_dir()?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let kmirror = me.with_file_name("kmirror");
    let src = Nisshi::start("throttle-src", 0, Storage::Memory, &dir.join("src.log"))?;
    let mut rows = Vec::new();
    for (i, rate) in rates.iter().enumerate() {
        let topic = format!("throttle-{i}");
        src.create_topic(&topic, partitions, &[])?;
        let record = size + 8;
        let bytes = rate * 1e6 * (secs as f64 + 6.0) * 1.3;
        let n = (bytes / record as f64) as usize;
        let t = Instant::now();
        preload(&src.bootstrap(), &topic, partitions, n, size);
        eprintln!(
            "throttle bench: {n} records of {size} B preloaded in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        let dst = Nisshi::start(
            &format!("throttle-dst-{i}"),
            0,
            Storage::Memory,
            &dir.join(format!("dst-{i}.log")),
        )?;
        let listen = format!("127.0.0.1:{}", free_port());
        let limit = (rate * 1e6) as u64;
        let cfg = dir.join(format!("throttle-{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[source]\nalias = \"src\"\nbootstrap_servers = \"{}\"\n[target]\nalias = \"dst\"\nbootstrap_servers = \"{}\"\n[http]\nlisten = \"{listen}\"\nmetrics_level = \"partition\"\n{}\n\n[[flow]]\nname = \"t\"\ntopics = [\"{topic}\"]\nmax_bytes_per_second = {limit}\n",
                src.bootstrap(),
                dst.bootstrap(),
                std::env::var("KMIRROR_BENCH_EXTRA").unwrap_or_default().replace("\\n", "\n")
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut km = Command::new(&kmirror)
            .args(["run", "--config"])
            .arg(&cfg)
            .env(
                "RUST_LOG",
                std::env::var("KMIRROR_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(match std::env::var("KMIRROR_BENCH_LOG") {
                Ok(path) => std::fs::File::create(path)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .map_err(|e| e.to_string())?;
        let bytes_of = |text: &str| -> f64 {
            per_partition(text, "kmirror_bytes_total", "t")
                .iter()
                .map(|(_, v)| v)
                .sum()
        };
        let started = Instant::now();
        while bytes_of(&metrics_text(&listen)) <= 0.0 {
            if started.elapsed() > Duration::from_secs(60) {
                let _ = km.kill();
                return Err("kmirror mirrored nothing within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(3));
        let m0 = metrics_text(&listen);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let m1 = metrics_text(&listen);
        let dt = t0.elapsed().as_secs_f64();
        let _ = km.kill();
        let _ = km.wait();
        let achieved = (bytes_of(&m1) - bytes_of(&m0)) / dt / 1e6;
        let before: std::collections::HashMap<String, f64> =
            per_partition(&m0, "kmirror_bytes_total", "t")
                .into_iter()
                .collect();
        let shares: Vec<f64> = per_partition(&m1, "kmirror_bytes_total", "t")
            .into_iter()
            .map(|(p, v)| v - before.get(&p).copied().unwrap_or(0.0))
            .collect();
        if std::env::var_os("KMIRROR_BENCH_SHARES").is_some() {
            eprintln!("throttle bench: bytes per partition in the window: {shares:?}");
        }
        let mean = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
        let (lo, hi) = shares.iter().fold((f64::MAX, 0.0f64), |(lo, hi), s| {
            (lo.min(s / mean), hi.max(s / mean))
        });
        let throttled = flow_value(&m1, "kmirror_throttled_seconds_total", "t")
            - flow_value(&m0, "kmirror_throttled_seconds_total", "t");
        let row = format!(
            "limit {rate:>6.1} MB/s: achieved {achieved:>6.2} MB/s ({:>5.1}% of the limit), {} partitions, share of the mean min {lo:.2} max {hi:.2}, throttled {throttled:.1} s of {dt:.1} s",
            achieved / rate * 100.0,
            shares.len()
        );
        println!("throttle bench: {row}");
        rows.push(row);
    }
    println!("\nthrottle bench ({size} B records, {partitions} partitions, {secs} s windows after a 3 s warm-up):");
    for r in rows {
        println!("  {r}");
    }
    Ok(())
}

/// `topics` source topics of `partitions` partitions, one record in each
/// partition, `groups` consumer groups each committed on one topic; then
/// kmirror with one flow over all of them. Measures the time until every
/// target topic exists, until every record is mirrored, until every group
/// has a checkpoint; kmirror's peak RSS; the size of `/metrics`.
fn scale_bench(topics: usize, partitions: i32, groups: usize) -> Result<(), String> {
    let dir = tempfile_dir()?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let kmirror = me.with_file_name("kmirror");
    let src = Nisshi::start("scale-src", 0, Storage::Memory, &dir.join("src.log"))?;
    let dst = Nisshi::start("scale-dst", 0, Storage::Memory, &dir.join("dst.log"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = (0..topics).map(|i| format!("scale-{i:05}")).collect();
    let t = Instant::now();
    scale_topics(&rt, &src, &names, partitions)?;
    let made = t.elapsed();
    scale_records(&src.bootstrap(), &names, partitions, false)?;
    // The floor: an idempotent producer (as kmirror's: acks=all) writing
    // one record to each partition of the same topics on a broker of its
    // own, stopped afterwards (its producer state would weigh on the
    // source broker's every request). The mirroring phase writes the same
    // batches to the target.
    let floor = {
        let fb = Nisshi::start("scale-floor", 0, Storage::Memory, &dir.join("floor.log"))?;
        scale_topics(&rt, &fb, &names, partitions)?;
        scale_records(&fb.bootstrap(), &names, partitions, true)?
    };
    eprintln!(
        "scale bench: topics made in {:.1}s; on a broker of its own, an idempotent producer wrote one record to each of the {} partitions in {:.1}s",
        made.as_secs_f64(),
        topics as i64 * partitions as i64,
        floor.as_secs_f64()
    );
    for g in 0..groups {
        let c: BaseConsumer = src
            .client_config()
            .set("group.id", format!("g-{g:04}"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&names[g % topics], 0, Offset::Offset(1))
            .map_err(|e| e.to_string())?;
        c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .map_err(|e| e.to_string())?;
    }
    eprintln!(
        "scale bench: {topics} topics x {partitions} partitions, one record each, {groups} groups, made in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let cfg = dir.join("scale.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\nalias = \"src\"\nbootstrap_servers = \"{}\"\n[target]\nalias = \"dst\"\nbootstrap_servers = \"{}\"\n[http]\nlisten = \"{listen}\"\n{}\n\n[[flow]]\nname = \"s\"\ntopics = [\"scale-.*\"]\ngroups = [\"g-.*\"]\nrefresh_topics_interval = \"5s\"\ncheckpoint_interval = \"5s\"\n",
            src.bootstrap(),
            dst.bootstrap(),
            std::env::var("KMIRROR_BENCH_EXTRA").unwrap_or_default().replace("\\n", "\n")
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("kmirror.log")).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut km = Command::new(&kmirror)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = km.id();
    let target_client: BaseConsumer = dst.client_config().create().map_err(|e| e.to_string())?;
    let want_records = (topics as i64) * partitions as i64;
    let (mut created_at, mut mirrored_at, mut checkpointed_at) = (None, None, None);
    let mut peak_metrics = 0usize;
    let mut series = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last_report = 0;
    while Instant::now() < deadline
        && (created_at.is_none() || mirrored_at.is_none() || checkpointed_at.is_none())
    {
        std::thread::sleep(Duration::from_millis(500));
        let elapsed = started.elapsed();
        if created_at.is_none() {
            if let Ok(md) = target_client.fetch_metadata(None, Duration::from_secs(10)) {
                let n = md
                    .topics()
                    .iter()
                    .filter(|t| {
                        t.name().starts_with("src.scale-")
                            && t.partitions().len() == partitions as usize
                    })
                    .count();
                if n == topics {
                    created_at = Some(elapsed);
                }
            }
        }
        let m = metrics_text(&listen);
        peak_metrics = peak_metrics.max(m.len());
        series = series.max(
            m.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .count(),
        );
        let sum: f64 = m
            .lines()
            .filter(|l| l.starts_with("kmirror_records_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let checkpointed = m
            .lines()
            .filter(|l| {
                l.starts_with("kmirror_checkpoints_total{flow=\"s\",group=\"g-")
                    && !l.ends_with(" 0")
            })
            .count();
        if elapsed.as_secs() / 10 != last_report {
            last_report = elapsed.as_secs() / 10;
            let (_, rss) = proc_stats(pid);
            eprintln!(
                "  {:>5.1} s: {} of {want_records} records mirrored, {checkpointed} of {groups} groups checkpointed, peak RSS {:.0} MiB",
                elapsed.as_secs_f64(),
                sum as i64,
                rss as f64 / 1048576.0
            );
        }
        if mirrored_at.is_none() && sum as i64 >= want_records {
            mirrored_at = Some(elapsed);
        }
        if checkpointed_at.is_none() && checkpointed >= groups {
            checkpointed_at = Some(elapsed);
        }
    }
    let (_, rss) = proc_stats(pid);
    let _ = km.kill();
    let _ = km.wait();
    let show = |d: Option<Duration>| {
        d.map_or("not within 600 s".to_string(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        })
    };
    println!("scale bench: {topics} topics x {partitions} partitions, {groups} groups");
    println!(
        "  floor (idempotent producer alone, one record per partition): {:.1} s",
        floor.as_secs_f64()
    );
    println!("  every target topic created:     {}", show(created_at));
    println!("  every record mirrored:          {}", show(mirrored_at));
    println!(
        "  every group checkpointed:       {}",
        show(checkpointed_at)
    );
    println!(
        "  kmirror peak RSS:               {:.1} MiB",
        rss as f64 / 1048576.0
    );
    println!(
        "  /metrics:                       {:.2} MB at most, {series} series",
        peak_metrics as f64 / 1e6
    );
    println!("  kmirror log: {}", dir.join("kmirror.log").display());
    Ok(())
}

/// Creates `names` with `partitions` each on `broker`, 500 per request.
fn scale_topics(
    rt: &tokio::runtime::Runtime,
    broker: &Nisshi,
    names: &[String],
    partitions: i32,
) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        broker.client_config().create().map_err(|e| e.to_string())?;
    for chunk in names.chunks(500) {
        let nts: Vec<NewTopic<'_>> = chunk
            .iter()
            .map(|n| {
                NewTopic::new(n, partitions, TopicReplication::Fixed(1))
                    .set("retention.ms", "86400000")
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
        rt.block_on(admin.create_topics(nts.iter(), &opts))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes one record to each partition of `names`; the time it took.
fn scale_records(
    bootstrap: &str,
    names: &[String],
    partitions: i32,
    idempotent: bool,
) -> Result<Duration, String> {
    let p: ThreadedProducer<DefaultProducerContext> = if idempotent {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("log_level", "3")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("queue.buffering.max.kbytes", "262144")
            .create()
            .map_err(|e| e.to_string())?
    } else {
        bulk_producer(bootstrap)
    };
    let started = Instant::now();
    for n in names {
        for part in 0..partitions {
            let rec: BaseRecord<'_, str, [u8]> = BaseRecord::to(n)
                .partition(part)
                .key("k")
                .payload(&b"v"[..]);
            send_retrying(&p, rec);
        }
    }
    p.flush(Duration::from_secs(300))
        .map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let d = std::env::temp_dir().join(format!("kmirror-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
    Ok(d)
}
