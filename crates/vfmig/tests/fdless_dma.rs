//! A device that reaches guest RAM only through DMA messages (`--device dma-engine,dma=messages`):
//! guest RAM is mapped to it without fds, so every byte it reads or writes is a DMA_READ or
//! DMA_WRITE its VMM answers. Such a VM migrates while the guest drives the device, the pages
//! it wrote by DMA_WRITE reach the destination (the digests are equal), and its VMM never asks
//! its server for a dirty bitmap: the client's own record of the DMA_WRITEs is the report.
//! Real `vfmig vm run` and `vfmig device` processes; the guest is the KVM guest where
//! `/dev/kvm` works.

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use serde_json::Value;

use common::{DEVICES_GUEST, TestDir, VmProcess, digest, finite_migration, free_port, to};

/// The devices of both VMs: an mtty mapped by fd, and a dma-engine reached by messages.
const DEVICES: &[&str] = &["--device", "mtty", "--device", "dma-engine,dma=messages"];

/// The `status` entry of device `id`.
fn device(vm: &VmProcess, id: &str) -> Value {
    let status = vm.status();
    status["devices"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["id"] == id).cloned())
        .unwrap_or_else(|| panic!("no device {id} in {status}"))
}

/// A counter of device `id`'s vfio-user client.
fn client_count(vm: &VmProcess, id: &str, counter: &str) -> u64 {
    let d = device(vm, id);
    d["client"][counter]
        .as_u64()
        .unwrap_or_else(|| panic!("no client.{counter} in {d}"))
}

#[test]
fn a_device_reached_by_dma_messages_migrates_without_a_bitmap_request_and_its_writes_arrive() {
    let dir = TestDir::new("fdless");
    let source = VmProcess::source_with_devices(&dir, "src", DEVICES, DEVICES_GUEST);
    let port = free_port();
    let destination =
        VmProcess::destination_with_devices(&dir, "dst", port, DEVICES, DEVICES_GUEST);
    assert_eq!(device(&source, "dmaengine0")["dma"], "messages");
    // The guest drives the dma-engine, which reads its ring and writes guest RAM by message.
    source.wait_until("the dma-engine writes guest RAM by DMA_WRITE", |s| {
        s["devices"][1]["client"]["dma_writes"].as_u64() > Some(100)
    });
    assert!(client_count(&source, "dmaengine0", "dma_reads") > 0);

    source.call("migrate", finite_migration(&to(port)));
    let done = source.wait_for_migration_end();
    assert_eq!(done["state"], "completed", "{done}");
    destination.wait_until("the incoming VM is built", |s| s["state"] == "paused");
    assert_eq!(
        digest(&destination),
        digest(&source),
        "the destination differs at the switch-over"
    );

    assert_eq!(
        client_count(&source, "dmaengine0", "bitmap_requests"),
        0,
        "a dirty bitmap was asked of a server for memory mapped without an fd"
    );
    assert!(
        client_count(&source, "dmaengine0", "recorded_pages") > 0,
        "no page written by DMA_WRITE was reported from the client's record"
    );
    // The counter counts: the mtty, mapped by fd, was asked at every sync.
    assert!(client_count(&source, "mtty0", "bitmap_requests") > 0);
    destination.call("cont", Value::Null);
    destination.assert_guest_runs_cleanly();
}
