//! Configuration: every example parses and validates; one test per rule,
//! each asserting that the message names the key and the line.

use std::path::Path;

use kmirror::config::{self, Config, ConfigError, Delivery, Problem};

fn env(name: &str) -> Option<String> {
    match name {
        "EU_USER" | "US_USER" => Some("mirror".into()),
        "EU_PASSWORD" | "US_PASSWORD" => Some("hunter2-secret".into()),
        "HOSTNAME" => Some("host-1".into()),
        "PW" => Some("pw-value-42".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    config::load_str(Path::new("test.toml"), text, &env)
}

fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems,
    }
}

/// Asserts that one problem names `key` at `line` and mentions `needle`.
fn has(ps: &[Problem], key: &str, line: usize, needle: &str) {
    assert!(
        ps.iter()
            .any(|p| p.key == key && p.line == Some(line) && p.message.contains(needle)),
        "no problem for {key} at line {line} containing {needle:?} in {ps:#?}"
    );
}

const BASE: &str = r#"[source]
alias = "east"
bootstrap_servers = "127.0.0.1:9092"

[target]
alias = "west"
bootstrap_servers = "127.0.0.1:9192"
"#;

fn with_flow(flow: &str) -> String {
    format!("{BASE}\n[[flow]]\n{flow}")
}

#[test]
fn every_example_config_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let c = config::load_str(&path, &text, &env).unwrap_or_else(|e| panic!("{e}"));
        assert!(!c.flows.is_empty(), "{}", path.display());
        n += 1;
    }
    assert!(n >= 5, "expected at least 5 example configs, found {n}");
}

#[test]
fn defaults_follow_the_design() {
    let c = load(&with_flow("name = \"f\"\ntopics = [\"a\"]\n")).unwrap();
    let f = &c.flows[0];
    assert_eq!(f.rename, "{source}.{topic}");
    assert_eq!(f.groups, vec![".*"]);
    assert_eq!(f.delivery, Delivery::AtLeastOnce);
    assert!(f.sync_topic_configs && f.sync_partitions && f.sync_topic_acls);
    assert!(!f.sync_group_offsets && !f.provenance_header);
    assert_eq!(f.replication_factor, -1);
    assert_eq!(f.refresh_topics_interval.as_secs(), 10);
    assert_eq!(f.sync_configs_interval.as_secs(), 30);
    assert_eq!(f.checkpoint_interval.as_secs(), 5);
    assert_eq!(f.heartbeat_interval.as_secs(), 1);
    assert_eq!(c.http.listen, "127.0.0.1:9464");
    assert_eq!(f.group_id("east", "west"), "kmirror.east.west.f");
}

#[test]
fn unknown_key_is_reported_with_line() {
    let ps = problems(&with_flow(
        "name = \"f\"\ntopics = [\"a\"]\ntopic_regex = \"x\"\n",
    ));
    has(&ps, "flow[0].topic_regex", 12, "unknown key");
    let ps = problems(&format!(
        "{BASE}\nbogus = 1\n[[flow]]\nname = \"f\"\ntopics = [\"a\"]\n"
    ));
    has(&ps, "target.bogus", 9, "unknown key `bogus` in [target]");
}

#[test]
fn wrong_type_is_reported_with_line() {
    let ps = problems(&with_flow(
        "name = \"f\"\ntopics = \"a\"\nsync_partitions = \"yes\"\n",
    ));
    has(&ps, "flow[0].topics", 11, "expected an array of strings");
    has(&ps, "flow[0].sync_partitions", 12, "expected a boolean");
    let ps = problems(&with_flow(
        "name = \"f\"\ntopics = [\"a\"]\ncheckpoint_interval = \"soon\"\ndelivery = \"twice\"\n",
    ));
    has(&ps, "flow[0].checkpoint_interval", 12, "invalid duration");
    has(&ps, "flow[0].delivery", 13, "exactly-once");
}

#[test]
fn invalid_regex_is_reported_with_line() {
    let ps = problems(&with_flow(
        "name = \"f\"\ntopics = [\n  \"ok\",\n  \"orders(\",\n]\n",
    ));
    has(&ps, "flow[0].topics[1]", 13, "invalid regex \"orders(\"");
    let ps = problems(&with_flow(
        "name = \"f\"\ntopics = [\"a\"]\ngroups_exclude = [\"[\"]\n",
    ));
    has(&ps, "flow[0].groups_exclude[0]", 12, "invalid regex");
}

#[test]
fn rename_without_topic_is_reported() {
    let ps = problems(&with_flow(
        "name = \"f\"\ntopics = [\"a\"]\nrename = \"{source}.all\"\n",
    ));
    has(&ps, "flow[0].rename", 12, "{topic}");
}

#[test]
fn duplicate_flow_names_are_reported() {
    let text = format!(
        "{BASE}\n[[flow]]\nname = \"f\"\ntopics = [\"a\"]\n\n[[flow]]\nname = \"f\"\ntopics = [\"b\"]\n"
    );
    let ps = problems(&text);
    has(&ps, "flow[1].name", 14, "duplicate flow name");
}

#[test]
fn two_flows_to_one_target_topic_are_reported() {
    // flow g's literal "x" is also matched by flow f's "x|y" with the same rename.
    let text = format!(
        "{BASE}\n[[flow]]\nname = \"f\"\ntopics = [\"x|y\"]\n\n[[flow]]\nname = \"g\"\ntopics = [\"x\"]\n"
    );
    has(
        &problems(&text),
        "flow[1].topics[0]",
        15,
        "one target topic",
    );
    // Different source topics renamed onto the same target name.
    let text = format!(
        "{BASE}\n[[flow]]\nname = \"f\"\ntopics = [\"east.a\"]\nrename = \"{{topic}}\"\n\n[[flow]]\nname = \"g\"\ntopics = [\"a\"]\n"
    );
    has(
        &problems(&text),
        "flow[1].topics[0]",
        16,
        "both map to target topic \"east.a\"",
    );
}

#[test]
fn same_alias_is_reported() {
    let text = "[source]\nalias = \"a\"\nbootstrap_servers = \"h:1\"\n[target]\nalias = \"a\"\nbootstrap_servers = \"h:2\"\n[[flow]]\nname = \"f\"\ntopics = [\"t\"]\n";
    has(&problems(text), "target.alias", 5, "same alias");
}

#[test]
fn empty_bootstrap_list_is_reported() {
    let text = "[source]\nalias = \"a\"\nbootstrap_servers = \" , \"\n[target]\nalias = \"b\"\nbootstrap_servers = \"h:2\"\n[[flow]]\nname = \"f\"\ntopics = [\"t\"]\n";
    has(
        &problems(text),
        "source.bootstrap_servers",
        3,
        "empty bootstrap list",
    );
}

#[test]
fn clashing_property_is_reported() {
    let text = format!(
        "{BASE}[target.properties]\n\"enable.idempotence\" = \"false\"\n\"linger.ms\" = 20\n\n[[flow]]\nname = \"f\"\ntopics = [\"a\"]\n"
    );
    let ps = problems(&text);
    has(
        &ps,
        "target.properties.enable.idempotence",
        9,
        "set by kmirror",
    );
    assert_eq!(ps.len(), 1, "linger.ms is allowed: {ps:#?}");
}

#[test]
fn missing_required_keys_are_reported() {
    let ps =
        problems("[source]\nalias = \"a\"\n[target]\nalias = \"b\"\nbootstrap_servers = \"h:1\"\n");
    assert!(
        ps.iter()
            .any(|p| p.key == "source.bootstrap_servers" && p.message.contains("missing")),
        "{ps:#?}"
    );
    assert!(
        ps.iter()
            .any(|p| p.key == "flow" && p.message.contains("at least one flow")),
        "{ps:#?}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    // An unknown key, a bad regex and an unset variable: all three, in file order.
    let text = String::from(
        "[source]\nalias = \"east\"\nbootstrap_servers = \"${NOT_SET_ANYWHERE}\"\n\n[target]\nalias = \"west\"\nbootstrap_servers = \"h:1\"\n\n[[flow]]\nname = \"f\"\ntopics = [\"a(\"]\ncolour = \"blue\"\n"
    );
    let ps = problems(&text);
    has(
        &ps,
        "source.bootstrap_servers",
        3,
        "`NOT_SET_ANYWHERE` is not set",
    );
    has(&ps, "flow[0].colour", 12, "unknown key");
    // The regex is checked in the same run as the others.
    has(&ps, "flow[0].topics[0]", 11, "invalid regex");
    assert_eq!(ps.len(), 3, "{ps:#?}");
    let lines: Vec<_> = ps.iter().map(|p| p.line.unwrap()).collect();
    assert_eq!(lines, vec![3, 11, 12]);
}

#[test]
fn structural_and_cross_field_problems_are_reported_together() {
    // An unknown key (structural) and a duplicate flow name plus the same
    // alias on both sides (cross-field): all in one run.
    let text = "[source]\nalias = \"a\"\nbootstrap_servers = \"h:1\"\n[target]\nalias = \"a\"\nbootstrap_servers = \"h:2\"\n[[flow]]\nname = \"f\"\ntopics = [\"t\"]\ncolour = 1\n[[flow]]\nname = \"f\"\ntopics = [\"u(\"]\n";
    let ps = problems(text);
    has(&ps, "flow[0].colour", 10, "unknown key");
    has(&ps, "flow[1].topics[0]", 13, "invalid regex");
    has(&ps, "flow[1].name", 12, "duplicate flow name");
    has(&ps, "target.alias", 5, "same alias");
}

#[test]
fn env_interpolation_set_unset_escaped() {
    let text = format!(
        "{BASE}[source.properties]\n\"sasl.password\" = \"${{PW}}\"\n\"note\" = \"$${{PW}}\"\n\n[[flow]]\nname = \"f\"\ntopics = [\"a\"]\n"
    );
    let c = load(&text).unwrap();
    let props: Vec<_> = c.source.properties.iter().collect();
    assert!(
        props.contains(&("sasl.password", "pw-value-42")),
        "{props:?}"
    );
    assert!(
        props.contains(&("note", "${PW}")),
        "escaped stays literal: {props:?}"
    );
    let bad = text.replace("${PW}\"\n\"note", "${NOPE}\"\n\"note");
    has(
        &problems(&bad),
        "source.properties.sasl.password",
        9,
        "`NOPE` is not set",
    );
}

#[test]
fn secrets_are_masked_in_debug_and_errors() {
    let text = format!(
        "{BASE}[source.properties]\n\"sasl.password\" = \"${{PW}}\"\n\"sasl.jaas.config\" = \"org.Foo required password=abc\"\n\"ssl.key.password\" = \"k3y\"\n\n[[flow]]\nname = \"f\"\ntopics = [\"a\"]\n"
    );
    let c = load(&text).unwrap();
    let dbg = format!("{c:?}");
    for secret in ["pw-value-42", "password=abc", "k3y"] {
        assert!(!dbg.contains(secret), "{secret} leaked in {dbg}");
    }
    assert!(dbg.contains("******"));
    let summary = kmirror::commands::summary(&c);
    assert!(!summary.contains("pw-value-42"), "{summary}");
    // A problem elsewhere in the file never prints a secret value.
    let bad = format!("{text}colour = 1\n");
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        !err.contains("pw-value-42") && !err.contains("k3y"),
        "{err}"
    );
}

#[test]
fn invalid_toml_names_the_line() {
    let ps = problems("[source]\nalias = \"a\"\nbootstrap_servers = \n");
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].line, Some(3), "{ps:#?}");
    assert!(ps[0].message.contains("invalid TOML"));
}

/// `${file:PATH}` reads a value from a file (trailing newline trimmed),
/// the property is masked whatever its name, and a missing file is a
/// problem naming the key, the line and the path, never a value.
#[test]
fn secret_files_are_read_masked_and_missing_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "file-secret-77\n").unwrap();
    let user = dir.path().join("user");
    std::fs::write(&user, "mirror-user\r\n").unwrap();
    let text = format!(
        "{BASE}[source.properties]\n\"sasl.password\" = \"${{file:{}}}\"\n\"sasl.username\" = \"${{file:{}}}\"\n\n[[flow]]\nname = \"f\"\ntopics = [\"a\"]\n",
        pw.display(),
        user.display()
    );
    let c = load(&text).unwrap();
    let props: Vec<_> = c.source.properties.iter().collect();
    assert!(
        props.contains(&("sasl.password", "file-secret-77")),
        "{props:?}"
    );
    assert!(
        props.contains(&("sasl.username", "mirror-user")),
        "{props:?}"
    );
    // Masked like a secret, even under a name that is not secret-looking.
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("file-secret-77") && !dbg.contains("mirror-user"),
        "{dbg}"
    );
    let summary = kmirror::commands::summary(&c);
    assert!(!summary.contains("mirror-user"), "{summary}");
    // A missing file: one problem naming the key, its line and the path.
    let gone = dir.path().join("gone");
    let bad = text.replace(&pw.display().to_string(), &gone.display().to_string());
    has(
        &problems(&bad),
        "source.properties.sasl.password",
        9,
        &format!("file `{}`", gone.display()),
    );
}
