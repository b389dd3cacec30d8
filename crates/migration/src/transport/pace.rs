//! A bandwidth cap on a writer: [`Paced`] lets at most a given number of bytes per second
//! through, so a migration shares its link (or, in tests, a fast loopback behaves like a
//! slow link and a guest out-runs it for certain).
//!
//! Each write passes at most [`Paced::slice`] bytes — a fiftieth of a second's worth, at least
//! 64 KiB — and then sleeps until the time those bytes were due by the cap: the writer never
//! runs ahead by more than one slice. A pause between writes (a sync, the guest being
//! paused) earns no credit: the next write is paced from when it starts.

use std::io::{self, IoSlice, Write};
use std::time::{Duration, Instant};

/// The smallest slice a write passes at a time.
const MIN_SLICE: usize = 64 << 10;
/// Slices per second of the cap.
const SLICES_PER_SECOND: u64 = 50;

/// A writer that passes at most `bytes_per_second` to `inner` (`None`: no cap).
#[derive(Debug)]
pub struct Paced<W> {
    inner: W,
    cap: Option<Cap>,
}

#[derive(Debug)]
struct Cap {
    bytes_per_second: u64,
    /// When the next byte is due.
    next: Instant,
}

impl<W: Write> Paced<W> {
    /// Wraps `inner`; `bytes_per_second` of `None` or 0 passes everything at once.
    pub fn new(inner: W, bytes_per_second: Option<u64>) -> Paced<W> {
        Paced {
            inner,
            cap: bytes_per_second.filter(|&b| b > 0).map(|b| Cap {
                bytes_per_second: b,
                next: Instant::now(),
            }),
        }
    }

    /// The writer within.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The most bytes one write passes.
    fn slice(&self) -> usize {
        self.cap.as_ref().map_or(usize::MAX, |c| {
            usize::try_from(c.bytes_per_second / SLICES_PER_SECOND)
                .unwrap_or(usize::MAX)
                .max(MIN_SLICE)
        })
    }

    /// Before a write: no credit for time spent idle.
    fn start(&mut self) {
        if let Some(c) = &mut self.cap {
            c.next = c.next.max(Instant::now());
        }
    }

    /// After `n` bytes went out: sleeps until they were due.
    fn account(&mut self, n: usize) {
        if let Some(c) = &mut self.cap {
            let secs = n as f64 / c.bytes_per_second as f64;
            c.next += Duration::from_secs_f64(secs);
            let now = Instant::now();
            if c.next > now {
                std::thread::sleep(c.next - now);
            }
        }
    }
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.start();
        let len = buf.len().min(self.slice());
        let n = self.inner.write(buf.get(..len).unwrap_or(buf))?;
        self.account(n);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.cap.is_none() {
            return self.inner.write_vectored(bufs);
        }
        self.start();
        // The first slice's worth of the buffers.
        let mut room = self.slice();
        let mut part = Vec::with_capacity(bufs.len());
        for b in bufs {
            if room == 0 {
                break;
            }
            let take = b.len().min(room);
            part.push(IoSlice::new(b.get(..take).unwrap_or(b)));
            room -= take;
        }
        let n = self.inner.write_vectored(&part)?;
        self.account(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_writer_takes_as_long_as_the_cap_says() {
        let mut w = Paced::new(Vec::new(), Some(4 << 20));
        let start = Instant::now();
        w.write_all(&vec![1u8; 1 << 20]).unwrap();
        let took = start.elapsed();
        assert_eq!(w.get_ref().len(), 1 << 20);
        // 1 MiB at 4 MiB/s: 250 ms (a sleep never ends early).
        assert!(took >= Duration::from_millis(240), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn vectored_writes_are_capped_too() {
        let mut w = Paced::new(Vec::new(), Some(4 << 20));
        let (a, b) = (vec![1u8; 512 << 10], vec![2u8; 512 << 10]);
        let start = Instant::now();
        let mut bufs = [IoSlice::new(&a), IoSlice::new(&b)];
        let mut left: &mut [IoSlice<'_>] = &mut bufs;
        while !left.is_empty() {
            let n = w.write_vectored(left).unwrap();
            IoSlice::advance_slices(&mut left, n);
        }
        assert!(start.elapsed() >= Duration::from_millis(240));
        assert_eq!(w.get_ref().len(), 1 << 20);
    }

    #[test]
    fn without_a_cap_a_write_passes_at_once() {
        let mut w = Paced::new(Vec::new(), None);
        assert_eq!(w.write(&vec![0u8; 8 << 20]).unwrap(), 8 << 20);
    }
}
