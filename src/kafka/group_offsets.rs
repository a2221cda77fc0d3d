//! ListConsumerGroupOffsets, which rdkafka 0.39's `AdminClient` lacks:
//! the committed offsets of any group through one client, so that the
//! checkpoint loop reads every group with the client it already has
//! instead of making a consumer bound to each group on every tick.
//!
//! Blocking (it waits on a private event queue, see
//! [`super::incremental::admin_call`]); call it from blocking code.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys as rd;
use rdkafka_sys::types::RDKafkaRespErr;

use super::incremental::{admin_call, cstr, owned};

struct Request(*mut rd::rd_kafka_ListConsumerGroupOffsets_t);
impl Drop for Request {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_ListConsumerGroupOffsets_new,
        // destroyed exactly once (librdkafka copies it for the request).
        unsafe { rd::rd_kafka_ListConsumerGroupOffsets_destroy(self.0) };
    }
}

struct Partitions(*mut rd::rd_kafka_topic_partition_list_t);
impl Drop for Partitions {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_topic_partition_list_new, destroyed
        // exactly once; the request copied it.
        unsafe { rd::rd_kafka_topic_partition_list_destroy(self.0) };
    }
}

/// The committed offsets of `group` for `parts` (a partition without a
/// commit is left out), with one ListConsumerGroupOffsets request. `None`
/// asks for every partition the group has committed: the answer then
/// grows with the group's commits, not with the caller's topics (librdkafka
/// matches each answered partition against the asked list one by one, so
/// asking for 10,000 partitions costs 10,000² comparisons per group).
pub fn list_group_offsets<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    parts: Option<&[(String, i32)]>,
    timeout: Duration,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    let g = cstr(group)?;
    let list = match parts {
        None => None,
        Some(parts) => {
            // SAFETY: a fresh list, owned by the guard.
            let list = Partitions(unsafe {
                rd::rd_kafka_topic_partition_list_new(parts.len().min(i32::MAX as usize) as i32)
            });
            for (t, p) in parts {
                let name = cstr(t)?;
                // SAFETY: list is live; the topic name is copied by librdkafka.
                unsafe { rd::rd_kafka_topic_partition_list_add(list.0, name.as_ptr(), *p) };
            }
            Some(list)
        }
    };
    let list_ptr = list.as_ref().map_or(std::ptr::null_mut(), |l| l.0);
    // SAFETY: group id and list (or NULL: every committed partition) are
    // valid for the call and copied.
    let req = Request(unsafe { rd::rd_kafka_ListConsumerGroupOffsets_new(g.as_ptr(), list_ptr) });
    if req.0.is_null() {
        return Err(format!(
            "cannot make a ListConsumerGroupOffsets request for {group}"
        ));
    }
    let mut reqs = [req.0];
    let ev = admin_call(
        client,
        rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS,
        timeout,
        |rk, options, queue| {
            // SAFETY: every pointer is live for the call; librdkafka copies
            // the request and posts one result event to `queue`.
            unsafe {
                rd::rd_kafka_ListConsumerGroupOffsets(
                    rk,
                    reqs.as_mut_ptr(),
                    reqs.len(),
                    options,
                    queue,
                )
            }
        },
    )
    .map_err(|e| format!("ListConsumerGroupOffsets {group}: {e}"))?;
    // SAFETY: ev is live; NULL means an unexpected event type.
    let result = unsafe { rd::rd_kafka_event_ListConsumerGroupOffsets_result(ev.0) };
    if result.is_null() {
        return Err(format!(
            "unexpected event in answer to ListConsumerGroupOffsets {group}"
        ));
    }
    let mut cnt: usize = 0;
    // SAFETY: result is live while ev is; cnt receives the array length.
    let groups = unsafe { rd::rd_kafka_ListConsumerGroupOffsets_result_groups(result, &mut cnt) };
    let mut out = BTreeMap::new();
    for i in 0..cnt {
        // SAFETY: groups holds `cnt` valid pointers owned by ev.
        let gr = unsafe { *groups.add(i) };
        // SAFETY: gr is live while ev is.
        let err = unsafe { rd::rd_kafka_group_result_error(gr) };
        if !err.is_null() {
            // SAFETY: err is owned by the group result; read, not freed.
            let msg = owned(unsafe { rd::rd_kafka_error_string(err) });
            return Err(format!("ListConsumerGroupOffsets {group}: {msg}"));
        }
        // SAFETY: as above; the list is owned by the group result.
        let tpl = unsafe { rd::rd_kafka_group_result_partitions(gr) };
        if tpl.is_null() {
            continue;
        }
        // SAFETY: tpl is a live list of `cnt` elements owned by ev.
        let (n, elems) = unsafe { ((*tpl).cnt.max(0) as usize, (*tpl).elems) };
        for j in 0..n {
            // SAFETY: j < cnt; the element and its topic string live while
            // ev does and are copied at once.
            let e = unsafe { &*elems.add(j) };
            if e.err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || e.offset < 0 {
                continue;
            }
            out.insert((owned(e.topic), e.partition), e.offset);
        }
    }
    Ok(out)
}
