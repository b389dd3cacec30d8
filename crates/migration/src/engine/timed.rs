//! Reads from a peer that are bounded in time, either by a deadline for a whole phase or
//! by the longest a single read may wait.
//!
//! A phase the peer could stretch (the stream header and config before the destination
//! commits to a peer, the switch-over lines) has a deadline: each read may block only for
//! the time left, so a peer that sends a byte now and then cannot hold the phase longer
//! than the deadline. The bulk of the stream, after the commit, is bounded per read
//! instead (idle): it may take any time in all, as long as the source keeps sending.

use std::io::{self, Read};
use std::time::{Duration, Instant};

use crate::transport::StreamConnection;

/// How reads are bounded now.
#[derive(Clone, Copy, Debug)]
enum Limit {
    /// The phase named, given the duration, ends at the instant: every read waits at most
    /// for the time left.
    Until(Instant, Duration, &'static str),
    /// A read waits at most this long (set on the socket once).
    Idle(Duration),
}

/// A connection whose reads are bounded: `TimedOut`, naming the phase or the wait, when a
/// deadline passes or a read waits too long. It also keeps the longest any one read waited.
#[derive(Debug)]
pub(crate) struct Timed {
    conn: StreamConnection,
    limit: Limit,
    longest_wait: Duration,
}

impl Timed {
    /// Reads of `conn` for the phase `what`, which must end within `within` from now.
    pub(crate) fn within(conn: StreamConnection, within: Duration, what: &'static str) -> Timed {
        Timed {
            conn,
            limit: Limit::Until(Instant::now() + within, within, what),
            longest_wait: Duration::ZERO,
        }
    }

    /// From now on, a phase `what` that must end within `within`.
    pub(crate) fn set_within(&mut self, within: Duration, what: &'static str) {
        self.limit = Limit::Until(Instant::now() + within, within, what);
    }

    /// From now on, no deadline, but no read waits longer than `idle`.
    ///
    /// # Errors
    /// `EINVAL` for a zero duration.
    pub(crate) fn set_idle(&mut self, idle: Duration) -> io::Result<()> {
        self.conn.set_read_timeout(Some(idle))?;
        self.limit = Limit::Idle(idle);
        Ok(())
    }

    /// The longest any one read waited for the peer.
    pub(crate) fn longest_wait(&self) -> Duration {
        self.longest_wait
    }

    fn timed_out(&self) -> io::Error {
        let why = match self.limit {
            Limit::Until(_, within, what) => {
                format!("{what}: not done within {} ms", within.as_millis())
            }
            Limit::Idle(idle) => format!("nothing from the peer for {} ms", idle.as_millis()),
        };
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Limit::Until(deadline, ..) = self.limit {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            self.conn.set_read_timeout(Some(left))?;
        }
        let start = Instant::now();
        let read = (&self.conn).read(buf);
        self.longest_wait = self.longest_wait.max(start.elapsed());
        match read {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.timed_out())
            }
            other => other,
        }
    }
}
