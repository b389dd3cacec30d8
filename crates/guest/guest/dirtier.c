/*
 * The dirtier: stamps the pages of this vCPU's slice of the working set, one after the other,
 * pass after pass, and checks each page's previous stamp before it writes the next.
 *
 * A stamp is the page's GPA and a sequence number (the pass: 1, 2, ...) in the first words,
 * SAMPLES words spread over the page, each a function of (GPA, sequence, word), and a check
 * word over all of them. Writing the stamp dirties the page.
 *
 * Why a stale page is found: the sequence a page must hold is not stored anywhere in RAM; it
 * follows from where the walk is. In pass p, a page ahead of the cursor must hold p - 1 and a
 * page behind it p. A page that comes back from a migration older than it was at the
 * switch-over holds a smaller sequence than the walk expects when it reaches it; a page that
 * is lost (zero) holds none; a page with a right header and damaged words fails the samples or
 * the check word. The walk's own state (cursor, sequence) lives in this program's data and the
 * vCPU's registers, which a correct migration carries exactly.
 *
 * Cost: a visit checks and writes 3 + SAMPLES words, not the 4 KiB of the page. Measured on
 * this machine's emulated KVM (one vCPU, no rate limit): about 1,600-2,100 visits a second;
 * adding a plain sum of the page's 512 words to each check brought it down to about 450. Damage
 * between the sampled words is not seen; a lost or stale page always is.
 */
#include "guest.h"

#define SAMPLES 4
/* Word index (of 512) of each sample: 1 KiB apart, the last word of the page last. */
static const uint32_t sample_word[SAMPLES] = { 128, 256, 384, 511 };

struct stamp {
	uint64_t gpa;
	uint64_t seq;
	uint64_t check;
};

static uint64_t sample_value(uint64_t gpa, uint64_t seq, uint32_t k)
{
	return mix64(gpa ^ (seq << 40) ^ ((uint64_t)k << 32) ^ 0x5a5a);
}

static uint64_t check_value(uint64_t gpa, uint64_t seq, uint64_t samples_xor)
{
	return mix64(gpa + seq * 0x9e3779b97f4a7c15ULL) ^ samples_xor;
}

void dirtier_init(struct dirtier *d, uint32_t index, uint32_t vcpus)
{
	uint64_t total = boot->ws_size / PAGE_SIZE;
	uint64_t per = total / vcpus;
	d->base = boot->ws_base + (uint64_t)index * per * PAGE_SIZE;
	/* The last vCPU takes the remainder. */
	d->pages = index == vcpus - 1 ? total - per * index : per;
	d->cursor = 0;
	d->seq = 1;
	d->period = boot->dirty_rate ? boot->tsc_hz / boot->dirty_rate : 0;
	d->next = rdtsc();
}

/* Checks that the page at `gpa` holds stamp `seq`; reports the first difference. */
static void verify(uint64_t gpa, uint64_t seq)
{
	volatile uint64_t *w = (volatile uint64_t *)gpa;
	volatile struct stamp *s = (volatile struct stamp *)gpa;
	/* The sequence first: a lost (zero) or stale page is reported as such, with its GPA. */
	uint64_t found = s->seq;
	if (found != seq) {
		report_error(VFMIG_ERR_PAGE_SEQ, gpa, seq, found);
		return;
	}
	if (s->gpa != gpa) {
		report_error(VFMIG_ERR_PAGE_DATA, gpa, gpa, s->gpa);
		return;
	}
	uint64_t x = 0;
	for (uint32_t k = 0; k < SAMPLES; k++) {
		uint64_t want = sample_value(gpa, seq, k);
		uint64_t got = w[sample_word[k]];
		if (got != want) {
			report_error(VFMIG_ERR_PAGE_DATA, gpa + 8 * sample_word[k], want, got);
			return;
		}
		x ^= got;
	}
	uint64_t want = check_value(gpa, seq, x);
	if (s->check != want) {
		report_error(VFMIG_ERR_PAGE_DATA, gpa + 16, want, s->check);
		return;
	}
	COUNT(my_status()->pages_verified, 1);
}

static void stamp(uint64_t gpa, uint64_t seq)
{
	volatile uint64_t *w = (volatile uint64_t *)gpa;
	volatile struct stamp *s = (volatile struct stamp *)gpa;
	uint64_t x = 0;
	for (uint32_t k = 0; k < SAMPLES; k++) {
		uint64_t v = sample_value(gpa, seq, k);
		w[sample_word[k]] = v;
		x ^= v;
	}
	s->gpa = gpa;
	s->check = check_value(gpa, seq, x);
	s->seq = seq;
	COUNT(my_status()->pages_written, 1);
}

/* One page: check the stamp of the previous pass (none in the first), write this pass's. */
static void visit(struct dirtier *d)
{
	uint64_t gpa = d->base + d->cursor * PAGE_SIZE;
	if (d->seq > 1)
		verify(gpa, d->seq - 1);
	stamp(gpa, d->seq);
	if (++d->cursor == d->pages) {
		d->cursor = 0;
		d->seq++;
		COUNT(my_status()->passes, 1);
	}
}

/* Pages visited per call when there is no rate limit: short enough to keep the loop going. */
#define BATCH 8

uint64_t dirtier_step(struct dirtier *d, uint64_t now)
{
	if (d->pages == 0)
		return 0;
	if (d->period == 0) {
		for (int i = 0; i < BATCH; i++)
			visit(d);
		return BATCH;
	}
	/* Behind by more than a second (a paused VM): drop the debt instead of racing to pay it.
	 * Ahead by more than a second (a TSC that went back, as after a migration that did not
	 * carry it): start again from now instead of stalling. */
	if (now > d->next + boot->tsc_hz || d->next > now + d->period + boot->tsc_hz)
		d->next = now;
	uint64_t n = 0;
	while (d->next <= now && n < BATCH) {
		visit(d);
		d->next += d->period;
		n++;
	}
	return n;
}
