//! MM2's rule for copying topic ACLs to the target (`sync_topic_acls`).
//!
//! MirrorMaker 2 copies only topic-level ALLOW ACLs, never lets anyone write
//! to a mirrored topic through a copied ACL (ALLOW WRITE is dropped, ALLOW
//! ALL is narrowed to ALLOW READ), and names the target (renamed) topic.

use std::fmt;

/// The operation an ACL grants or denies (the subset the rule cares about).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    /// READ: consume from the topic.
    Read,
    /// WRITE: produce to the topic.
    Write,
    /// ALL: every operation on the topic.
    All,
    /// DESCRIBE: see the topic's metadata.
    Describe,
    /// Any other operation, by its Kafka name (e.g. `DESCRIBE_CONFIGS`).
    Other(String),
}

/// Whether an ACL allows or denies its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// ALLOW.
    Allow,
    /// DENY.
    Deny,
}

/// One literal topic ACL binding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicAcl {
    /// The topic the ACL is on.
    pub topic: String,
    /// The principal, e.g. `User:alice`.
    pub principal: String,
    /// The host, `*` for any.
    pub host: String,
    /// The operation granted or denied.
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

/// The ACL to create on the target for a source topic ACL, or None when MM2's rule does not copy it.
///
/// DENY ACLs and ALLOW WRITE are not copied; ALLOW ALL becomes ALLOW READ;
/// every other ALLOW ACL is copied as it is. The copy is on `target_topic`,
/// with the same principal and host.
pub fn translate(acl: &TopicAcl, target_topic: &str) -> Option<TopicAcl> {
    if acl.permission != Permission::Allow {
        return None;
    }
    let operation = match &acl.operation {
        Operation::Write => return None,
        Operation::All => Operation::Read,
        other => other.clone(),
    };
    Some(TopicAcl {
        topic: target_topic.to_string(),
        principal: acl.principal.clone(),
        host: acl.host.clone(),
        operation,
        permission: Permission::Allow,
    })
}

impl fmt::Display for Operation {
    /// The Kafka name: `READ`, `WRITE`, `ALL`, `DESCRIBE`, or the other name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Read => f.write_str("READ"),
            Operation::Write => f.write_str("WRITE"),
            Operation::All => f.write_str("ALL"),
            Operation::Describe => f.write_str("DESCRIBE"),
            Operation::Other(name) => f.write_str(name),
        }
    }
}

impl fmt::Display for Permission {
    /// `ALLOW` or `DENY`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Allow => "ALLOW",
            Permission::Deny => "DENY",
        })
    }
}

impl fmt::Display for TopicAcl {
    /// Reads like `ALLOW READ on topic east.orders for User:alice from *`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} on topic {} for {} from {}",
            self.permission, self.operation, self.topic, self.principal, self.host
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(operation: Operation, permission: Permission) -> TopicAcl {
        TopicAcl {
            topic: "orders".into(),
            principal: "User:alice".into(),
            host: "10.0.0.1".into(),
            operation,
            permission,
        }
    }

    #[test]
    fn allow_read_is_copied_to_the_target_topic() {
        let got = translate(&acl(Operation::Read, Permission::Allow), "east.orders");
        assert_eq!(
            got,
            Some(TopicAcl {
                topic: "east.orders".into(),
                principal: "User:alice".into(),
                host: "10.0.0.1".into(),
                operation: Operation::Read,
                permission: Permission::Allow,
            })
        );
    }

    #[test]
    fn allow_describe_is_copied_as_it_is() {
        let got = translate(&acl(Operation::Describe, Permission::Allow), "east.orders").unwrap();
        assert_eq!(got.operation, Operation::Describe);
        assert_eq!(got.permission, Permission::Allow);
        assert_eq!(got.topic, "east.orders");
    }

    #[test]
    fn allow_other_operation_is_copied_as_it_is() {
        let op = Operation::Other("DESCRIBE_CONFIGS".into());
        let got = translate(&acl(op.clone(), Permission::Allow), "east.orders").unwrap();
        assert_eq!(got.operation, op);
        assert_eq!(got.topic, "east.orders");
    }

    #[test]
    fn allow_write_is_not_copied() {
        assert_eq!(
            translate(&acl(Operation::Write, Permission::Allow), "east.orders"),
            None
        );
    }

    #[test]
    fn allow_all_becomes_allow_read() {
        let got = translate(&acl(Operation::All, Permission::Allow), "east.orders").unwrap();
        assert_eq!(got.operation, Operation::Read);
        assert_eq!(got.permission, Permission::Allow);
        assert_eq!(got.topic, "east.orders");
        assert_eq!(got.principal, "User:alice");
        assert_eq!(got.host, "10.0.0.1");
    }

    #[test]
    fn deny_acls_are_never_copied() {
        for op in [
            Operation::Read,
            Operation::Write,
            Operation::All,
            Operation::Describe,
            Operation::Other("ALTER".into()),
        ] {
            assert_eq!(translate(&acl(op, Permission::Deny), "east.orders"), None);
        }
    }

    #[test]
    fn display_names_permission_operation_topic_principal_host() {
        let got = translate(&acl(Operation::All, Permission::Allow), "east.orders").unwrap();
        assert_eq!(
            got.to_string(),
            "ALLOW READ on topic east.orders for User:alice from 10.0.0.1"
        );
    }
}

/// The ACLs to create on the target: MM2's rule applied to the source's
/// ACLs of each mirrored topic (source topic → target topic), minus those
/// the target already has. Nothing is ever deleted.
pub fn to_create(
    source: &[TopicAcl],
    target: &[TopicAcl],
    mirrored: &[(String, String)],
) -> Vec<TopicAcl> {
    let have: std::collections::HashSet<&TopicAcl> = target.iter().collect();
    let mut out: Vec<TopicAcl> = Vec::new();
    for (src, dst) in mirrored {
        for a in source.iter().filter(|a| &a.topic == src) {
            if let Some(t) = translate(a, dst) {
                if !have.contains(&t) && !out.contains(&t) {
                    out.push(t);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod to_create_tests {
    use super::*;

    fn acl(topic: &str, op: Operation, perm: Permission) -> TopicAcl {
        TopicAcl {
            topic: topic.into(),
            principal: "User:app".into(),
            host: "*".into(),
            operation: op,
            permission: perm,
        }
    }

    #[test]
    fn only_missing_translated_acls_of_mirrored_topics() {
        let source = vec![
            acl("orders", Operation::All, Permission::Allow),
            acl("orders", Operation::Write, Permission::Allow),
            acl("orders", Operation::Describe, Permission::Allow),
            acl("orders", Operation::Read, Permission::Deny),
            acl("other", Operation::Read, Permission::Allow),
        ];
        let target = vec![acl("east.orders", Operation::Describe, Permission::Allow)];
        let got = to_create(&source, &target, &[("orders".into(), "east.orders".into())]);
        assert_eq!(
            got,
            vec![acl("east.orders", Operation::Read, Permission::Allow)]
        );
    }
}
