//! The target producer's context: delivery reports go into the slots'
//! ledgers; offset-sync acknowledgements let commits move; a fatal
//! producer error asks the flow to restart with a fresh producer.
//!
//! Each producer's reports are served by one thread only, its polling
//! thread ([`crate::kafka::Polled`]): kmirror never calls `flush` or `poll`
//! on a producer elsewhere (it waits for the queue to empty instead, see
//! [`crate::kafka::Polled::drain`]), so the reports of a partition are
//! processed in the order librdkafka emits them, which for the idempotent
//! producer is the send order. The ledger checks it anyway. Record reports
//! come from the data producer's thread and point reports from the points
//! producer's (see [`super::Producers`]); both take the slot's ledger lock,
//! and a point is only written after the records it describes were
//! reported.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{error, warn};

use super::slots::SlotCache;
use super::{now_ms, Shared, NO_SLOT, OFFSET_BITS, OFFSET_MASK, SYNC_FLAG};
use crate::config::Delivery;
use crate::kafka::log_librdkafka;

/// Producer context of a flow.
pub(crate) struct DeliveryCtx {
    pub(crate) shared: std::sync::Arc<Shared>,
    /// The delivery thread's memo of the last slot (only that thread and
    /// the housekeeping pass, to publish its metrics, lock it).
    pub(crate) cache: Mutex<SlotCache>,
}

/// Key + value + headers of a record, in bytes.
pub(crate) fn record_size<M: Message>(m: &M) -> usize {
    let h = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| h.key.len() + h.value.map_or(0, |v| v.len()))
                .sum()
        })
        .unwrap_or(0);
    m.key().map_or(0, |k| k.len()) + m.payload().map_or(0, |p| p.len()) + h
}

/// Errors that mean "not written, may be sent again by a fresh producer"
/// rather than "the target refuses this record". A target topic that
/// vanished (deleted by an operator) is recreated by config sync; its
/// records are sent again then. A partition the target topic no longer has
/// (`UnknownPartition`: the topic was made again with fewer partitions
/// while it was mirrored) is a refusal: the partition stops, like
/// `forward` does when the producer says so at once.
fn not_written(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight
                | RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}

impl ClientContext for DeliveryCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        log_librdkafka(level, fac, msg)
    }
    fn stats_raw(&self, json: &[u8]) {
        crate::metrics::record_client_stats(
            &self.shared.metrics,
            &self.shared.flow,
            "target_producer",
            json,
        );
    }
    fn error(&self, err: KafkaError, reason: &str) {
        let sh = &self.shared;
        sh.metrics
            .errors
            .with_label_values(&[&sh.flow, "target_client"])
            .inc();
        // (A fatal error arrives here with its underlying code; the flow
        // asks the producer itself, see `kafka::fault::fatal_error`.)
        if let Some(suppressed) = sh.throttle.allow("target_client") {
            warn!(flow = %sh.flow, error = %err, suppressed, "target producer: {reason}");
        }
    }
}

impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if opaque & SYNC_FLAG != 0 {
            self.point_report(result, opaque);
            return;
        }
        let sh = &self.shared;
        let idx = opaque >> OFFSET_BITS;
        let src = (opaque & OFFSET_MASK) as i64;
        // Held to the end: the memo is this thread's, and keeping the
        // callback's work under one lock makes it plainly single-threaded.
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(cached) = sh.slot_at_cached(&mut cache, idx) else {
            return;
        };
        let slot = &cached.slot;
        match result {
            Ok(m) => {
                let tgt = m.offset();
                // One clock read per report (latency and the point timer).
                let now = now_ms();
                cached.records.inc();
                cached.bytes.inc_by(record_size(m) as u64);
                let ts = m.timestamp().to_millis();
                if let Some(ts) = ts {
                    cached.hist.observe(((now - ts).max(0) as f64) / 1000.0);
                }
                let (foreign, blocked) = {
                    let mut l = slot.ledger();
                    let a = l.ack(src, tgt, now, sh.rule);
                    if let (true, Some(ts)) = (a.counted, ts) {
                        slot.acked_ts.store(ts, Ordering::Relaxed);
                    }
                    if !a.points.is_empty() {
                        sh.queue_points(idx, slot, &a.points);
                    }
                    (a.foreign, l.block().is_some())
                };
                if blocked {
                    slot.set_blocked();
                }
                if foreign && !slot.foreign_warned.swap(true, Ordering::AcqRel) {
                    sh.metrics
                        .errors
                        .with_label_values(&[&sh.flow, "foreign_writer"])
                        .inc();
                    // Exactly-once cannot hold when a second kmirror
                    // process still writes this partition: an ERROR. In
                    // at-least-once another writer may be expected.
                    if sh.delivery == Delivery::ExactlyOnce {
                        error!(
                            flow = %sh.flow, topic = %slot.topic, partition = slot.partition,
                            target = %slot.target, source_offset = src, target_offset = tgt,
                            "another writer produced to the target partition between two mirrored records (exactly-once cannot hold if a second kmirror process still writes this partition)"
                        );
                    } else {
                        warn!(
                            flow = %sh.flow, topic = %slot.topic, partition = slot.partition,
                            target = %slot.target, source_offset = src, target_offset = tgt,
                            "another writer produced to the target partition between two mirrored records"
                        );
                    }
                }
            }
            Err((e, m)) => {
                let code = e.rdkafka_error_code();
                {
                    let mut l = slot.ledger();
                    if not_written(code) {
                        match code {
                            Some(RDKafkaErrorCode::Fatal) => {
                                sh.request_restart("fatal", format!("fatal producer error: {e}"))
                            }
                            Some(RDKafkaErrorCode::MessageTimedOut) => {
                                // What is queued behind it must not land
                                // after it (librdkafka would send it after
                                // bumping its epoch): purged at once.
                                sh.purge_now.store(true, Ordering::Release);
                                sh.request_restart(
                                    "timed_out",
                                    "records not acknowledged within message.timeout.ms were given up"
                                        .into(),
                                )
                            }
                            _ => {}
                        }
                        l.not_written(src, e.to_string());
                    } else {
                        l.refuse(src, e.to_string(), code, record_size(m));
                    }
                }
                slot.set_blocked();
            }
        }
    }
}

impl DeliveryCtx {
    /// The report of an offset-sync point.
    fn point_report(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let sh = &self.shared;
        let idx = (opaque & !SYNC_FLAG) >> OFFSET_BITS;
        let src = (opaque & OFFSET_MASK) as i64;
        let slot = (idx != NO_SLOT).then(|| sh.slot(idx)).flatten();
        match result {
            Ok(_) => {
                sh.metrics.offset_syncs.with_label_values(&[&sh.flow]).inc();
                if let Some(slot) = slot {
                    slot.ledger().point_persisted(src);
                }
            }
            Err((e, _)) => {
                if let Some(slot) = slot {
                    slot.ledger().point_failed(src);
                }
                sh.metrics
                    .errors
                    .with_label_values(&[&sh.flow, "offset_sync"])
                    .inc();
                if let Some(suppressed) = sh.throttle.allow("offset_sync") {
                    warn!(flow = %sh.flow, error = %e, suppressed, "cannot write an offset-sync point; commits wait for the next one");
                }
            }
        }
    }
}
