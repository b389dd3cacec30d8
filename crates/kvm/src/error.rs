//! The errors of this crate: one enum per concern, each failed ioctl keeping its errno.

use std::io;

use kvm_ioctls::Error as KvmErrno;

/// A failure of a VM-level operation: creating the VM, memslots, interrupts, doorbells.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// An ioctl on `/dev/kvm` or the VM fd failed.
    #[error("{op}: {errno}")]
    Ioctl {
        /// What was being done, named after the ioctl.
        op: &'static str,
        /// The kernel's errno.
        errno: KvmErrno,
    },
    /// KVM lacks a capability this crate needs.
    #[error("KVM lacks the capability {0}")]
    MissingCapability(&'static str),
    /// A memslot argument is unusable.
    #[error("memslot {slot}: {reason}")]
    BadSlot {
        /// The slot number.
        slot: u32,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A caller's argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A system call other than a KVM ioctl failed (mmap, eventfd, signal setup).
    #[error("{op}: {source}")]
    Os {
        /// What was being done.
        op: &'static str,
        /// The error with its errno.
        source: io::Error,
    },
    /// A dirty bitmap could not be built or filled.
    #[error("dirty bitmap: {0}")]
    Dirty(#[from] vfmig_dirty::DirtyError),
}

impl KvmError {
    /// Wraps a failed ioctl.
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(KvmErrno) -> KvmError {
        move |errno| KvmError::Ioctl { op, errno }
    }
}

/// A failure while running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// KVM_RUN itself failed with an errno other than EINTR/EAGAIN.
    #[error("KVM_RUN: {0}")]
    Run(KvmErrno),
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    #[error("vCPU {vcpu}: guest shutdown (triple fault) at RIP {rip:#x}")]
    Shutdown {
        /// The vCPU index.
        vcpu: u32,
        /// Where the guest was, if the registers could be read (else 0).
        rip: u64,
    },
    /// KVM could not emulate something (KVM_EXIT_INTERNAL_ERROR).
    #[error("vCPU {vcpu}: KVM internal error (suberror {suberror})")]
    InternalError {
        /// The vCPU index.
        vcpu: u32,
        /// `kvm_run.internal.suberror`.
        suberror: u32,
    },
    /// KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY).
    #[error("vCPU {vcpu}: VM entry failed, hardware reason {reason:#x}")]
    FailEntry {
        /// The vCPU index.
        vcpu: u32,
        /// The hardware entry failure reason.
        reason: u64,
    },
    /// An exit this run loop does not handle.
    #[error("vCPU {vcpu}: unhandled exit {exit}")]
    UnhandledExit {
        /// The vCPU index.
        vcpu: u32,
        /// The exit, as KVM named it.
        exit: String,
    },
    /// The caller's exit handler failed; the run loop stops.
    #[error("vCPU {vcpu}: exit handler: {source}")]
    Handler {
        /// The vCPU index.
        vcpu: u32,
        /// The handler's error.
        source: io::Error,
    },
    /// Harvesting the dirty ring on a ring-full exit failed.
    #[error("vCPU {vcpu}: dirty ring: {source}")]
    DirtyRing {
        /// The vCPU index.
        vcpu: u32,
        /// The harvest's error.
        source: Box<KvmError>,
    },
    /// The kick signal could not be set up for this thread.
    #[error("kick signal: {0}")]
    Signal(io::Error),
}

/// A failure to read or write vCPU or VM state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An ioctl that reads or writes state failed.
    #[error("{op}: {errno}")]
    Ioctl {
        /// What was being done, named after the ioctl.
        op: &'static str,
        /// The kernel's errno.
        errno: KvmErrno,
    },
    /// KVM read or wrote fewer MSRs than asked: the first it stopped at is named.
    #[error("{op}: KVM handled {done} of {asked} MSRs, stopping at {index:#x}")]
    PartialMsrs {
        /// `KVM_GET_MSRS` or `KVM_SET_MSRS`.
        op: &'static str,
        /// MSRs handled.
        done: usize,
        /// MSRs asked for.
        asked: usize,
        /// The index of the first MSR not handled.
        index: u32,
    },
    /// The snapshot names a different number of vCPUs than the VM it is restored into.
    #[error("snapshot has {snapshot} vCPUs, the VM has {vm}")]
    VcpuCountMismatch {
        /// vCPUs in the snapshot.
        snapshot: usize,
        /// vCPUs of the VM.
        vm: usize,
    },
    /// The snapshot has PIT state and the VM has no PIT, or the other way round.
    #[error("snapshot PIT presence ({snapshot}) differs from the VM's ({vm})")]
    PitMismatch {
        /// Whether the snapshot holds PIT state.
        snapshot: bool,
        /// Whether the VM has a PIT.
        vm: bool,
    },
    /// The host's XSAVE area is larger than the 4 KiB `kvm_xsave` this format carries.
    #[error("XSAVE area of {0} bytes does not fit the 4 KiB kvm_xsave")]
    XsaveTooLarge(usize),
    /// A building block of the MSR list could not be made.
    #[error("MSR list: {0}")]
    MsrList(String),
}

impl StateError {
    /// Wraps a failed ioctl.
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(KvmErrno) -> StateError {
        move |errno| StateError::Ioctl { op, errno }
    }
}

/// A snapshot's bytes are not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes end before the snapshot does.
    #[error("snapshot truncated: {field} needs {needed} bytes at offset {offset}, {len} in all")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Its size.
        needed: usize,
        /// Where it starts.
        offset: usize,
        /// The length of the input.
        len: usize,
    },
    /// The first bytes are not this format's magic.
    #[error("not a vCPU/VM snapshot (bad magic)")]
    BadMagic,
    /// A version this code does not read.
    #[error("snapshot version {found}, this build reads {supported}")]
    UnsupportedVersion {
        /// The version in the bytes.
        found: u32,
        /// The version this code reads.
        supported: u32,
    },
    /// The checksum does not match the bytes.
    #[error("snapshot checksum {found:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// The checksum in the bytes.
        found: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// A count is above this format's cap.
    #[error("snapshot {field} count {count} is above the cap {cap}")]
    CountTooLarge {
        /// The counted thing.
        field: &'static str,
        /// The count in the bytes.
        count: u32,
        /// The largest accepted.
        cap: u32,
    },
    /// A flag field has bits this version does not define.
    #[error("snapshot flags {0:#x} have unknown bits")]
    UnknownFlags(u32),
    /// Bytes are left after the snapshot's end.
    #[error("snapshot has {0} trailing bytes")]
    TrailingBytes(usize),
}
