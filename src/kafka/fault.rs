//! Fault injection for tests: one audited FFI call.
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
