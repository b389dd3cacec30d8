//! Device reads and writes on the two paths to host memory, measured in one run: `Direct`
//! (a memfd sealed against shrinking: plain copies) and `Checked` (an unsealed memfd: copies
//! through `process_vm_readv`/`writev`, which a page the client cut off cannot turn into
//! SIGBUS). Pages are faulted in first, dirty tracking is on (writes mark), and each size is
//! copied over a 64 MiB window of a 256 MiB mapping; the best of `REPS` runs is printed as GiB/s
//! and the checked/direct ratio.
//!
//! `cargo bench -p vfmig-iommu --bench access_path`

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use vfmig_iommu::{AccessPath, Backing, Container, Iova, Prot};

const MAPPING: u64 = 256 << 20;
const WINDOW: u64 = 64 << 20;
const REPS: usize = 5;

fn container(fd: OwnedFd, want: AccessPath) -> Container {
    let c = Container::default();
    c.map(
        Iova(0),
        MAPPING,
        Prot::READ_WRITE,
        Backing::Fd { fd, offset: 0 },
    )
    .expect("map");
    assert_eq!(c.access_path(Iova(0)), Some(want));
    let chunk = vec![0x5au8; 1 << 20];
    for at in (0..MAPPING).step_by(chunk.len()) {
        c.write(Iova(at), &chunk).expect("fault in");
    }
    c.start_dirty_tracking().expect("start");
    c
}

/// Best time of `REPS` passes over the window in `size`-byte accesses.
fn best(c: &Container, size: usize, write: bool) -> Duration {
    let mut buf = vec![0xa5u8; size];
    (0..REPS)
        .map(|_| {
            let start = Instant::now();
            for at in (0..WINDOW).step_by(size) {
                if write {
                    c.write(Iova(at), &buf).expect("write");
                } else {
                    c.read(Iova(at), &mut buf).expect("read");
                }
            }
            start.elapsed()
        })
        .min()
        .expect("REPS > 0")
}

fn gib_s(d: Duration) -> f64 {
    WINDOW as f64 / d.as_secs_f64() / f64::from(1u32 << 30)
}

fn main() {
    let size = usize::try_from(MAPPING).expect("fits");
    let direct = container(
        vfmig_memory::memfd_sealed(c"bench-direct", size)
            .expect("memfd")
            .into(),
        AccessPath::Direct,
    );
    let checked = container(
        vfmig_memory::memfd(c"bench-checked", size)
            .expect("memfd")
            .into(),
        AccessPath::Checked,
    );
    println!("Device access over 64 MiB of a 256 MiB mapping, tracking on; best of {REPS}");
    println!("  access        direct GiB/s  checked GiB/s  checked/direct");
    for (name, bytes, write) in [
        ("read 4 KiB", 4096, false),
        ("write 4 KiB", 4096, true),
        ("read 64 KiB", 64 << 10, false),
        ("write 64 KiB", 64 << 10, true),
        ("read 1 MiB", 1 << 20, false),
        ("write 1 MiB", 1 << 20, true),
    ] {
        let (d, k) = (best(&direct, bytes, write), best(&checked, bytes, write));
        println!(
            "  {name:<12} {:12.2} {:14.2} {:15.2}",
            gib_s(d),
            gib_s(k),
            d.as_secs_f64() / k.as_secs_f64()
        );
    }
}
