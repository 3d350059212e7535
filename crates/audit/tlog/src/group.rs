//! Group commit: many threads append to one [`Log`], each waiting until its entry is durable,
//! while a writer thread writes them in batches — one write, one sync and one signed
//! checkpoint for every entry that queued up while the previous batch was being written. A
//! caller's entry is acknowledged (its index returned) only once a checkpoint covering it is
//! on disk; each caller is woken once, by the answer for its own entry.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::TlogError;
use crate::log::Log;
use crate::tiles::MAX_ENTRY;

/// The most entries written in one batch (so a batch's memory is bounded by it times
/// [`MAX_ENTRY`]).
pub const MAX_BATCH: usize = 4096;

/// The most entries waiting to be written; an append past it waits for room.
pub const MAX_QUEUED: usize = 4 * MAX_BATCH;

type Answer = SyncSender<Result<u64, TlogError>>;

/// A log shared by threads, with group commit.
#[derive(Debug)]
pub struct Appender {
    queue: Option<SyncSender<(Vec<u8>, Answer)>>,
    log: Arc<Mutex<Log>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write_batches(log: &Mutex<Log>, queue: &Receiver<(Vec<u8>, Answer)>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let written = {
            let refs: Vec<&[u8]> = batch.iter().map(|(e, _)| e.as_slice()).collect();
            lock(log).append(&refs)
        };
        for (k, (_, answer)) in batch.into_iter().enumerate() {
            let outcome = match &written {
                Ok(first) => Ok(first + k as u64),
                Err(e) => Err(e.clone()),
            };
            // A caller that gave up waiting has nobody to answer.
            let _ = answer.send(outcome);
        }
    }
}

impl Appender {
    /// Shares `log`, with a writer thread of its own.
    pub fn new(log: Log) -> Self {
        let log = Arc::new(Mutex::new(log));
        let (tx, rx) = sync_channel(MAX_QUEUED);
        let for_writer = log.clone();
        let writer = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_batches(&for_writer, &rx))
            .ok();
        Self {
            queue: writer.as_ref().map(|_| tx),
            log,
            writer,
        }
    }

    /// Appends `entry`; returns its index once a synced checkpoint covers it.
    pub fn append(&self, entry: Vec<u8>) -> Result<u64, TlogError> {
        if entry.len() > MAX_ENTRY {
            return Err(TlogError::Log(format!(
                "an entry of {} bytes is larger than {MAX_ENTRY}",
                entry.len()
            )));
        }
        let gone = || TlogError::Log("the log's writer thread is not running".into());
        let queue = self.queue.as_ref().ok_or_else(gone)?;
        let (answer, reply) = sync_channel(1);
        queue.send((entry, answer)).map_err(|_| gone())?;
        reply.recv().map_err(|_| gone())?
    }

    /// Runs `f` with the log (no batch is written meanwhile).
    pub fn with_log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&lock(&self.log))
    }
}

impl Drop for Appender {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has written what was queued.
        self.queue = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
