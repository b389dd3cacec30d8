//! Device threads pin, write and mark while another thread answers GET: no bit is ever lost,
//! none is invented. Checked against a model: the union of everything GET returned equals the
//! set of pages the devices dirtied.
#![allow(clippy::cast_possible_truncation)] // test arithmetic on small known values

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use common::*;
use vfmig_iommu::{DirtyScope, Iova, Prot};

/// A small deterministic generator (xorshift64*), so a failure replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const PAGES: u64 = 64 * 1024; // 256 MiB of guest memory, two mappings with a hole between.
const MAPS: [(u64, u64); 2] = [
    (0, PAGES / 2 * CONTAINER_PAGE_SIZE.bytes()),
    (
        (PAGES / 2 + 64) * CONTAINER_PAGE_SIZE.bytes(),
        PAGES / 2 * CONTAINER_PAGE_SIZE.bytes(),
    ),
];
const SPAN: u64 = (PAGES + 64) * CONTAINER_PAGE_SIZE.bytes();

fn run(writers: usize, ops: usize, seed: u64) {
    let c = container_with(&MAPS);
    c.start_dirty_tracking().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (c, done) = (c.clone(), done.clone());
        thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut gets = 0;
            while !done.load(Ordering::Acquire) || gets == 0 {
                seen.extend(pages_of(&get(&c, 0, SPAN).unwrap()));
                gets += 1;
            }
            (seen, gets)
        })
    };
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let c = c.clone();
            thread::spawn(move || {
                let dev = c.attach_device(DirtyScope::Pinned, None);
                let mut rng = Rng(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut dirtied = BTreeSet::new();
                for _ in 0..ops {
                    let (base, size) = MAPS[(rng.next() % 2) as usize];
                    let page = rng.next() % (size / CONTAINER_PAGE_SIZE.bytes());
                    let iova = base + page * CONTAINER_PAGE_SIZE.bytes();
                    match rng.next() % 3 {
                        0 => c
                            .write(Iova(iova + rng.next() % CONTAINER_PAGE_SIZE.bytes()), &[1])
                            .unwrap(),
                        1 => c
                            .mark_dirty(Iova(iova), CONTAINER_PAGE_SIZE.bytes())
                            .unwrap(),
                        _ => {
                            let pin = c
                                .pin(
                                    dev,
                                    Iova(iova),
                                    CONTAINER_PAGE_SIZE.bytes(),
                                    Prot::READ_WRITE,
                                )
                                .unwrap();
                            pin.write_at(0, &[2]).unwrap();
                        }
                    }
                    dirtied.insert(iova / CONTAINER_PAGE_SIZE.bytes());
                }
                dirtied
            })
        })
        .collect();
    let mut dirtied = BTreeSet::new();
    for h in handles {
        dirtied.extend(h.join().unwrap());
    }
    done.store(true, Ordering::Release);
    let (mut seen, gets) = reader.join().unwrap();
    seen.extend(pages_of(&get(&c, 0, SPAN).unwrap()));
    assert!(gets > 0);
    let lost: Vec<_> = dirtied.difference(&seen).take(5).collect();
    let invented: Vec<_> = seen.difference(&dirtied).take(5).collect();
    assert!(lost.is_empty(), "pages lost: {lost:?}");
    assert!(invented.is_empty(), "pages invented: {invented:?}");
}

#[test]
fn concurrent_writes_marks_and_pins_during_get_lose_no_bit() {
    run(3, 20_000, 1);
}

#[test]
fn concurrent_writers_during_get_lose_no_bit_with_another_seed() {
    run(2, 20_000, 0xdead_beef);
}
