//! `kmirror validate` exit codes (0/2/1), with and without --connect, and
//! the test bed itself.

mod common;

use common::{process_alive, run_kmirror, unique, write_config, Broker};

fn run(args: &[&str]) -> (i32, String, String) {
    run_kmirror(args)
}

const FLOW: &str = "[[flow]]\nname = \"f\"\ntopics = [\"t.*\"]\n";

#[test]
fn validate_ok_prints_summary_and_exits_0() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/east-west.toml");
    let (code, out, err) = run(&["validate", "--config", path]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("ok"), "{out}");
    assert!(out.contains("source east"), "{out}");
    assert!(out.contains("target west"), "{out}");
    assert!(out.contains("group kmirror.east.west.demo"), "{out}");
}

#[test]
fn validate_bad_config_lists_all_problems_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[source]\nalias = \"a\"\nbootstrap_servers = \"${KMIRROR_TEST_UNSET_VAR}\"\n[target]\nalias = \"b\"\nbootstrap_servers = \"h:1\"\n[[flow]]\nname = \"f\"\ntopics = [\"(\"]\ncolour = 1\n",
    )
    .unwrap();
    let (code, out, err) = run(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    let p = path.display().to_string();
    assert!(err.contains("3 problems"), "{err}");
    assert!(err.contains(&format!("{p}:3: source.bootstrap_servers: environment variable `KMIRROR_TEST_UNSET_VAR` is not set")), "{err}");
    assert!(
        err.contains(&format!("{p}:9: flow[0].topics[0]: invalid regex")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{p}:10: flow[0].colour: unknown key")),
        "{err}"
    );
}

#[test]
fn missing_file_and_bad_usage_exit_2() {
    let (code, _, err) = run(&["validate", "--config", "/nonexistent/kmirror.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read the file"), "{err}");
    let (code, _, _) = run(&["validate"]);
    assert_eq!(code, 2, "missing --config is a usage error");
    let (code, _, _) = run(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn validate_connect_reaches_a_running_pair() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &src, &dst, FLOW);
    let (code, out, err) = run(&["validate", "--config", path.to_str().unwrap(), "--connect"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("source src: reachable"), "{out}");
    assert!(out.contains("target dst: reachable"), "{out}");
    assert!(out.contains("1 broker(s)"), "{out}");
    assert!(out.contains("cluster id "), "{out}");
}

#[test]
fn a_secret_librdkafka_rejects_is_never_printed() {
    let src = Broker::start(&unique("src"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jaas.toml");
    // MM2 users copy `sasl.jaas.config`; librdkafka has no such property and
    // rdkafka's error would print its value.
    std::fs::write(
        &path,
        format!(
            "[source]\nalias = \"src\"\nbootstrap_servers = \"{}\"\n[source.properties]\n\"sasl.jaas.config\" = \"org.apache.kafka.common.security.plain.PlainLoginModule required password=\\\"p4ss-w0rd\\\";\"\n[target]\nalias = \"dst\"\nbootstrap_servers = \"{}\"\n{FLOW}",
            src.bootstrap(),
            src.bootstrap()
        ),
    )
    .unwrap();
    let (code, out, err) = validate_connect(&path);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("sasl.jaas.config"),
        "names the property: {out}"
    );
    assert!(
        !out.contains("p4ss-w0rd") && !err.contains("p4ss-w0rd"),
        "secret printed:\n{out}\n{err}"
    );
}

#[test]
fn validate_connect_reports_a_closed_port_and_exits_1() {
    let src = Broker::start(&unique("src"));
    let dir = tempfile::tempdir().unwrap();
    let closed = common::free_port();
    let path = dir.path().join("k.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nalias = \"src\"\nbootstrap_servers = \"{}\"\n[target]\nalias = \"dst\"\nbootstrap_servers = \"127.0.0.1:{closed}\"\n{FLOW}",
            src.bootstrap()
        ),
    )
    .unwrap();
    let (code, out, err) = validate_connect(&path);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("source src: reachable"), "{out}");
    assert!(
        out.contains(&format!("target dst: UNREACHABLE at 127.0.0.1:{closed}")),
        "{out}"
    );
}

#[test]
fn test_bed_brokers_are_independent_and_stopped() {
    let a = Broker::start(&unique("a"));
    let b = Broker::start(&unique("b"));
    assert_ne!(a.port, b.port);
    let topic = unique("only-on-a");
    a.create_topic(&topic, 2, &[]);
    assert_eq!(a.partitions(&topic), Some(2));
    assert!(
        !b.topics().contains(&topic),
        "a topic created on one broker exists on the other"
    );
    let (pa, pb) = (a.pid().unwrap(), b.pid().unwrap());
    assert!(process_alive(pa) && process_alive(pb));
    drop(a);
    drop(b);
    assert!(!process_alive(pa), "broker a still running after drop");
    assert!(!process_alive(pb), "broker b still running after drop");
}

/// `kmirror validate --config PATH --connect --timeout 3s`.
fn validate_connect(path: &std::path::Path) -> (i32, String, String) {
    run(&[
        "validate",
        "--config",
        path.to_str().unwrap(),
        "--connect",
        "--timeout",
        "3s",
    ])
}
