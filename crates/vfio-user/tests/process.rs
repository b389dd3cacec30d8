//! End to end with the server in a process of its own: this test binary re-executes itself
//! (`--exact <this test>`) with an environment variable telling the child to be the server.

#![allow(clippy::cast_possible_truncation)]

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::dummy::{BAR, REG_DMA_ADDR, REG_DMA_LEN, REG_DMA_PATTERN, REG_DMA_WRITE, REG_SCRATCH};
use common::*;
use vfmig_iommu::{Container, Iova, Prot};
use vfmig_vfio_user::server::SessionEnd;
use vfmig_vfio_user::{Client, ClientConfig, Limits, Server};

/// Set in the child: the socket path to serve on.
const SERVER_ENV: &str = "VFMIG_VFIO_USER_TEST_SERVER";
const TEST_NAME: &str = "server_in_a_separate_process";

/// The child: serves one client on the socket, then returns (the test passes, the process
/// exits 0).
fn run_server(path: &str) {
    let listener = UnixListener::bind(path).unwrap();
    let container = Container::default();
    let (dummy, _state) = Dummy::new(container.clone(), true);
    let mut server = Server::new(dummy, container, Limits::default());
    let end = server.serve_one(&listener).unwrap();
    assert!(matches!(end, SessionEnd::Closed), "{end:?}");
}

fn connect_when_ready(path: &std::path::Path, child: &mut std::process::Child) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect(path, ClientConfig::default()) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "the server exited early"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => panic!("server never came up: {err}"),
        }
    }
}

fn write_reg(client: &Client, reg: u64, value: u64) {
    client.region_write(BAR, reg, &value.to_le_bytes()).unwrap();
}

#[test]
fn server_in_a_separate_process() {
    if let Ok(path) = std::env::var(SERVER_ENV) {
        run_server(&path);
        return;
    }
    let path = socket_path("process");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads", "1"])
        .env(SERVER_ENV, &path)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = connect_when_ready(&path, &mut child);
    assert_eq!(client.device_info().unwrap().num_regions, 2);
    assert_ne!(client.server_version().capabilities.migration, None);

    // Registers live in the other process.
    write_reg(&client, REG_SCRATCH, 0x1234);
    let mut value = [0; 8];
    client.region_read(BAR, REG_SCRATCH, &mut value).unwrap();
    assert_eq!(u64::from_le_bytes(value), 0x1234);

    // Guest RAM in a memfd crosses the process boundary; the device writes it by DMA and the
    // page comes back dirty.
    let ram = memfd(GIB);
    client
        .dma_map(Iova(GIB), GIB, Prot::READ_WRITE, Some((ram.as_fd(), 0)))
        .unwrap();
    client.dirty_pages_start().unwrap();
    write_reg(
        &client,
        REG_DMA_ADDR,
        GIB + 77 * CONTAINER_PAGE_SIZE.bytes(),
    );
    write_reg(&client, REG_DMA_LEN, 16);
    write_reg(&client, REG_DMA_PATTERN, 0x3c);
    write_reg(&client, REG_DMA_WRITE, 1);
    let mut seen = [0; 16];
    File::from(ram.try_clone().unwrap())
        .read_exact_at(&mut seen, 77 * CONTAINER_PAGE_SIZE.bytes())
        .unwrap();
    assert_eq!(seen, [0x3c; 16]);
    let bitmap = client.dirty_pages_get(Iova(GIB), GIB).unwrap();
    assert_eq!(pages_of(&bitmap), [77]);

    // The region's fd, mmapped here, is the device's memory there.
    let region = client.region_info(BAR).unwrap();
    let area = region.mmap_area(1).unwrap();
    area.write::<u64>(8, 0xfeed).unwrap();
    client.region_read(BAR, (1 << 20) + 8, &mut value).unwrap();
    assert_eq!(u64::from_le_bytes(value), 0xfeed);

    drop(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server process did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "server process: {status}");
    let _ = std::fs::remove_file(&path);
}
