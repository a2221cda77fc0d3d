//! End to end: the config-sync loop and `kmirror plan`.

mod common;

use std::time::Duration;

use common::*;
use kmirror::kafka::incremental::{incremental_alter_topic_configs, ConfigOp};

fn alter(b: &Broker, topic: &str, ops: Vec<ConfigOp>) {
    let admin = b.admin();
    let r = incremental_alter_topic_configs(
        admin.inner(),
        &[(topic.to_string(), ops)],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r, vec![(topic.to_string(), Ok(()))]);
}

fn plan(cfg: &std::path::Path, json: bool) -> (i32, String) {
    let path = cfg.to_str().unwrap();
    let mut args = vec!["plan", "--config", path];
    if json {
        args.extend(["--format", "json"]);
    }
    let (code, out, err) = run_kmirror(&args);
    (code, out + &err)
}

#[test]
fn topic_configs_are_created_changed_and_deleted_and_plan_changes_nothing() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("cfg");
    let target = format!("src.{topic}");
    src.create_topic(
        &topic,
        2,
        &[
            ("retention.ms", "123456"),
            ("cleanup.policy", "compact"),
            ("max.message.bytes", "2000000"),
            ("min.insync.replicas", "1"),
            ("segment.bytes", "1048576"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let flow = flow_toml(
        "",
        &topic,
        "config_exclude = [\"segment\\\\..*\"]\nsync_configs_interval = \"1s\"",
    );
    let cfg = write_config(dir.path(), &src, &dst, &flow);

    // The dry run shows the creation and the exclusions, and changes nothing.
    let (code, out) = plan(&cfg, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{topic} -> {target}")), "{out}");
    assert!(out.contains("create topic: 2 partitions"), "{out}");
    assert!(out.contains("retention.ms=123456"), "{out}");
    assert!(out.contains("cleanup.policy=compact"), "{out}");
    assert!(out.contains("max.message.bytes=2000000"), "{out}");
    assert!(
        out.contains("not copied: min.insync.replicas (MM2 default exclusion"),
        "{out}"
    );
    assert!(
        out.contains("not copied: segment.bytes (config_exclude"),
        "{out}"
    );
    let (code, json) = plan(&cfg, true);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["flows"][0]["topics"][0]["actions"][0]["op"],
        "create_topic"
    );
    let before = dst.topics();
    assert!(!before.contains(&target), "plan created the target topic");
    assert!(
        !before.iter().any(|t| t.starts_with("kmirror-")),
        "plan created internal topics: {before:?}"
    );

    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_until(Duration::from_secs(60), || {
        dst.partitions(&target) == Some(2)
    });
    let t = topic_configs(&dst, &target);
    assert_eq!(
        t.get("retention.ms").map(String::as_str),
        Some("123456"),
        "{t:?}"
    );
    assert_eq!(
        t.get("cleanup.policy").map(String::as_str),
        Some("compact"),
        "{t:?}"
    );
    assert_eq!(
        t.get("max.message.bytes").map(String::as_str),
        Some("2000000"),
        "{t:?}"
    );
    assert!(!t.contains_key("min.insync.replicas"), "{t:?}");
    assert!(!t.contains_key("segment.bytes"), "{t:?}");

    // An operator's own target setting is never touched.
    alter(
        &dst,
        &target,
        vec![ConfigOp::Set("retention.bytes".into(), "777777".into())],
    );
    // A change on the source, made while kmirror is stopped: plan shows
    // exactly that change (and nothing about the operator's own property),
    // and changes nothing.
    let mut k = k;
    k.signal("TERM");
    assert_eq!(k.wait_exit(Duration::from_secs(30)), Some(0));
    alter(
        &src,
        &topic,
        vec![ConfigOp::Set("retention.ms".into(), "999999".into())],
    );
    let (code, out) = plan(&cfg, false);
    assert_eq!(code, 0, "{out}");
    let changes: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.contains(" -> ") && !l.starts_with("plan:") && !l.contains(&format!("{topic} -> "))
        })
        .collect();
    assert_eq!(changes, vec!["retention.ms: 123456 -> 999999"], "{out}");
    assert_eq!(
        topic_configs(&dst, &target)
            .get("retention.ms")
            .map(String::as_str),
        Some("123456")
    );
    // Once kmirror runs, the change arrives within an interval (1 s here).
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror2.log"));
    wait_until(Duration::from_secs(10), || {
        topic_configs(&dst, &target)
            .get("retention.ms")
            .map(String::as_str)
            == Some("999999")
    });
    // A property removed on the source that kmirror set is removed on the target.
    alter(&src, &topic, vec![ConfigOp::Delete("retention.ms".into())]);
    wait_until(Duration::from_secs(30), || {
        !topic_configs(&dst, &target).contains_key("retention.ms")
    });
    std::thread::sleep(Duration::from_secs(2));
    let t = topic_configs(&dst, &target);
    assert_eq!(
        t.get("retention.bytes").map(String::as_str),
        Some("777777"),
        "{t:?}"
    );

    let (code, out) = plan(&cfg, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("in sync"), "{out}");
    let log = k.log_text();
    assert!(
        log.contains("config synced: retention.ms: 123456 -> 999999"),
        "{log}"
    );
}

#[test]
fn partition_growth_refused_by_the_broker_is_reported_once_and_held() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("grow");
    let target = format!("src.{topic}");
    src.create_topic(&topic, 3, &[]);
    dst.create_topic(&target, 1, &[]);
    src.produce(&topic, &numbered(0, 300, 3));
    let dir = tempfile::tempdir().unwrap();
    let listen = http_listen();
    let flow = flow_toml(&listen, &topic, "sync_configs_interval = \"1s\"");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let k = KmirrorProc::start(&cfg, &dir.path().join("kmirror.log"));
    wait_count(&dst, &target, 100, Duration::from_secs(60), &k);
    std::thread::sleep(Duration::from_secs(5));
    let log = k.log_text();
    assert_eq!(
        log.matches("cannot raise the target partition count")
            .count(),
        1,
        "one ERROR per topic and change, not per tick:\n{log}"
    );
    let (_, m) = http_get(&listen, "/metrics").unwrap();
    let errors: f64 = m
        .lines()
        .find(|l| l.starts_with("kmirror_config_sync_operations_total{flow=\"f\",op=\"create_partitions\",result=\"error\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(errors >= 3.0, "counted every tick: {errors}\n{m}");
    // Partition 0 mirrors; 1 and 2 are held, not remapped.
    assert_eq!(count(&dst, &target), 100);
    // Records produced after the refusal keep flowing on partition 0.
    src.produce(&topic, &numbered(300, 30, 3));
    wait_count(&dst, &target, 110, Duration::from_secs(30), &k);
    assert!(
        m.contains("kmirror_partitions_paused{flow=\"f\",reason=\"held\"} 2"),
        "{m}"
    );
}

#[test]
fn acl_wrapper_against_nisshi_which_has_no_authorizer() {
    use kmirror::config_sync::acl::{Operation, Permission, TopicAcl};
    use kmirror::kafka::acls::{create_topic_acls, describe_topic_acls};
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("acl");
    src.create_topic(&topic, 1, &[]);
    let acl = TopicAcl {
        topic: topic.clone(),
        principal: "User:app".into(),
        host: "*".into(),
        operation: Operation::All,
        permission: Permission::Allow,
    };
    // nisshi 0.8.1 answers DescribeAcls with no ACLs and refuses CreateAcls
    // per ACL: the wrapper returns both answers as they are.
    let admin = src.admin();
    let created = create_topic_acls(admin.inner(), &[acl], Duration::from_secs(10)).unwrap();
    assert_eq!(created.len(), 1);
    let err = created[0].clone().unwrap_err();
    assert!(err.contains("Authorizer"), "{err}");
    assert_eq!(
        describe_topic_acls(admin.inner(), Duration::from_secs(10)).unwrap(),
        vec![]
    );
    // So plan has nothing to create, and says so.
    let dir = tempfile::tempdir().unwrap();
    let flow = format!("[http]\nlisten = \"\"\n\n[[flow]]\nname = \"f\"\ntopics = [\"{topic}\"]\n");
    let cfg = write_config(dir.path(), &src, &dst, &flow);
    let (code, out) = plan(&cfg, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ACLs: in sync (nothing to create)"), "{out}");
}
