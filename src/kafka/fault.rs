//! Fatal producer errors: how to ask a producer whether it has one, and
//! how the tests raise one. Two audited FFI calls.
//!
//! `KMIRROR_TEST_FATAL_AFTER=N` (read by the flow at start) raises a fatal
//! error in a flow's target producer after it forwarded N records, the way
//! a fenced producer or an unrecoverable sequence error would. It exists so
//! that the end-to-end tests can prove what kmirror does then; nothing else
//! calls it.
#![allow(unsafe_code)]

use std::ffi::CString;

use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaRespErr;

/// Raises a fatal error (`ERR__FATAL`, cause `OUT_OF_ORDER_SEQUENCE_NUMBER`)
/// in `producer`, as librdkafka's own test hook does.
pub fn raise_fatal<C, P>(producer: &P)
where
    C: rdkafka::producer::ProducerContext,
    P: Producer<C>,
{
    let reason = CString::new("kmirror test: injected fatal error").expect("no NUL");
    // SAFETY: the client pointer is valid for the lifetime of `producer`;
    // `rd_kafka_test_fatal_error` copies the reason string.
    unsafe {
        rdkafka_sys::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        );
    }
}

/// The fatal error of `producer`, if it has one: an idempotent producer
/// with a fatal error (fenced, unrecoverable sequence error) never sends
/// again and must be replaced.
pub fn fatal_error<C, P>(producer: &P) -> Option<String>
where
    C: rdkafka::producer::ProducerContext,
    P: Producer<C>,
{
    let mut buf = [0u8; 512];
    // SAFETY: the client pointer is valid for the lifetime of `producer`;
    // librdkafka writes at most `buf.len()` bytes, NUL-terminated.
    let code = unsafe {
        rdkafka_sys::rd_kafka_fatal_error(
            producer.client().native_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if code == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}
