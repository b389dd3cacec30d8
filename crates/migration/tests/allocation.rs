//! A length field above its type's cap is refused before anything is allocated for it, and a
//! length under the cap makes the reader allocate only as the payload arrives.
//!
//! This test binary counts allocations with its own global allocator, so it holds only
//! these tests, run one at a time under a lock.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use vfmig_migration::stream::{ReadError, SectionKind, StreamReader, StreamWriter};

/// The system allocator, recording the largest single allocation.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`, which upholds the `GlobalAlloc` contract; the counter
// does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

/// A stream with a config, then a section header of `kind` declaring `len` bytes, then
/// `sent` bytes of payload and nothing more.
fn stream_declaring(kind: SectionKind, len: u32, sent: usize) -> Vec<u8> {
    let config = vfmig_migration::stream::StreamConfig::new(Default::default(), vec![]).unwrap();
    let mut writer = StreamWriter::new(Vec::new()).unwrap();
    writer.write_config(&config).unwrap();
    let mut stream = writer.into_inner().unwrap();
    stream.extend_from_slice(&kind.to_wire().to_le_bytes());
    stream.extend_from_slice(&0u16.to_le_bytes());
    stream.extend_from_slice(&len.to_le_bytes());
    stream.resize(stream.len() + sent, 0xab);
    stream
}

/// Reads the config and then one section; returns the error and the larger of the largest
/// heap allocation made while reading that section and the reader's buffer (a mapping of its
/// own, not on the heap).
fn second_section(stream: &[u8]) -> (ReadError, usize) {
    let mut reader = StreamReader::new(stream).unwrap();
    reader.next_section().unwrap();
    let before = reader.buffer_capacity();
    LARGEST.store(0, Ordering::Relaxed);
    let err = reader.next_section().unwrap_err();
    let grown = reader.buffer_capacity();
    let grown = if grown > before { grown } else { 0 };
    (err, LARGEST.load(Ordering::Relaxed).max(grown))
}

#[test]
fn length_above_the_cap_is_refused_before_allocation() {
    let _serial = SERIAL.lock().unwrap();
    for kind in SectionKind::ALL {
        let max = kind.max_payload();
        for len in [max + 1, u32::MAX] {
            let (err, largest) = second_section(&stream_declaring(kind, len, 0));
            match err {
                ReadError::TooLong {
                    pos,
                    len: l,
                    max: m,
                } => {
                    assert_eq!((pos.kind, l, m), (kind.to_wire(), len, max));
                }
                other => panic!("{kind}: {other:?}"),
            }
            assert!(largest < 4096, "{kind}: allocated {largest} bytes");
        }
    }
}

#[test]
fn declared_length_under_the_cap_allocates_only_as_bytes_arrive() {
    let _serial = SERIAL.lock().unwrap();
    let len = SectionKind::DeviceChunk.max_payload();
    let (err, largest) = second_section(&stream_declaring(SectionKind::DeviceChunk, len, 10));
    assert!(matches!(err, ReadError::Truncated { .. }), "{err:?}");
    assert!(
        largest <= 1 << 20,
        "allocated {largest} bytes for 10 received"
    );
}
