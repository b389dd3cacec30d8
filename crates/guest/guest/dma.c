/*
 * The dma-engine driver (crates/device/src/devices/dma_engine/{mod,regs}.rs): registers in
 * BAR0, device RAM in BAR2, a ring of 32-byte descriptors in guest RAM (IOVA = GPA).
 *
 * Round r writes a 512-byte pattern of r into guest RAM and queues three descriptors with one
 * doorbell (TAIL):
 *   A  COPY_TO_DEVICE  pattern(r)        -> device page s(r)
 *   B  COPY_TO_GUEST   device page s(r)  -> dst_a        (checked against pattern(r))
 *   C  COPY_TO_GUEST   device page s(r-1)-> dst_b        (checked against pattern(r-1)),
 *                                                        interrupt on completion
 * C reads what the previous round left in device RAM, perhaps before a migration: device RAM
 * that came back stale or zero is found here. Completion is the DONE bit in each descriptor's
 * word; the interrupt says when to look, and the guest looks anyway when it does not come.
 *
 * Interrupts: by MSI-X when the device has an MSI-X capability (entry 0 -> VEC_DMA, entry 1 ->
 * VEC_DMA1, MSI left off), else by MSI (VEC_DMA). Every second interrupting descriptor also
 * has FLAG_VECTOR1, so with MSI-X the completions alternate between the two vectors (and
 * between irq_dma and irq_dma_vector1); with MSI the flag changes nothing. A VMM that does not
 * route MSI-X leaves the guest without interrupts: if the first wait for an MSI-X interrupt
 * runs out, the guest turns MSI-X off and uses MSI from then on (dma_msix goes back to 0). No
 * error is counted for that wait; a missing interrupt after MSI-X has worked is one.
 *
 * BAR4 is memory the device shares with its client (a VMM may map it into the guest, so these
 * accesses need not leave the CPU). Before its descriptors, each round checks the 4 KiB block
 * of BAR4 it stamped last, then stamps the next one (16 blocks, round-robin) with the next
 * sequence number: the sequence in word 0 and a check word derived from it in words 64, 128,
 * ..., 448 and 511 (the last). The sequence lives in guest RAM, so after a migration the
 * guest expects on the destination what it wrote on the source: BAR4 content lost on the
 * way is found here.
 */
#include "guest.h"

#define REG_ID        0x00
#define REG_RING_BASE 0x08
#define REG_RING_SIZE 0x10
#define REG_CONTROL   0x14
#define REG_TAIL      0x18
#define REG_HEAD      0x1c
#define REG_STATUS    0x20
#define REG_RAM_PAGES 0x24
#define DMA_ID        0x45414d44u /* "DMAE" */
#define CONTROL_ENABLE 1u
#define CONTROL_IRQ    2u
#define OP_COPY_TO_DEVICE 1u
#define OP_COPY_TO_GUEST  2u
#define FLAG_IRQ 1u
#define FLAG_VECTOR1 2u
#define DONE (1u << 31)

#define RING_SIZE 64u
#define RING_GPA  (VFMIG_SCRATCH_GPA)
#define SRC_GPA   (VFMIG_SCRATCH_GPA + 0x10000)
#define DST_A_GPA (VFMIG_SCRATCH_GPA + 0x11000)
#define DST_B_GPA (VFMIG_SCRATCH_GPA + 0x12000)
#define LEN       512u
#define WORDS     (LEN / 8)
#define WAIT_US   200000
#define SHARED_BAR    4
#define SHARED_BLOCKS 16u
#define STAMPS        9u

struct descriptor {
	uint32_t op;
	uint32_t flags;
	uint64_t guest;
	uint64_t device;
	uint32_t len;
	uint32_t word; /* in: fill byte; out: DONE | errno */
};

static uint64_t regs;
static uint64_t ram_pages;
static uint32_t tail;
static uint64_t round;
static uint64_t shared;     /* GPA of BAR4; 0: none (or too small) */
static uint64_t shared_seq; /* the last stamp written, in block (seq - 1) % 16; 0: none yet */
static uint32_t bdf;
static int msix;            /* completions interrupt by MSI-X (else MSI) */
static int msix_seen;       /* an MSI-X interrupt has arrived */
static uint64_t irq_descs;  /* interrupting descriptors queued; odd ones use vector 1 */

static volatile struct descriptor *const ring = (volatile struct descriptor *)RING_GPA;

int dma_init(const struct pci_found *f)
{
	if (f->bar_size[0] < 0x1000 || f->bar_size[2] == 0)
		return 0;
	regs = f->bar[0];
	uint32_t id = mmio_read32(regs + REG_ID);
	ram_pages = mmio_read32(regs + REG_RAM_PAGES);
	PUBLISH(status->dma_bdf, f->bdf);
	PUBLISH(status->dma_regs, f->bar[0]);
	PUBLISH(status->dma_ram, f->bar[2]);
	PUBLISH(status->dma_ram_size, f->bar_size[2]);
	shared = f->bar_size[SHARED_BAR] >= SHARED_BLOCKS * PAGE_SIZE ? f->bar[SHARED_BAR] : 0;
	PUBLISH(status->dma_shared, shared);
	if (id != DMA_ID || ram_pages < 2) {
		report_error(VFMIG_ERR_DMA_DEVICE, id, ram_pages, 0);
		return 0;
	}
	for (uint32_t i = 0; i < RING_SIZE; i++)
		ring[i].word = 0;
	bdf = f->bdf;
	static const uint8_t vectors[2] = { VEC_DMA, VEC_DMA1 };
	msix = pci_enable_msix(f, vectors, 2);
	if (!msix)
		pci_enable_msi(f->bdf, VEC_DMA);
	PUBLISH(status->dma_msix, (uint64_t)msix);
	mmio_write64(regs + REG_RING_BASE, RING_GPA);
	mmio_write32(regs + REG_RING_SIZE, RING_SIZE);
	mmio_write32(regs + REG_CONTROL, CONTROL_ENABLE | CONTROL_IRQ);
	uint32_t st = mmio_read32(regs + REG_STATUS);
	if (st != 0) {
		report_error(VFMIG_ERR_DMA_STATUS, 0, 0, st);
		return 0;
	}
	tail = 0;
	return 1;
}

static uint64_t pattern(uint64_t r, uint32_t k)
{
	return mix64(r << 8 | k) ^ 0xd3a0000000000000ULL;
}

static uint64_t slot(uint64_t r)
{
	return (r % ram_pages) * PAGE_SIZE;
}

/* Queues a descriptor; one that interrupts alternates between vectors 0 and 1. */
static uint32_t queue(uint32_t op, uint64_t guest, uint64_t device, int irq)
{
	uint32_t at = tail;
	volatile struct descriptor *d = &ring[at];
	d->op = op;
	d->flags = irq ? FLAG_IRQ | (irq_descs++ % 2 ? FLAG_VECTOR1 : 0) : 0;
	d->guest = guest;
	d->device = device;
	d->len = LEN;
	d->word = 0;
	tail = (tail + 1) % RING_SIZE;
	return at;
}

/* Compares LEN bytes at `gpa` with pattern(r); reports the first difference. */
static int check(uint64_t gpa, uint64_t r)
{
	const volatile uint64_t *w = (const volatile uint64_t *)gpa;
	for (uint32_t k = 0; k < WORDS; k++) {
		uint64_t want = pattern(r, k);
		if (w[k] != want) {
			report_error(VFMIG_ERR_DMA_DATA, gpa + 8 * k, want, w[k]);
			return 0;
		}
	}
	return 1;
}

/* Word index of stamp word k in a block: 0, 64, ..., 448, then the block's last word. */
static uint32_t stamp_at(uint32_t k)
{
	return k + 1 < STAMPS ? k * 64 : PAGE_SIZE / 8 - 1;
}

/* Stamp word k of sequence seq: the sequence itself, then check words derived from it. */
static uint64_t stamp(uint64_t seq, uint32_t k)
{
	return k == 0 ? seq : ~(seq * 0x9e3779b97f4a7c15ULL) + k;
}

/* Checks the block of BAR4 stamped last, then stamps the next one. */
static void shared_round(volatile struct vfmig_vcpu_status *me)
{
	if (!shared)
		return;
	if (shared_seq != 0) {
		uint64_t block = (shared_seq - 1) % SHARED_BLOCKS;
		const volatile uint64_t *w = (const volatile uint64_t *)(shared + block * PAGE_SIZE);
		uint32_t k = 0;
		while (k < STAMPS && w[stamp_at(k)] == stamp(shared_seq, k))
			k++;
		if (k == STAMPS)
			COUNT(me->shared_checked, 1);
		else
			report_error(VFMIG_ERR_SHARED_MEMORY, block, shared_seq, w[stamp_at(k)]);
	}
	uint64_t seq = shared_seq + 1;
	volatile uint64_t *w =
		(volatile uint64_t *)(shared + (shared_seq % SHARED_BLOCKS) * PAGE_SIZE);
	for (uint32_t k = 0; k < STAMPS; k++)
		w[stamp_at(k)] = stamp(seq, k);
	barrier();
	shared_seq = seq;
}

void dma_round(void)
{
	volatile struct vfmig_vcpu_status *me = my_status();
	volatile uint64_t *src = (volatile uint64_t *)SRC_GPA;
	uint32_t idx[3];
	uint32_t n = 0;

	shared_round(me);
	for (uint32_t k = 0; k < WORDS; k++)
		src[k] = pattern(round, k);
	idx[n++] = queue(OP_COPY_TO_DEVICE, SRC_GPA, slot(round), 0);
	idx[n++] = queue(OP_COPY_TO_GUEST, DST_A_GPA, slot(round), round == 0);
	if (round > 0)
		idx[n++] = queue(OP_COPY_TO_GUEST, DST_B_GPA, slot(round - 1), 1);

	/* The last interrupting descriptor queued says which vector to wait for. */
	int vector1 = msix && irq_descs % 2 == 0;
	const volatile uint64_t *counter = vector1 ? &status->irq_dma_vector1 : &me->irq_dma;
	uint64_t irqs = *counter;
	barrier();
	mmio_write32(regs + REG_TAIL, tail);
	COUNT(me->dma_submitted, n);

	if (wait_count(counter, irqs, WAIT_US)) {
		msix_seen |= msix;
	} else if (msix && !msix_seen) {
		/* MSI-X is not routed (a VMM without it): MSI from now on. */
		pci_disable_msix(bdf);
		pci_enable_msi(bdf, VEC_DMA);
		msix = 0;
		PUBLISH(status->dma_msix, 0);
	} else {
		report_error(VFMIG_ERR_IRQ_TIMEOUT, vector1 ? VEC_DMA1 : VEC_DMA, irqs, *counter);
	}

	uint64_t deadline = tsc_after_us(WAIT_US);
	int ok[3] = { 0, 0, 0 };
	for (uint32_t i = 0; i < n; i++) {
		volatile struct descriptor *d = &ring[idx[i]];
		while (!(d->word & DONE) && rdtsc() < deadline)
			idle();
		uint32_t word = d->word;
		if (!(word & DONE)) {
			report_error(VFMIG_ERR_DMA_TIMEOUT, idx[i], mmio_read32(regs + REG_HEAD), tail);
			continue;
		}
		COUNT(me->dma_completed, 1);
		if (word != DONE)
			report_error(VFMIG_ERR_DMA_STATUS, idx[i], word, mmio_read32(regs + REG_STATUS));
		else
			ok[i] = 1;
	}
	/* A and B are checked together: B brings back what A took. */
	if (ok[0] && ok[1] && check(DST_A_GPA, round))
		COUNT(me->dma_checked, 2);
	if (n == 3 && ok[2] && check(DST_B_GPA, round - 1))
		COUNT(me->dma_checked, 1);
	round++;
}
