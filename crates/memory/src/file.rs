//! What a file descriptor says about the memory behind it: its kind, its size and its seals
//! ([`FileInfo`]), and sealing a memfd ([`seal`]).
//!
//! A shared mapping of a file is only as long-lived as the file: a page past the file's end
//! raises SIGBUS when it is touched, and the owner of a memfd can shrink it at any time, unless
//! it is sealed against shrinking (`F_SEAL_SHRINK`). Seals can be added, never removed, so a
//! seal seen once holds for the life of the file. A process that maps a file another process
//! sent looks here first: whether the file covers the mapping now, and whether it must go on
//! covering it.

use std::io;
use std::ops::BitOr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// A set of memfd seals (`F_SEAL_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seals(u32);

impl Seals {
    /// No seal.
    pub const NONE: Seals = Seals(0);
    /// The set of seals is itself sealed: none can be added.
    pub const SEAL: Seals = Seals(libc::F_SEAL_SEAL as u32);
    /// The file cannot be made shorter.
    pub const SHRINK: Seals = Seals(libc::F_SEAL_SHRINK as u32);
    /// The file cannot be made longer.
    pub const GROW: Seals = Seals(libc::F_SEAL_GROW as u32);
    /// The file's contents cannot be written.
    pub const WRITE: Seals = Seals(libc::F_SEAL_WRITE as u32);

    /// True if every seal of `other` is in `self`.
    pub const fn contains(self, other: Seals) -> bool {
        self.0 & other.0 == other.0
    }

    /// The `F_SEAL_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl BitOr for Seals {
    type Output = Seals;
    fn bitor(self, rhs: Seals) -> Seals {
        Seals(self.0 | rhs.0)
    }
}

impl std::fmt::Debug for Seals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Seals::SEAL, "SEAL"),
            (Seals::SHRINK, "SHRINK"),
            (Seals::GROW, "GROW"),
            (Seals::WRITE, "WRITE"),
        ];
        let mut set = f.debug_set();
        for (seal, name) in names {
            if self.contains(seal) {
                set.entry(&format_args!("{name}"));
            }
        }
        let known = names.iter().fold(0, |acc, (s, _)| acc | s.0);
        if self.0 & !known != 0 {
            set.entry(&format_args!("{:#x}", self.0 & !known));
        }
        set.finish()
    }
}

/// What `fstat` and `F_GET_SEALS` say about a file descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FileInfo {
    /// True for a regular file (a memfd is one): its size is the end of its memory. Other kinds
    /// (character devices, say) have no size that bounds a mapping.
    pub regular: bool,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Its seals; none for a file that cannot be sealed (only memfds and tmpfs or hugetlbfs
    /// files can).
    pub seals: Seals,
    /// True for a file on hugetlbfs (a `MFD_HUGETLB` memfd): a page is taken from the huge
    /// page pool when it is first touched, and an empty pool raises SIGBUS, sealed or not.
    pub hugetlb: bool,
}

impl FileInfo {
    /// Asks the kernel about `fd`.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<FileInfo> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat writes one `struct stat` into `st`, which has room for it; the result is
        // checked before `st` is read.
        if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstat succeeded, so it filled `st`.
        let st = unsafe { st.assume_init() };
        // SAFETY: F_GET_SEALS takes no argument and touches no memory of ours.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        let seals = match u32::try_from(seals) {
            Ok(bits) => Seals(bits),
            // EINVAL: a file that cannot carry seals.
            Err(_) => match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINVAL) => Seals::NONE,
                _ => return Err(io::Error::last_os_error()),
            },
        };
        let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: fstatfs writes one `struct statfs` into `fs`, which has room for it; the
        // result is checked before `fs` is read.
        if unsafe { libc::fstatfs(fd.as_raw_fd(), fs.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatfs succeeded, so it filled `fs`.
        let fs = unsafe { fs.assume_init() };
        Ok(FileInfo {
            regular: st.st_mode & libc::S_IFMT == libc::S_IFREG,
            size: u64::try_from(st.st_size).unwrap_or(0),
            seals,
            hugetlb: fs.f_type == libc::HUGETLBFS_MAGIC,
        })
    }

    /// True if the file's bytes `[offset, offset + len)` exist now: always for a file that is
    /// not regular, whose size says nothing.
    pub fn covers(&self, offset: u64, len: u64) -> bool {
        !self.regular || offset.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// True if bytes the file has now are there for as long as it lives: it is sealed against
    /// shrinking. (Pages can still be punched into holes, which read as zeros; that needs no
    /// care from a process mapping it.)
    pub fn cannot_shrink(&self) -> bool {
        self.seals.contains(Seals::SHRINK)
    }

    /// True if touching any page of a mapping inside the file's present size can never raise
    /// SIGBUS for as long as the file lives: a regular file sealed against shrinking, not on
    /// hugetlbfs (whose pool can run dry). A page of a memfd (on the kernel's internal tmpfs,
    /// which has no size limit) that cannot be allocated is an out-of-memory kill, as for
    /// anonymous memory, never a signal to the process touching it.
    pub fn always_backed(&self) -> bool {
        self.regular && self.cannot_shrink() && !self.hugetlb
    }
}

/// Adds `seals` to the memfd `fd` (`F_ADD_SEALS`). EPERM if the file was not created to allow
/// sealing or is sealed with [`Seals::SEAL`]; EINVAL if it cannot carry seals; EBUSY for
/// [`Seals::WRITE`] while a writable shared mapping of it exists.
pub fn seal(fd: BorrowedFd<'_>, seals: Seals) -> io::Result<()> {
    let bits = libc::c_int::try_from(seals.bits())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: F_ADD_SEALS takes an int and touches no memory of ours.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, bits) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd};

    use super::*;
    use crate::memfd;

    #[test]
    fn an_unsealed_memfd_is_a_regular_file_of_its_length_that_may_shrink() {
        let file = memfd(c"t", 3 * 4096).unwrap();
        let info = FileInfo::of(file.as_fd()).unwrap();
        assert!(info.regular);
        assert_eq!(info.size, 3 * 4096);
        assert!(!info.cannot_shrink());
    }

    #[test]
    fn a_sealed_memfd_says_it_cannot_shrink() {
        let file = crate::memfd_sealed(c"t", 4096).unwrap();
        let info = FileInfo::of(file.as_fd()).unwrap();
        assert!(info.cannot_shrink());
        assert!(
            info.seals
                .contains(Seals::SHRINK | Seals::GROW | Seals::SEAL)
        );
    }

    #[test]
    fn a_memfd_made_without_sealing_takes_no_seal() {
        let file = memfd(c"t", 4096).unwrap();
        let err = seal(file.as_fd(), Seals::SHRINK).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn a_sealed_memfd_is_always_backed() {
        let file = crate::memfd_sealed(c"t", 4096).unwrap();
        assert!(FileInfo::of(file.as_fd()).unwrap().always_backed());
    }

    #[test]
    fn a_sealed_hugetlb_memfd_is_not_always_backed() {
        // SAFETY: a valid name; the fd is checked and owned at once.
        let raw = unsafe {
            libc::memfd_create(c"t".as_ptr(), libc::MFD_HUGETLB | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            // A kernel without hugetlbfs cannot hand out such a file either.
            assert_eq!(
                io::Error::last_os_error().raw_os_error(),
                Some(libc::EINVAL)
            );
            return;
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let file = std::fs::File::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) });
        seal(file.as_fd(), Seals::SHRINK | Seals::GROW).unwrap();
        let info = FileInfo::of(file.as_fd()).unwrap();
        assert!(info.hugetlb && info.cannot_shrink());
        assert!(!info.always_backed());
    }

    #[test]
    fn covers_is_false_past_the_end_and_on_overflow() {
        let file = memfd(c"t", 4096).unwrap();
        let info = FileInfo::of(file.as_fd()).unwrap();
        assert!(info.covers(0, 4096));
        assert!(!info.covers(0, 4097));
        assert!(!info.covers(u64::MAX, 2));
    }

    #[test]
    fn a_pipe_is_not_regular_and_has_no_seals() {
        let (r, _w) = std::io::pipe().unwrap();
        let info = FileInfo::of(r.as_fd()).unwrap();
        assert!(!info.regular);
        assert_eq!(info.seals, Seals::NONE);
        assert!(info.covers(0, 1 << 40));
    }

    #[test]
    fn seals_print_their_names() {
        assert_eq!(
            format!("{:?}", Seals::SHRINK | Seals::GROW),
            "{SHRINK, GROW}"
        );
    }
}
