//! Order across connections: a subscription sees every PUBLISH that reached the broker after it.
//!
//! Client B writes SUBSCRIBE, then client A publishes to that topic. Both sockets become
//! readable in that order, and the I/O driver wakes B's task before A's; but the scheduler may
//! run A first (a task woken last runs next on its worker), or both at once on two workers, and
//! A's message would be routed before B's subscription exists. Mosquitto, with one thread that
//! serves sockets in the order they became readable, never misses it, and scripts and test
//! suites rely on that.
//!
//! So each wake-up for input takes a ticket, in the order the driver delivers them, and a
//! connection handles what it read only when no connection woken earlier still has input it may
//! not have handled. A ticket is given back as soon as its connection has read (or handles
//! input without reading: a wake-up it has not read for yet still dates what it handles), unless
//! what it read changes what later input sees (a SUBSCRIBE, an UNSUBSCRIBE, a retained
//! PUBLISH): then once that is handled. Publishers therefore wait only for earlier connections
//! to be polled and read (microseconds), never for each other's routing.
//!
//! Only connections that may change subscriptions are waited for: new ones, and those that
//! changed subscriptions or retained messages within their last `QUIET_READS` reads. A
//! connection that has only published and acknowledged for a while is not (its next SUBSCRIBE
//! is then ordered like any other, best effort, and makes it watched again), so steady
//! publishers and acknowledging subscribers never wait for each other and keep their
//! multi-core throughput: waiting for every earlier arrival halved QoS 1 fan-in.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Reads without a subscription change after which a connection is no longer waited for.
const QUIET_READS: u8 = 8;

/// How long `must_wait` watches an earlier arrival before the connection yields.
const BRIEF_WAIT: std::time::Duration = std::time::Duration::from_micros(20);

/// Tickets of wake-ups whose input may still change subscriptions, in arrival order.
static PENDING: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());
static NEXT_TICKET: AtomicU64 = AtomicU64::new(1);

fn pending() -> std::sync::MutexGuard<'static, BTreeSet<u64>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The waker a connection reads its socket with: stamps each wake-up with a ticket, then wakes
/// the connection's task.
#[derive(Debug, Default)]
pub struct ReadWaker {
    task: AtomicWaker,
    /// The ticket of the wake-up not yet seen by the connection; 0 = none.
    ticket: AtomicU64,
    /// The connection reads through this waker: a wake-up takes a ticket. Off while it is
    /// paused or closing, so that input it will not read soon holds nobody up.
    reading: AtomicBool,
    /// Later arrivals wait for this connection's unread input: it is new, or it changed
    /// subscriptions or retained messages lately. Off once it has sent only publishes and
    /// acknowledgements for `QUIET_READS` reads, so steady publishers and acknowledging
    /// subscribers never make each other wait.
    watched: AtomicBool,
}

impl Wake for ReadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.reading.load(Ordering::Acquire) && self.ticket.load(Ordering::Acquire) == 0 {
            let ticket = NEXT_TICKET.fetch_add(1, Ordering::AcqRel);
            if self.watched.load(Ordering::Acquire) {
                pending().insert(ticket);
            }
            if self.ticket.compare_exchange(0, ticket, Ordering::AcqRel, Ordering::Acquire).is_err() {
                pending().remove(&ticket);
            }
        }
        self.task.wake();
    }
}

/// A connection's side: its read waker and the ticket of the input it is handling.
#[derive(Debug)]
pub struct Arrival {
    waker: Arc<ReadWaker>,
    /// When the input being handled arrived (its ticket); 0 when it was read without a wake-up.
    arrived: u64,
    /// `arrived` is still pending until the input is handled.
    holding: bool,
    /// Reads in a row without a SUBSCRIBE, UNSUBSCRIBE or retained PUBLISH.
    quiet_reads: u8,
}

impl Default for Arrival {
    fn default() -> Self {
        let waker = ReadWaker { watched: AtomicBool::new(true), ..ReadWaker::default() };
        Arrival { waker: Arc::new(waker), arrived: 0, holding: false, quiet_reads: 0 }
    }
}

impl Arrival {
    /// The waker to read the socket with, on behalf of the task behind `cx`.
    pub fn read_waker(&self, cx: &Context<'_>) -> Waker {
        self.waker.reading.store(true, Ordering::Release);
        self.waker.task.register(cx.waker());
        Waker::from(self.waker.clone())
    }

    /// After the connection was woken, or before it handles input: takes the ticket of the
    /// wake-up, if any, as the time of the input it handles now. `read` holds the bytes now
    /// buffered (from a packet boundary) when something was read; the ticket then stays pending
    /// until they are handled if they change what later input sees. Otherwise, and without
    /// `read`, it is given back at once: a connection that does not read holds nobody up.
    pub fn note_wake(&mut self, read: Option<&[u8]>) {
        let ticket = self.waker.ticket.swap(0, Ordering::AcqRel);
        if ticket == 0 {
            return;
        }
        let mut pending = pending();
        if self.holding {
            // Older input is not handled yet; it keeps the place.
            pending.remove(&ticket);
            return;
        }
        self.arrived = ticket;
        let Some(read) = read else {
            pending.remove(&ticket);
            return;
        };
        if changes_what_later_input_sees(read) {
            // Pending only if it was watched at the wake-up; it is watched from now on.
            self.holding = pending.contains(&ticket);
            self.quiet_reads = 0;
            self.waker.watched.store(true, Ordering::Release);
        } else {
            pending.remove(&ticket);
            self.quiet_reads = self.quiet_reads.saturating_add(1);
            if self.quiet_reads >= QUIET_READS {
                self.waker.watched.store(false, Ordering::Release);
            }
        }
    }

    /// The input read so far was handled (or will not be soon): later arrivals may go on.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.holding) {
            pending().remove(&self.arrived);
        }
    }

    /// True while input that arrived before ours may still change subscriptions: routing
    /// ours now could miss a subscription made before it.
    ///
    /// An earlier connection is usually being polled on the other worker at that moment and
    /// reads within microseconds, so this watches for that briefly before saying to wait: a
    /// yield to the scheduler costs a publisher far more (it doubled the latency of a steady
    /// QoS 1 stream).
    pub fn must_wait(&self) -> bool {
        let earlier_pending = || pending().first().is_some_and(|&earliest| earliest < self.arrived);
        if self.arrived == 0 || !earlier_pending() {
            return false;
        }
        let until = std::time::Instant::now() + BRIEF_WAIT;
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
            if !earlier_pending() {
                return false;
            }
        }
        true
    }
}

impl Arrival {
    /// The connection does not read for now (a pause, a full write buffer): wake-ups take no
    /// ticket until it reads again, and one taken is given back. Its task may not even be
    /// woken by them, and a ticket it would not see could hold every later arrival up,
    /// including the subscriber whose queue this connection waits on.
    pub fn not_reading(&mut self) {
        self.waker.reading.store(false, Ordering::Release);
        self.note_wake(None);
    }

    /// The connection is closing: as `not_reading`, for good, and what it holds is given back.
    pub fn close(&mut self) {
        self.not_reading();
        self.release();
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.close();
    }
}

/// Whether the packets buffered in `bytes` (from a packet boundary; the last may be partial)
/// include a SUBSCRIBE, an UNSUBSCRIBE or a retained PUBLISH.
fn changes_what_later_input_sees(bytes: &[u8]) -> bool {
    any_packet(bytes, |first| matches!(first >> 4, 8 | 10) || (first >> 4 == 3 && first & 0x01 != 0))
}

/// Whether the buffered packets include one whose handling depends on the order of arrival: a
/// PUBLISH (routed to the subscriptions made before it), a SUBSCRIBE or an UNSUBSCRIBE.
/// Acknowledgements and PINGREQ never wait for other connections.
pub fn is_ordered(bytes: &[u8]) -> bool {
    any_packet(bytes, |first| matches!(first >> 4, 3 | 8 | 10))
}

/// Whether a packet buffered in `bytes` (from a packet boundary; the last may be partial) has a
/// first byte that `wanted` picks.
fn any_packet(bytes: &[u8], wanted: impl Fn(u8) -> bool) -> bool {
    let mut at = 0;
    while let Some(&first) = bytes.get(at) {
        if wanted(first) {
            return true;
        }
        let mut remaining = 0usize;
        let mut len_bytes = 0;
        loop {
            let Some(&byte) = bytes.get(at + 1 + len_bytes) else { return false };
            remaining |= usize::from(byte & 0x7F) << (7 * len_bytes);
            len_bytes += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if len_bytes == 4 {
                return false; // malformed: the codec reports it
            }
        }
        at += 1 + len_bytes + remaining;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_are_found_among_buffered_packets() {
        let publish = b"\x30\x05\x00\x01ab\x00";
        let mut bytes = publish.repeat(3);
        assert!(!changes_what_later_input_sees(&bytes));
        bytes.extend_from_slice(b"\x82\x06\x00\x01\x00\x01a\x00");
        assert!(changes_what_later_input_sees(&bytes));
        assert!(changes_what_later_input_sees(b"\xa2\x05\x00\x01\x00\x01a"), "UNSUBSCRIBE");
        assert!(changes_what_later_input_sees(b"\x82"), "the start of one");
        assert!(changes_what_later_input_sees(b"\x31\x03\x00\x01a"), "a retained PUBLISH");
        let mut long = vec![0x30, 0x80, 0x01];
        long.extend(std::iter::repeat_n(0u8, 128));
        long.extend_from_slice(b"\x82\x00");
        assert!(changes_what_later_input_sees(&long), "after a two-byte remaining length");
    }

    #[test]
    fn a_later_arrival_waits_for_an_earlier_subscribe_until_it_is_handled() {
        let waker = Waker::noop();
        let cx = Context::from_waker(waker);
        let (mut subscriber, mut publisher) = (Arrival::default(), Arrival::default());
        subscriber.read_waker(&cx).wake_by_ref();
        publisher.read_waker(&cx).wake_by_ref();
        // The publisher runs first.
        publisher.note_wake(Some(b"\x30\x03\x00\x01a"));
        assert!(publisher.must_wait(), "the subscriber woke earlier and has not read");
        subscriber.note_wake(Some(b"\x82\x06\x00\x01\x00\x01a\x00"));
        assert!(publisher.must_wait(), "its SUBSCRIBE is not handled yet");
        subscriber.release();
        assert!(!publisher.must_wait());
        publisher.release();
    }

    #[test]
    fn an_earlier_arrival_without_subscription_changes_holds_nobody_once_read() {
        let waker = Waker::noop();
        let cx = Context::from_waker(waker);
        let (mut first, mut second) = (Arrival::default(), Arrival::default());
        first.read_waker(&cx).wake_by_ref();
        second.read_waker(&cx).wake_by_ref();
        second.note_wake(Some(b"\x30\x03\x00\x01a"));
        assert!(second.must_wait());
        first.note_wake(Some(b"\x30\x03\x00\x01a"));
        assert!(!second.must_wait(), "publishers do not wait for each other's routing");
        second.release();
        drop(first);
        let (mut paused, mut later) = (Arrival::default(), Arrival::default());
        paused.read_waker(&cx).wake_by_ref();
        later.read_waker(&cx).wake_by_ref();
        later.note_wake(Some(b"\x30\x03\x00\x01a"));
        paused.note_wake(None);
        assert!(!later.must_wait(), "a connection that does not read holds nobody up");
    }

    #[test]
    fn a_closed_or_paused_connection_holds_nobody() {
        let waker = Waker::noop();
        let cx = Context::from_waker(waker);
        let (mut first, mut second) = (Arrival::default(), Arrival::default());
        let first_waker = first.read_waker(&cx);
        first_waker.wake_by_ref();
        second.read_waker(&cx).wake_by_ref();
        second.note_wake(Some(b"\x30\x03\x00\x01a"));
        assert!(second.must_wait(), "the first has not read yet");
        first.close();
        assert!(!second.must_wait(), "closing gave its ticket back");
        first_waker.wake_by_ref();
        let mut third = Arrival::default();
        third.read_waker(&cx).wake_by_ref();
        third.note_wake(Some(b"\x30\x03\x00\x01a"));
        assert!(!third.must_wait(), "a closed connection takes no more tickets");
    }
}
