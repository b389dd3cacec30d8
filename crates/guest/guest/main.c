/*
 * The guest's start and main loop.
 *
 * vCPU 0 checks the boot page, clears the status page, builds the IDT, measures the LAPIC
 * timer, finds and sets up the devices; the other vCPUs wait for each of these stages, then
 * load the same IDT and start their own timer. Every vCPU then dirties its slice of the
 * working set; vCPU 0 also drives the devices. Interrupts stay on from then on.
 */
#include "guest.h"

#define STAGE_START  0u /* vCPU 0 is checking the boot page */
#define STAGE_IDT    1u /* status page and IDT ready */
#define STAGE_TIMER  2u /* LAPIC timer measured */
#define STAGE_FAILED 0xdeadu

static volatile uint32_t stage;
static struct dirtier dirtiers[VFMIG_MAX_VCPUS];
static struct pci_found mtty_dev, dma_dev;

void *memset(void *dst, int c, unsigned long n)
{
	volatile uint8_t *d = dst;
	for (unsigned long i = 0; i < n; i++)
		d[i] = (uint8_t)c;
	return dst;
}

void *memcpy(void *dst, const void *src, unsigned long n)
{
	volatile uint8_t *d = dst;
	const uint8_t *s = src;
	for (unsigned long i = 0; i < n; i++)
		d[i] = s[i];
	return dst;
}

static void wait_stage(uint32_t s)
{
	while (stage < s)
		cpu_relax();
	if (stage == STAGE_FAILED)
		for (;;)
			__asm__ volatile("cli; hlt");
}

/* The boot page as the rest of the program relies on it; a wrong one is fatal. */
static void check_boot_page(void)
{
	uint64_t ws_end = boot->ws_base + boot->ws_size;
	int ok = boot->magic == VFMIG_BOOT_MAGIC && boot->version == VFMIG_LAYOUT_VERSION &&
		 boot->vcpus >= 1 && boot->vcpus <= VFMIG_MAX_VCPUS && boot->tsc_hz >= 1000000;
	if (ok && (boot->workloads & VFMIG_WORKLOAD_DIRTIER))
		ok = boot->ws_base % PAGE_SIZE == 0 && boot->ws_size % PAGE_SIZE == 0 &&
		     boot->ws_base >= VFMIG_SCRATCH_END && ws_end >= boot->ws_base &&
		     ws_end <= boot->ram_size && boot->ws_size / PAGE_SIZE >= boot->vcpus;
	if (!ok) {
		stage = STAGE_FAILED;
		fatal(VFMIG_ERR_BOOT_PAGE, boot->magic, boot->version, boot->vcpus);
	}
}

static void init_status_page(void)
{
	volatile uint64_t *w = (volatile uint64_t *)status;
	for (unsigned long i = 0; i < sizeof(struct vfmig_status_page) / 8; i++)
		w[i] = 0;
	status->version = VFMIG_LAYOUT_VERSION;
	PUBLISH(status->mtty_bdf, 0xffff);
	PUBLISH(status->dma_bdf, 0xffff);
	barrier();
	PUBLISH(status->magic, VFMIG_STATUS_MAGIC);
}

static void enter(volatile struct vfmig_vcpu_status *me)
{
	idt_load();
	lapic_enable();
	PUBLISH(me->state, VFMIG_VCPU_SETUP);
	__atomic_fetch_add(&status->vcpus_started, 1, __ATOMIC_SEQ_CST);
}

static uint32_t setup_devices(void)
{
	uint32_t on = boot->workloads;
	if (!(on & (VFMIG_WORKLOAD_MTTY | VFMIG_WORKLOAD_DMA)))
		return 0;
	pci_scan(&mtty_dev, &dma_dev);
	if ((on & VFMIG_WORKLOAD_MTTY) && !(mtty_dev.bdf != 0xffff && mtty_init(&mtty_dev)))
		on &= ~VFMIG_WORKLOAD_MTTY;
	if ((on & VFMIG_WORKLOAD_DMA) && !(dma_dev.bdf != 0xffff && dma_init(&dma_dev)))
		on &= ~VFMIG_WORKLOAD_DMA;
	return on & (VFMIG_WORKLOAD_MTTY | VFMIG_WORKLOAD_DMA);
}

void __attribute__((noreturn)) guest_main(uint64_t boot_gpa, uint64_t index)
{
	(void)boot_gpa; /* always VFMIG_BOOT_PAGE_GPA */
	uint32_t devices = 0;

	if (index == 0) {
		init_status_page();
		check_boot_page();
		idt_build();
		enter(my_status());
		stage = STAGE_IDT;
		timer_start();
		stage = STAGE_TIMER;
		irq_enable();
		devices = setup_devices();
	} else {
		wait_stage(STAGE_IDT);
		/* A vCPU the boot page does not count has no slice and no status of its own. */
		if (index >= boot->vcpus) {
			if (index < VFMIG_MAX_VCPUS)
				fatal(VFMIG_ERR_BOOT_PAGE, boot->magic, boot->version, boot->vcpus);
			for (;;)
				__asm__ volatile("cli; hlt");
		}
		enter(my_status());
		wait_stage(STAGE_TIMER);
		timer_start();
		irq_enable();
	}

	volatile struct vfmig_vcpu_status *me = my_status();
	struct dirtier *d = &dirtiers[index];
	int dirty = (boot->workloads & VFMIG_WORKLOAD_DIRTIER) != 0;
	if (dirty)
		dirtier_init(d, (uint32_t)index, boot->vcpus);
	uint64_t device_period = boot->device_rate ? boot->tsc_hz / boot->device_rate : 0;
	uint64_t device_next = rdtsc();
	PUBLISH(me->state, VFMIG_VCPU_RUNNING);

	for (;;) {
		uint64_t now = rdtsc();
		uint64_t busy = dirty ? dirtier_step(d, now) : 0;
		if (devices && now >= device_next) {
			if (devices & VFMIG_WORKLOAD_MTTY)
				mtty_round();
			if (devices & VFMIG_WORKLOAD_DMA)
				dma_round();
			/* From now, not from the last due time: a slow round does not pile up
			 * rounds behind it, and a TSC that went back cannot stall the devices. */
			device_next = now + device_period;
			busy++;
		}
		COUNT(me->loops, 1);
		if (!busy)
			idle();
	}
}
