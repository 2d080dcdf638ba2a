//! [`FetchQueue`]: the fetched messages of every partition a pipeline's
//! consumer holds, in one queue of its own, consumed in batches.
//!
//! Why: `BaseConsumer::poll` hands out one message per call, and each call
//! reads the clock three or four times (rust-rdkafka's deadline, librdkafka's
//! `max.poll.interval.ms` bookkeeping before and after). On a virtual machine
//! whose clock reads cost tens of nanoseconds that was about a tenth of the
//! host's CPU. `rd_kafka_consume_batch_queue` pays that once per batch.
//!
//! How: when a partition is assigned (before librdkafka starts fetching it,
//! i.e. in `pre_rebalance`), its fetch queue is forwarded here instead of to
//! the consumer queue; librdkafka keeps an application's forward across the
//! fetch start. Rebalances, errors and commit results still arrive on the
//! consumer queue, which the consumer thread keeps polling. Messages of a
//! partition reach one queue only, so their order holds; messages left here
//! from a revoked assignment are outdated and librdkafka drops them.

use std::ffi::{CStr, CString, c_void};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

/// A queue of fetched messages; destroy it before its consumer.
pub struct FetchQueue {
    queue: *mut rdsys::rd_kafka_queue_t,
    /// Where `consume` puts librdkafka's message pointers.
    buffer: Vec<*mut rdsys::rd_kafka_message_t>,
}

// SAFETY: librdkafka queues are thread-safe; the buffer only holds pointers
// between a `consume` call and its return.
unsafe impl Send for FetchQueue {}

impl FetchQueue {
    /// A new queue on `consumer`'s client; `batch` messages per `consume`.
    pub fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>, batch: usize) -> Self {
        // SAFETY: the client pointer is valid while `consumer` lives, and the
        // caller destroys this queue (drop) before the consumer.
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        FetchQueue {
            queue,
            buffer: vec![std::ptr::null_mut(); batch.max(1)],
        }
    }

    /// The raw queue, for [`forward_partition`] from a rebalance callback.
    pub fn handle(&self) -> QueueHandle {
        QueueHandle(self.queue)
    }

    /// Waits up to `timeout` for messages and hands each to `f`, in queue
    /// order (which is offset order within a partition). Returns how many.
    pub fn consume(&mut self, timeout: Duration, mut f: impl FnMut(Fetched<'_>)) -> usize {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the buffer has room for `len` pointers; librdkafka fills
        // the first `n` with messages we now own.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue,
                timeout_ms,
                self.buffer.as_mut_ptr(),
                self.buffer.len(),
            )
        };
        let n = usize::try_from(n).unwrap_or(0);
        for &ptr in &self.buffer[..n] {
            // SAFETY: a message returned by librdkafka, valid until destroyed
            // just below; `Fetched` does not outlive this iteration.
            f(Fetched {
                msg: unsafe { &*ptr },
            });
            // SAFETY: destroyed once, after its last use.
            unsafe { rdsys::rd_kafka_message_destroy(ptr) };
        }
        n
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: created by rd_kafka_queue_new, destroyed once; the caller
        // drops this before the consumer (see `new`).
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
    }
}

/// The queue's pointer, copied into the consumer's context so rebalance
/// callbacks can forward partitions to it.
#[derive(Clone, Copy)]
pub struct QueueHandle(*mut rdsys::rd_kafka_queue_t);

// SAFETY: only passed to librdkafka's thread-safe queue functions, while the
// queue lives (the consumer thread owns it and outlives its callbacks).
unsafe impl Send for QueueHandle {}
unsafe impl Sync for QueueHandle {}

/// Sends the fetched messages of `topic`/`partition` to `queue` from now on.
/// Call it before the partition is assigned. Returns false when librdkafka
/// does not know the partition (its messages then stay on the consumer
/// queue, which the consumer thread also reads).
pub fn forward_partition<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    queue: QueueHandle,
    topic: &str,
    partition: i32,
) -> bool {
    let Ok(topic) = CString::new(topic) else {
        return false;
    };
    // SAFETY: valid client; the returned partition queue reference is
    // released right after forwarding (the forward stays on the partition).
    unsafe {
        let pq = rdsys::rd_kafka_queue_get_partition(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
        );
        if pq.is_null() {
            return false;
        }
        rdsys::rd_kafka_queue_forward(pq, queue.0);
        rdsys::rd_kafka_queue_destroy(pq);
    }
    true
}

/// One fetched message, borrowed from librdkafka for one callback.
pub struct Fetched<'a> {
    msg: &'a rdsys::rd_kafka_message_t,
}

impl<'a> Fetched<'a> {
    /// librdkafka's error for this entry (a fetch error, not a message).
    pub fn error(&self) -> Option<String> {
        if self.msg.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // SAFETY: librdkafka returns a static string for any error code.
        let text = unsafe { CStr::from_ptr(rdsys::rd_kafka_err2str(self.msg.err)) };
        Some(text.to_string_lossy().into_owned())
    }

    /// The topic's name.
    pub fn topic(&self) -> &'a str {
        if self.msg.rkt.is_null() {
            return "";
        }
        // SAFETY: the topic handle lives as long as the message.
        let name = unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.msg.rkt)) };
        name.to_str().unwrap_or("")
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.msg.partition
    }

    /// The offset.
    pub fn offset(&self) -> i64 {
        self.msg.offset
    }

    /// The timestamp in milliseconds, when the broker gave one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: reads the message's timestamp field.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(self.msg, &mut kind) };
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ts >= 0)
            .then_some(ts)
    }

    /// The key; `None` is a null key.
    pub fn key(&self) -> Option<&'a [u8]> {
        bytes(self.msg.key, self.msg.key_len)
    }

    /// The value; `None` is a null value (a tombstone).
    pub fn payload(&self) -> Option<&'a [u8]> {
        bytes(self.msg.payload, self.msg.len)
    }

    /// The headers in order; a null value is `None`.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: parses the message's headers into a list owned by the
        // message (freed with it); an error means there are none.
        let err = unsafe { rdsys::rd_kafka_message_headers(self.msg, &mut hdrs) };
        let count =
            if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && !hdrs.is_null() {
                // SAFETY: a valid header list.
                unsafe { rdsys::rd_kafka_header_cnt(hdrs) }
            } else {
                0
            };
        (0..count).filter_map(move |i| {
            let mut name: *const std::ffi::c_char = std::ptr::null();
            let mut value: *const c_void = std::ptr::null();
            let mut size = 0usize;
            // SAFETY: `i` is below the count; the pointers stay valid while
            // the message lives.
            let err = unsafe {
                rdsys::rd_kafka_header_get_all(hdrs, i, &mut name, &mut value, &mut size)
            };
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return None;
            }
            // SAFETY: header names are NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(name) }.to_str().unwrap_or("");
            Some((name, bytes(value.cast_mut(), size)))
        })
    }
}

fn bytes<'a>(ptr: *mut c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: librdkafka's pointer and length for a buffer owned by the
    // message, which outlives 'a.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}
