//! End to end: one leader per direction for the control loops, elected
//! through a Kafka group on the target. Two processes with the same flows:
//! exactly one leads; when it is killed (-9) the other takes over within
//! the session timeout and checkpoints go on.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn leads(listen: &str) -> Option<bool> {
    let (_, body) = http_get(listen, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with("kmirror_leader{flow=\"f\"} "))
        .map(|l| l.ends_with(" 1"))
}

#[test]
fn one_leader_and_it_moves_when_killed() {
    let src = Broker::start(&unique("src"));
    let dst = Broker::start(&unique("dst"));
    let topic = unique("led");
    src.create_topic(&topic, 2, &[]);
    src.produce(&topic, &numbered(0, 600, 2));
    commit_group(&src, "app-led", &topic, &[100, 150]);
    let dir = tempfile::tempdir().unwrap();
    let (la, lb) = (http_listen(), http_listen());
    let flow = |listen: &str| {
        format!(
            "[target.properties]\n\"session.timeout.ms\" = \"6000\"\n\n{}",
            flow_toml(
                listen,
                &topic,
                "groups = [\"app-.*\"]\ncheckpoint_interval = \"1s\""
            )
        )
    };
    let da = dir.path().join("a");
    let db = dir.path().join("b");
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db).unwrap();
    let ca = write_config(&da, &src, &dst, &flow(&la));
    let cb = write_config(&db, &src, &dst, &flow(&lb));
    let a = KmirrorProc::start(&ca, &da.join("kmirror.log"));
    let b = KmirrorProc::start(&cb, &db.join("kmirror.log"));
    wait_count(
        &dst,
        &format!("src.{topic}"),
        600,
        Duration::from_secs(60),
        &a,
    );

    // Never two leaders; after the group settles, exactly one.
    let one = || matches!((leads(&la), leads(&lb)), (Some(x), Some(y)) if x != y);
    wait_until(Duration::from_secs(30), one);
    for _ in 0..20 {
        let (x, y) = (leads(&la).unwrap(), leads(&lb).unwrap());
        assert!(!(x && y), "two leaders at once");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_until(Duration::from_secs(30), one);
    wait_checkpoints(&ca, "app-led", &[100, 150], &a);

    // Kill the leader: the other takes over and checkpoints go on.
    let (mut leader, other, other_listen) = if leads(&la) == Some(true) {
        (a, b, lb.clone())
    } else {
        (b, a, la.clone())
    };
    leader.kill9();
    let t = Instant::now();
    wait_until(Duration::from_secs(30), || {
        leads(&other_listen) == Some(true)
    });
    let took = t.elapsed();
    let (_, ready) = http_get(&other_listen, "/readyz").unwrap();
    assert!(ready.contains("\"leader\":{\"f\":true}"), "{ready}");
    commit_group(&src, "app-led", &topic, &[200, 250]);
    wait_checkpoints(&ca, "app-led", &[200, 250], &other);
    assert!(
        took < Duration::from_secs(20),
        "the role took {took:?} to move (session timeout 6 s)\n{}",
        other.log_text()
    );
}
