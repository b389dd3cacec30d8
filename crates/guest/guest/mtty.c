/*
 * The mtty driver (crates/device/src/devices/mtty.rs): two 16550-style ports, each an 8-byte
 * I/O BAR, whose transmitter loops back into the port's own 16-byte receive FIFO.
 *
 * A round sends BURST bytes out of one port (the ports take turns). The FIFO is set to
 * interrupt at 8 bytes with the receive interrupt on, so the last byte of a burst raises the
 * device's MSI; the driver waits for it, then drains the FIFO through LSR.DR / RBR and checks
 * every byte against what it sent. A burst never exceeds the FIFO, so no byte may overrun.
 */
#include "guest.h"

#define REG_DATA 0 /* RBR / THR */
#define REG_IER  1
#define REG_FCR  2 /* write; IIR on read */
#define REG_LCR  3
#define REG_MCR  4
#define REG_LSR  5
#define IER_RDI  0x01
#define FCR_ENABLE   0x01
#define FCR_CLEAR_RX 0x02
#define FCR_TRIGGER_8 0x80
#define LCR_8N1  0x03
#define MCR_LOOP 0x10
#define LSR_DR   0x01
#define LSR_OE   0x02
#define BURST    8
#define IRQ_WAIT_US 200000

static uint16_t port_base[2];
static uint64_t round;

int mtty_init(const struct pci_found *f)
{
	for (int p = 0; p < 2; p++) {
		if (f->bar_size[p] < 8 || !f->bar_io[p])
			return 0;
		port_base[p] = (uint16_t)f->bar[p];
		PUBLISH(status->mtty_ports[p], f->bar[p]);
	}
	PUBLISH(status->mtty_bdf, f->bdf);
	pci_enable_msi(f->bdf, VEC_MTTY);
	for (int p = 0; p < 2; p++) {
		uint16_t b = port_base[p];
		outb(b + REG_LCR, LCR_8N1);
		outb(b + REG_FCR, FCR_ENABLE | FCR_CLEAR_RX | FCR_TRIGGER_8);
		outb(b + REG_MCR, MCR_LOOP);
		outb(b + REG_IER, IER_RDI);
	}
	return 1;
}

static uint8_t burst_byte(uint64_t r, int k)
{
	return (uint8_t)mix64(r << 4 | (uint64_t)k);
}

void mtty_round(void)
{
	volatile struct vfmig_vcpu_status *me = my_status();
	int p = (int)(round & 1);
	uint16_t b = port_base[p];
	uint64_t irqs = me->irq_mtty;

	for (int k = 0; k < BURST; k++)
		outb(b + REG_DATA, burst_byte(round, k));
	COUNT(me->mtty_tx, BURST);

	if (!wait_count(&me->irq_mtty, irqs, IRQ_WAIT_US))
		report_error(VFMIG_ERR_IRQ_TIMEOUT, VEC_MTTY, irqs, me->irq_mtty);

	for (int k = 0; k < BURST; k++) {
		uint8_t lsr = inb(b + REG_LSR);
		if (lsr & LSR_OE)
			report_error(VFMIG_ERR_MTTY_OVERRUN, (uint64_t)p, lsr, 0);
		if (!(lsr & LSR_DR)) {
			report_error(VFMIG_ERR_MTTY_DATA, (uint64_t)p, burst_byte(round, k), 0x100);
			break;
		}
		uint8_t got = inb(b + REG_DATA);
		COUNT(me->mtty_rx, 1);
		if (got == burst_byte(round, k))
			COUNT(me->mtty_checked, 1);
		else
			report_error(VFMIG_ERR_MTTY_DATA, (uint64_t)p, burst_byte(round, k), got);
	}
	/* Anything left over would shift the next round: take it out and say so. */
	while (inb(b + REG_LSR) & LSR_DR) {
		uint8_t extra = inb(b + REG_DATA);
		COUNT(me->mtty_rx, 1);
		report_error(VFMIG_ERR_MTTY_DATA, (uint64_t)p, 0x100, extra);
	}
	round++;
}
