/* Shared declarations of the guest program: port and MMIO access, the CPU, errors. */
#ifndef VFMIG_GUEST_H
#define VFMIG_GUEST_H

#include <stdint.h>
#include "layout.h"

#define PAGE_SIZE 4096ULL

/* Interrupt vectors the guest uses. */
#define VEC_TIMER    0x20
#define VEC_MTTY     0x40
#define VEC_DMA      0x41 /* the dma-engine's MSI, or its MSI-X vector 0 */
#define VEC_DMA1     0x42 /* the dma-engine's MSI-X vector 1 */
#define VEC_SPURIOUS 0xff

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline uint32_t mmio_read32(uint64_t gpa) { return *(volatile uint32_t *)gpa; }
static inline uint64_t mmio_read64(uint64_t gpa) { return *(volatile uint64_t *)gpa; }
static inline void mmio_write32(uint64_t gpa, uint32_t v) { *(volatile uint32_t *)gpa = v; }
static inline void mmio_write64(uint64_t gpa, uint64_t v) { *(volatile uint64_t *)gpa = v; }

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void cpu_relax(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void irq_enable(void) { __asm__ volatile("sti" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }

/* A plain store the VMM may read at any time (never torn: aligned 8 bytes). */
#define PUBLISH(field, value) (*(volatile uint64_t *)&(field) = (value))
/* Adds to a counter this vCPU alone writes. */
#define COUNT(field, n) PUBLISH(field, (field) + (n))

/* A 64-bit mixing function (the splitmix64 finalizer): cheap and every input bit matters. */
static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

extern volatile struct vfmig_status_page *const status;
extern const volatile struct vfmig_boot_page *const boot;

/* This vCPU's counters. */
volatile struct vfmig_vcpu_status *my_status(void);
uint32_t my_index(void);

/* errors.c: records an error (the first one in detail); fatal() never returns. */
void report_error(uint32_t code, uint64_t a, uint64_t b, uint64_t c);
void __attribute__((noreturn)) fatal(uint32_t code, uint64_t a, uint64_t b, uint64_t c);

/* cpu.c */
void idt_build(void);
void idt_load(void);
void lapic_enable(void);
uint32_t lapic_id(void);
void timer_start(void);
/* Waits for an interrupt (a timer tick at most 10 ms away) with interrupts on; the caller
 * loops on its own condition. */
void idle(void);
uint64_t tsc_after_us(uint64_t us);
/* Waits until *counter passes `before` or `us` microseconds pass; 0 on timeout. */
int wait_count(const volatile uint64_t *counter, uint64_t before, uint64_t us);

/* pci.c */
struct pci_found {
	uint32_t bdf;           /* bus << 8 | device << 3 | function; 0xffff: absent */
	uint64_t bar[6];        /* assigned address (I/O port or GPA), 0 if none */
	uint64_t bar_size[6];    /* 0: absent (or no room for it) */
	uint8_t bar_io[6];       /* 1: an I/O BAR */
};
void pci_scan(struct pci_found *mtty, struct pci_found *dma);
void pci_enable_msi(uint32_t bdf, uint8_t vector);
/* Programs MSI-X entries 0..n-1 of `dev` with `vectors` (this vCPU's LAPIC), unmasks them and
 * enables MSI-X, MSI left off; 0 (nothing changed) if it has no MSI-X capability or its table
 * is not in one of its memory BARs or has fewer than n entries. */
int pci_enable_msix(const struct pci_found *dev, const uint8_t *vectors, uint32_t n);
void pci_disable_msix(uint32_t bdf);

/* dirtier.c */
struct dirtier {
	uint64_t base;   /* first page of this vCPU's slice */
	uint64_t pages;  /* pages in the slice */
	uint64_t cursor; /* next page to visit */
	uint64_t seq;    /* the stamp this pass writes (1 in the first pass) */
	uint64_t period; /* TSC ticks per page (0: no limit) */
	uint64_t next;   /* TSC at which the next page is due */
};
void dirtier_init(struct dirtier *d, uint32_t index, uint32_t vcpus);
/* Visits the pages that are due; returns how many it visited. */
uint64_t dirtier_step(struct dirtier *d, uint64_t now);

/* mtty.c and dma.c: init returns 0 when the device cannot be driven. */
int mtty_init(const struct pci_found *f);
void mtty_round(void);
int dma_init(const struct pci_found *f);
void dma_round(void);

void *memset(void *dst, int c, unsigned long n);
void *memcpy(void *dst, const void *src, unsigned long n);

#endif
