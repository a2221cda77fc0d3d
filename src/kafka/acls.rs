//! DescribeAcls and CreateAcls, which rdkafka 0.39's `AdminClient` lacks:
//! a small wrapper over librdkafka's ACL admin calls, for topic ACLs only.
//! Blocking; call from `spawn_blocking`/`block_in_place` in async code.
//! Reuses the RAII guards of [`super::incremental`].
#![allow(unsafe_code)]

use std::os::raw::c_char;
use std::ptr;
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys as rd;
use rdkafka_sys::types::RDKafkaRespErr;

use super::incremental::{admin_call, cstr, owned};
use crate::config_sync::acl::{Operation, Permission, TopicAcl};

use rd::rd_kafka_AclOperation_t as Op;

fn op_to_rd(o: &Operation) -> Op {
    match o {
        Operation::Read => Op::RD_KAFKA_ACL_OPERATION_READ,
        Operation::Write => Op::RD_KAFKA_ACL_OPERATION_WRITE,
        Operation::All => Op::RD_KAFKA_ACL_OPERATION_ALL,
        Operation::Describe => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE,
        Operation::Other(name) => match name.as_str() {
            "CREATE" => Op::RD_KAFKA_ACL_OPERATION_CREATE,
            "DELETE" => Op::RD_KAFKA_ACL_OPERATION_DELETE,
            "ALTER" => Op::RD_KAFKA_ACL_OPERATION_ALTER,
            "DESCRIBE_CONFIGS" => Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
            "ALTER_CONFIGS" => Op::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
            _ => Op::RD_KAFKA_ACL_OPERATION_UNKNOWN,
        },
    }
}

fn op_from_rd(o: Op) -> Operation {
    match o {
        Op::RD_KAFKA_ACL_OPERATION_READ => Operation::Read,
        Op::RD_KAFKA_ACL_OPERATION_WRITE => Operation::Write,
        Op::RD_KAFKA_ACL_OPERATION_ALL => Operation::All,
        Op::RD_KAFKA_ACL_OPERATION_DESCRIBE => Operation::Describe,
        Op::RD_KAFKA_ACL_OPERATION_CREATE => Operation::Other("CREATE".into()),
        Op::RD_KAFKA_ACL_OPERATION_DELETE => Operation::Other("DELETE".into()),
        Op::RD_KAFKA_ACL_OPERATION_ALTER => Operation::Other("ALTER".into()),
        Op::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS => Operation::Other("DESCRIBE_CONFIGS".into()),
        Op::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS => Operation::Other("ALTER_CONFIGS".into()),
        other => Operation::Other(format!("{other:?}")),
    }
}

/// Every literal topic ACL of the cluster (all principals, hosts,
/// operations and permissions).
pub fn describe_topic_acls<C: ClientContext>(
    client: &Client<C>,
    timeout: Duration,
) -> Result<Vec<TopicAcl>, String> {
    let mut errbuf = [0 as c_char; 256];
    // SAFETY: NULL name/principal/host mean "any"; errbuf is writable. The
    // filter is destroyed below on every path.
    let filter = unsafe {
        rd::rd_kafka_AclBindingFilter_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            ptr::null(),
            rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
            ptr::null(),
            ptr::null(),
            Op::RD_KAFKA_ACL_OPERATION_ANY,
            rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
            errbuf.as_mut_ptr(),
            errbuf.len(),
        )
    };
    if filter.is_null() {
        return Err(format!("ACL filter: {}", owned(errbuf.as_ptr())));
    }
    let res = admin_call(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBEACLS,
        timeout,
        |rk, opts, q| {
            // SAFETY: all pointers are live for the call; librdkafka copies the filter.
            unsafe { rd::rd_kafka_DescribeAcls(rk, filter, opts, q) }
        },
    );
    // SAFETY: created above, not used after this point.
    unsafe { rd::rd_kafka_AclBinding_destroy(filter) };
    let ev = res?;
    // SAFETY: ev is live; NULL means an unexpected event type.
    let result = unsafe { rd::rd_kafka_event_DescribeAcls_result(ev.0) };
    if result.is_null() {
        return Err("unexpected answer to DescribeAcls".into());
    }
    let mut cnt = 0usize;
    // SAFETY: result is live while ev is; cnt receives the length.
    let arr = unsafe { rd::rd_kafka_DescribeAcls_result_acls(result, &mut cnt) };
    let mut out = Vec::with_capacity(cnt);
    for i in 0..cnt {
        // SAFETY: arr holds `cnt` valid bindings owned by ev; every field is
        // copied before ev is dropped.
        let acl = unsafe {
            let b = *arr.add(i);
            TopicAcl {
                topic: owned(rd::rd_kafka_AclBinding_name(b)),
                principal: owned(rd::rd_kafka_AclBinding_principal(b)),
                host: owned(rd::rd_kafka_AclBinding_host(b)),
                operation: op_from_rd(rd::rd_kafka_AclBinding_operation(b)),
                permission: match rd::rd_kafka_AclBinding_permission_type(b) {
                    rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW => {
                        Permission::Allow
                    }
                    _ => Permission::Deny,
                },
            }
        };
        out.push(acl);
    }
    Ok(out)
}

/// Creates topic ACLs (literal pattern); the result per ACL, in order.
pub fn create_topic_acls<C: ClientContext>(
    client: &Client<C>,
    acls: &[TopicAcl],
    timeout: Duration,
) -> Result<Vec<Result<(), String>>, String> {
    if acls.is_empty() {
        return Ok(Vec::new());
    }
    struct Bindings(Vec<*mut rd::rd_kafka_AclBinding_t>);
    impl Drop for Bindings {
        fn drop(&mut self) {
            for b in self.0.drain(..) {
                // SAFETY: each came from rd_kafka_AclBinding_new, destroyed once.
                unsafe { rd::rd_kafka_AclBinding_destroy(b) };
            }
        }
    }
    let mut bindings = Bindings(Vec::with_capacity(acls.len()));
    for a in acls {
        let (name, principal, host) = (cstr(&a.topic)?, cstr(&a.principal)?, cstr(&a.host)?);
        let mut errbuf = [0 as c_char; 256];
        // SAFETY: the strings are valid for the call and copied; errbuf is
        // writable; the binding is owned by `bindings` from here on.
        let b = unsafe {
            rd::rd_kafka_AclBinding_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                name.as_ptr(),
                rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                principal.as_ptr(),
                host.as_ptr(),
                op_to_rd(&a.operation),
                match a.permission {
                    Permission::Allow => {
                        rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW
                    }
                    Permission::Deny => {
                        rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_DENY
                    }
                },
                errbuf.as_mut_ptr(),
                errbuf.len(),
            )
        };
        if b.is_null() {
            return Err(format!("ACL {a}: {}", owned(errbuf.as_ptr())));
        }
        bindings.0.push(b);
    }
    let ev = admin_call(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
        timeout,
        |rk, opts, q| {
            // SAFETY: all pointers are live for the call; librdkafka copies them.
            unsafe {
                rd::rd_kafka_CreateAcls(rk, bindings.0.as_mut_ptr(), bindings.0.len(), opts, q)
            }
        },
    )?;
    // SAFETY: ev is live; NULL means an unexpected event type.
    let result = unsafe { rd::rd_kafka_event_CreateAcls_result(ev.0) };
    if result.is_null() {
        return Err("unexpected answer to CreateAcls".into());
    }
    let mut cnt = 0usize;
    // SAFETY: result is live while ev is.
    let arr = unsafe { rd::rd_kafka_CreateAcls_result_acls(result, &mut cnt) };
    let mut out = Vec::with_capacity(cnt);
    for i in 0..cnt {
        // SAFETY: arr holds `cnt` results owned by ev; the error (if any) is
        // owned by its result and read before ev is dropped.
        let r = unsafe {
            let e = rd::rd_kafka_acl_result_error(*arr.add(i));
            if e.is_null()
                || rd::rd_kafka_error_code(e) == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                Ok(())
            } else {
                Err(owned(rd::rd_kafka_error_string(e)))
            }
        };
        out.push(r);
    }
    Ok(out)
}
