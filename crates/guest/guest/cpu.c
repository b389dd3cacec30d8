/*
 * The CPU side: the IDT (one table shared by every vCPU), the local APIC (enable, EOI, a
 * periodic timer that wakes `hlt`), interrupt dispatch, and error reporting.
 */
#include "guest.h"

#define LAPIC_BASE   0xfee00000ULL
#define LAPIC_ID     0x020
#define LAPIC_EOI    0x0b0
#define LAPIC_SVR    0x0f0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR  0x390
#define LAPIC_TIMER_DIV  0x3e0
#define LVT_MASKED   (1u << 16)
#define LVT_PERIODIC (1u << 17)
#define TIMER_PERIOD_MS 10

/* The frame common_stub builds (entry.S), lowest address first. */
struct frame {
	uint64_t rbx, r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	uint64_t vector, error;
	uint64_t rip, cs, rflags, rsp, ss;
};

struct idt_entry {
	uint16_t offset_low;
	uint16_t selector;
	uint8_t ist;
	uint8_t type;   /* 0x8e: present, DPL 0, 64-bit interrupt gate */
	uint16_t offset_mid;
	uint32_t offset_high;
	uint32_t zero;
} __attribute__((packed));

extern const uint64_t interrupt_stubs[256];
static struct idt_entry idt[256] __attribute__((aligned(16)));
/* LAPIC timer counts per millisecond, measured by vCPU 0 (0: the timer does not run). */
static volatile uint64_t lapic_per_ms;

volatile struct vfmig_status_page *const status = (volatile struct vfmig_status_page *)VFMIG_STATUS_PAGE_GPA;
const volatile struct vfmig_boot_page *const boot = (const volatile struct vfmig_boot_page *)VFMIG_BOOT_PAGE_GPA;

/* vCPU i runs on the 16 KiB stack below 0x10000 + (i + 1) * 0x4000 (boot contract), interrupt
 * handlers included: the stack pointer says which vCPU this is. */
uint32_t my_index(void)
{
	uint64_t sp = (uint64_t)__builtin_frame_address(0);
	return (uint32_t)((sp - 0x10000) / 0x4000);
}

volatile struct vfmig_vcpu_status *my_status(void)
{
	return &status->vcpu[my_index()];
}

void idt_build(void)
{
	for (int v = 0; v < 256; v++) {
		uint64_t at = interrupt_stubs[v];
		idt[v] = (struct idt_entry){
			.offset_low = (uint16_t)at,
			.selector = 0x08,
			.ist = 0,
			.type = 0x8e,
			.offset_mid = (uint16_t)(at >> 16),
			.offset_high = (uint32_t)(at >> 32),
			.zero = 0,
		};
	}
}

void idt_load(void)
{
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) idtr = { sizeof(idt) - 1, (uint64_t)idt };
	__asm__ volatile("lidt %0" : : "m"(idtr));
}

static uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
static void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }

void lapic_enable(void)
{
	lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
}

uint32_t lapic_id(void)
{
	return lapic_read(LAPIC_ID) >> 24;
}

uint64_t tsc_after_us(uint64_t us)
{
	return rdtsc() + boot->tsc_hz / 1000000 * us;
}

/*
 * Starts this vCPU's periodic LAPIC timer. Its rate is not architectural, so vCPU 0 measures
 * it against the TSC over 1 ms first (the others start theirs after that); a timer that does
 * not count leaves every wait a spin.
 */
void timer_start(void)
{
	if (my_index() == 0) {
		lapic_write(LAPIC_TIMER_DIV, 0xb); /* divide by 1 */
		lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
		lapic_write(LAPIC_TIMER_INIT, 0xffffffffu);
		uint64_t end = tsc_after_us(1000);
		while (rdtsc() < end)
			cpu_relax();
		uint64_t per_ms = 0xffffffffu - lapic_read(LAPIC_TIMER_CUR);
		lapic_write(LAPIC_TIMER_INIT, 0);
		if (per_ms == 0)
			report_error(VFMIG_ERR_TIMER, 0, 0, 0);
		PUBLISH(status->lapic_ticks_per_ms, per_ms);
		lapic_per_ms = per_ms;
	}
	uint64_t count = lapic_per_ms * TIMER_PERIOD_MS;
	if (count == 0 || count > 0xffffffffu)
		return;
	lapic_write(LAPIC_TIMER_DIV, 0xb);
	lapic_write(LAPIC_LVT_TIMER, LVT_PERIODIC | VEC_TIMER);
	lapic_write(LAPIC_TIMER_INIT, (uint32_t)count);
}

/* Waits for the next interrupt: at most one timer period, so a caller that checked its
 * condition just before an interrupt came oversleeps by at most that. Without a timer, spins. */
void idle(void)
{
	if (lapic_per_ms != 0)
		__asm__ volatile("hlt" ::: "memory");
	else
		cpu_relax();
}

static void __attribute__((noreturn)) halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt");
}

void report_error(uint32_t code, uint64_t a, uint64_t b, uint64_t c)
{
	static volatile uint32_t claimed;
	__atomic_fetch_add(&status->errors, 1, __ATOMIC_SEQ_CST);
	uint32_t expected = 0;
	if (__atomic_compare_exchange_n(&claimed, &expected, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
		status->first_error.vcpu = my_index();
		PUBLISH(status->first_error.a, a);
		PUBLISH(status->first_error.b, b);
		PUBLISH(status->first_error.c, c);
		barrier();
		status->first_error.code = code; /* last: a non-zero code means the rest is there */
	}
}

void fatal(uint32_t code, uint64_t a, uint64_t b, uint64_t c)
{
	irq_disable();
	report_error(code, a, b, c);
	status->fatal = 1;
	PUBLISH(my_status()->state, VFMIG_VCPU_HALTED);
	halt_forever();
}

/* Called by common_stub with interrupts off. */
void interrupt(struct frame *f)
{
	volatile struct vfmig_vcpu_status *me = my_status();
	switch (f->vector) {
	case VEC_TIMER:
		COUNT(me->irq_timer, 1);
		break;
	case VEC_MTTY:
		COUNT(me->irq_mtty, 1);
		break;
	case VEC_DMA:
		COUNT(me->irq_dma, 1);
		break;
	case VEC_DMA1:
		/* Only vCPU 0 takes it (the entry names its LAPIC): one writer. */
		COUNT(status->irq_dma_vector1, 1);
		break;
	case VEC_SPURIOUS:
		COUNT(me->irq_other, 1);
		return; /* a spurious interrupt takes no EOI */
	default:
		if (f->vector < 32)
			fatal(VFMIG_ERR_EXCEPTION, f->vector, f->rip, f->error);
		COUNT(me->irq_other, 1);
		break;
	}
	lapic_write(LAPIC_EOI, 0);
}

int wait_count(const volatile uint64_t *counter, uint64_t before, uint64_t us)
{
	uint64_t deadline = tsc_after_us(us);
	while (*counter == before) {
		if (rdtsc() >= deadline)
			return 0;
		idle();
	}
	return 1;
}
