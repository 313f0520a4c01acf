//! Decoding a blocking source's batches on several threads, delivered in
//! read order.
//!
//! Parsing JSON is most of what a file source costs, and one thread parses
//! about one core's worth. A [`DecodePool`] lets the reading thread go on
//! reading while up to `threads` batches are decoded at once. Each decoded
//! batch then waits for its turn: the processor receives exactly the
//! sequence one decoding thread would have sent (the same batches, rows,
//! positions and dead letters, in read order), so partitions, positions,
//! watermarks and lateness are unchanged, and so is every result.
//!
//! The threads take batches from one queue, whichever is free first. A
//! decoded batch waits in a reorder buffer until every earlier one has been
//! sent; the thread that decodes the batch whose turn it is sends it and
//! every decoded batch after it that is ready, while the other threads go
//! on decoding (a slow batch holds back only the sending, not the
//! decoding). At most two batches per thread are in flight (queued,
//! decoding or decoded), which bounds the memory; when the processor's
//! channel is full the sending thread waits, the others fill the buffer,
//! and [`DecodePool::emit`] waits (backpressure, as with
//! [`SourceOutput::emit_blocking`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::source::{Closed, RawBatch, SourceEvent, SourceOutput};

/// Decodes on `threads` threads and sends in order (see the module docs).
pub struct DecodePool {
    output: SourceOutput,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Batches in flight at most.
    in_flight: u64,
}

/// The queue, the reorder buffer and whose turn it is, shared by the
/// threads and the source.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Batches waiting to be decoded, with their sequence numbers.
    queue: VecDeque<(u64, RawBatch)>,
    /// Decoded batches waiting for their turn, by sequence number.
    decoded: BTreeMap<u64, SourceEvent>,
    /// The sequence number of the next batch to hand over.
    submitted: u64,
    /// The sequence number of the next batch to send.
    next: u64,
    /// A thread is sending (only one does, in order).
    sending: bool,
    /// The pool is dropped: the threads end once the queue is empty.
    finished: bool,
    /// The processor's channel closed (the pipeline is stopping).
    closed: bool,
    /// A decoding thread panicked: a bug, re-raised on the source's thread.
    panicked: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A thread that panics never holds the lock (see `PanicGuard`).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on `state` until `ready` holds, the pipeline closed or a
    /// thread panicked.
    fn wait_until<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        ready: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        while !ready(&state) && !state.closed && !state.panicked {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state
    }
}

/// Marks the pool as panicked when a decoding thread unwinds, so that the
/// others and the source stop waiting for it.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().panicked = true;
            self.0.changed.notify_all();
        }
    }
}

/// One decoding thread: takes the next batch, decodes it, and sends what
/// is ready in order unless another thread is sending.
fn decode_loop(output: &SourceOutput, shared: &Shared) {
    loop {
        let state = shared.lock();
        let mut state = shared.wait_until(state, |s| !s.queue.is_empty() || s.finished);
        let Some((seq, raw)) = state.queue.pop_front() else {
            return; // finished, or stopping with nothing left to drop
        };
        if state.closed || state.panicked {
            continue; // drain: nothing more is decoded or sent
        }
        drop(state);
        let msg = output.data(raw);
        let mut state = shared.lock();
        if state.closed || state.panicked {
            continue;
        }
        state.decoded.insert(seq, msg);
        if state.sending {
            continue; // the sending thread takes it in its turn
        }
        state.sending = true;
        loop {
            let next = state.next;
            let Some(msg) = state.decoded.remove(&next) else {
                break;
            };
            // Only the sending thread sends, so the lock need not be held
            // while the channel applies backpressure.
            drop(state);
            let sent = output.send_blocking(msg).is_ok();
            state = shared.lock();
            state.next += 1;
            state.closed |= !sent;
            shared.changed.notify_all();
            if !sent {
                state.decoded.clear();
                break;
            }
        }
        state.sending = false;
    }
}

impl DecodePool {
    /// A pool decoding `output`'s batches on `threads` threads. With one
    /// thread or fewer, [`emit`](Self::emit) decodes on the caller's thread,
    /// exactly as [`SourceOutput::emit_blocking`].
    pub fn new(output: SourceOutput, threads: usize) -> DecodePool {
        let shared = Arc::new(Shared::default());
        let threads = if threads > 1 { threads } else { 0 };
        let handles = (0..threads)
            .map(|i| {
                let (output, shared) = (output.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("sluice-decode-{i}"))
                    .spawn(move || {
                        let _guard = PanicGuard(shared.clone());
                        decode_loop(&output, &shared);
                    })
                    .expect("cannot start a decoding thread")
            })
            .collect();
        DecodePool {
            output,
            threads: handles,
            shared,
            in_flight: 2 * threads as u64,
        }
    }

    /// The number of decoding threads (0: the caller decodes).
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Hands a batch to the threads, waiting while as many batches as they
    /// may hold are in flight (backpressure). `Err(Closed)` once the
    /// pipeline is shutting down.
    pub fn emit(&mut self, raw: RawBatch) -> Result<(), Closed> {
        if self.threads.is_empty() {
            return self.output.emit_blocking(raw);
        }
        let limit = self.in_flight;
        let state = self.shared.lock();
        let mut state = self
            .shared
            .wait_until(state, |s| s.submitted - s.next < limit);
        Self::check(&state)?;
        let seq = state.submitted;
        state.queue.push_back((seq, raw));
        state.submitted += 1;
        drop(state);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Waits until every batch handed over so far has been sent to the
    /// processor. Call it before anything else the source tells the
    /// processor (a partition done, released), which must come after them.
    pub fn flush(&self) -> Result<(), Closed> {
        if self.threads.is_empty() {
            return Ok(());
        }
        let state = self.shared.lock();
        let state = self.shared.wait_until(state, |s| s.next >= s.submitted);
        Self::check(&state)
    }

    /// `Err(Closed)` when the pipeline stopped; re-raises a decoding
    /// thread's panic on the caller's thread, where the engine reports a
    /// panicking source as an internal error.
    fn check(state: &State) -> Result<(), Closed> {
        if state.panicked {
            panic!("a decoding thread of this source panicked");
        }
        if state.closed {
            return Err(Closed);
        }
        Ok(())
    }
}

impl Drop for DecodePool {
    fn drop(&mut self) {
        // The threads end once the batches handed over are sent (or
        // dropped, when the pipeline closed).
        self.shared.lock().finished = true;
        self.shared.changed.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
