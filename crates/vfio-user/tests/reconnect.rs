//! A client that goes and comes back finds the device as it left it (registers, config space)
//! but none of its mappings, eventfds or dirty tracking.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::os::fd::AsFd;

use common::dummy::{BAR, CONFIG, IRQ, REG_SCRATCH};
use common::*;
use vfmig_iommu::{Iova, Prot};
use vfmig_vfio_user::client::IrqValues;
use vfmig_vfio_user::message::IrqAction;
use vfmig_vfio_user::server::SessionEnd;
use vfmig_vfio_user::{Client, ClientConfig, ClientError, Errno};

#[test]
fn a_reconnecting_client_finds_the_device_state_kept() {
    let (path, server) = spawn_listener(2);
    let fd = memfd(16 * CONTAINER_PAGE_SIZE.bytes());
    let irq = eventfd();
    {
        let client = Client::connect(&path, ClientConfig::default()).unwrap();
        client
            .region_write(BAR, REG_SCRATCH, &42u64.to_le_bytes())
            .unwrap();
        client.region_write(CONFIG, 0x40, b"kept").unwrap();
        client
            .dma_map(
                Iova(0),
                16 * CONTAINER_PAGE_SIZE.bytes(),
                Prot::READ_WRITE,
                Some((fd.as_fd(), 0)),
            )
            .unwrap();
        client
            .set_irqs(
                IRQ,
                0,
                IrqAction::Trigger,
                IrqValues::Eventfds(&[irq.as_fd()]),
            )
            .unwrap();
        client.dirty_pages_start().unwrap();
        assert_eq!(server.container.mappings(), 1);
    }
    let client = Client::connect(&path, ClientConfig::default()).unwrap();
    // The first session was cleaned up before the second was accepted.
    {
        let state = server.state.lock().unwrap();
        assert_eq!(state.clients_gone, 1);
        assert!(state.irq_eventfd.is_none());
        assert_eq!(state.irq_disables, 1);
    }
    assert_eq!(server.container.mappings(), 0);
    assert!(!server.container.is_tracking());
    let mut scratch = [0; 8];
    client.region_read(BAR, REG_SCRATCH, &mut scratch).unwrap();
    assert_eq!(u64::from_le_bytes(scratch), 42);
    let mut config = [0; 4];
    client.region_read(CONFIG, 0x40, &mut config).unwrap();
    assert_eq!(&config, b"kept");
    // The old mapping is gone: the same range maps again.
    client
        .dma_map(
            Iova(0),
            16 * CONTAINER_PAGE_SIZE.bytes(),
            Prot::READ_WRITE,
            Some((fd.as_fd(), 0)),
        )
        .unwrap();
    drop(client);
    let ends = server.join();
    assert!(matches!(
        ends.as_slice(),
        [SessionEnd::Closed, SessionEnd::Closed]
    ));
}

#[test]
fn dirty_tracking_does_not_survive_the_client() {
    let (path, server) = spawn_listener(2);
    {
        let client = Client::connect(&path, ClientConfig::default()).unwrap();
        client.dirty_pages_start().unwrap();
        assert!(server.container.is_tracking());
    }
    let client = Client::connect(&path, ClientConfig::default()).unwrap();
    assert!(!server.container.is_tracking());
    let _fd = map_one_page(&client);
    client.dirty_pages_start().unwrap();
    assert!(
        client
            .dirty_pages_get(Iova(0), CONTAINER_PAGE_SIZE.bytes())
            .is_ok()
    );
}

#[test]
fn connecting_to_nothing_keeps_the_errno() {
    let path = socket_path("nobody");
    let err = Client::connect(&path, ClientConfig::default()).unwrap_err();
    assert!(matches!(err, ClientError::Connection(_)));
    assert_eq!(err.errno(), Errno::new(libc::ENOENT));
}
