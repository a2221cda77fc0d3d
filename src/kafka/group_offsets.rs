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

/// Every committed offset of `group` (a partition without a commit is left
/// out), with one ListConsumerGroupOffsets request for all of the group's
/// partitions: the answer grows with the group's commits, not with the
/// caller's topics. (Asking for a partition list costs more than it saves:
/// librdkafka matches each answered partition against the asked list one
/// by one, 10,000² comparisons per group at 10,000 partitions.)
pub fn list_group_offsets<C: ClientContext>(
    client: &Client<C>,
    group: &str,
    timeout: Duration,
) -> Result<BTreeMap<(String, i32), i64>, String> {
    let g = cstr(group)?;
    // SAFETY: the group id is valid for the call and copied; NULL asks for
    // every committed partition.
    let req = Request(unsafe {
        rd::rd_kafka_ListConsumerGroupOffsets_new(g.as_ptr(), std::ptr::null_mut())
    });
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
