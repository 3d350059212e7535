//! Group commit: many threads append to one [`Log`], each waiting until its entry is durable,
//! while the log writes them in batches — one write, one sync and one signed checkpoint for
//! every entry that queued up while the previous batch was being written. A caller's entry is
//! acknowledged (its index returned) only once a checkpoint covering it is on disk.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::TlogError;
use crate::log::Log;
use crate::tiles::MAX_ENTRY;

/// The most entries written in one batch (and so the memory a batch holds is bounded by it
/// times [`MAX_ENTRY`]).
pub const MAX_BATCH: usize = 4096;

/// The most entries waiting to be written; an append past it waits for room.
pub const MAX_QUEUED: usize = 4 * MAX_BATCH;

#[derive(Debug, Default)]
struct Queue {
    /// Entries waiting, with their sequence numbers.
    waiting: Vec<(u64, Vec<u8>)>,
    next_seq: u64,
    /// A batch is being written.
    writing: bool,
    /// What became of each written entry: its index, or why it was not written.
    outcomes: HashMap<u64, Result<u64, TlogError>>,
}

/// A log shared by threads, with group commit.
#[derive(Debug)]
pub struct Appender {
    queue: Mutex<Queue>,
    changed: Condvar,
    log: Mutex<Log>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Appender {
    /// Shares `log`.
    pub fn new(log: Log) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            log: Mutex::new(log),
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
        let mut q = lock(&self.queue);
        while q.waiting.len() >= MAX_QUEUED {
            q = self.changed.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.waiting.push((seq, entry));
        loop {
            if let Some(outcome) = q.outcomes.remove(&seq) {
                return outcome;
            }
            if q.writing {
                q = self.changed.wait(q).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // This thread writes the next batch (its own entry is in it or in an earlier one).
            let take = q.waiting.len().min(MAX_BATCH);
            let batch: Vec<(u64, Vec<u8>)> = q.waiting.drain(..take).collect();
            q.writing = true;
            drop(q);
            let written = {
                let mut log = lock(&self.log);
                let refs: Vec<&[u8]> = batch.iter().map(|(_, e)| e.as_slice()).collect();
                log.append(&refs)
            };
            q = lock(&self.queue);
            q.writing = false;
            for (k, (s, _)) in batch.iter().enumerate() {
                let outcome = match &written {
                    Ok(first) => Ok(first + k as u64),
                    Err(e) => Err(e.clone()),
                };
                q.outcomes.insert(*s, outcome);
            }
            self.changed.notify_all();
        }
    }

    /// Runs `f` with the log (no batch is written meanwhile).
    pub fn with_log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&lock(&self.log))
    }
}
