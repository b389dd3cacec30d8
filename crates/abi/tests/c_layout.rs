//! Compares every struct size, field offset, constant and ioctl number of `vfmig-abi` with this
//! machine's `<linux/vfio.h>`, compiled by the C compiler.
//!
//! One table lists each C expression beside the Rust value it must equal; the C program is
//! generated from the table, so the two sides cannot drift apart.

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};
use std::path::PathBuf;
use std::process::Command;

use vfmig_abi::dirty::{DIRTY_BITMAP_PAGES_MAX, DIRTY_BITMAP_SIZE_MAX};
use vfmig_abi::ioctl::*;
use vfmig_abi::migration_info::Field;
use vfmig_abi::uapi::*;
use vfmig_abi::{DeviceState, StateKind};
use vfmig_dirty::bitmap_bytes;

macro_rules! size {
    ($t:ident) => {
        (
            concat!("sizeof(struct ", stringify!($t), ")").to_string(),
            size_of::<$t>() as u64,
        )
    };
}

macro_rules! offset {
    ($t:ident, $f:ident) => {
        (
            concat!(
                "offsetof(struct ",
                stringify!($t),
                ", ",
                stringify!($f),
                ")"
            )
            .to_string(),
            offset_of!($t, $f) as u64,
        )
    };
}

macro_rules! constant {
    ($c:ident) => {
        (stringify!($c).to_string(), u64::from($c))
    };
    ($c:literal, $v:expr) => {
        ($c.to_string(), u64::from($v))
    };
}

/// Every (C expression, Rust value) pair the test checks.
fn table() -> Vec<(String, u64)> {
    let mut t = vec![
        size!(vfio_info_cap_header),
        offset!(vfio_info_cap_header, id),
        offset!(vfio_info_cap_header, version),
        offset!(vfio_info_cap_header, next),
        // Kernels from 6.6 append a `pad` word (the bindings' size is 24); older headers, like
        // Debian 12's 6.1, end the struct at `cap_offset`. Every field both share must agree.
        (
            "offsetof(struct vfio_device_info, cap_offset) + sizeof(__u32)".to_string(),
            (offset_of!(vfio_device_info, cap_offset) + size_of::<u32>()) as u64,
        ),
        offset!(vfio_device_info, flags),
        offset!(vfio_device_info, num_regions),
        offset!(vfio_device_info, num_irqs),
        offset!(vfio_device_info, cap_offset),
        size!(vfio_region_info),
        offset!(vfio_region_info, flags),
        offset!(vfio_region_info, index),
        offset!(vfio_region_info, cap_offset),
        offset!(vfio_region_info, size),
        offset!(vfio_region_info, offset),
        size!(vfio_region_sparse_mmap_area),
        offset!(vfio_region_sparse_mmap_area, offset),
        offset!(vfio_region_sparse_mmap_area, size),
        size!(vfio_region_info_cap_sparse_mmap),
        offset!(vfio_region_info_cap_sparse_mmap, nr_areas),
        offset!(vfio_region_info_cap_sparse_mmap, areas),
        size!(vfio_region_info_cap_type),
        (
            "offsetof(struct vfio_region_info_cap_type, type)".to_string(),
            offset_of!(vfio_region_info_cap_type, type_) as u64,
        ),
        offset!(vfio_region_info_cap_type, subtype),
        size!(vfio_irq_info),
        offset!(vfio_irq_info, flags),
        offset!(vfio_irq_info, index),
        offset!(vfio_irq_info, count),
        size!(vfio_irq_set),
        offset!(vfio_irq_set, flags),
        offset!(vfio_irq_set, index),
        offset!(vfio_irq_set, start),
        offset!(vfio_irq_set, count),
        offset!(vfio_irq_set, data),
        size!(vfio_device_migration_info),
        offset!(vfio_device_migration_info, device_state),
        offset!(vfio_device_migration_info, reserved),
        offset!(vfio_device_migration_info, pending_bytes),
        offset!(vfio_device_migration_info, data_offset),
        offset!(vfio_device_migration_info, data_size),
        size!(vfio_iommu_type1_info),
        offset!(vfio_iommu_type1_info, flags),
        offset!(vfio_iommu_type1_info, iova_pgsizes),
        offset!(vfio_iommu_type1_info, cap_offset),
        size!(vfio_iommu_type1_info_cap_migration),
        offset!(vfio_iommu_type1_info_cap_migration, header),
        offset!(vfio_iommu_type1_info_cap_migration, flags),
        offset!(vfio_iommu_type1_info_cap_migration, pgsize_bitmap),
        offset!(vfio_iommu_type1_info_cap_migration, max_dirty_bitmap_size),
        size!(vfio_iommu_type1_dma_map),
        offset!(vfio_iommu_type1_dma_map, flags),
        offset!(vfio_iommu_type1_dma_map, vaddr),
        offset!(vfio_iommu_type1_dma_map, iova),
        offset!(vfio_iommu_type1_dma_map, size),
        size!(vfio_bitmap),
        offset!(vfio_bitmap, pgsize),
        offset!(vfio_bitmap, size),
        offset!(vfio_bitmap, data),
        size!(vfio_iommu_type1_dma_unmap),
        offset!(vfio_iommu_type1_dma_unmap, flags),
        offset!(vfio_iommu_type1_dma_unmap, iova),
        offset!(vfio_iommu_type1_dma_unmap, size),
        offset!(vfio_iommu_type1_dma_unmap, data),
        size!(vfio_iommu_type1_dirty_bitmap),
        offset!(vfio_iommu_type1_dirty_bitmap, flags),
        offset!(vfio_iommu_type1_dirty_bitmap, data),
        size!(vfio_iommu_type1_dirty_bitmap_get),
        offset!(vfio_iommu_type1_dirty_bitmap_get, iova),
        offset!(vfio_iommu_type1_dirty_bitmap_get, size),
        offset!(vfio_iommu_type1_dirty_bitmap_get, bitmap),
    ];
    t.extend([
        constant!(VFIO_API_VERSION),
        constant!(VFIO_TYPE1_IOMMU),
        constant!(VFIO_TYPE1v2_IOMMU),
        constant!(VFIO_TYPE),
        constant!(VFIO_BASE),
        constant!(VFIO_REGION_TYPE_MIGRATION_DEPRECATED),
        constant!(VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED),
        constant!(
            "VFIO_REGION_TYPE_MIGRATION_DEPRECATED",
            VFIO_REGION_TYPE_MIGRATION
        ),
        constant!(
            "VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED",
            VFIO_REGION_SUBTYPE_MIGRATION
        ),
        constant!(VFIO_DEVICE_STATE_V1_STOP),
        constant!(VFIO_DEVICE_STATE_V1_RUNNING),
        constant!(VFIO_DEVICE_STATE_V1_SAVING),
        constant!(VFIO_DEVICE_STATE_V1_RESUMING),
        constant!(VFIO_DEVICE_STATE_MASK),
        constant!("VFIO_DEVICE_STATE_MASK", DeviceState::MASK),
        constant!(VFIO_REGION_INFO_CAP_SPARSE_MMAP),
        constant!(VFIO_REGION_INFO_CAP_TYPE),
        // `(1 << 31)` is a negative int in C; the field it goes into is a __u32.
        constant!(
            "(unsigned int)VFIO_REGION_TYPE_PCI_VENDOR_TYPE",
            VFIO_REGION_TYPE_PCI_VENDOR_TYPE
        ),
        constant!(VFIO_REGION_TYPE_PCI_VENDOR_MASK),
        constant!(VFIO_REGION_INFO_FLAG_READ),
        constant!(VFIO_REGION_INFO_FLAG_WRITE),
        constant!(VFIO_REGION_INFO_FLAG_MMAP),
        constant!(VFIO_REGION_INFO_FLAG_CAPS),
        constant!(VFIO_DEVICE_FLAGS_RESET),
        constant!(VFIO_DEVICE_FLAGS_PCI),
        constant!(VFIO_DEVICE_FLAGS_CAPS),
        constant!(VFIO_IRQ_INFO_EVENTFD),
        constant!(VFIO_IRQ_INFO_MASKABLE),
        constant!(VFIO_IRQ_INFO_AUTOMASKED),
        constant!(VFIO_IRQ_INFO_NORESIZE),
        constant!(VFIO_IRQ_SET_DATA_NONE),
        constant!(VFIO_IRQ_SET_DATA_BOOL),
        constant!(VFIO_IRQ_SET_DATA_EVENTFD),
        constant!(VFIO_IRQ_SET_ACTION_MASK),
        constant!(VFIO_IRQ_SET_ACTION_UNMASK),
        constant!(VFIO_IRQ_SET_ACTION_TRIGGER),
        constant!(VFIO_PCI_BAR0_REGION_INDEX),
        constant!(VFIO_PCI_CONFIG_REGION_INDEX),
        constant!(VFIO_PCI_NUM_REGIONS),
        constant!(VFIO_PCI_INTX_IRQ_INDEX),
        constant!(VFIO_PCI_MSI_IRQ_INDEX),
        constant!(VFIO_PCI_MSIX_IRQ_INDEX),
        constant!(VFIO_PCI_NUM_IRQS),
        constant!(VFIO_IOMMU_INFO_PGSIZES),
        constant!(VFIO_IOMMU_INFO_CAPS),
        constant!(VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE),
        constant!(VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION),
        constant!(VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL),
        constant!(VFIO_DMA_MAP_FLAG_READ),
        constant!(VFIO_DMA_MAP_FLAG_WRITE),
        constant!(VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP),
        constant!(VFIO_DMA_UNMAP_FLAG_ALL),
        constant!(VFIO_IOMMU_DIRTY_PAGES_FLAG_START),
        constant!(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP),
        constant!(VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP),
        constant!(VFIO_GET_API_VERSION),
        constant!(VFIO_CHECK_EXTENSION),
        constant!(VFIO_SET_IOMMU),
        constant!(VFIO_GROUP_GET_STATUS),
        constant!(VFIO_GROUP_SET_CONTAINER),
        constant!(VFIO_GROUP_UNSET_CONTAINER),
        constant!(VFIO_GROUP_GET_DEVICE_FD),
        constant!(VFIO_DEVICE_GET_INFO),
        constant!(VFIO_DEVICE_GET_REGION_INFO),
        constant!(VFIO_DEVICE_GET_IRQ_INFO),
        constant!(VFIO_DEVICE_SET_IRQS),
        constant!(VFIO_DEVICE_RESET),
        constant!(VFIO_IOMMU_GET_INFO),
        constant!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO),
        constant!(VFIO_IOMMU_MAP_DMA),
        constant!(VFIO_DEVICE_PCI_HOT_RESET),
        constant!(VFIO_IOMMU_UNMAP_DMA),
        constant!(VFIO_IOMMU_ENABLE),
        constant!(VFIO_IOMMU_DISABLE),
        constant!(VFIO_IOMMU_DIRTY_PAGES),
        constant!(VFIO_DEVICE_FEATURE),
        // The uAPI macros, evaluated by the C compiler on sample values.
        constant!("DIRTY_BITMAP_BYTES(1ULL)", bitmap_bytes(1)),
        constant!("DIRTY_BITMAP_BYTES(64ULL)", bitmap_bytes(64)),
        constant!("DIRTY_BITMAP_BYTES(65ULL)", bitmap_bytes(65)),
        constant!(
            "DIRTY_BITMAP_BYTES(2147483647ULL)",
            bitmap_bytes(DIRTY_BITMAP_PAGES_MAX)
        ),
        constant!("DIRTY_BITMAP_PAGES_MAX", DIRTY_BITMAP_PAGES_MAX),
        constant!("DIRTY_BITMAP_SIZE_MAX", DIRTY_BITMAP_SIZE_MAX),
    ]);
    for f in Field::ALL {
        t.push((
            format!("offsetof(struct vfio_device_migration_info, {})", f.name()),
            f.offset(),
        ));
        t.push((
            format!(
                "sizeof(((struct vfio_device_migration_info *)0)->{})",
                f.name()
            ),
            f.width() as u64,
        ));
    }
    // The header macros do not parenthesize their argument: pass one they cannot split.
    for raw in 0..8u32 {
        let s = DeviceState::from_raw(raw | 0x100);
        t.push((
            format!("VFIO_DEVICE_STATE_VALID(({raw}u | 0x100u))"),
            u64::from(s.is_valid()),
        ));
        t.push((
            format!("VFIO_DEVICE_STATE_IS_ERROR(({raw}u | 0x100u))"),
            u64::from(s.is_error()),
        ));
    }
    for k in StateKind::ALL {
        t.push((format!("{}u", k.state().raw()), u64::from(k.state().raw())));
    }
    t
}

/// The C program: one `printf` of each expression, keyed by its index in the table.
fn c_source(table: &[(String, u64)]) -> String {
    let mut s = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <linux/vfio.h>\n\
         /* The kernel's private bitmap helpers (drivers/vfio/vfio_iommu_type1.c). */\n\
         #define DIRTY_BITMAP_BYTES(n) (((n) + 63ULL) / 64ULL * 8ULL)\n\
         #define DIRTY_BITMAP_PAGES_MAX ((unsigned long long)0x7fffffff)\n\
         #define DIRTY_BITMAP_SIZE_MAX DIRTY_BITMAP_BYTES(DIRTY_BITMAP_PAGES_MAX)\n\
         int main(void) {\n",
    );
    for (i, (expr, _)) in table.iter().enumerate() {
        s.push_str(&format!(
            "  printf(\"{i} %llu\\n\", (unsigned long long)({expr}));\n"
        ));
    }
    s.push_str("  return 0;\n}\n");
    s
}

/// Compiles and runs the program; returns each index's printed value.
fn run_c(source: &str) -> BTreeMap<usize, u64> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_layout");
    std::fs::create_dir_all(&dir).expect("create the scratch directory");
    let c = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&c, source).expect("write the C source");
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&c)
        .output()
        .unwrap_or_else(|e| panic!("{cc} must be installed to check the ABI: {e}"));
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run the C program");
    assert!(run.status.success());
    String::from_utf8(run.stdout)
        .expect("ascii output")
        .lines()
        .map(|l| {
            let (i, v) = l.split_once(' ').expect("index and value");
            (i.parse().expect("index"), v.parse().expect("value"))
        })
        .collect()
}

#[test]
fn every_size_offset_and_constant_matches_linux_vfio_h() {
    let table = table();
    let c = run_c(&c_source(&table));
    let mismatches: Vec<String> = table
        .iter()
        .enumerate()
        .filter(|(i, (_, rust))| c.get(i) != Some(rust))
        .map(|(i, (expr, rust))| format!("{expr}: C {:?}, Rust {rust}", c.get(&i)))
        .collect();
    assert!(
        mismatches.is_empty(),
        "ABI mismatches:\n{}",
        mismatches.join("\n")
    );
    assert_eq!(c.len(), table.len());
}
