//! Devices a VM attaches by socket (`--device socket=PATH,id=NAME`), their servers started
//! by the test as a user starts their own: a VM of such devices migrates to a destination
//! with its own servers, matched by id; a server without a migration region blocks
//! `migrate` at once; a server without dirty tracking migrates with all RAM dirty at every
//! sync; a destination whose device ids differ is refused. Real `vfmig vm run` and
//! `vfmig device` processes; the guest is the KVM guest where `/dev/kvm` works.

#[allow(dead_code)] // each test binary uses a part of the helpers
mod common;

use std::net::TcpListener;

use serde_json::Value;

use common::{
    DEVICES_GUEST, DeviceServer, TestDir, VmProcess, digest, finite_migration, free_port, to,
};

/// Guest RAM pages of the tests' VMs (256 MiB).
const RAM_PAGES: u64 = (256 << 20) / 4096;

/// An mtty server and a dma-engine server (4 MiB of device RAM), started by the test;
/// `mtty_args` are the mtty's extra options.
fn servers(dir: &TestDir, side: &str, mtty_args: &[&str]) -> (DeviceServer, DeviceServer) {
    (
        DeviceServer::start(dir, &format!("{side}-mtty"), "mtty", mtty_args),
        DeviceServer::start(
            dir,
            &format!("{side}-dma"),
            "dma-engine",
            &["--ram-mib", "4"],
        ),
    )
}

/// Migrates `source` to `destination` (listening on `port`), which must complete; checks
/// both are equal at the switch-over, runs the destination and checks its guest runs with
/// working devices. Returns the migration's statistics.
fn migrate_and_verify(source: &VmProcess, destination: &VmProcess, port: u16) -> Value {
    source.call("migrate", finite_migration(&to(port)));
    let done = source.wait_for_migration_end();
    assert_eq!(done["state"], "completed", "{done}");
    destination.wait_until("the incoming VM is built", |s| s["state"] == "paused");
    let (want, got) = (digest(source), digest(destination));
    assert_eq!(got, want, "the destination differs at the switch-over");
    destination.call("cont", Value::Null);
    destination.assert_guest_runs_cleanly();
    done["stats"].clone()
}

#[test]
fn a_vm_of_separately_started_servers_migrates_to_a_destination_with_its_own() {
    let dir = TestDir::new("attach");
    let (src_mtty, src_dma) = servers(&dir, "s", &[]);
    let (dst_mtty, dst_dma) = servers(&dir, "d", &[]);
    let source = VmProcess::source_with_devices(
        &dir,
        "src",
        &[
            "--device",
            &src_mtty.device_option("serial0"),
            "--device",
            &src_dma.device_option("dma0"),
        ],
        DEVICES_GUEST,
    );
    let port = free_port();
    // Listed the other way round: devices are matched by id, not by place.
    let destination = VmProcess::destination_with_devices(
        &dir,
        "dst",
        port,
        &[
            "--device",
            &dst_dma.device_option("dma0"),
            "--device",
            &dst_mtty.device_option("serial0"),
        ],
        DEVICES_GUEST,
    );
    let devices = source.status()["devices"].clone();
    assert!(
        devices
            .as_array()
            .is_some_and(|ds| ds.iter().all(|d| d["pid"].is_null())),
        "the VMM started a device process of its own: {devices}"
    );
    let want = digest(&source);
    assert!(want.devices.iter().all(|(_, d)| d.is_some()), "{want:?}");

    migrate_and_verify(&source, &destination, port);
}

#[test]
fn a_device_without_a_migration_region_blocks_migrate_at_once_naming_it() {
    let dir = TestDir::new("blocker");
    let blocked = DeviceServer::start(&dir, "nomig", "mtty", &["--no-migration"]);
    let source = VmProcess::source_with_devices(
        &dir,
        "src",
        &[
            "--device",
            &blocked.device_option("legacy0"),
            "--device",
            "dma-engine",
        ],
        DEVICES_GUEST,
    );
    let status = source.status();
    assert_eq!(
        status["migration_blockers"][0]["device"], "legacy0",
        "{status}"
    );
    let destination = TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = destination.local_addr().expect("address").port();

    let refused = source
        .request("migrate", finite_migration(&to(port)))
        .expect_err("migrate was accepted");

    assert!(refused.to_string().contains("legacy0"), "{refused}");
    destination.set_nonblocking(true).expect("nonblocking");
    assert!(
        destination.accept().is_err(),
        "the source connected to the destination"
    );
    source.assert_guest_runs_cleanly();
}

#[test]
fn a_device_without_dirty_tracking_migrates_with_all_ram_dirty_at_every_sync() {
    let dir = TestDir::new("untracked");
    let (src_mtty, src_dma) = servers(&dir, "s", &["--no-dirty-tracking"]);
    let (dst_mtty, dst_dma) = servers(&dir, "d", &["--no-dirty-tracking"]);
    let devices = |mtty: &DeviceServer, dma: &DeviceServer| {
        [mtty.device_option("serial0"), dma.device_option("dma0")]
    };
    let [s0, s1] = devices(&src_mtty, &src_dma);
    let source = VmProcess::source_with_devices(
        &dir,
        "src",
        &["--device", &s0, "--device", &s1],
        DEVICES_GUEST,
    );
    let port = free_port();
    let [d0, d1] = devices(&dst_mtty, &dst_dma);
    let destination = VmProcess::destination_with_devices(
        &dir,
        "dst",
        port,
        &["--device", &d0, "--device", &d1],
        DEVICES_GUEST,
    );

    let stats = migrate_and_verify(&source, &destination, port);

    assert_eq!(
        stats["untracked_devices"],
        serde_json::json!(["serial0"]),
        "{stats}"
    );
    let iterations = stats["iterations"].as_array().expect("iterations");
    for it in iterations {
        assert_eq!(it["dirty_pages"].as_u64(), Some(RAM_PAGES), "{stats}");
    }
    // The first iteration and the stop-and-copy each carried all of RAM.
    let pages = stats["pages"].as_u64().expect("pages");
    assert!(pages >= 2 * RAM_PAGES, "{pages} pages sent: {stats}");
}

#[test]
fn a_destination_whose_device_ids_differ_is_refused_naming_the_id() {
    let dir = TestDir::new("ids");
    let source = VmProcess::source(&dir, "src", DEVICES_GUEST);
    let port = free_port();
    let _destination = VmProcess::destination_with_devices(
        &dir,
        "dst",
        port,
        &["--device", "mtty,id=serial0", "--device", "dma-engine"],
        DEVICES_GUEST,
    );

    source.call("migrate", finite_migration(&to(port)));
    let done = source.wait_for_migration_end();

    assert_eq!(done["state"], "failed", "{done}");
    let error = done["error"].as_str().unwrap_or_default();
    assert!(error.contains("mtty0"), "{done}");
    source.assert_guest_runs_cleanly();
}
