//! Accesses to mappings without an fd call the peer without the container lock held: a slow
//! peer holds up no map or unmap, and a remote write (which marks nothing: the peer records
//! it) that races with an unmap marks no page of another mapping.

mod common;

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use vfmig_iommu::{Backing, Container, Iova, RemoteMemory, UnmapRequest};

/// Long enough for any thread to get going on a loaded machine; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A peer that answers only when let through: each access reports that it reached the peer,
/// then waits for a release (or gives up after [`PATIENCE`], so a failing test cannot hang).
struct Gate {
    entered: Sender<()>,
    release: Mutex<Receiver<()>>,
}

impl Gate {
    /// The peer, the receiver of "an access reached the peer", the sender that lets one through.
    fn new() -> (Arc<Gate>, Receiver<()>, Sender<()>) {
        let (entered, entered_rx) = mpsc::channel();
        let (release_tx, release) = mpsc::channel();
        let gate = Gate {
            entered,
            release: Mutex::new(release),
        };
        (Arc::new(gate), entered_rx, release_tx)
    }

    fn wait(&self) -> io::Result<()> {
        let _ = self.entered.send(());
        let release = self.release.lock().unwrap();
        release
            .recv_timeout(PATIENCE)
            .map_err(|_| io::Error::from_raw_os_error(libc::ETIMEDOUT))
    }
}

impl RemoteMemory for Gate {
    fn read(&self, _: Iova, buf: &mut [u8]) -> io::Result<()> {
        self.wait()?;
        buf.fill(7);
        Ok(())
    }
    fn write(&self, _: Iova, _: &[u8]) -> io::Result<()> {
        self.wait()
    }
}

fn unmap(c: &Container, iova: u64, size: u64) -> u64 {
    let req = UnmapRequest {
        flags: 0,
        iova,
        size,
        bitmap: None,
    };
    c.unmap_dma(&req, None).unwrap()
}

#[test]
fn a_slow_remote_read_does_not_hold_up_a_map() {
    let (gate, entered, release) = Gate::new();
    let c = Container::default();
    c.map_dma(RW, 0, CONTAINER_PAGE_SIZE.bytes(), Backing::Remote(gate))
        .unwrap();
    let reader = thread::spawn({
        let c = c.clone();
        move || {
            let mut b = [0u8; 4];
            c.read(Iova(0), &mut b).map(|()| b)
        }
    });
    entered
        .recv_timeout(PATIENCE)
        .expect("the read reaches the peer");

    let (mapped_tx, mapped) = mpsc::channel();
    let mapper = thread::spawn({
        let c = c.clone();
        move || {
            let r = c.map_dma(
                RW,
                CONTAINER_PAGE_SIZE.bytes(),
                CONTAINER_PAGE_SIZE.bytes(),
                backing(CONTAINER_PAGE_SIZE.bytes()),
            );
            let _ = mapped_tx.send(());
            r
        }
    });
    let map_done_while_the_read_waits = mapped.recv_timeout(PATIENCE).is_ok();
    release.send(()).unwrap();

    assert!(
        map_done_while_the_read_waits,
        "map_dma waited for the peer to answer a read"
    );
    mapper.join().unwrap().unwrap();
    assert_eq!(reader.join().unwrap().unwrap(), [7; 4]);
    assert_eq!(c.mappings(), 2);
}

#[test]
fn a_remote_write_racing_with_a_replacing_map_marks_nothing_in_the_new_mapping() {
    let (gate, entered, release) = Gate::new();
    let c = Container::default();
    c.map_dma(
        RW,
        0,
        4 * CONTAINER_PAGE_SIZE.bytes(),
        Backing::Remote(gate),
    )
    .unwrap();
    c.start_dirty_tracking().unwrap();
    let writer = thread::spawn({
        let c = c.clone();
        move || c.write(Iova(2 * CONTAINER_PAGE_SIZE.bytes()), &[1])
    });
    entered
        .recv_timeout(PATIENCE)
        .expect("the write reaches the peer");

    // While the peer holds the write: the mapping goes, another takes its place.
    assert_eq!(
        unmap(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()),
        4 * CONTAINER_PAGE_SIZE.bytes()
    );
    c.map_dma(
        RW,
        0,
        4 * CONTAINER_PAGE_SIZE.bytes(),
        backing(4 * CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    release.send(()).unwrap();

    writer.join().expect("no panic").unwrap();
    assert_eq!(
        pages_of(&get(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        Vec::<u64>::new()
    );
}

#[test]
fn a_remote_write_racing_with_an_unmap_is_lost_without_error() {
    let (gate, entered, release) = Gate::new();
    let c = Container::default();
    c.map_dma(
        RW,
        0,
        4 * CONTAINER_PAGE_SIZE.bytes(),
        Backing::Remote(gate),
    )
    .unwrap();
    c.map_dma(
        RW,
        4 * CONTAINER_PAGE_SIZE.bytes(),
        4 * CONTAINER_PAGE_SIZE.bytes(),
        backing(4 * CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    c.start_dirty_tracking().unwrap();
    let writer = thread::spawn({
        let c = c.clone();
        move || c.write(Iova(3 * CONTAINER_PAGE_SIZE.bytes()), &[1])
    });
    entered
        .recv_timeout(PATIENCE)
        .expect("the write reaches the peer");
    assert_eq!(
        unmap(&c, 0, 4 * CONTAINER_PAGE_SIZE.bytes()),
        4 * CONTAINER_PAGE_SIZE.bytes()
    );
    release.send(()).unwrap();

    writer.join().expect("no panic").unwrap();
    assert_eq!(
        c.count_dirty(Iova(0), 8 * CONTAINER_PAGE_SIZE.bytes())
            .unwrap(),
        0
    );
}

#[test]
fn a_write_that_fails_at_the_peer_keeps_its_errno_and_the_host_pages_before_it_dirty() {
    struct Gone;
    impl RemoteMemory for Gone {
        fn read(&self, _: Iova, _: &mut [u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ECONNRESET))
        }
        fn write(&self, _: Iova, _: &[u8]) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ECONNRESET))
        }
    }
    let c = Container::default();
    c.map_dma(
        RW,
        0,
        CONTAINER_PAGE_SIZE.bytes(),
        backing(CONTAINER_PAGE_SIZE.bytes()),
    )
    .unwrap();
    c.map_dma(
        RW,
        CONTAINER_PAGE_SIZE.bytes(),
        CONTAINER_PAGE_SIZE.bytes(),
        Backing::Remote(Arc::new(Gone)),
    )
    .unwrap();
    c.start_dirty_tracking().unwrap();
    assert_eq!(
        errno(c.write(Iova(CONTAINER_PAGE_SIZE.bytes() - 2), &[1; 4])),
        libc::ECONNRESET
    );
    assert_eq!(
        pages_of(&get(&c, 0, CONTAINER_PAGE_SIZE.bytes()).unwrap()),
        vec![0]
    );
}
