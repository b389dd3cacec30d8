/*
 * The two pages shared by the VMM and the guest program (see crates/guest/src/layout.rs, which
 * mirrors every struct here; crates/guest/tests/c_layout.rs compares the two).
 *
 *   0x8000  boot page    VMM -> guest: written before the first vCPU runs, read-only after.
 *   0x9000  status page  guest -> VMM: counters and errors, written by the guest with plain
 *                        aligned 8-byte stores; the VMM reads them racily (an aligned 8-byte
 *                        load never tears on x86, so each counter is some value it really had).
 */
#ifndef VFMIG_GUEST_LAYOUT_H
#define VFMIG_GUEST_LAYOUT_H

#include <stdint.h>

#define VFMIG_BOOT_PAGE_GPA   0x8000ULL
#define VFMIG_STATUS_PAGE_GPA 0x9000ULL
#define VFMIG_IMAGE_GPA       0x100000ULL
#define VFMIG_SCRATCH_GPA     0x200000ULL
#define VFMIG_SCRATCH_END     0x400000ULL
#define VFMIG_MAX_VCPUS       16

/* "VFMGBOOT" and "VFMGSTAT" as little-endian u64. */
#define VFMIG_BOOT_MAGIC   0x544f4f42474d4656ULL
#define VFMIG_STATUS_MAGIC 0x54415453474d4656ULL
#define VFMIG_LAYOUT_VERSION 3u

/* boot_page.workloads */
#define VFMIG_WORKLOAD_DIRTIER (1u << 0)
#define VFMIG_WORKLOAD_MTTY    (1u << 1)
#define VFMIG_WORKLOAD_DMA     (1u << 2)

/* status_page.devices */
#define VFMIG_DEVICE_MTTY (1u << 0)
#define VFMIG_DEVICE_DMA  (1u << 1)

/* vcpu_status.state */
#define VFMIG_VCPU_OFF     0u /* not started (the VMM's zeroes) */
#define VFMIG_VCPU_SETUP   1u /* entered, setting up */
#define VFMIG_VCPU_RUNNING 2u /* in its loop */
#define VFMIG_VCPU_HALTED  3u /* stopped on a fatal error */

/* Error codes (first_error.code); the meaning of a, b, c is given for each. */
#define VFMIG_ERR_NONE          0u
#define VFMIG_ERR_BOOT_PAGE     1u  /* fatal: a = magic found, b = version, c = vcpus */
#define VFMIG_ERR_EXCEPTION     2u  /* fatal: a = vector, b = rip, c = error code */
#define VFMIG_ERR_PAGE_SEQ      3u  /* a = page gpa, b = sequence expected, c = found */
#define VFMIG_ERR_PAGE_DATA     4u  /* a = gpa of the bad word, b = expected, c = found */
#define VFMIG_ERR_BAR_SPACE     5u  /* a = pci bdf, b = bar index, c = bar size */
#define VFMIG_ERR_MTTY_DATA     6u  /* a = port, b = byte expected, c = byte read (0x100: none) */
#define VFMIG_ERR_MTTY_OVERRUN  7u  /* a = port, b = lsr */
#define VFMIG_ERR_DMA_DEVICE    8u  /* a = id register, b = ram pages, c = 0 */
#define VFMIG_ERR_DMA_STATUS    9u  /* a = descriptor index, b = completion word, c = status reg */
#define VFMIG_ERR_DMA_DATA      10u /* a = gpa of the bad word, b = expected, c = found */
#define VFMIG_ERR_DMA_TIMEOUT   11u /* a = descriptor index, b = head register, c = tail */
#define VFMIG_ERR_IRQ_TIMEOUT   12u /* a = vector, b = interrupts seen before, c = after */
#define VFMIG_ERR_TIMER         13u /* a = lapic ticks in 1 ms (0: the timer does not count) */
#define VFMIG_ERR_SHARED_MEMORY 14u /* a = BAR4 block, b = sequence expected, c = word found */

struct vfmig_boot_page {
	uint64_t magic;          /* VFMIG_BOOT_MAGIC */
	uint32_t version;        /* VFMIG_LAYOUT_VERSION */
	uint32_t vcpus;          /* vCPUs started, 1..=VFMIG_MAX_VCPUS */
	uint64_t ram_size;       /* bytes of RAM from GPA 0 */
	uint64_t tsc_hz;         /* TSC ticks per second (required: the guest's only clock) */
	uint64_t ws_base;        /* working set GPA, 4 KiB aligned, >= 0x400000 */
	uint64_t ws_size;        /* working set bytes, a multiple of 4 KiB */
	uint64_t dirty_rate;     /* pages per second per vCPU; 0 = as fast as it can */
	uint64_t device_rate;    /* device rounds per second on vCPU 0; 0 = as fast as it can */
	uint32_t workloads;      /* VFMIG_WORKLOAD_* */
	uint32_t reserved0;
	uint64_t reserved[7];
};

/* One vCPU's counters; each is written only by that vCPU. */
struct vfmig_vcpu_status {
	uint64_t state;          /* VFMIG_VCPU_* */
	uint64_t loops;          /* iterations of the main loop */
	uint64_t pages_written;  /* working-set pages stamped */
	uint64_t pages_verified; /* pages found as last stamped when visited again */
	uint64_t passes;         /* completed passes over its slice */
	uint64_t mtty_tx;        /* bytes written to THR */
	uint64_t mtty_rx;        /* bytes read from RBR */
	uint64_t mtty_checked;   /* bytes read back equal to what was sent */
	uint64_t dma_submitted;  /* descriptors handed to the device */
	uint64_t dma_completed;  /* descriptors seen DONE */
	uint64_t dma_checked;    /* descriptors whose data was verified */
	uint64_t irq_mtty;       /* MSIs of mtty */
	uint64_t irq_dma;        /* MSIs of the dma-engine (with MSI-X: its vector 0) */
	uint64_t irq_timer;      /* LAPIC timer ticks */
	uint64_t irq_other;      /* any other vector (spurious) */
	uint64_t shared_checked; /* dma-engine BAR4 blocks found holding their last stamp */
};

struct vfmig_error {
	uint32_t code;           /* VFMIG_ERR_*; written last, 0 = no error yet */
	uint32_t vcpu;           /* the vCPU that found it */
	uint64_t a, b, c;        /* details, per code */
};

struct vfmig_status_page {
	uint64_t magic;          /* VFMIG_STATUS_MAGIC once the guest has started */
	uint32_t version;        /* VFMIG_LAYOUT_VERSION */
	uint32_t vcpus_started;  /* vCPUs that entered the guest */
	uint32_t devices;        /* VFMIG_DEVICE_* found on the PCI bus */
	uint32_t pci_functions;  /* functions that answered on bus 0 */
	uint32_t fatal;          /* 1: a vCPU stopped on a fatal error (interrupts off, hlt) */
	uint32_t reserved0;
	uint64_t errors;         /* errors found (all vCPUs) */
	struct vfmig_error first_error;
	uint64_t mtty_bdf;       /* bus/device/function of mtty (0xffff: none) */
	uint64_t mtty_ports[2];  /* I/O port base of BAR0, BAR1 */
	uint64_t dma_bdf;        /* of the dma-engine (0xffff: none) */
	uint64_t dma_regs;       /* GPA of BAR0 (registers) */
	uint64_t dma_ram;        /* GPA of BAR2 (device RAM) */
	uint64_t dma_ram_size;   /* bytes of BAR2 */
	uint64_t lapic_ticks_per_ms; /* calibrated LAPIC timer rate (0: no timer, spin waits) */
	uint64_t dma_shared;     /* GPA of the dma-engine's BAR4 (shared memory; 0: none) */
	uint64_t irq_dma_vector1; /* interrupts of the dma-engine's MSI-X vector 1 (vCPU 0's) */
	uint64_t dma_msix;       /* 1: the guest drives the dma-engine by MSI-X, 0: by MSI */
	uint64_t reserved[12];
	struct vfmig_vcpu_status vcpu[VFMIG_MAX_VCPUS]; /* at offset 256 */
};

#endif
