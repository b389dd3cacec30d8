//! Guest addresses: [`Gpa`] (what the guest's CPU sees) and [`Iova`] (what a device puts on the
//! bus). Two types so a guest-physical address cannot be handed where an I/O virtual address
//! is meant; with no vIOMMU they hold the same numbers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A guest physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Gpa(pub u64);

impl Gpa {
    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + bytes`, or `None` on overflow.
    pub const fn checked_add(self, bytes: u64) -> Option<Gpa> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Gpa(v)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (a page size); false for an `align` of 0.
    pub const fn is_aligned(self, align: u64) -> bool {
        align != 0 && self.0.is_multiple_of(align)
    }
}

impl From<u64> for Gpa {
    fn from(v: u64) -> Self {
        Gpa(v)
    }
}

impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gpa {:#x}", self.0)
    }
}

impl fmt::Debug for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpa({:#x})", self.0)
    }
}

/// An I/O virtual address: what a device puts on the bus. With no vIOMMU it is the guest
/// physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Iova(pub u64);

impl Iova {
    /// The raw address.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + off`, or `None` on overflow.
    pub const fn checked_add(self, off: u64) -> Option<Iova> {
        match self.0.checked_add(off) {
            Some(v) => Some(Iova(v)),
            None => None,
        }
    }
}

impl From<u64> for Iova {
    fn from(v: u64) -> Self {
        Iova(v)
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "iova {:#x}", self.0)
    }
}

impl fmt::Debug for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iova({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_add_detects_overflow() {
        assert_eq!(Gpa(0x1000).checked_add(0x1000), Some(Gpa(0x2000)));
        assert_eq!(Gpa(u64::MAX).checked_add(1), None);
        assert_eq!(Iova(u64::MAX - 1).checked_add(2), None);
    }

    #[test]
    fn alignment_to_zero_is_false() {
        assert!(Gpa(0x3000).is_aligned(0x1000));
        assert!(!Gpa(0x3001).is_aligned(0x1000));
        assert!(!Gpa(0).is_aligned(0));
    }

    #[test]
    fn addresses_print_in_hex_with_their_kind() {
        assert_eq!(Gpa(0x1000).to_string(), "gpa 0x1000");
        assert_eq!(format!("{:?}", Iova(0x20)), "Iova(0x20)");
    }
}
