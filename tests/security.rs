//! End to end: kmirror against brokers that demand TLS and SASL/SCRAM on
//! both sides (nisshi `--cert`/`--key` and `--authentication`), with a
//! test CA made at test time by the `openssl` CLI; refusals (wrong
//! password, unknown CA, host name mismatch, plaintext to a TLS listener)
//! are clear and never print a secret.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A test CA and certificates signed by it, made with the `openssl` CLI.
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("the openssl CLI is needed to make test certificates ({e}); install it with: apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// A CA `ca` and a broker certificate `broker` for 127.0.0.1 and
    /// localhost; `other-ca` (unrelated) and `elsewhere` (signed by `ca`,
    /// for another host name only) for the refusal tests.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=kmirror test {ca}"),
                ],
            );
        }
        for (name, san) in [
            ("broker", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ("elsewhere", "subjectAltName=DNS:elsewhere.example"),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), format!("{san}\n")).unwrap();
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    /// TLS with the certificate `name` (and SASL when `auth`).
    fn security(&self, name: &str, auth: bool) -> BrokerSecurity {
        BrokerSecurity {
            tls: Some((
                self.path(&format!("{name}.pem")),
                self.path(&format!("{name}.key")),
            )),
            authentication: auth,
        }
    }
}

const ADMIN_PW: &str = "harness-pw-0";

/// A broker with TLS and SCRAM (`mechanism`: scram256 | scram512), users
/// `admin` (the harness) and `mirror` (kmirror, password `mirror_pw`).
fn secure_broker(pki: &Pki, name: &str, mechanism: &str, mirror_pw: &str) -> Broker {
    let sasl = if mechanism == "scram256" {
        "SCRAM-SHA-256"
    } else {
        "SCRAM-SHA-512"
    };
    let ca = pki.ca();
    Broker::start_secure(
        name,
        &[
            ("admin", ADMIN_PW, mechanism),
            ("mirror", mirror_pw, mechanism),
        ],
        pki.security("broker", true),
        &[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", sasl),
            ("sasl.username", "admin"),
            ("sasl.password", ADMIN_PW),
            ("ssl.ca.location", &ca),
        ],
    )
}

/// `config/sasl-tls.toml` pointed at these brokers: their bootstrap
/// servers and the test CA swapped in, the source password read from
/// the file `src-password` in `dir` (`${file:...}`, returned second), the target's from `$US_PASSWORD`,
/// `extra` flow keys appended to the file's flow.
fn secure_config(
    dir: &Path,
    pki: &Pki,
    src: &Broker,
    dst: &Broker,
    src_password: &str,
    listen: &str,
    extra: &str,
) -> (PathBuf, PathBuf) {
    let src_pw_file = dir.join("src-password");
    std::fs::write(&src_pw_file, format!("{src_password}\n")).unwrap();
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sasl-tls.toml"))
            .unwrap();
    let ca = pki.ca();
    let swaps = [
        (
            "kafka-eu-1.example.net:9093,kafka-eu-2.example.net:9093",
            src.bootstrap(),
        ),
        ("kafka-us-1.example.net:9093", dst.bootstrap()),
        ("/etc/kmirror/eu-ca.pem", ca.clone()),
        ("/etc/kmirror/us-ca.pem", ca),
        (
            "\"${EU_PASSWORD}\"",
            format!("\"${{file:{}}}\"", src_pw_file.display()),
        ),
        (
            "listen = \"0.0.0.0:9464\"",
            format!("listen = \"{listen}\""),
        ),
    ];
    let mut text = example;
    for (from, to) in swaps {
        assert!(
            text.contains(from),
            "config/sasl-tls.toml no longer has {from}"
        );
        text = text.replace(from, &to);
    }
    text.push_str(extra);
    text.push('\n');
    let path = dir.join("kmirror.toml");
    std::fs::write(&path, text).unwrap();
    (path, src_pw_file)
}

/// The environment `config/sasl-tls.toml` reads.
const ENV: [(&str, &str); 4] = [
    ("EU_USER", "mirror"),
    ("US_USER", "mirror"),
    ("US_PASSWORD", "dst-mirror-pw-2"),
    ("HOSTNAME", "kmirror-test-host"),
];

fn kmirror_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(kmirror_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kmirror");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Both clusters demand TLS and SCRAM (SHA-512 on the source, SHA-256 on
/// the target; the source password from a secret file, the target's from
/// the environment): `validate --connect` reaches both, and the data path,
/// config sync, checkpoints and group offset sync all work through them.
/// No password reaches the log or the metrics.
#[test]
fn tls_and_scram_on_both_sides_mirror_sync_and_checkpoint() {
    let pki = Pki::new();
    let src = secure_broker(&pki, &unique("src"), "scram512", "src-mirror-pw-1");
    let dst = secure_broker(&pki, &unique("dst"), "scram256", "dst-mirror-pw-2");
    let topic = format!("payments.{}", unique("orders"));
    let target = format!("prod-eu.{topic}");
    src.create_topic(
        &topic,
        3,
        &[("retention.ms", "-1"), ("cleanup.policy", "delete")],
    );
    src.produce(&topic, &numbered(0, 3000, 3));
    let group = "payments-app";
    commit_group(&src, group, &topic, &[400, 500, 600]);

    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let (cfg, _) = secure_config(
        dir.path(),
        &pki,
        &src,
        &dst,
        "src-mirror-pw-1",
        &listen,
        "checkpoint_interval = \"1s\"\nsync_topic_configs = true\nsync_configs_interval = \"1s\"\nrefresh_topics_interval = \"1s\"",
    );
    let env = ENV;
    let (code, out) = kmirror_env(
        &["validate", "--config", cfg.to_str().unwrap(), "--connect"],
        &env,
    );
    assert_eq!(code, 0, "validate --connect: {out}");
    assert!(
        out.contains("source prod-eu: reachable") && out.contains("target prod-us: reachable"),
        "{out}"
    );
    assert!(
        !out.contains("src-mirror-pw-1") && !out.contains("dst-mirror-pw-2"),
        "{out}"
    );

    let k = KmirrorProc::start_env(&cfg, &dir.path().join("kmirror.log"), &env);
    wait_count(&dst, &target, 3000, Duration::from_secs(90), &k);
    assert_exact_copy(&src, &topic, &dst, &target);
    // Config sync: the source topic's retention reached the target topic.
    set_topic_config(&src, &topic, "retention.ms", "86400000");
    wait_until(Duration::from_secs(60), || {
        topic_config(&dst, &target, "retention.ms").as_deref() == Some("86400000")
    });
    // Checkpoints and group offset sync: the idle group's offsets arrive.
    wait_until(Duration::from_secs(60), || {
        committed(&dst, group, &target, 3) == vec![400, 500, 600]
    });
    let (status, metrics) = http_get(&listen, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let log = k.log_text();
    for secret in ["src-mirror-pw-1", "dst-mirror-pw-2"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(!metrics.contains(secret), "{secret} in the metrics");
    }
}

/// The value of a topic config, as DescribeConfigs reports it.
fn topic_config(b: &Broker, topic: &str, key: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(b.admin().describe_configs(
            [&rdkafka::admin::ResourceSpecifier::Topic(topic)],
            &rdkafka::admin::AdminOptions::new(),
        ))
        .ok()?;
    let r = res.into_iter().next()?.ok()?;
    r.get(key).and_then(|e| e.value.clone())
}

/// Each refusal gives one clear error from `validate --connect` (exit 1)
/// naming the cluster (alias and bootstrap) and the cause in words, and
/// never the password: wrong password, unknown CA, a certificate for
/// another host name, a plaintext client to a TLS listener.
#[test]
fn refusals_name_the_cluster_and_the_cause() {
    let pki = Pki::new();
    let src = secure_broker(&pki, &unique("src"), "scram512", "right-pw-9");
    // The target of every case: plaintext, reachable.
    let plain = Broker::start(&unique("plain"));
    // A TLS-only listener whose certificate names another host.
    let dst = Broker::start_secure(
        &unique("dst"),
        &[],
        pki.security("elsewhere", false),
        &[
            ("security.protocol", "ssl"),
            ("ssl.ca.location", &pki.ca()),
            ("ssl.endpoint.identification.algorithm", "none"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.ca();
    let other_ca = pki.path("other-ca.pem").display().to_string();
    let cases: Vec<(&str, String, String, &[&str])> = vec![
        (
            "wrong password",
            src.bootstrap(),
            format!("\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"mirror\"\n\"sasl.password\" = \"wrong-pw-7\"\n\"ssl.ca.location\" = \"{ca}\""),
            &["authentication failed"],
        ),
        (
            "unknown CA",
            src.bootstrap(),
            format!("\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"mirror\"\n\"sasl.password\" = \"right-pw-9\"\n\"ssl.ca.location\" = \"{other_ca}\""),
            &["not signed by a CA"],
        ),
        (
            "host name mismatch",
            dst.bootstrap(),
            format!("\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{ca}\""),
            &["host name"],
        ),
        (
            "plaintext to TLS",
            src.bootstrap(),
            String::new(),
            &["TLS"],
        ),
    ];
    for (what, bootstrap, props, words) in cases {
        let text = format!(
            "[source]\nalias = \"prod-src\"\nbootstrap_servers = \"{bootstrap}\"\n[source.properties]\n{props}\n\n[target]\nalias = \"ok-dst\"\nbootstrap_servers = \"{}\"\n\n{}",
            plain.bootstrap(),
            flow_toml("", "x", "")
        );
        let cfg = dir.path().join("refuse.toml");
        std::fs::write(&cfg, text).unwrap();
        let (code, out) = kmirror_env(
            &[
                "validate",
                "--config",
                cfg.to_str().unwrap(),
                "--connect",
                "--timeout",
                "10s",
            ],
            &[],
        );
        assert_eq!(code, 1, "{what}: exit code, output:\n{out}");
        let line = out
            .lines()
            .find(|l| l.contains("source prod-src:"))
            .unwrap_or_else(|| panic!("{what}: no line for the source:\n{out}"));
        assert!(
            line.contains(&bootstrap),
            "{what}: bootstrap not named: {line}"
        );
        for w in words {
            assert!(line.contains(w), "{what}: {w:?} not in: {line}");
        }
        assert!(
            !out.contains("wrong-pw-7") && !out.contains("right-pw-9"),
            "{what}: a password leaked:\n{out}"
        );
        assert!(out.contains("target ok-dst: reachable"), "{what}: {out}");
    }
}

/// `kmirror run` with a wrong password: it keeps running and retrying,
/// `/readyz` answers 503 naming the cluster and the cause, the metrics
/// count the cause, the WARN names the cluster once (not every pass), and
/// the password is printed nowhere. Turning certificate checks off is an
/// explicit key and is warned about at start.
#[test]
fn run_reports_a_refused_login_on_readyz_and_in_metrics() {
    let pki = Pki::new();
    let src = secure_broker(&pki, &unique("src"), "scram512", "right-pw-3");
    let dst = Broker::start(&unique("dst"));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let text = format!(
        "[source]\nalias = \"prod-src\"\nbootstrap_servers = \"{}\"\n[source.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"mirror\"\n\"sasl.password\" = \"wrong-pw-5\"\n\"ssl.ca.location\" = \"{}\"\n\"ssl.endpoint.identification.algorithm\" = \"none\"\n\n[target]\nalias = \"dst\"\nbootstrap_servers = \"{}\"\n\n{}",
        src.bootstrap(),
        pki.ca(),
        dst.bootstrap(),
        flow_toml(&listen, "x", "")
    );
    let cfg = dir.path().join("kmirror.toml");
    std::fs::write(&cfg, text).unwrap();
    let (code, out) = kmirror_env(&["validate", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARNING: TLS certificate verification is off for the source"),
        "{out}"
    );
    let log = run_refused(
        &cfg,
        &listen,
        "source",
        "prod-src",
        &src.bootstrap(),
        &["wrong-pw-5", "right-pw-3"],
    );
    assert!(log.contains("TLS certificate verification is OFF"), "{log}");
}

/// The target refuses kmirror from the start (a wrong password): the
/// internal topics cannot be created, and `kmirror run` says so the same
/// way as for the source: `/readyz` names the target cluster and the
/// cause, the metrics count it, one WARN, no secret, and it keeps trying.
#[test]
fn run_reports_a_target_that_refuses_it_from_the_start() {
    let pki = Pki::new();
    let src = Broker::start(&unique("src"));
    let dst = secure_broker(&pki, &unique("dst"), "scram256", "right-pw-7");
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let text = format!(
        "[source]\nalias = \"src\"\nbootstrap_servers = \"{}\"\n\n[target]\nalias = \"prod-dst\"\nbootstrap_servers = \"{}\"\n[target.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\"sasl.username\" = \"mirror\"\n\"sasl.password\" = \"wrong-pw-8\"\n\"ssl.ca.location\" = \"{}\"\n\n{}",
        src.bootstrap(),
        dst.bootstrap(),
        pki.ca(),
        flow_toml(&listen, "x", "")
    );
    let cfg = dir.path().join("kmirror.toml");
    std::fs::write(&cfg, text).unwrap();
    run_refused(
        &cfg,
        &listen,
        "target",
        "prod-dst",
        &dst.bootstrap(),
        &["wrong-pw-8", "right-pw-7"],
    );
}

/// Runs kmirror on `cfg`, whose `role` cluster refuses its login, and
/// checks what it says: `/readyz` answers 503 naming the cluster (alias,
/// bootstrap) and the cause in words, the metrics count the refusal,
/// one WARN for several tries, it keeps running, and no password of
/// `secrets` is in the log, `/readyz` or `/metrics`. Returns the log.
fn run_refused(
    cfg: &Path,
    listen: &str,
    role: &str,
    alias: &str,
    bootstrap: &str,
    secrets: &[&str],
) -> String {
    let log_path = cfg.with_file_name("kmirror.log");
    let mut k = KmirrorProc::start(cfg, &log_path);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let body = loop {
        let got = http_get(listen, "/readyz");
        match &got {
            Some((503, b)) if b.contains("authentication failed") => break b.clone(),
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no readiness reason for the refused login: {got:?}\nlog:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        body.contains(&format!("{role} cluster {alias}")) && body.contains(bootstrap),
        "{body}"
    );
    // More tries (1 s apart, or with backoff): still one WARN.
    std::thread::sleep(Duration::from_secs(4));
    let (_, metrics) = http_get(listen, "/metrics").expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with(&format!(
            "kmirror_cluster_errors_total{{cause=\"authentication\",cluster=\"{role}\"}}"
        ))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "kmirror_cluster_up{{alias=\"{alias}\",cluster=\"{role}\"}} 0"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("cluster_up"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let log = k.log_text();
    assert_eq!(
        log.matches(&format!("cannot reach the {role} cluster"))
            .count(),
        1,
        "one WARN per state change:\n{log}"
    );
    assert!(process_alive(k.pid()), "kmirror must keep retrying:\n{log}");
    for text in [&log, &body, &metrics] {
        for secret in secrets {
            assert!(!text.contains(secret), "a password leaked");
        }
    }
    k.signal("TERM");
    assert_eq!(
        k.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        k.log_text()
    );
    log
}

/// Credential rotation rides on live reload: the source's SCRAM password
/// is changed on the broker while kmirror runs (its logins fail and
/// `/readyz` says so), the new password is written to the secret file,
/// and a SIGHUP makes the clients reconnect with it. Then the target's
/// password rotates, and a first reload carries a typo: it does not keep
/// the process from reading the next reload, which has the right one.
/// Nothing is lost and exactly-once holds (an exact copy, no duplicate).
#[test]
fn a_rotated_password_is_picked_up_by_a_reload() {
    let pki = Pki::new();
    let mut src = secure_broker(&pki, &unique("src"), "scram512", "old-pw-1");
    let mut dst = secure_broker(&pki, &unique("dst"), "scram256", "dst-mirror-pw-2");
    let topic = format!("payments.{}", unique("rot"));
    let target = format!("prod-eu.{topic}");
    src.create_topic(&topic, 2, &[("retention.ms", "-1")]);
    src.produce(&topic, &numbered(0, 1000, 2));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let (cfg, pw_file) = secure_config(
        dir.path(),
        &pki,
        &src,
        &dst,
        "old-pw-1",
        &listen,
        "delivery = \"exactly-once\"\nrefresh_topics_interval = \"1s\"",
    );
    // The target's password from a secret file too, so that it can rotate
    // without a restart.
    let dst_pw_file = dir.path().join("dst-password");
    std::fs::write(&dst_pw_file, "dst-mirror-pw-2\n").unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "\"${US_PASSWORD}\"",
        &format!("\"${{file:{}}}\"", dst_pw_file.display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let k = KmirrorProc::start_env(&cfg, &dir.path().join("kmirror.log"), &ENV);
    wait_count(&dst, &target, 1000, Duration::from_secs(90), &k);

    // Rotate on the broker: kmirror's logins fail from now on.
    src.set_password("mirror", "new-pw-2", "scram512");
    src.produce(&topic, &numbered(1000, 1000, 2));
    wait_until(Duration::from_secs(90), || {
        http_get(&listen, "/readyz")
            .is_some_and(|(code, b)| code == 503 && b.contains("authentication failed"))
    });
    assert_eq!(count(&dst, &target), 1000);

    // The new secret, then a reload: everything arrives, once.
    std::fs::write(&pw_file, "new-pw-2\n").unwrap();
    k.signal("HUP");
    wait_count(&dst, &target, 2000, Duration::from_secs(120), &k);
    assert_exact_copy(&src, &topic, &dst, &target);
    wait_until(Duration::from_secs(60), || {
        http_get(&listen, "/readyz").is_some_and(|(code, _)| code == 200)
    });

    // The target's password rotates, and the first reload carries a wrong
    // one: that reload gives up waiting for the target after a bounded
    // time, so the next reload (the right password) is still read.
    dst.set_password("mirror", "dst-new-pw-3", "scram256");
    std::fs::write(&dst_pw_file, "dst-typo-pw-4\n").unwrap();
    k.signal("HUP");
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(&dst_pw_file, "dst-new-pw-3\n").unwrap();
    k.signal("HUP");
    src.produce(&topic, &numbered(2000, 1000, 2));
    wait_count(&dst, &target, 3000, Duration::from_secs(150), &k);
    assert_exact_copy(&src, &topic, &dst, &target);
    let log = k.log_text();
    assert!(log.contains("configuration reloaded"), "{log}");
    for secret in [
        "old-pw-1",
        "new-pw-2",
        "dst-mirror-pw-2",
        "dst-new-pw-3",
        "dst-typo-pw-4",
    ] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}
