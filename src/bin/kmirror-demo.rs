//! The demo: two local nisshi clusters ("east" on 127.0.0.1:19092, "west"
//! on 127.0.0.1:19192), sample data with keys and headers, kmirror
//! mirroring east -> west with `config/east-west.toml`, and what it shows.
//! Ctrl-C (or `--duration`) stops everything.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kmirror::devcluster::{records_in, Nisshi, Storage};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio_util::sync::CancellationToken;

const TOPICS: &[(&str, i32)] = &[
    ("orders", 6),
    ("payments", 3),
    ("clicks.web", 2),
    ("clicks.tmp.debug", 1),
];

fn produce_sample(bootstrap: String, stop: Arc<AtomicBool>) {
    let p: ThreadedProducer<DefaultProducerContext> = match ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("log_level", "3")
        .set("linger.ms", "5")
        .create()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("demo producer: {e}");
            return;
        }
    };
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..50 {
            let (topic, _) = TOPICS[(i % TOPICS.len() as u64) as usize];
            let key = format!("customer-{}", i % 97);
            let value = format!(
                "{{\"id\":{i},\"topic\":\"{topic}\",\"amount\":{}}}",
                (i * 37) % 1000
            );
            let trace = format!("trace-{i:08x}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "trace-id",
                    value: Some(&trace),
                })
                .insert(Header {
                    key: "source-app",
                    value: Some("kmirror-demo"),
                });
            let rec: BaseRecord<'_, String, String> = BaseRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(headers);
            let _ = p.send(rec);
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = p.flush(Duration::from_secs(5));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let duration = args
        .iter()
        .position(|a| a == "--duration")
        .and_then(|i| args.get(i + 1))
        .map(|d| kmirror::config::parse_duration(d).unwrap_or_else(|e| panic!("--duration: {e}")));
    if let Err(e) = run(duration) {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn run(duration: Option<Duration>) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,rdkafka::consumer::base_consumer=off")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(".demo");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config_path = root.join("config/east-west.toml");
    let config = kmirror::config::load(&config_path).map_err(|e| e.to_string())?;

    println!("starting two local clusters: east on 127.0.0.1:19092, west on 127.0.0.1:19192 (logs in .demo/)");
    let east = Nisshi::start_own_group("east", 19092, Storage::Memory, &dir.join("east.log"))
        .map_err(|e| format!("east (is port 19092 free?): {e}"))?;
    let west = Nisshi::start_own_group("west", 19192, Storage::Memory, &dir.join("west.log"))
        .map_err(|e| format!("west (is port 19192 free?): {e}"))?;
    for (t, p) in TOPICS {
        east.create_topic(t, *p, &[])?;
    }
    println!(
        "created on east: {}",
        TOPICS
            .iter()
            .map(|(t, p)| format!("{t} ({p} partitions)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (b, s) = (east.bootstrap(), stop.clone());
        std::thread::spawn(move || produce_sample(b, s))
    };
    println!("producing sample records (keys, JSON values, headers) to east, 250 per second");
    println!(
        "kmirror: {} -> {} with {}",
        config.source.alias,
        config.target.alias,
        config_path.display()
    );
    println!(
        "metrics: http://{}/metrics   health: /healthz /readyz   Ctrl-C stops\n",
        config.http.listen
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(kmirror::metrics::Metrics::new());
    let health = Arc::new(kmirror::metrics::Health::default());
    let app = {
        let (c, s, m, h) = (
            config.clone(),
            shutdown.clone(),
            metrics.clone(),
            health.clone(),
        );
        rt.spawn(async move { kmirror::app::run_with(c, s, m, h).await })
    };
    {
        let s = shutdown.clone();
        rt.spawn(async move {
            // Ctrl-C or SIGTERM: stop kmirror, then the brokers (on drop).
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            s.cancel();
        });
    }
    let started = Instant::now();
    while !shutdown.is_cancelled() {
        std::thread::sleep(Duration::from_millis(250));
        if started.elapsed().as_millis() % 3000 < 250 {
            println!("after {:>3}s:", started.elapsed().as_secs());
            for (t, _) in TOPICS {
                let target = format!("east.{t}");
                let (s, d) = (
                    records_in(&east.bootstrap(), t),
                    records_in(&west.bootstrap(), &target),
                );
                let note = if d == 0 && t.contains(".tmp.") {
                    "  (excluded by topics_exclude)"
                } else {
                    ""
                };
                println!("  east/{t:<18} {s:>7} records  ->  west/{target:<24} {d:>7}{note}");
            }
            let text = metrics.render();
            let pick = |name: &str| -> f64 {
                text.lines()
                    .filter(|l| l.starts_with(name) && !l.starts_with('#'))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
                    + 0.0 // an empty sum is -0.0; show 0
            };
            println!(
                "  metrics: kmirror_records_total={} kmirror_lag_records={} kmirror_heartbeats_total={} kmirror_offset_syncs_total={}  readyz={}\n",
                pick("kmirror_records_total{"),
                pick("kmirror_lag_records{"),
                pick("kmirror_heartbeats_total"),
                pick("kmirror_offset_syncs_total{"),
                if health.ready().is_ok() { "ready" } else { "not ready" }
            );
        }
        if duration.is_some_and(|d| started.elapsed() >= d) {
            shutdown.cancel();
        }
    }
    println!("stopping: kmirror drains and commits, then the clusters stop");
    stop.store(true, Ordering::Relaxed);
    let _ = producer.join();
    let res = rt.block_on(app);
    // A flow still draining after kmirror's shutdown deadline (target
    // down) is abandoned, as `kmirror run` does.
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(east);
    drop(west);
    match res {
        Ok(Ok(())) => {
            println!("done");
            Ok(())
        }
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(e) => Err(e.to_string()),
    }
}
