//! Standard output for the commands' results. Rust ignores `SIGPIPE`, so a write to a pipe
//! whose reader has gone (`vfmig vm status | head -3`) fails with `EPIPE`, which `println!`
//! would turn into a panic. [`say!`] returns it instead, as [`StdoutClosed`], and `main`
//! ends quietly on it: no one is left to read the rest. Any other failed write is an error.

use std::fmt;
use std::io::{self, Write};

/// Standard output was closed by its reader.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes one line to standard output.
///
/// # Errors
/// [`StdoutClosed`] if its reader has gone; any other failed write, with its errno.
pub(crate) fn line(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match writeln!(out, "{args}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// `println!` that returns from the calling function on a failed write (see the module).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))?
    };
}
pub(crate) use say;
