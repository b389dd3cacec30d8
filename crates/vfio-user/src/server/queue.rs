//! The in-order queue between the reader thread and the server thread, bounded in bytes.
//!
//! The reader must keep reading while the server thread handles a command, because the reply
//! to a DMA_READ / DMA_WRITE the device sends while handling it comes in behind any commands
//! the client pipelined meanwhile. Those commands wait here. The queue holds at most
//! `budget` bytes of message bodies (always at least one message): beyond that the reader
//! stops reading until the server catches up, so a client cannot make the server buffer
//! without bound. (A client that pipelines more than the budget while the device waits for a
//! DMA reply stalls its own session; ours keeps one request per thread in flight.)

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::peer::Delivery;

struct State {
    items: VecDeque<(Delivery, usize)>,
    bytes: usize,
    closed: bool,
}

/// See the module docs.
pub(super) struct CommandQueue {
    state: Mutex<State>,
    not_empty: Condvar,
    not_full: Condvar,
    budget: usize,
}

fn size_of_item(item: &Delivery) -> usize {
    item.as_ref().map_or(0, |received| received.body.len())
}

impl CommandQueue {
    /// A queue holding at most `budget` bytes of bodies (and at least one message).
    pub(super) fn new(budget: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            budget,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `item`, waiting while the queue is over its budget. Returns `false` (dropping the
    /// item) if the queue was closed.
    pub(super) fn push(&self, item: Delivery) -> bool {
        let size = size_of_item(&item);
        let mut state = self.lock();
        while !state.closed
            && !state.items.is_empty()
            && state.bytes.saturating_add(size) > self.budget
        {
            state = self
                .not_full
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.closed {
            return false;
        }
        state.bytes = state.bytes.saturating_add(size);
        state.items.push_back((item, size));
        self.not_empty.notify_one();
        true
    }

    /// The next item, waiting for one; `None` once the queue is closed and empty.
    pub(super) fn pop(&self) -> Option<Delivery> {
        let mut state = self.lock();
        loop {
            if let Some((item, size)) = state.items.pop_front() {
                state.bytes = state.bytes.saturating_sub(size);
                self.not_full.notify_one();
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state = self
                .not_empty
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// No more items will come; `pop` drains what is there, `push` refuses.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    use super::*;
    use crate::connection::Received;
    use crate::message::{Command, Header};

    fn message(len: usize) -> Delivery {
        Ok(Received {
            header: Header::new_command(0, Command::RegionWrite, len).unwrap(),
            body: vec![0; len],
            fds: Vec::new(),
        })
    }

    #[test]
    fn items_come_out_in_order_then_none_after_close() {
        let queue = CommandQueue::new(1000);
        for len in [1, 2, 3] {
            assert!(queue.push(message(len)));
        }
        queue.close();
        let lens: Vec<usize> =
            std::iter::from_fn(|| queue.pop().map(|item| item.unwrap().body.len())).collect();
        assert_eq!(lens, [1, 2, 3]);
        assert!(!queue.push(message(1)));
    }

    #[test]
    fn a_message_larger_than_the_budget_still_passes_alone() {
        let queue = CommandQueue::new(10);
        assert!(queue.push(message(100)));
        assert_eq!(queue.pop().unwrap().unwrap().body.len(), 100);
    }

    #[test]
    fn push_waits_while_over_budget() {
        let queue = Arc::new(CommandQueue::new(10));
        assert!(queue.push(message(8)));
        let pusher = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.push(message(8)))
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!pusher.is_finished());
        assert!(queue.pop().is_some());
        assert!(pusher.join().unwrap());
    }
}
