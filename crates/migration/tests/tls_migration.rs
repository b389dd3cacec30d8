//! The engine over mutual TLS: a VM migrates whole, and a source whose certificate another CA
//! signed is refused by the destination in the handshake, before any state is read (no VM is
//! built) and without the source committing anything; the source learns the TLS alert, and
//! the destination goes on to receive the VM from a source it trusts.

mod tls_creds;

use std::path::PathBuf;
use std::thread;

use tls_creds::{Ca, good_creds, temp_dir, tls, write_creds};
use vfmig_migration::engine::{DowntimeLimit, MigrationError, Progress, migrate_with, receive};
use vfmig_migration::transport::{TransportSecurity, listen_with};
use vfmig_vmm::{DeviceHost, Vm, VmConfig};

const RAM: u64 = 32 << 20;

/// A host for VMs without devices (the device program is never run).
fn host(name: &str) -> DeviceHost {
    DeviceHost {
        program: PathBuf::from("vfmig"),
        dir: temp_dir(name),
        viommu: false,
    }
}

/// A source VM whose RAM holds a different word every 4 KiB.
fn source_vm(host: &DeviceHost) -> Vm {
    let vm = Vm::build(VmConfig::with_memory(RAM, vec![]).unwrap(), host, true).unwrap();
    for gpa in (0..RAM).step_by(4096) {
        vm.ram().write(gpa, &(gpa ^ 0x5a5a).to_le_bytes()).unwrap();
    }
    vm
}

/// Runs a migration of `vm` from `source` security to a destination with `destination`
/// security; returns both ends' results.
fn migrate_between(
    vm: &Vm,
    host: &DeviceHost,
    source: &TransportSecurity,
    destination: &TransportSecurity,
) -> (Result<Vm, MigrationError>, Result<(), MigrationError>) {
    let listener = listen_with(&"tcp:127.0.0.1:0".parse().unwrap(), destination).unwrap();
    let to = listener.address().clone();
    thread::scope(|s| {
        let receiving = s.spawn(|| receive(&listener, host).map(|(vm, _)| vm));
        let sent = migrate_with(
            vm,
            &to,
            source,
            &mut DowntimeLimit::default(),
            &Progress::new(),
        )
        .map(|_| ());
        (receiving.join().unwrap(), sent)
    })
}

#[test]
fn a_vm_migrates_whole_over_mutual_tls() {
    let host = host("engine-whole");
    let vm = source_vm(&host);
    let security = tls(
        &good_creds("engine-whole-creds"),
        &["vfmig-source", "localhost"],
    );
    let (received, sent) = migrate_between(&vm, &host, &security, &security);
    sent.unwrap();
    assert_eq!(received.unwrap().digest().unwrap(), vm.digest().unwrap());
}

#[test]
fn a_source_with_a_certificate_of_another_ca_is_refused_before_any_state_is_read() {
    let host = host("engine-rogue");
    let vm = source_vm(&host);
    let (ours, theirs) = (Ca::new("ours"), Ca::new("theirs"));
    let destination = temp_dir("engine-rogue-destination");
    write_creds(
        &destination,
        &ours,
        &ours,
        &["127.0.0.1"],
        &["vfmig-source"],
    );
    let rogue = temp_dir("engine-rogue-source");
    write_creds(&rogue, &ours, &theirs, &["127.0.0.1"], &["vfmig-source"]);
    let listener =
        listen_with(&"tcp:127.0.0.1:0".parse().unwrap(), &tls(&destination, &[])).unwrap();
    let to = listener.address().clone();
    thread::scope(|s| {
        let receiving = s.spawn(|| receive(&listener, &host));
        let refused = migrate_with(
            &vm,
            &to,
            &tls(&rogue, &[]),
            &mut DowntimeLimit::default(),
            &Progress::new(),
        )
        .expect_err("the rogue source migrated");
        // The destination is still there, and takes the VM from a source it trusts.
        migrate_with(
            &vm,
            &to,
            &tls(&destination, &[]),
            &mut DowntimeLimit::default(),
            &Progress::new(),
        )
        .unwrap();
        let (received, stats) = receiving.join().unwrap().unwrap();
        assert_eq!(received.digest().unwrap(), vm.digest().unwrap());
        assert_eq!(stats.refused, 1, "{stats:?}");
        assert!(stats.refusals[0].contains("certificate"), "{stats:?}");
        assert!(
            matches!(refused, MigrationError::Refused { .. })
                && refused.to_string().contains("UnknownCA"),
            "{refused}"
        );
    });
}
