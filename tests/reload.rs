//! End to end: live reload (`kmirror run --watch` and SIGHUP). Flows added
//! start, flows removed stop cleanly, unchanged flows are not touched, an
//! invalid file is refused while the running configuration goes on, and
//! exactly-once holds across a flow removed and added again.

mod common;

use std::time::Duration;

use common::*;

fn metric(listen: &str, line_start: &str) -> Option<f64> {
    let (_, body) = http_get(listen, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn reloads(listen: &str, result: &str) -> f64 {
    metric(
        listen,
        &format!("kmirror_config_reloads_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

fn wait_reloads(listen: &str, result: &str, n: f64, k: &KmirrorProc) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reloads(listen, result) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "no {result} reload #{n}; log:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn reload_starts_stops_and_leaves_unchanged_flows_alone() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let a = unique("ra");
    let b = unique("rb");
    src.create_topic(&a, 2, &[]);
    src.create_topic(&b, 2, &[]);
    src.produce(&a, &numbered(0, 1000, 2));
    src.produce(&b, &numbered(0, 2000, 2));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let flow_a =
        format!("[[flow]]\nname = \"a\"\ntopics = [\"{a}\"]\nrefresh_topics_interval = \"1s\"\n");
    let flow_b = format!(
        "[[flow]]\nname = \"b\"\ntopics = [\"{b}\"]\nrefresh_topics_interval = \"1s\"\ndelivery = \"exactly-once\"\n"
    );
    let http = format!("[http]\nlisten = \"{listen}\"\n\n");
    let cfg = write_config(dir.path(), &src, &dst, &format!("{http}{flow_a}"));
    let base = std::fs::read_to_string(&cfg).unwrap();
    let k = KmirrorProc::start_with(&cfg, &dir.path().join("kmirror.log"), &[], &["--watch"]);
    let (ta, tb) = (format!("src.{a}"), format!("src.{b}"));
    wait_count(&dst, &ta, 1000, Duration::from_secs(60), &k);

    // Add flow b: it starts; a is not touched.
    let before = k.log_text().len();
    std::fs::write(&cfg, format!("{base}\n{flow_b}")).unwrap();
    wait_reloads(&listen, "applied", 1.0, &k);
    wait_count(&dst, &tb, 2000, Duration::from_secs(60), &k);
    assert_exact_copy(&src, &b, &dst, &tb);

    // An invalid file: refused with validate's message, the running flows
    // go on.
    std::fs::write(
        &cfg,
        format!("{base}\n{flow_b}").replace(&format!("[\"{b}\"]"), "[\"(unclosed\"]"),
    )
    .unwrap();
    wait_reloads(&listen, "invalid", 1.0, &k);
    src.produce(&a, &numbered(1000, 200, 2));
    wait_count(&dst, &ta, 1200, Duration::from_secs(60), &k);
    let log = k.log_text();
    assert!(
        log.contains("configuration reload refused") && log.contains("flow[1].topics"),
        "{log}"
    );

    // Remove flow b: it stops cleanly; records written afterwards stay
    // on the source.
    std::fs::write(&cfg, &base).unwrap();
    wait_reloads(&listen, "applied", 2.0, &k);
    let log = k.log_text();
    assert!(log[before..].contains("flow stopped flow=b"), "{log}");
    src.produce(&b, &numbered(2000, 300, 2));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(&dst, &tb), 2000, "a removed flow kept mirroring");

    // SIGHUP with nothing changed: nothing happens.
    k.signal("HUP");
    wait_reloads(&listen, "unchanged", 1.0, &k);

    // Add b again: exactly-once resumes where it stopped (no duplicate).
    std::fs::write(&cfg, format!("{base}\n{flow_b}")).unwrap();
    wait_reloads(&listen, "applied", 3.0, &k);
    wait_count(&dst, &tb, 2300, Duration::from_secs(60), &k);
    assert_exact_copy(&src, &b, &dst, &tb);
    src.produce(&a, &numbered(1200, 100, 2));
    wait_count(&dst, &ta, 1300, Duration::from_secs(60), &k);
    assert_exact_copy(&src, &a, &dst, &ta);

    // Flow a was never stopped, restarted or revoked by the reloads.
    let log = k.log_text();
    let after = &log[before..];
    for bad in ["flow stopped flow=a", "flow started flow=a", "revoked"] {
        let hits: Vec<&str> = after
            .lines()
            .filter(|l| l.contains(bad) && (bad != "revoked" || l.contains("flow=a")))
            .collect();
        assert!(hits.is_empty(), "flow a was touched by a reload: {hits:#?}");
    }
}

/// `--watch` also reloads when a secret file the configuration names
/// (`${file:PATH}`) changes: a Kubernetes Secret mounted as files is
/// updated in place, and the new value reaches the clients.
#[test]
fn watch_reloads_when_a_secret_file_changes() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let t = unique("sec");
    src.create_topic(&t, 1, &[]);
    src.produce(&t, &numbered(0, 100, 1));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("client-rack");
    std::fs::write(&secret, "rack-a\n").unwrap();
    let listen = http_listen();
    let body = format!(
        "[source.properties]\n\"client.rack\" = \"${{file:{}}}\"\n\n{}",
        secret.display(),
        flow_toml(&listen, &t, "")
    );
    let cfg = write_config(dir.path(), &src, &dst, &body);
    let k = KmirrorProc::start_with(&cfg, &dir.path().join("kmirror.log"), &[], &["--watch"]);
    wait_count(&dst, &format!("src.{t}"), 100, Duration::from_secs(60), &k);
    let before = reloads(&listen, "applied");
    std::fs::write(&secret, "rack-b\n").unwrap();
    wait_reloads(&listen, "applied", before + 1.0, &k);
    assert!(
        k.log_text()
            .contains("the configuration file (or a secret file it names) changed: reloading"),
        "{}",
        k.log_text()
    );
    // Mirroring goes on with the new clients.
    src.produce(&t, &numbered(100, 50, 1));
    wait_count(&dst, &format!("src.{t}"), 150, Duration::from_secs(60), &k);
}
