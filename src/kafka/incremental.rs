//! IncrementalAlterConfigs, which rdkafka 0.39's `AdminClient` lacks: one
//! small, audited wrapper over `rd_kafka_IncrementalAlterConfigs`.
//!
//! The call is blocking (it waits on a private event queue); call it from
//! `spawn_blocking` in async code. Ownership of every librdkafka object is
//! held by a guard that destroys it on every path.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr;
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys as rd;
use rdkafka_sys::types::RDKafkaRespErr;

/// One incremental change of a topic property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    /// Set `name` to `value`.
    Set(String, String),
    /// Remove the topic-level value of `name` (back to the broker default).
    Delete(String),
}

/// The broker's answer for one topic, or why the request failed.
pub type TopicResult = Result<(), String>;

struct Resources(Vec<*mut rd::rd_kafka_ConfigResource_t>);
impl Drop for Resources {
    fn drop(&mut self) {
        for r in self.0.drain(..) {
            // SAFETY: each pointer came from rd_kafka_ConfigResource_new, is
            // non-null, and librdkafka copied it when the request was made
            // (IncrementalAlterConfigs does not take ownership).
            unsafe { rd::rd_kafka_ConfigResource_destroy(r) };
        }
    }
}

pub(super) struct Queue(pub(super) *mut rd::rd_kafka_queue_t);
impl Drop for Queue {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_queue_new, destroyed exactly once.
        unsafe { rd::rd_kafka_queue_destroy(self.0) };
    }
}

pub(super) struct Options(pub(super) *mut rd::rd_kafka_AdminOptions_t);
impl Drop for Options {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_AdminOptions_new, destroyed exactly once.
        unsafe { rd::rd_kafka_AdminOptions_destroy(self.0) };
    }
}

pub(super) struct Event(pub(super) *mut rd::rd_kafka_event_t);
impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: returned non-null by rd_kafka_queue_poll, destroyed once;
        // nothing borrowed from it outlives this guard.
        unsafe { rd::rd_kafka_event_destroy(self.0) };
    }
}

pub(super) fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Reads a C string librdkafka owns into an owned `String`.
pub(super) fn owned(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null, NUL-terminated string owned by librdkafka and valid
    // for the lifetime of the object it came from, which the caller holds.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Applies `changes` (topic -> ops) with one IncrementalAlterConfigs
/// request. The outer error is a failed request; the inner results are per
/// topic, in the order given.
pub fn incremental_alter_topic_configs<C: ClientContext>(
    client: &Client<C>,
    changes: &[(String, Vec<ConfigOp>)],
    timeout: Duration,
) -> Result<Vec<(String, TopicResult)>, String> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut resources = Resources(Vec::with_capacity(changes.len()));
    for (topic, ops) in changes {
        let name = cstr(topic)?;
        // SAFETY: `name` is a valid C string for the call; the returned
        // resource is owned by `resources` from here on.
        let res = unsafe {
            rd::rd_kafka_ConfigResource_new(
                rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
                name.as_ptr(),
            )
        };
        if res.is_null() {
            return Err(format!(
                "cannot describe topic {topic} as a config resource"
            ));
        }
        resources.0.push(res);
        for op in ops {
            let (key, kind, value) = match op {
                ConfigOp::Set(k, v) => (
                    cstr(k)?,
                    rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                    Some(cstr(v)?),
                ),
                ConfigOp::Delete(k) => (
                    cstr(k)?,
                    rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_DELETE,
                    None,
                ),
            };
            let vptr = value.as_ref().map_or(ptr::null(), |v| v.as_ptr());
            // SAFETY: `res` is a live resource; key and value are valid C
            // strings (value may be NULL for DELETE), copied by librdkafka.
            let err = unsafe {
                rd::rd_kafka_ConfigResource_add_incremental_config(res, key.as_ptr(), kind, vptr)
            };
            if !err.is_null() {
                // SAFETY: a non-null error is ours to read and destroy.
                let msg = owned(unsafe { rd::rd_kafka_error_string(err) });
                // SAFETY: destroyed once, not used after.
                unsafe { rd::rd_kafka_error_destroy(err) };
                return Err(format!("topic {topic}: {msg}"));
            }
        }
    }
    let ev = admin_call(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
        timeout,
        |rk, options, queue| {
            // SAFETY: all pointers are live for the call; librdkafka copies
            // the resources and posts one result event to `queue`.
            unsafe {
                rd::rd_kafka_IncrementalAlterConfigs(
                    rk,
                    resources.0.as_mut_ptr(),
                    resources.0.len(),
                    options,
                    queue,
                )
            }
        },
    )
    .map_err(|e| format!("IncrementalAlterConfigs: {e}"))?;
    // SAFETY: ev is live; a NULL result means an unexpected event type.
    let result = unsafe { rd::rd_kafka_event_IncrementalAlterConfigs_result(ev.0) };
    if result.is_null() {
        return Err("unexpected event in answer to IncrementalAlterConfigs".into());
    }
    let mut cnt: usize = 0;
    // SAFETY: result is live while ev is; cnt receives the array length.
    let arr = unsafe { rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut cnt) };
    let mut out = Vec::with_capacity(cnt);
    for i in 0..cnt {
        // SAFETY: arr holds `cnt` valid resource pointers owned by ev.
        let r = unsafe { *arr.add(i) };
        // SAFETY: r is live while ev is; strings are copied immediately.
        let (name, code, msg) = unsafe {
            (
                owned(rd::rd_kafka_ConfigResource_name(r)),
                rd::rd_kafka_ConfigResource_error(r),
                owned(rd::rd_kafka_ConfigResource_error_string(r)),
            )
        };
        let res = if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            let c: rdkafka::types::RDKafkaErrorCode = code.into();
            Err(if msg.is_empty() {
                c.to_string()
            } else {
                format!("{c}: {msg}")
            })
        };
        out.push((name, res));
    }
    Ok(out)
}

/// Runs one admin request on a private queue and returns its result event.
pub(super) fn admin_call<C: ClientContext>(
    client: &Client<C>,
    op: rd::rd_kafka_admin_op_t,
    timeout: Duration,
    send: impl FnOnce(
        *mut rd::rd_kafka_t,
        *const rd::rd_kafka_AdminOptions_t,
        *mut rd::rd_kafka_queue_t,
    ),
) -> Result<Event, String> {
    let rk = client.native_ptr();
    // SAFETY: `rk` is the live handle of `client`, borrowed for this call;
    // queue and options are owned by their guards.
    let queue = Queue(unsafe { rd::rd_kafka_queue_new(rk) });
    // SAFETY: as above.
    let options = Options(unsafe { rd::rd_kafka_AdminOptions_new(rk, op) });
    let mut errbuf = [0 as c_char; 256];
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: options is live; errbuf is writable for its whole length.
    unsafe {
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options.0,
            ms,
            errbuf.as_mut_ptr(),
            errbuf.len(),
        )
    };
    send(rk, options.0, queue.0);
    // SAFETY: queue is live; the wait is bounded.
    let ev = unsafe { rd::rd_kafka_queue_poll(queue.0, ms.saturating_add(5000)) };
    if ev.is_null() {
        return Err(format!("no answer within {timeout:?}"));
    }
    let ev = Event(ev);
    // SAFETY: ev is a live event.
    let err = unsafe { rd::rd_kafka_event_error(ev.0) };
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: ev is live; the string is copied before ev is destroyed.
        let msg = owned(unsafe { rd::rd_kafka_event_error_string(ev.0) });
        let code: rdkafka::types::RDKafkaErrorCode = err.into();
        return Err(format!("{code}: {msg}"));
    }
    Ok(ev)
}
