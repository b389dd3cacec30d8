//! [`Errno`]: the one number every failure is reduced to at the protocol boundary.
//!
//! A vfio-user error reply carries a bare errno. Every error type of the crate and of the
//! container maps to one on purpose ([`MessageError::errno`], [`ConnectionError::errno`],
//! [`IommuError::errno`]); a device backend answers with one directly.

use std::fmt;
use std::io;

use vfmig_iommu::IommuError;

use crate::error::{ConnectionError, MessageError};

/// A positive `errno` value, as an error reply's `error_no` carries it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(i32);

impl Errno {
    /// Operation not permitted.
    pub const EPERM: Errno = Errno(libc::EPERM);
    /// No such file or directory (libvfio-user: no such DMA region).
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    /// I/O error.
    pub const EIO: Errno = Errno(libc::EIO);
    /// Out of memory.
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    /// Bad address.
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    /// Device or resource busy.
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    /// Already exists.
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    /// Invalid argument: what libvfio-user answers to almost every fault.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// No space left.
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    /// Protocol error.
    pub const EPROTO: Errno = Errno(libc::EPROTO);
    /// Operation not supported.
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    /// Connection reset by peer.
    pub const ECONNRESET: Errno = Errno(libc::ECONNRESET);
    /// Transport endpoint is not connected.
    pub const ENOTCONN: Errno = Errno(libc::ENOTCONN);
    /// Resource temporarily unavailable (a socket read timeout).
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    /// Connection timed out.
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);

    /// The errno `raw`, made positive; 0 (which an error reply may carry) becomes `EIO`, so an
    /// `Errno` always names a failure.
    pub const fn new(raw: i32) -> Errno {
        match raw {
            0 | i32::MIN => Errno(libc::EIO),
            _ => Errno(raw.abs()),
        }
    }

    /// The errno of an error reply's `error_no` field.
    pub fn from_wire(error_no: u32) -> Errno {
        Errno::new(i32::try_from(error_no).unwrap_or(libc::EIO))
    }

    /// The positive value.
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// As an `io::Error` with this errno.
    pub fn to_io(self) -> io::Error {
        io::Error::from_raw_os_error(self.0)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({}: {})", self.0, self.to_io())
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // io::Error's Display ends with "(os error N)": the number once, after the name.
        let name = self.to_io().to_string();
        let name = name
            .rsplit_once(" (os error")
            .map_or(name.as_str(), |(n, _)| n);
        write!(f, "{name} (errno {})", self.0)
    }
}

impl std::error::Error for Errno {}

impl From<&MessageError> for Errno {
    fn from(err: &MessageError) -> Self {
        Errno::new(err.errno())
    }
}

impl From<MessageError> for Errno {
    fn from(err: MessageError) -> Self {
        Errno::from(&err)
    }
}

impl From<&ConnectionError> for Errno {
    fn from(err: &ConnectionError) -> Self {
        Errno::new(err.errno())
    }
}

impl From<&IommuError> for Errno {
    fn from(err: &IommuError) -> Self {
        Errno::new(err.errno())
    }
}

impl From<IommuError> for Errno {
    fn from(err: IommuError) -> Self {
        Errno::from(&err)
    }
}

impl From<&io::Error> for Errno {
    fn from(err: &io::Error) -> Self {
        Errno::new(err.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<io::Error> for Errno {
    fn from(err: io::Error) -> Self {
        Errno::from(&err)
    }
}

impl From<Errno> for io::Error {
    fn from(errno: Errno) -> Self {
        errno.to_io()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_negative_values_name_a_failure() {
        assert_eq!(Errno::new(0), Errno::EIO);
        assert_eq!(Errno::new(-libc::EINVAL), Errno::EINVAL);
        assert_eq!(Errno::new(i32::MIN), Errno::EIO);
        assert_eq!(Errno::from_wire(u32::MAX), Errno::EIO);
    }

    #[test]
    fn container_errors_keep_the_kernel_errno() {
        let err = IommuError::TooManyMappings { limit: 1 };
        assert_eq!(Errno::from(err), Errno::ENOSPC);
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let err = io::Error::from_raw_os_error(libc::EBUSY);
        assert_eq!(Errno::from(&err), Errno::EBUSY);
        assert_eq!(
            io::Error::from(Errno::EBUSY).raw_os_error(),
            Some(libc::EBUSY)
        );
    }
}
