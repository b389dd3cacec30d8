/*
 * PCI: configuration mechanism #1 on bus 0, BAR sizing and assignment, command register, MSI
 * and MSI-X.
 *
 * Memory BARs go into the 32-bit window of the boot contract, 0xC000_0000..0xFEC0_0000, I/O
 * BARs into ports 0xC000..0xFFFF; each is naturally aligned, the largest placed first so
 * alignment wastes nothing.
 */
#include "guest.h"

#define CONFIG_ADDRESS 0xcf8
#define CONFIG_DATA    0xcfc

#define MMIO_WINDOW_BASE 0xc0000000ULL
#define MMIO_WINDOW_END  0xfec00000ULL
#define IO_WINDOW_BASE   0xc000ULL
#define IO_WINDOW_END    0x10000ULL

#define MTTY_VENDOR 0x4348
#define MTTY_DEVICE 0x3253
#define DMA_VENDOR  0x1af4
#define DMA_DEVICE  0x10f0

#define PCI_COMMAND     0x04
#define PCI_STATUS      0x06
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0        0x10
#define PCI_CAP_PTR     0x34
#define STATUS_CAP_LIST 0x10
#define COMMAND_IO      0x0001
#define COMMAND_MEMORY  0x0002
#define COMMAND_MASTER  0x0004
#define COMMAND_INTX_DISABLE 0x0400
#define CAP_ID_MSI      0x05
#define MSI_64BIT       0x0080
#define MSI_ENABLE      0x0001
#define CAP_ID_MSIX     0x11
#define MSIX_ENABLE     0x8000
#define MSIX_TABLE_SIZE 0x07ff
#define MSIX_ENTRY      16u
#define MSIX_CTRL_MASKED 1u

static void select(uint32_t bdf, uint32_t offset)
{
	outl(CONFIG_ADDRESS, 0x80000000u | (bdf << 8) | (offset & 0xfc));
}

static uint32_t cfg_read32(uint32_t bdf, uint32_t offset)
{
	select(bdf, offset);
	return inl(CONFIG_DATA);
}

static uint16_t cfg_read16(uint32_t bdf, uint32_t offset)
{
	select(bdf, offset);
	return inw(CONFIG_DATA + (offset & 2));
}

static uint8_t cfg_read8(uint32_t bdf, uint32_t offset)
{
	select(bdf, offset);
	return inb(CONFIG_DATA + (offset & 3));
}

static void cfg_write32(uint32_t bdf, uint32_t offset, uint32_t v)
{
	select(bdf, offset);
	outl(CONFIG_DATA, v);
}

static void cfg_write16(uint32_t bdf, uint32_t offset, uint16_t v)
{
	select(bdf, offset);
	outw(CONFIG_DATA + (offset & 2), v);
}

/* Offset of the first capability with ID `id`, walking the list from 0x34; 0 if none. */
static uint32_t find_cap(uint32_t bdf, uint8_t id)
{
	if (!(cfg_read16(bdf, PCI_STATUS) & STATUS_CAP_LIST))
		return 0;
	uint32_t cap = cfg_read8(bdf, PCI_CAP_PTR) & 0xfc;
	for (int hops = 0; cap != 0 && hops < 48; hops++) {
		uint16_t head = cfg_read16(bdf, cap);
		if ((head & 0xff) == id)
			return cap;
		cap = (head >> 8) & 0xfc;
	}
	return 0;
}

/* A BAR waiting for an address. */
struct bar_request {
	struct pci_found *dev;
	uint32_t index;
	int io;
	uint64_t size;
};

/* Sizes every BAR of `dev`: writes all ones, reads the mask back, restores the old value. */
static uint32_t size_bars(struct pci_found *dev, struct bar_request *out, uint32_t n)
{
	for (uint32_t i = 0; i < 6; i++) {
		uint32_t at = PCI_BAR0 + 4 * i;
		uint32_t old = cfg_read32(dev->bdf, at);
		cfg_write32(dev->bdf, at, 0xffffffffu);
		uint32_t mask = cfg_read32(dev->bdf, at);
		cfg_write32(dev->bdf, at, old);
		if (mask == 0 || mask == 0xffffffffu)
			continue;
		int io = mask & 1;
		uint64_t size = io ? (uint64_t)(uint16_t)~(mask & ~3u) + 1 : (uint64_t)~(mask & ~0xfu) + 1;
		size &= io ? 0xffff : 0xffffffffu;
		/* A 64-bit memory BAR takes the next slot too; the guest places it below 4 GiB. */
		int wide = !io && ((mask >> 1) & 3) == 2;
		if (size != 0) {
			out[n++] = (struct bar_request){ dev, i, io, size };
			dev->bar_size[i] = size;
			dev->bar_io[i] = (uint8_t)io;
		}
		if (wide)
			cfg_write32(dev->bdf, at + 4, 0), i++;
	}
	return n;
}

/* Places each BAR, largest first, and writes its address. */
static void assign_bars(struct bar_request *req, uint32_t n)
{
	uint64_t next_mem = MMIO_WINDOW_BASE, next_io = IO_WINDOW_BASE;
	for (uint32_t done = 0; done < n; done++) {
		uint32_t big = done;
		for (uint32_t j = done + 1; j < n; j++)
			if (req[j].size > req[big].size)
				big = j;
		struct bar_request r = req[big];
		req[big] = req[done];
		uint64_t *next = r.io ? &next_io : &next_mem;
		uint64_t end = r.io ? IO_WINDOW_END : MMIO_WINDOW_END;
		uint64_t at = (*next + r.size - 1) & ~(r.size - 1);
		if (at + r.size > end) {
			report_error(VFMIG_ERR_BAR_SPACE, r.dev->bdf, r.index, r.size);
			r.dev->bar_size[r.index] = 0;
			continue;
		}
		*next = at + r.size;
		cfg_write32(r.dev->bdf, PCI_BAR0 + 4 * r.index, (uint32_t)at);
		r.dev->bar[r.index] = at;
	}
}

/* Turns on decoding of the BARs it has, bus mastering, and INTx off (the guest uses MSI). */
static void enable(struct pci_found *dev)
{
	uint16_t cmd = cfg_read16(dev->bdf, PCI_COMMAND);
	for (int i = 0; i < 6; i++) {
		if (dev->bar_size[i] == 0)
			continue;
		cmd |= dev->bar_io[i] ? COMMAND_IO : COMMAND_MEMORY;
	}
	cfg_write16(dev->bdf, PCI_COMMAND, cmd | COMMAND_MASTER | COMMAND_INTX_DISABLE);
}

void pci_scan(struct pci_found *mtty, struct pci_found *dma)
{
	struct pci_found *known[2] = { mtty, dma };
	struct bar_request req[12];
	uint32_t nreq = 0, functions = 0, devices = 0;

	mtty->bdf = dma->bdf = 0xffff;
	for (uint32_t slot = 0; slot < 32; slot++) {
		for (uint32_t fn = 0; fn < 8; fn++) {
			uint32_t bdf = slot << 3 | fn;
			uint32_t id = cfg_read32(bdf, 0);
			if ((id & 0xffff) == 0xffff) {
				if (fn == 0)
					break;
				continue;
			}
			functions++;
			struct pci_found *dev = 0;
			if (id == (MTTY_DEVICE << 16 | MTTY_VENDOR) && mtty->bdf == 0xffff)
				dev = mtty, devices |= VFMIG_DEVICE_MTTY;
			else if (id == (DMA_DEVICE << 16 | DMA_VENDOR) && dma->bdf == 0xffff)
				dev = dma, devices |= VFMIG_DEVICE_DMA;
			if (dev) {
				dev->bdf = bdf;
				nreq = size_bars(dev, req, nreq);
			}
			/* Only a multi-function device has functions past 0. */
			if (fn == 0 && !(cfg_read8(bdf, PCI_HEADER_TYPE) & 0x80))
				break;
		}
	}
	assign_bars(req, nreq);
	for (int i = 0; i < 2; i++)
		if (known[i]->bdf != 0xffff)
			enable(known[i]);
	status->pci_functions = functions;
	status->devices = devices;
}

/* Points the device's MSI at this vCPU's LAPIC with `vector` (fixed delivery, edge). */
void pci_enable_msi(uint32_t bdf, uint8_t vector)
{
	uint32_t cap = find_cap(bdf, CAP_ID_MSI);
	if (cap == 0)
		return;
	uint16_t control = cfg_read16(bdf, cap + 2);
	uint32_t data_at = (control & MSI_64BIT) ? cap + 12 : cap + 8;
	cfg_write32(bdf, cap + 4, 0xfee00000u | lapic_id() << 12);
	if (control & MSI_64BIT)
		cfg_write32(bdf, cap + 8, 0);
	cfg_write16(bdf, data_at, vector);
	/* One vector (multiple message enable 0), then on. */
	cfg_write16(bdf, cap + 2, (uint16_t)((control & ~0x70u) | MSI_ENABLE));
}

int pci_enable_msix(const struct pci_found *dev, const uint8_t *vectors, uint32_t n)
{
	uint32_t cap = find_cap(dev->bdf, CAP_ID_MSIX);
	if (cap == 0)
		return 0;
	uint16_t control = cfg_read16(dev->bdf, cap + 2);
	uint32_t where = cfg_read32(dev->bdf, cap + 4);
	uint32_t bir = where & 7, offset = where & ~7u;
	if ((control & MSIX_TABLE_SIZE) + 1u < n || bir > 5 || dev->bar_size[bir] == 0 ||
	    dev->bar_io[bir] || offset + (uint64_t)n * MSIX_ENTRY > dev->bar_size[bir])
		return 0;
	uint64_t table = dev->bar[bir] + offset;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t entry = table + i * MSIX_ENTRY;
		mmio_write32(entry + 0, 0xfee00000u | lapic_id() << 12);
		mmio_write32(entry + 4, 0);
		mmio_write32(entry + 8, vectors[i]);
		mmio_write32(entry + 12, mmio_read32(entry + 12) & ~MSIX_CTRL_MASKED);
	}
	/* MSI stays off (its enable bit is 0 from reset); function mask clear, then on. */
	cfg_write16(dev->bdf, cap + 2, MSIX_ENABLE);
	return 1;
}

void pci_disable_msix(uint32_t bdf)
{
	uint32_t cap = find_cap(bdf, CAP_ID_MSIX);
	if (cap != 0)
		cfg_write16(bdf, cap + 2, 0);
}
