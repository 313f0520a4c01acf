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
//! Batch `n` goes to thread `n % threads`; a thread hands its batch on when
//! every earlier batch has been handed on. Each thread holds at most one
//! batch waiting to be decoded and one decoded, which bounds the memory in
//! flight; when the processor's channel is full the thread whose turn it is
//! waits, the others fill up, and [`DecodePool::emit`] waits
//! (backpressure, as with [`SourceOutput::emit_blocking`]).

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::source::{Closed, RawBatch, SourceOutput};

/// Decodes on `threads` threads and sends in order (see the module docs).
pub struct DecodePool {
    output: SourceOutput,
    workers: Vec<Worker>,
    turn: Arc<Turn>,
    submitted: u64,
}

struct Worker {
    jobs: Option<SyncSender<(u64, RawBatch)>>,
    thread: Option<JoinHandle<()>>,
}

/// Whose turn it is to send, shared by the threads.
#[derive(Default)]
struct Turn {
    state: Mutex<TurnState>,
    changed: Condvar,
}

#[derive(Default)]
struct TurnState {
    /// The sequence number of the next batch to send.
    next: u64,
    /// The processor's channel closed (the pipeline is stopping).
    closed: bool,
    /// A decoding thread panicked: a bug, re-raised on the source's thread.
    panicked: bool,
}

impl Turn {
    fn lock(&self) -> MutexGuard<'_, TurnState> {
        // A thread that panics never holds the lock (see `Worker::spawn`).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `ready` holds, the pipeline closed or a thread panicked.
    fn wait_until(&self, ready: impl Fn(&TurnState) -> bool) -> MutexGuard<'_, TurnState> {
        let mut state = self.lock();
        while !ready(&state) && !state.closed && !state.panicked {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state
    }

    fn update(&self, f: impl FnOnce(&mut TurnState)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

/// Marks the pool as panicked when a decoding thread unwinds, so that the
/// others and the source stop waiting for its turn.
struct PanicGuard(Arc<Turn>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.update(|s| s.panicked = true);
        }
    }
}

impl Worker {
    fn spawn(index: usize, output: SourceOutput, turn: Arc<Turn>) -> Worker {
        let (jobs, rx) = sync_channel::<(u64, RawBatch)>(1);
        let thread = std::thread::Builder::new()
            .name(format!("sluice-decode-{index}"))
            .spawn(move || {
                let _guard = PanicGuard(turn.clone());
                while let Ok((seq, raw)) = rx.recv() {
                    let msg = output.data(raw);
                    let state = turn.wait_until(|s| s.next == seq);
                    if state.closed || state.panicked {
                        continue; // drain: nothing more is sent
                    }
                    drop(state);
                    // Only the thread whose turn it is sends, so the lock
                    // need not be held while the channel applies backpressure.
                    let sent = output.send_blocking(msg).is_ok();
                    turn.update(|s| {
                        s.next += 1;
                        s.closed |= !sent;
                    });
                }
            })
            .expect("cannot start a decoding thread");
        Worker {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }
}

impl DecodePool {
    /// A pool decoding `output`'s batches on `threads` threads. With one
    /// thread or fewer, [`emit`](Self::emit) decodes on the caller's thread,
    /// exactly as [`SourceOutput::emit_blocking`].
    pub fn new(output: SourceOutput, threads: usize) -> DecodePool {
        let turn = Arc::new(Turn::default());
        let workers = if threads > 1 {
            (0..threads)
                .map(|i| Worker::spawn(i, output.clone(), turn.clone()))
                .collect()
        } else {
            Vec::new()
        };
        DecodePool {
            output,
            workers,
            turn,
            submitted: 0,
        }
    }

    /// The number of decoding threads (0: the caller decodes).
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Hands a batch to the next thread, waiting while that thread is busy
    /// (backpressure). `Err(Closed)` once the pipeline is shutting down.
    pub fn emit(&mut self, raw: RawBatch) -> Result<(), Closed> {
        if self.workers.is_empty() {
            return self.output.emit_blocking(raw);
        }
        self.check()?;
        let seq = self.submitted;
        let worker = &self.workers[(seq % self.workers.len() as u64) as usize];
        let jobs = worker.jobs.as_ref().ok_or(Closed)?;
        if jobs.send((seq, raw)).is_err() {
            // The thread is gone: it panicked (re-raised below).
            self.check()?;
            return Err(Closed);
        }
        self.submitted += 1;
        Ok(())
    }

    /// Waits until every batch handed over so far has been sent to the
    /// processor. Call it before anything else the source tells the
    /// processor (a partition done, released), which must come after them.
    pub fn flush(&self) -> Result<(), Closed> {
        if self.workers.is_empty() {
            return Ok(());
        }
        let submitted = self.submitted;
        drop(self.turn.wait_until(|s| s.next >= submitted));
        self.check()
    }

    /// `Err(Closed)` when the pipeline stopped; re-raises a decoding
    /// thread's panic on the caller's thread, where the engine reports a
    /// panicking source as an internal error.
    fn check(&self) -> Result<(), Closed> {
        let state = self.turn.lock();
        if state.panicked {
            drop(state);
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
        // Closing the job channels ends each thread once its batches are
        // sent (or dropped, when the pipeline closed).
        for worker in &mut self.workers {
            worker.jobs = None;
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests;
