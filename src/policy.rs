//! Pure mirroring rules: which topics a flow selects, what they are called
//! on the target, which groups are checkpointed, and what is never mirrored.

use regex::Regex;

/// A compiled include/exclude pair of whole-name regexes.
#[derive(Debug, Clone)]
pub struct NameFilter {
    include: Vec<(String, Regex)>,
    exclude: Vec<(String, Regex)>,
}

/// Why a name was or was not selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Matched this include pattern and no exclude pattern.
    Included(String),
    /// Matched no include pattern.
    NotIncluded,
    /// Matched this exclude pattern.
    Excluded(String),
}

/// Compiles a user regex so that it must match the whole name.
pub fn whole_name_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

impl NameFilter {
    /// Compiles the patterns; the error names the pattern that failed.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        let comp = |ps: &[String]| -> Result<Vec<(String, Regex)>, String> {
            ps.iter()
                .map(|p| {
                    whole_name_regex(p)
                        .map(|r| (p.clone(), r))
                        .map_err(|e| format!("invalid regex {p:?}: {e}"))
                })
                .collect()
        };
        Ok(Self {
            include: comp(include)?,
            exclude: comp(exclude)?,
        })
    }

    /// Whether `name` is selected, and by which rule.
    pub fn select(&self, name: &str) -> Selection {
        if let Some((p, _)) = self.exclude.iter().find(|(_, r)| r.is_match(name)) {
            return Selection::Excluded(p.clone());
        }
        match self.include.iter().find(|(_, r)| r.is_match(name)) {
            Some((p, _)) => Selection::Included(p.clone()),
            None => Selection::NotIncluded,
        }
    }

    /// True when `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        matches!(self.select(name), Selection::Included(_))
    }
}

/// A target-name template such as `{source}.{topic}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    template: String,
}

/// Characters Kafka allows in a topic name.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

impl Rename {
    /// Checks the template: it must contain `{topic}` exactly once and no
    /// other placeholder than `{source}`.
    pub fn new(template: &str) -> Result<Self, String> {
        let n = template.matches("{topic}").count();
        if n == 0 {
            return Err(format!(
                "rename template {template:?} has no `{{topic}}`: every source topic would map to one target topic (use \"{{source}}.{{topic}}\" or \"{{topic}}\")"
            ));
        }
        if n > 1 {
            return Err(format!(
                "rename template {template:?} has `{{topic}}` more than once"
            ));
        }
        let stripped = template.replace("{topic}", "").replace("{source}", "");
        if stripped.contains('{') || stripped.contains('}') {
            return Err(format!(
                "rename template {template:?} has an unknown placeholder; only {{source}} and {{topic}} exist"
            ));
        }
        if !stripped
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
        {
            return Err(format!(
                "rename template {template:?} has characters a topic name cannot hold (allowed: letters, digits, . _ -)"
            ));
        }
        Ok(Self {
            template: template.to_string(),
        })
    }

    /// The target topic name of `topic` mirrored from cluster `source`.
    pub fn apply(&self, source: &str, topic: &str) -> String {
        self.template
            .replace("{source}", source)
            .replace("{topic}", topic)
    }

    /// True when the template is the identity (`{topic}`).
    pub fn is_identity(&self) -> bool {
        self.template == "{topic}"
    }

    /// True when `topic` has the shape this template gives to topics that
    /// the opposite direction (from `target` to us) produced: mirroring it
    /// back would be a cycle. Identity renaming cannot tell (use the
    /// provenance header).
    pub fn came_from(&self, target: &str, topic: &str) -> bool {
        if self.is_identity() || !self.template.contains("{source}") {
            return false;
        }
        let shaped = self.template.replace("{source}", target);
        let (pre, post) = shaped.split_once("{topic}").unwrap_or((&shaped, ""));
        topic.len() > pre.len() + post.len() && topic.starts_with(pre) && topic.ends_with(post)
    }
}

/// Why a topic is never mirrored, whatever the flow selects.
pub fn never_mirrored(topic: &str) -> Option<&'static str> {
    if topic.starts_with("__") {
        Some("internal topic (`__` prefix)")
    } else if topic.ends_with(".internal") || topic.ends_with("-internal") {
        Some("internal topic (`.internal` suffix)")
    } else if topic == "heartbeats" {
        Some("heartbeats topic")
    } else if topic.ends_with(".replica") {
        Some("replica topic (`.replica` suffix)")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn filters_match_whole_names() {
        let f =
            NameFilter::new(&v(&["orders\\..*", "payments"]), &v(&["orders\\.tmp\\..*"])).unwrap();
        assert!(f.matches("orders.eu"));
        assert!(f.matches("payments"));
        assert!(!f.matches("payments2"), "regex must match the whole name");
        assert!(!f.matches("xorders.eu"));
        assert_eq!(
            f.select("orders.tmp.1"),
            Selection::Excluded("orders\\.tmp\\..*".into())
        );
        assert_eq!(f.select("other"), Selection::NotIncluded);
    }

    #[test]
    fn bad_regex_is_named() {
        let e = NameFilter::new(&v(&["ok", "("]), &[]).unwrap_err();
        assert!(e.contains("\"(\""), "{e}");
    }

    #[test]
    fn rename_rules() {
        let r = Rename::new("{source}.{topic}").unwrap();
        assert_eq!(r.apply("east", "orders"), "east.orders");
        assert!(r.came_from("west", "west.orders"));
        assert!(!r.came_from("west", "orders"));
        assert!(!r.came_from("west", "west."));
        let id = Rename::new("{topic}").unwrap();
        assert_eq!(id.apply("east", "orders"), "orders");
        assert!(!id.came_from("west", "west.orders"));
        let suffix = Rename::new("{topic}-from-{source}").unwrap();
        assert_eq!(suffix.apply("east", "a"), "a-from-east");
        assert!(suffix.came_from("west", "a-from-west"));
        assert!(Rename::new("{source}.fixed").is_err());
        assert!(Rename::new("{topic}.{topic}").is_err());
        assert!(Rename::new("{src}.{topic}").is_err());
        assert!(Rename::new("a b.{topic}").is_err());
    }

    #[test]
    fn internal_topics_are_never_mirrored() {
        for t in [
            "__consumer_offsets",
            "__transaction_state",
            "east.checkpoints.internal",
            "kmirror-offset-syncs.east.internal",
            "mm2-configs.west-internal",
            "heartbeats",
        ] {
            assert!(never_mirrored(t).is_some(), "{t}");
        }
        assert!(never_mirrored("orders").is_none());
        assert!(never_mirrored("east.heartbeats").is_none());
    }
}
