//! A reachability probe that asks for no topics: librdkafka's
//! `rd_kafka_metadata` with `all_topics = 0` and no topic asks only for
//! the topics the client itself uses (none, for an admin client), so the
//! broker answers with its broker list. rdkafka 0.39's `fetch_metadata(None)`
//! asks for every topic instead: at 5,000 topics a response of megabytes,
//! parsed and cached by the client, on every config-sync tick.
#![allow(unsafe_code)]

use std::ptr;
use std::time::Duration;

use rdkafka::client::{Client, ClientContext};
use rdkafka_sys as rd;
use rdkafka_sys::types::RDKafkaRespErr;

/// Ok when a broker of the client's cluster answered a Metadata request
/// within `timeout`; the error names librdkafka's reason.
pub fn answer<C: ClientContext>(client: &Client<C>, timeout: Duration) -> Result<(), String> {
    let mut md: *const rd::rd_kafka_metadata_t = ptr::null();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: the client is live for the call; `md` receives a metadata
    // object owned by us on success, destroyed below exactly once.
    let err =
        unsafe { rd::rd_kafka_metadata(client.native_ptr(), 0, ptr::null_mut(), &mut md, ms) };
    if !md.is_null() {
        // SAFETY: returned by rd_kafka_metadata above, not used after.
        unsafe { rd::rd_kafka_metadata_destroy(md) };
    }
    if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        // SAFETY: rd_kafka_err2str returns a static string.
        let msg = unsafe { std::ffi::CStr::from_ptr(rd::rd_kafka_err2str(err)) };
        Err(msg.to_string_lossy().into_owned())
    }
}
