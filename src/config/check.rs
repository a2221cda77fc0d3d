//! Structural check of the configuration document, with source positions.
//!
//! serde stops at the first error and a typed struct no longer knows the
//! line a value came from, so this walk over the parsed document (which
//! keeps spans) finds every unknown key, wrong type, bad duration or enum
//! value and unset `${VAR}` at once, and records the line of every key for
//! the cross-field rules of [`super::validate`].

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::env;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `flow[1].topics[0]`; empty for the whole file.
    pub key: String,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

impl Problem {
    /// A problem at `line` about `key`.
    pub fn new(line: Option<usize>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            line,
            key: key.into(),
            message: message.into(),
        }
    }

    /// `FILE:LINE: KEY: message`.
    pub fn display<'a>(&'a self, path: &'a Path) -> impl fmt::Display + 'a {
        struct D<'a>(&'a Problem, &'a Path);
        impl fmt::Display for D<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.1.display())?;
                if let Some(l) = self.0.line {
                    write!(f, ":{l}")?;
                }
                if !self.0.key.is_empty() {
                    write!(f, ": {}", self.0.key)?;
                }
                write!(f, ": {}", self.0.message)
            }
        }
        D(self, path)
    }
}

/// Line of each key path seen in the document.
pub type Lines = HashMap<String, usize>;

/// Result of [`check`].
#[derive(Debug, Default)]
pub struct Checked {
    /// Structural problems.
    pub problems: Vec<Problem>,
    /// Line of every key path.
    pub lines: Lines,
}

/// 1-based line number of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[derive(Clone, Copy)]
enum Kind {
    /// A string; `interp` = `${VAR}` is expanded.
    Str {
        interp: bool,
    },
    Int,
    Bool,
    Duration,
    /// `earliest`, `latest` or an RFC 3339 timestamp.
    StartFrom,
    /// A list of whole-name regexes.
    Regexes,
    /// A rename template.
    Rename,
    Choice(&'static [&'static str]),
    Props,
    Table(&'static [Field]),
    TableArray(&'static [Field]),
}

#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}
const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const ISTR: Kind = Kind::Str { interp: true };
const STR: Kind = Kind::Str { interp: false };

const CLUSTER: &[Field] = &[
    req("alias", ISTR),
    req("bootstrap_servers", ISTR),
    f("properties", Kind::Props),
];
const HTTP: &[Field] = &[
    f("listen", ISTR),
    f(
        "metrics_level",
        Kind::Choice(&["flow", "topic", "partition"]),
    ),
];
const RUNTIME: &[Field] = &[
    f("shutdown_timeout", Kind::Duration),
    f("group_instance_id", ISTR),
    f("consumer_queue_kbytes", Kind::Int),
    f("producer_queue_kbytes", Kind::Int),
    f("commit_interval", Kind::Duration),
    f("max_bytes_per_second", Kind::Int),
];
const FLOW: &[Field] = &[
    req("name", STR),
    req("topics", Kind::Regexes),
    f("topics_exclude", Kind::Regexes),
    f("rename", Kind::Rename),
    f("groups", Kind::Regexes),
    f("groups_exclude", Kind::Regexes),
    f("delivery", Kind::Choice(&["at-least-once", "exactly-once"])),
    f("sync_topic_configs", Kind::Bool),
    f("config_exclude", Kind::Regexes),
    f("sync_partitions", Kind::Bool),
    f("sync_topic_acls", Kind::Bool),
    f("replication_factor", Kind::Int),
    f(
        "compression",
        Kind::Choice(&["none", "gzip", "snappy", "lz4", "zstd"]),
    ),
    f("provenance_header", Kind::Bool),
    f("sync_group_offsets", Kind::Bool),
    f("start_from", Kind::StartFrom),
    f("max_bytes_per_second", Kind::Int),
    f("refresh_topics_interval", Kind::Duration),
    f("sync_configs_interval", Kind::Duration),
    f("checkpoint_interval", Kind::Duration),
    f("heartbeat_interval", Kind::Duration),
];
const TOP: &[Field] = &[
    req("source", Kind::Table(CLUSTER)),
    req("target", Kind::Table(CLUSTER)),
    f("http", Kind::Table(HTTP)),
    f("runtime", Kind::Table(RUNTIME)),
    req("flow", Kind::TableArray(FLOW)),
];

struct Walker<'a> {
    text: &'a str,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    out: Checked,
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "an inline table",
        },
    }
}

impl Walker<'_> {
    fn line(&self, span: Option<std::ops::Range<usize>>) -> Option<usize> {
        span.map(|s| line_of(self.text, s.start))
    }

    fn problem(&mut self, line: Option<usize>, key: &str, msg: String) {
        self.out.problems.push(Problem::new(line, key, msg));
    }

    fn table(&mut self, t: &dyn TableLike, fields: &[Field], path: &str, line: Option<usize>) {
        for (k, item) in t.iter() {
            let kline = t
                .get_key_value(k)
                .and_then(|(key, _)| key.span())
                .or_else(|| item.span())
                .map(|s| line_of(self.text, s.start))
                .or(line);
            let kpath = if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            };
            if let Some(l) = kline {
                self.out.lines.insert(kpath.clone(), l);
            }
            match fields.iter().find(|fl| fl.name == k) {
                Some(fl) => self.item(item, fl.kind, &kpath, kline),
                None => {
                    let known: Vec<&str> = fields.iter().map(|fl| fl.name).collect();
                    let section = if path.is_empty() {
                        "at the top level".to_string()
                    } else {
                        format!("in [{path}]")
                    };
                    self.problem(
                        kline,
                        &kpath,
                        format!(
                            "unknown key `{k}` {section}; known keys: {}",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        for fl in fields.iter().filter(|fl| fl.required) {
            if t.get(fl.name).is_none() {
                let kpath = if path.is_empty() {
                    fl.name.to_string()
                } else {
                    format!("{path}.{}", fl.name)
                };
                let what = match fl.kind {
                    Kind::Table(_) => format!("missing table [{kpath}]"),
                    Kind::TableArray(_) => {
                        format!("missing [[{kpath}]]: at least one flow is needed")
                    }
                    _ => format!("missing required key `{}`", fl.name),
                };
                self.problem(line, &kpath, what);
            }
        }
    }

    fn string(&mut self, s: &str, interp: bool, path: &str, line: Option<usize>) {
        if interp {
            if let Err(errs) = env::interpolate(s, self.lookup) {
                for e in errs {
                    self.problem(line, path, e);
                }
            }
        }
    }

    fn item(&mut self, item: &Item, kind: Kind, path: &str, line: Option<usize>) {
        let wrong = |w: &mut Self, expected: &str| {
            let got = type_name(item);
            w.problem(line, path, format!("expected {expected}, found {got}"));
        };
        match kind {
            Kind::Str { interp } => match item.as_str() {
                Some(s) => self.string(s, interp, path, line),
                None => wrong(self, "a string"),
            },
            Kind::Int => {
                if item.as_integer().is_none() {
                    wrong(self, "an integer")
                }
            }
            Kind::Bool => {
                if item.as_bool().is_none() {
                    wrong(self, "a boolean (true or false)")
                }
            }
            Kind::Duration => match item.as_str() {
                Some(s) => {
                    if let Err(e) = super::parse_duration(s) {
                        self.problem(line, path, format!("invalid duration {s:?}: {e}"));
                    }
                }
                None => wrong(self, "a duration string such as \"10s\""),
            },
            Kind::StartFrom => match item.as_str() {
                Some(s) => {
                    if let Err(e) = super::StartFrom::parse(s) {
                        self.problem(line, path, e);
                    }
                }
                None => wrong(
                    self,
                    "\"earliest\", \"latest\" or an RFC 3339 timestamp string",
                ),
            },
            Kind::Choice(options) => match item.as_str() {
                Some(s) if options.contains(&s) => {}
                Some(s) => self.problem(
                    line,
                    path,
                    format!(
                        "invalid value {s:?}; expected one of: {}",
                        options.join(", ")
                    ),
                ),
                None => wrong(self, &format!("one of: {}", options.join(", "))),
            },
            Kind::Rename => match item.as_str() {
                Some(s) => {
                    if let Err(e) = crate::policy::Rename::new(s) {
                        self.problem(line, path, e);
                    }
                }
                None => wrong(self, "a string"),
            },
            Kind::Regexes => match item.as_array() {
                Some(arr) => {
                    for (i, v) in arr.iter().enumerate() {
                        let ipath = format!("{path}[{i}]");
                        let vline = self.line(v.span()).or(line);
                        if let Some(l) = vline {
                            self.out.lines.insert(ipath.clone(), l);
                        }
                        match v.as_str() {
                            None => self.problem(vline, &ipath, "expected a string".to_string()),
                            Some(p) => {
                                if let Err(e) = crate::policy::whole_name_regex(p) {
                                    let why = e.to_string();
                                    let why = why.lines().last().unwrap_or("").trim().to_string();
                                    self.problem(
                                        vline,
                                        &ipath,
                                        format!("invalid regex {p:?}: {why}"),
                                    );
                                }
                            }
                        }
                    }
                }
                None => wrong(self, "an array of strings"),
            },
            Kind::Props => match item.as_table_like() {
                Some(t) => {
                    for (k, v) in t.iter() {
                        let kpath = format!("{path}.{k}");
                        let kline = t
                            .get_key_value(k)
                            .and_then(|(key, _)| key.span())
                            .map(|s| line_of(self.text, s.start))
                            .or(line);
                        if let Some(l) = kline {
                            self.out.lines.insert(kpath.clone(), l);
                        }
                        match v.as_value() {
                            Some(Value::String(s)) => self.string(s.value(), true, &kpath, kline),
                            Some(Value::Integer(_) | Value::Boolean(_) | Value::Float(_)) => {}
                            _ => self.problem(
                                kline,
                                &kpath,
                                format!(
                                    "a librdkafka property must be a string, integer or boolean, found {}",
                                    type_name(v)
                                ),
                            ),
                        }
                    }
                }
                None => wrong(self, "a table of librdkafka properties"),
            },
            Kind::Table(fields) => match item.as_table_like() {
                Some(t) => self.table(t, fields, path, line),
                None => wrong(self, "a table"),
            },
            Kind::TableArray(fields) => match item {
                Item::ArrayOfTables(aot) => {
                    for (i, t) in aot.iter().enumerate() {
                        let ipath = format!("{path}[{i}]");
                        let tline = self.line(t.span()).or(line);
                        if let Some(l) = tline {
                            self.out.lines.insert(ipath.clone(), l);
                        }
                        self.table(t, fields, &ipath, tline);
                    }
                }
                Item::Value(Value::Array(arr)) => {
                    for (i, v) in arr.iter().enumerate() {
                        let ipath = format!("{path}[{i}]");
                        let vline = self.line(v.span()).or(line);
                        if let Some(l) = vline {
                            self.out.lines.insert(ipath.clone(), l);
                        }
                        match v.as_inline_table() {
                            Some(t) => self.table(t, fields, &ipath, vline),
                            None => self.problem(vline, &ipath, "expected a table".to_string()),
                        }
                    }
                }
                _ => wrong(self, "[[flow]] tables"),
            },
        }
    }
}

/// Walks the document: every structural problem, and the line of each key.
pub fn check(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Checked {
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().trim().to_string();
            return Checked {
                problems: vec![Problem::new(line, "", format!("invalid TOML: {msg}"))],
                lines: Lines::new(),
            };
        }
    };
    let mut w = Walker {
        text,
        lookup,
        out: Checked::default(),
    };
    w.table(doc.as_table(), TOP, "", None);
    w.out
}
