//! The Kubernetes deployment (`deploy/kubernetes/`): every manifest is a
//! valid Kubernetes object (`kubernetes-validate --strict`, offline, against
//! the oldest and the newest Kubernetes version the manifests support), and
//! the manifests agree with the kmirror config they carry (loaded by
//! kmirror's own loader and by `kmirror validate`), with each other and with
//! the Dockerfile: metrics port, probes, config and secret paths, grace
//! period, static membership, disruption budget, resources, scraping.
//!
//! Never skipped: without kubernetes-validate the test fails and names the
//! install command (`bash scripts/install-test-tools.sh`). No cluster and no
//! network are needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

/// Kubernetes versions the manifests are validated against: the oldest
/// they support (PodDisruptionBudget `unhealthyPodEvictionPolicy` is on by
/// default from 1.27) and the newest that kubernetes-validate 1.37 bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.27", "1.37"];

/// How to install the validator (the version scripts/install-test-tools.sh pins).
const INSTALL_HINT: &str = "run `bash scripts/install-test-tools.sh` \
     (installs kubernetes-validate from PyPI with `python3 -m pip`), \
     or `python3 -m pip install kubernetes-validate==1.37.0`";

/// Highest peak RSS measured by the benchmark (README, "Benchmark": 96-110
/// MiB with a 1 GB backlog, 92-101 MiB with 1,000 partitions): the memory
/// request must cover it.
const MEASURED_PEAK_RSS_MIB: u64 = 110;

/// Seconds the kubelet must leave after `shutdown_timeout` before SIGKILL,
/// for the process to exit after its last commit.
const GRACE_MARGIN_SECS: u64 = 10;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The manifests: every `*.yaml` / `*.yml` file of deploy/kubernetes, sorted.
fn manifest_files() -> Vec<PathBuf> {
    let dir = deploy_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no manifests", dir.display());
    files
}

/// A scalar as text (YAML integers and booleans too).
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The items of a YAML sequence (empty when it is absent).
fn items(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// A mapping of scalars (labels, annotations, matchLabels, data) as a map;
/// empty when absent.
fn string_map(y: &Yaml) -> BTreeMap<String, String> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (scalar(k).unwrap_or_default(), scalar(v).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every `selector` label is among `labels` (a non-empty selector).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One Kubernetes object of a manifest file.
struct Object {
    file: String,
    doc: Yaml,
}

impl Object {
    fn kind(&self) -> String {
        scalar(&self.doc["kind"]).unwrap_or_default()
    }

    fn name(&self) -> String {
        scalar(&self.doc["metadata"]["name"]).unwrap_or_default()
    }
}

/// Every object of every manifest (multi-document files included).
fn load_objects() -> Vec<Object> {
    let mut out = Vec::new();
    for path in manifest_files() {
        let file = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let docs = YamlLoader::load_from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}"));
        for doc in docs {
            if doc.is_null() {
                continue; // an empty document (a stray `---`)
            }
            assert!(
                scalar(&doc["kind"]).is_some() && scalar(&doc["metadata"]["name"]).is_some(),
                "{file}: a document without kind or metadata.name"
            );
            out.push(Object {
                file: file.clone(),
                doc,
            });
        }
    }
    out
}

/// The only object of a kind.
fn one<'a>(objects: &'a [Object], kind: &str) -> &'a Object {
    let found: Vec<&Object> = objects.iter().filter(|o| o.kind() == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "deploy/kubernetes: expected exactly one {kind}, found {:?}",
        found
            .iter()
            .map(|o| format!("{} in {}", o.name(), o.file))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// How to run kubernetes-validate: as a module of the `python3` on PATH
/// (where scripts/install-test-tools.sh installs the pinned version), else
/// the command on PATH, else in pip's `--user` scripts directory.
fn validator() -> Vec<String> {
    let mut candidates: Vec<Vec<String>> = vec![
        vec!["python3".into(), "-m".into(), "kubernetes_validate".into()],
        vec!["kubernetes-validate".into()],
    ];
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(vec![Path::new(&home)
            .join(".local/bin/kubernetes-validate")
            .to_string_lossy()
            .into_owned()]);
    }
    let mut tried = Vec::new();
    for cand in candidates {
        match Command::new(&cand[0])
            .args(&cand[1..])
            .arg("--version")
            .output()
        {
            Ok(o) if o.status.success() => return cand,
            Ok(o) => tried.push(format!(
                "`{} --version`: {}: {}",
                cand.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => tried.push(format!("`{}`: {e}", cand.join(" "))),
        }
    }
    panic!(
        "kubernetes-validate is not installed: {INSTALL_HINT}.\ntried:\n  {}",
        tried.join("\n  ")
    );
}

#[test]
fn manifests_are_valid_kubernetes_objects() {
    let cmd = validator();
    let objects = load_objects();
    let files: Vec<String> = manifest_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut c = Command::new(&cmd[0]);
    c.args(&cmd[1..]).arg("--strict");
    for v in KUBERNETES_VERSIONS {
        c.arg("--kubernetes-version").arg(v);
    }
    let out = c
        .args(files)
        .current_dir(deploy_dir())
        .output()
        .unwrap_or_else(|e| panic!("`{}` could not run: {e}; {INSTALL_HINT}", cmd.join(" ")));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`{} --strict` rejects the manifests in deploy/kubernetes ({}; for the pinned \
         kubernetes-validate, {INSTALL_HINT}):\n{text}",
        cmd.join(" "),
        out.status
    );
    // A kind without a schema (a custom resource such as a PodMonitor) gets
    // only a WARN and exit 0: every object must really have been checked.
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("WARN") || l.starts_with("ERROR") || l.starts_with("FATAL"))
        .collect();
    assert!(
        complaints.is_empty(),
        "kubernetes-validate could not check everything (custom resources have no \
         offline schema: keep them out of deploy/kubernetes/*.yaml):\n{}",
        complaints.join("\n")
    );
    for o in &objects {
        for v in KUBERNETES_VERSIONS {
            let want = format!(
                "passed for resource {}/{} against version {v}",
                o.kind().to_lowercase(),
                o.name()
            );
            assert!(
                text.lines()
                    .any(|l| l.contains(&o.file) && l.contains(&want)),
                "{}: {} {} was not reported as validated against Kubernetes {v} \
                 (no line with {want:?}):\n{text}",
                o.file,
                o.kind(),
                o.name()
            );
        }
    }
}

/// A tiny standard base64 decoder (Secret `data`).
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf: u32 = 0;
    let mut bits: u32 = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("invalid base64 in a Secret: {s:?}")) as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1u32 << bits) - 1;
        }
    }
    out
}

/// The keys of a ConfigMap or Secret with their content.
fn object_data(o: &Object) -> BTreeMap<String, String> {
    let mut data = string_map(&o.doc["data"]);
    if o.kind() == "Secret" {
        for v in data.values_mut() {
            *v = String::from_utf8_lossy(&base64_decode(v)).into_owned();
        }
        data.extend(string_map(&o.doc["stringData"]));
    }
    data
}

/// A file that a ConfigMap or Secret volume puts into the container.
#[derive(Clone, Debug)]
struct MountedFile {
    /// "ConfigMap" or "Secret".
    kind: String,
    /// The object's name.
    object: String,
    /// The object's key.
    key: String,
    /// Mounted alone with `subPath` (never updated by the kubelet).
    sub_path: bool,
    content: String,
}

/// Every file the container sees from ConfigMap and Secret volumes, by
/// absolute path.
fn mounted_files(
    pod_spec: &Yaml,
    container: &Yaml,
    objects: &[Object],
) -> BTreeMap<String, MountedFile> {
    let mut out = BTreeMap::new();
    for m in items(&container["volumeMounts"]) {
        let vol_name = scalar(&m["name"]).expect("volumeMount without name");
        let mount_path = scalar(&m["mountPath"]).expect("volumeMount without mountPath");
        let volume = items(&pod_spec["volumes"])
            .iter()
            .find(|v| scalar(&v["name"]).as_deref() == Some(vol_name.as_str()))
            .unwrap_or_else(|| panic!("statefulset: volumeMount {vol_name} names no volume"));
        let (kind, spec, name) = if volume["secret"].as_hash().is_some() {
            (
                "Secret",
                &volume["secret"],
                scalar(&volume["secret"]["secretName"]),
            )
        } else if volume["configMap"].as_hash().is_some() {
            (
                "ConfigMap",
                &volume["configMap"],
                scalar(&volume["configMap"]["name"]),
            )
        } else {
            continue;
        };
        let name = name.unwrap_or_else(|| panic!("volume {vol_name}: no {kind} name"));
        let obj = objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
            .unwrap_or_else(|| {
                panic!("volume {vol_name} mounts {kind} {name}, which no manifest defines")
            });
        let data = object_data(obj);
        let projected: Vec<(String, String)> = if items(&spec["items"]).is_empty() {
            data.keys().map(|k| (k.clone(), k.clone())).collect()
        } else {
            items(&spec["items"])
                .iter()
                .map(|i| {
                    (
                        scalar(&i["key"]).expect("volume item without key"),
                        scalar(&i["path"]).expect("volume item without path"),
                    )
                })
                .collect()
        };
        let sub_path = scalar(&m["subPath"]);
        for (key, rel) in projected {
            let content = data.get(&key).cloned().unwrap_or_else(|| {
                panic!("volume {vol_name} projects key {key:?}, which {kind} {name} lacks")
            });
            let path = match &sub_path {
                Some(sp) if *sp == rel => mount_path.clone(),
                Some(_) => continue,
                None => format!("{}/{rel}", mount_path.trim_end_matches('/')),
            };
            out.insert(
                path,
                MountedFile {
                    kind: kind.to_string(),
                    object: name.clone(),
                    key,
                    sub_path: sub_path.is_some(),
                    content,
                },
            );
        }
    }
    out
}

/// A port of a probe or a Service: a number, or the name of a container port.
fn resolve_port(port: &Yaml, container: &Yaml, what: &str) -> u16 {
    match port {
        Yaml::Integer(n) => u16::try_from(*n).unwrap_or_else(|_| panic!("{what}: port {n}")),
        Yaml::String(name) => items(&container["ports"])
            .iter()
            .find(|p| scalar(&p["name"]).as_deref() == Some(name.as_str()))
            .and_then(|p| p["containerPort"].as_i64())
            .and_then(|n| u16::try_from(n).ok())
            .unwrap_or_else(|| panic!("{what}: port {name:?} is no named port of the container")),
        other => panic!("{what}: no port ({other:?})"),
    }
}

/// A Kubernetes quantity of bytes ("128Mi", "1G", "1000000").
fn quantity_bytes(q: &str) -> u64 {
    const UNITS: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, mult) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            let n: u64 = n.parse().unwrap_or_else(|e| panic!("quantity {q:?}: {e}"));
            return n * mult;
        }
    }
    q.parse().unwrap_or_else(|e| panic!("quantity {q:?}: {e}"))
}

/// The instructions of a Dockerfile's final stage: (INSTRUCTION, arguments),
/// continuation lines joined, comments dropped.
fn dockerfile_final_stage(text: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            joined.push(std::mem::take(&mut cur));
        }
    }
    let mut stage = Vec::new();
    for l in joined {
        let (ins, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let ins = ins.to_ascii_uppercase();
        if ins == "FROM" {
            stage.clear();
        }
        stage.push((ins, args.trim().to_string()));
    }
    stage
}

/// The last value of an instruction of the final stage.
fn last_instruction(stage: &[(String, String)], ins: &str) -> String {
    stage
        .iter()
        .rev()
        .find(|(i, _)| i == ins)
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| panic!("Dockerfile: no {ins} in the final stage"))
}

/// `${file:PATH}` references in the string values of a TOML text (not in
/// comments, not the escaped `$${file:...}`).
fn file_refs(text: &str) -> BTreeSet<String> {
    fn strings(v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::String(s) => out.push(s.clone()),
            toml::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            toml::Value::Table(t) => t.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("the ConfigMap's kmirror config is not TOML: {e}"));
    let mut values = Vec::new();
    table.values().for_each(|v| strings(v, &mut values));
    let re = regex::Regex::new(r"(^|[^$])\$\{file:([^}]*)\}").unwrap();
    values
        .iter()
        .flat_map(|s| {
            re.captures_iter(s)
                .map(|c| c[2].trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Everything the consistency tests look at, gathered once.
struct Deployment {
    objects: Vec<Object>,
    /// Index of the StatefulSet in `objects`.
    sts: usize,
    /// The StatefulSet's name, and its first pod's (`NAME-0`).
    sts_name: String,
    pod_name: String,
    pod_labels: BTreeMap<String, String>,
    /// `kmirror ARGS` as the container runs it.
    args: Vec<String>,
    /// `--config` in the container.
    config_path: String,
    /// Files from ConfigMap and Secret volumes, by path in the container.
    files: BTreeMap<String, MountedFile>,
    /// The TOML as the ConfigMap holds it.
    toml_text: String,
    /// The container's environment as kmirror would see it in pod NAME-0.
    env: BTreeMap<String, String>,
    /// The Dockerfile's final stage.
    docker: Vec<(String, String)>,
}

impl Deployment {
    fn sts(&self) -> &Yaml {
        &self.objects[self.sts].doc
    }

    fn pod_spec(&self) -> &Yaml {
        &self.sts()["spec"]["template"]["spec"]
    }

    fn container(&self) -> &Yaml {
        container_of(self.pod_spec())
    }

    /// The ConfigMap's TOML with every `${file:PATH}` pointing to a copy of
    /// the mounted file under `dir`, so that it loads outside the pod.
    fn toml_outside_pod(&self, dir: &Path) -> String {
        let mut text = self.toml_text.clone();
        for (i, path) in file_refs(&self.toml_text).iter().enumerate() {
            let f = self.files.get(path).unwrap_or_else(|| {
                panic!(
                    "config: ${{file:{path}}}: no mounted Secret (or ConfigMap) puts a file \
                     there; a key missing from the Secret? (mounted: {:?})",
                    self.files.keys().collect::<Vec<_>>()
                )
            });
            let local = dir.join(format!("file-{i}"));
            std::fs::write(&local, &f.content).unwrap();
            text = text.replace(
                &format!("${{file:{path}}}"),
                &format!("${{file:{}}}", local.display()),
            );
        }
        text
    }
}

/// The kmirror container of a pod spec.
fn container_of(pod_spec: &Yaml) -> &Yaml {
    let containers = items(&pod_spec["containers"]);
    containers
        .iter()
        .find(|c| scalar(&c["name"]).as_deref() == Some("kmirror"))
        .unwrap_or_else(|| {
            panic!(
                "statefulset: no container named kmirror among {:?}",
                containers
                    .iter()
                    .map(|c| scalar(&c["name"]))
                    .collect::<Vec<_>>()
            )
        })
}

fn deployment() -> Deployment {
    let objects = load_objects();
    let sts_name = one(&objects, "StatefulSet").name();
    let sts = objects
        .iter()
        .position(|o| o.kind() == "StatefulSet")
        .unwrap();
    let doc = &objects[sts].doc;
    let pod_name = format!("{sts_name}-0");
    let template = &doc["spec"]["template"];
    let pod_labels = string_map(&template["metadata"]["labels"]);
    let pod_spec = &template["spec"];
    let container = container_of(pod_spec);

    let docker = dockerfile_final_stage(&read(&repo().join("Dockerfile")));

    // The command: the image's ENTRYPOINT is kmirror, `args` replace its CMD.
    assert!(
        container["command"].is_badvalue(),
        "statefulset: the container sets `command`; keep the image's ENTRYPOINT (kmirror) \
         and pass `args`"
    );
    let entrypoint: Vec<String> = serde_json::from_str(&last_instruction(&docker, "ENTRYPOINT"))
        .expect("Dockerfile ENTRYPOINT must be a JSON array");
    assert!(
        entrypoint.len() == 1 && entrypoint[0].ends_with("/kmirror"),
        "Dockerfile ENTRYPOINT {entrypoint:?} is not the kmirror binary alone"
    );
    let args: Vec<String> = if container["args"].is_badvalue() {
        serde_json::from_str(&last_instruction(&docker, "CMD"))
            .expect("Dockerfile CMD must be a JSON array")
    } else {
        items(&container["args"])
            .iter()
            .map(|a| scalar(a).expect("args: a non-scalar"))
            .collect()
    };
    assert!(
        args.iter().any(|a| a == "run"),
        "statefulset: the container's args {args:?} do not `run`"
    );
    let config_path = args
        .iter()
        .position(|a| a == "--config" || a == "-c")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("statefulset: args {args:?} have no --config FILE"));

    let files = mounted_files(pod_spec, container, &objects);
    let config_file = files.get(&config_path).unwrap_or_else(|| {
        panic!(
            "statefulset: --config {config_path} is no file of a mounted ConfigMap \
             (mounted files: {:?})",
            files.keys().collect::<Vec<_>>()
        )
    });
    assert_eq!(
        config_file.kind, "ConfigMap",
        "statefulset: --config {config_path} should come from a ConfigMap"
    );
    let toml_text = config_file.content.clone();

    // The environment kmirror sees in pod NAME-0. Container runtimes set
    // HOSTNAME to the pod's host name, which in a StatefulSet is the pod's
    // name; the env list may also set it explicitly.
    let mut env = BTreeMap::from([("HOSTNAME".to_string(), pod_name.clone())]);
    for e in items(&container["env"]) {
        let name = scalar(&e["name"]).expect("env entry without name");
        let value = if let Some(v) = scalar(&e["value"]) {
            v
        } else if let Some(field) = scalar(&e["valueFrom"]["fieldRef"]["fieldPath"]) {
            if field == "metadata.name" {
                pod_name.clone()
            } else {
                format!("<{field}>")
            }
        } else {
            format!("<{name}: valueFrom>")
        };
        env.insert(name, value);
    }

    Deployment {
        objects,
        sts,
        sts_name,
        pod_name,
        pod_labels,
        args,
        config_path,
        files,
        toml_text,
        env,
        docker,
    }
}

#[test]
fn manifests_agree_with_the_config_and_each_other() {
    let d = deployment();
    let sts = d.sts();
    let spec = &sts["spec"];
    let pod_spec = d.pod_spec();
    let container = d.container();

    // The config, as kmirror loads it in pod NAME-0 (same rules as
    // `kmirror validate`; `${file:...}` read from copies of the mounted files).
    let dir = tempfile::tempdir().unwrap();
    let text = d.toml_outside_pod(dir.path());
    let env = d.env.clone();
    let lookup = move |name: &str| env.get(name).cloned();
    let where_ = PathBuf::from(format!("deploy/kubernetes (ConfigMap, {})", d.config_path));
    let config = kmirror::config::load_str(&where_, &text, &lookup)
        .unwrap_or_else(|e| panic!("the ConfigMap's kmirror config does not load:\n{e}"));
    let raw: toml::Table = d
        .toml_text
        .parse()
        .expect("the ConfigMap's kmirror config is not TOML");

    // --- Static membership: group_instance_id is the pod's name.
    let gid = raw
        .get("runtime")
        .and_then(|r| r.get("group_instance_id"))
        .and_then(|v| v.as_str());
    assert_eq!(
        gid,
        Some("${HOSTNAME}"),
        "config: [runtime] group_instance_id should be \"${{HOSTNAME}}\" (static membership: \
         the StatefulSet pod's stable name)"
    );
    for e in items(&container["env"]) {
        if scalar(&e["name"]).as_deref() == Some("HOSTNAME") {
            assert_eq!(
                scalar(&e["valueFrom"]["fieldRef"]["fieldPath"]).as_deref(),
                Some("metadata.name"),
                "statefulset: env HOSTNAME must be the pod's name (fieldRef metadata.name)"
            );
        }
    }
    assert_eq!(
        config.runtime.group_instance_id, d.pod_name,
        "config: group_instance_id does not become the pod's name"
    );

    // --- Replicas and the disruption budget.
    let replicas = spec["replicas"].as_i64().unwrap_or(1);
    assert!(
        replicas >= 2,
        "statefulset: replicas {replicas}; at least 2, so that a restart or a drain \
         leaves mirroring running"
    );
    let sts_selector = string_map(&spec["selector"]["matchLabels"]);
    assert!(
        selects(&sts_selector, &d.pod_labels),
        "statefulset: selector {sts_selector:?} does not select its pod labels {:?}",
        d.pod_labels
    );
    let pdb = one(&d.objects, "PodDisruptionBudget");
    let pdb_selector = string_map(&pdb.doc["spec"]["selector"]["matchLabels"]);
    assert!(
        selects(&pdb_selector, &d.pod_labels),
        "{}: selector {pdb_selector:?} does not select the StatefulSet's pods {:?}",
        pdb.file,
        d.pod_labels
    );
    let max_unavailable = pdb.doc["spec"]["maxUnavailable"].as_i64();
    let min_available = pdb.doc["spec"]["minAvailable"].as_i64();
    assert!(
        max_unavailable == Some(1) || min_available == Some(replicas - 1),
        "{}: expected maxUnavailable 1 (or minAvailable {}), found maxUnavailable \
         {max_unavailable:?}, minAvailable {min_available:?}",
        pdb.file,
        replicas - 1,
    );

    // --- The metrics port: config, container, probes, annotations, Service, image.
    let (listen_host, port) = config
        .http
        .listen
        .rsplit_once(':')
        .map(|(h, p)| {
            (
                h.trim_matches(['[', ']']).to_string(),
                p.parse::<u16>()
                    .unwrap_or_else(|e| panic!("[http] listen {:?}: {e}", config.http.listen)),
            )
        })
        .unwrap_or_else(|| {
            panic!(
                "config: [http] listen {:?} is not host:port (probes and scrapes need it)",
                config.http.listen
            )
        });
    assert!(
        listen_host == "0.0.0.0" || listen_host == "::",
        "config: [http] listen {:?} is not reachable by the kubelet's probes nor by \
         Prometheus: listen on 0.0.0.0",
        config.http.listen
    );
    let container_ports: Vec<u16> = items(&container["ports"])
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .filter_map(|n| u16::try_from(n).ok())
        .collect();
    assert!(
        container_ports.contains(&port),
        "statefulset: containerPorts {container_ports:?} lack [http] listen's {port}"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert!(
            get.as_hash().is_some(),
            "statefulset: no {probe} with httpGet (expected GET {path})"
        );
        assert_eq!(
            scalar(&get["path"]).as_deref(),
            Some(path),
            "statefulset: {probe} should GET {path}"
        );
        assert_eq!(
            resolve_port(&get["port"], container, probe),
            port,
            "statefulset: {probe} does not probe [http] listen's port {port}"
        );
    }
    let annotations = string_map(&sts["spec"]["template"]["metadata"]["annotations"]);
    assert_eq!(
        annotations.get("prometheus.io/scrape").map(String::as_str),
        Some("true"),
        "statefulset: pod annotation prometheus.io/scrape should be \"true\""
    );
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&port.to_string()),
        "statefulset: pod annotation prometheus.io/port should be the metrics port {port}"
    );
    if let Some(path) = annotations.get("prometheus.io/path") {
        assert_eq!(path, "/metrics", "statefulset: prometheus.io/path");
    }
    let service = one(&d.objects, "Service");
    assert_eq!(
        scalar(&spec["serviceName"]),
        Some(service.name()),
        "statefulset: serviceName should be the headless Service {}",
        service.name()
    );
    assert_eq!(
        scalar(&service.doc["spec"]["clusterIP"]).as_deref(),
        Some("None"),
        "{}: the StatefulSet's governing Service should be headless (clusterIP: None)",
        service.file
    );
    let svc_selector = string_map(&service.doc["spec"]["selector"]);
    assert!(
        selects(&svc_selector, &d.pod_labels),
        "{}: selector {svc_selector:?} does not select the pods {:?}",
        service.file,
        d.pod_labels
    );
    for p in items(&service.doc["spec"]["ports"]) {
        let target = if p["targetPort"].is_badvalue() {
            &p["port"]
        } else {
            &p["targetPort"]
        };
        assert_eq!(
            resolve_port(target, container, &service.file),
            port,
            "{}: port {:?} does not lead to the metrics port {port}",
            service.file,
            scalar(&p["name"])
        );
    }
    let exposed: Vec<String> = d
        .docker
        .iter()
        .filter(|(i, _)| i == "EXPOSE")
        .flat_map(|(_, a)| {
            a.split_whitespace()
                .map(|p| p.split('/').next().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        exposed.contains(&port.to_string()),
        "Dockerfile EXPOSEs {exposed:?}, not the metrics port {port}"
    );

    // --- SIGTERM: the kubelet waits longer than kmirror's graceful stop.
    let grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30); // the Kubernetes default
    let shutdown = config.runtime.shutdown_timeout.as_secs();
    assert!(
        grace >= 0 && grace as u64 >= shutdown + GRACE_MARGIN_SECS,
        "statefulset: terminationGracePeriodSeconds {grace} should exceed [runtime] \
         shutdown_timeout ({shutdown} s) by at least {GRACE_MARGIN_SECS} s, or SIGKILL \
         may cut the drain and final commit"
    );

    // --- Config and secrets as files.
    assert!(
        d.config_path.starts_with('/'),
        "--config {} should be absolute",
        d.config_path
    );
    let config_file = &d.files[&d.config_path];
    assert!(
        !config_file.sub_path,
        "statefulset: the config is mounted with subPath, which the kubelet never \
         updates: mount the ConfigMap as a directory so that `--watch` sees changes"
    );
    assert!(
        d.args.iter().any(|a| a == "--watch"),
        "statefulset: `run` without --watch: a changed ConfigMap would not be reloaded"
    );
    let refs = file_refs(&d.toml_text);
    assert!(
        !refs.is_empty(),
        "config: no `${{file:...}}` reference: passwords should come from a Secret mounted as files"
    );
    for path in &refs {
        let f = d.files.get(path).unwrap_or_else(|| {
            panic!(
                "config: ${{file:{path}}} is no file of a mounted volume (mounted: {:?})",
                d.files.keys().collect::<Vec<_>>()
            )
        });
        assert_eq!(
            f.kind, "Secret",
            "config: ${{file:{path}}} comes from {} {} (key {}), not from a Secret",
            f.kind, f.object, f.key
        );
    }
    // Files librdkafka reads itself (CA, client certificate, keystore):
    // they must be mounted too.
    for cluster in [&config.source, &config.target] {
        for (k, v) in cluster.properties.iter() {
            if k.ends_with(".location") && !v.is_empty() {
                assert!(
                    d.files.contains_key(v),
                    "config: [{}] property {k:?} = {v:?} is no file of a mounted volume \
                     (mounted: {:?})",
                    cluster.alias,
                    d.files.keys().collect::<Vec<_>>()
                );
            }
        }
    }
    for m in items(&container["volumeMounts"]) {
        assert_eq!(
            m["readOnly"].as_bool(),
            Some(true),
            "statefulset: volumeMount {:?} should be readOnly",
            scalar(&m["name"])
        );
    }
    let secret = one(&d.objects, "Secret");
    assert!(
        d.files
            .values()
            .any(|f| f.kind == "Secret" && f.object == secret.name()),
        "{}: Secret {} is not mounted by the StatefulSet",
        secret.file,
        secret.name()
    );

    // --- The image's user, non-root.
    let user = last_instruction(&d.docker, "USER");
    let uid: i64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("Dockerfile USER {user:?} is not numeric: {e}"));
    let psc = &pod_spec["securityContext"];
    assert_eq!(
        psc["runAsNonRoot"].as_bool(),
        Some(true),
        "statefulset: securityContext.runAsNonRoot should be true"
    );
    assert_eq!(
        psc["runAsUser"].as_i64(),
        Some(uid),
        "statefulset: runAsUser should be the image's USER {uid}"
    );
    assert_eq!(
        psc["fsGroup"].as_i64(),
        psc["runAsGroup"].as_i64().or(Some(uid)),
        "statefulset: fsGroup should be the process's group, so that it reads the \
         Secret's files"
    );

    // --- Resources: from the measured RSS.
    let res = &container["resources"];
    let req_mem = scalar(&res["requests"]["memory"])
        .map(|q| quantity_bytes(&q))
        .unwrap_or_else(|| panic!("statefulset: no resources.requests.memory"));
    let lim_mem = scalar(&res["limits"]["memory"])
        .map(|q| quantity_bytes(&q))
        .unwrap_or_else(|| panic!("statefulset: no resources.limits.memory"));
    assert!(
        req_mem >= MEASURED_PEAK_RSS_MIB << 20,
        "statefulset: requests.memory {} MiB is below the measured peak RSS \
         ({MEASURED_PEAK_RSS_MIB} MiB, README \"Benchmark\")",
        req_mem >> 20
    );
    assert!(
        lim_mem >= req_mem,
        "statefulset: limits.memory is below requests.memory"
    );
    assert!(
        scalar(&res["requests"]["cpu"]).is_some(),
        "statefulset: no resources.requests.cpu"
    );

    // --- The PodMonitor offered in README.md scrapes these pods' port.
    let readme = read(&deploy_dir().join("README.md"));
    let block = readme
        .split("```yaml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("kind: PodMonitor"))
        .expect("deploy/kubernetes/README.md: no ```yaml block with a PodMonitor");
    let pm = YamlLoader::load_from_str(block)
        .expect("README.md: the PodMonitor is not YAML")
        .remove(0);
    let pm_selector = string_map(&pm["spec"]["selector"]["matchLabels"]);
    assert!(
        selects(&pm_selector, &d.pod_labels),
        "README.md: PodMonitor selector {pm_selector:?} does not select the pods {:?}",
        d.pod_labels
    );
    let endpoints = items(&pm["spec"]["podMetricsEndpoints"]);
    assert!(
        !endpoints.is_empty(),
        "README.md: PodMonitor has no podMetricsEndpoints"
    );
    for ep in endpoints {
        assert_eq!(
            resolve_port(&ep["port"], container, "README.md PodMonitor"),
            port,
            "README.md: the PodMonitor does not scrape the metrics port"
        );
        assert_eq!(
            scalar(&ep["path"]).as_deref().unwrap_or("/metrics"),
            "/metrics"
        );
    }
    if let Some(job_label) = scalar(&pm["spec"]["jobLabel"]) {
        let job = d.pod_labels.get(&job_label).unwrap_or_else(|| {
            panic!("README.md: PodMonitor jobLabel {job_label} is not a pod label")
        });
        assert!(
            job.contains("kmirror"),
            "README.md: PodMonitor job {job:?} does not match the alert rules' \
             up{{job=~\".*kmirror.*\"}}"
        );
    }
    assert!(
        d.sts_name.contains("kmirror"),
        "statefulset: name {:?} should say kmirror (the alert rules match jobs by it)",
        d.sts_name
    );
}

/// The binary the pods run accepts the ConfigMap's config as `validate`
/// does (offline), in the pod's environment, and prints no secret.
#[test]
fn kmirror_validate_accepts_the_configmap_config() {
    let d = deployment();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kmirror.toml");
    std::fs::write(&path, d.toml_outside_pod(dir.path())).unwrap();
    let bin = std::env::var_os("KMIRROR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kmirror")));
    let out = Command::new(&bin)
        .arg("validate")
        .arg("--config")
        .arg(path.as_os_str())
        .envs(d.env.iter())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kmirror validate refuses the ConfigMap's config ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("0.0.0.0:"),
        "validate's summary should show the http listener on 0.0.0.0:\n{stdout}"
    );
    for path in file_refs(&d.toml_text) {
        let secret = d.files[&path].content.trim_end_matches(['\n', '\r']);
        assert!(
            !secret.is_empty() && !stdout.contains(secret) && !stderr.contains(secret),
            "the content of {path} is empty or printed by kmirror validate:\n{stdout}{stderr}"
        );
    }
}
