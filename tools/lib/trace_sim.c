/* trace_sim.c — the expert cache simulator behind k2trace sim (trace.h).
 *
 * It replays a trace through the engine's own replacement policies (the
 * inf_policy_ops of infer/cache_policy.c, called exactly as the expert
 * directory calls them) over a slot table kept as infer/experts.c keeps the
 * compute tier's on the CPU backend without prefetch, where no reader runs
 * and nothing loads in the background:
 *
 *   per step (one forward chunk), per MoE layer in order, the experts the
 *   step's tokens chose, ascending (moe.c group_rows), each used once:
 *     plan_layer reads which are present (and pins them);
 *     run_experts acquires the present ones first: a hit, the policy's touch,
 *       then the release unpins it;
 *     then the absent ones: a miss — a free slot (the free list is a stack
 *       filled with n-1 … 0, so slot 0 first), else the policy's victim among
 *       the slots neither pinned nor loading (xd_claim_slot: remove, evicted),
 *       then the load's insert (xd_mark_ready) and the use's touch (use_slot).
 *
 * So at a miss nothing of the engine's own is pinned; only the simulator's
 * pins (experts kept resident, loaded before the replay) are never victims.
 *
 * Belady's optimum uses the same slot table with a policy that knows the
 * future: each slot remembers the next group (step and layer) in which its
 * expert is used, and the victim is the one used farthest ahead (never again
 * counts as farthest; ties go to the lowest slot). */
#include "trace.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NEVER UINT32_MAX

struct k2tr_sim {
	const k2tr_trace *t;
	uint32_t n_keys;          /* n_layers · n_experts, as the engine's */
	uint64_t n_groups;        /* (step, MoE layer) pairs */
	uint64_t *grp_start;      /* [n_groups + 1] into keys */
	uint32_t *keys;           /* the experts each group uses, ascending */
	uint32_t *next;           /* [uses] the next group using that key, or NEVER */
	uint64_t n_uses;
};

/* ---------------------------------------------------------------- Belady */

struct belady {
	uint32_t n_slots;
	uint32_t *next;           /* [n_slots] next group using the slot's key */
	uint32_t cur_next;        /* set by the simulator before each insert / touch */
};

static void *belady_create(uint32_t n_slots, uint32_t n_keys)
{
	(void)n_keys;
	struct belady *b = calloc(1, sizeof(*b));
	if (!b || !(b->next = calloc(n_slots ? n_slots : 1, sizeof(uint32_t)))) {
		free(b);
		return NULL;
	}
	b->n_slots = n_slots;
	return b;
}

static void belady_destroy(void *st)
{
	struct belady *b = st;
	if (b)
		free(b->next);
	free(b);
}

static void belady_use(void *st, uint32_t slot, uint32_t key)
{
	(void)key;
	struct belady *b = st;
	if (slot < b->n_slots)
		b->next[slot] = b->cur_next;
}

static void belady_remove(void *st, uint32_t slot, uint32_t key)
{
	(void)st;
	(void)slot;
	(void)key;
}

static int64_t belady_victim(void *st, int (*ok)(void *ctx, uint32_t slot), void *ctx)
{
	struct belady *b = st;
	int64_t best = -1;
	for (uint32_t s = 0; s < b->n_slots; s++)
		if (ok(ctx, s) && (best < 0 || b->next[s] > b->next[best]))
			best = s;
	return best;
}

static const inf_policy_ops belady_ops = {
	.name = "belady",
	.create = belady_create,
	.destroy = belady_destroy,
	.insert = belady_use,
	.touch = belady_use,
	.remove = belady_remove,
	.victim = belady_victim,
};

/* ---------------------------------------------------------------- groups */

static int cmp_u32(const void *a, const void *b)
{
	const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

int k2tr_sim_create(const k2tr_trace *t, k2tr_sim **out, k2_err *err)
{
	const k2tr_header *h = &t->h;
	const uint32_t E = h->n_experts, k = h->top_k;
	*out = NULL;
	k2tr_sim *s = calloc(1, sizeof(*s));
	if (!s)
		return k2_err_set(err, -ENOMEM, "out of memory");
	s->t = t;
	s->n_keys = h->n_layers * E;
	s->n_groups = t->n_steps * h->n_moe;
	if (s->n_groups >= NEVER) {
		free(s);
		return k2_err_set(err, -E2BIG, "%s: %llu steps of %u MoE layers: too many to replay",
				  t->path, (unsigned long long)t->n_steps, h->n_moe);
	}
	/* at most every token's top-k per group */
	const uint64_t max_uses = (uint64_t)t->n_tok * h->n_moe * k;
	uint8_t *mark = calloc(E, 1);
	uint32_t *last = malloc(sizeof(uint32_t) * (s->n_keys ? s->n_keys : 1));
	s->grp_start = malloc(sizeof(uint64_t) * (s->n_groups + 1));
	s->keys = malloc(sizeof(uint32_t) * (max_uses ? max_uses : 1));
	s->next = malloc(sizeof(uint32_t) * (max_uses ? max_uses : 1));
	if (!mark || !last || !s->grp_start || !s->keys || !s->next) {
		free(mark);
		free(last);
		k2tr_sim_free(s);
		return k2_err_set(err, -ENOMEM, "out of memory for %llu expert uses",
				  (unsigned long long)max_uses);
	}
	uint64_t g = 0, u = 0;
	for (uint32_t a = 0; a < t->n_tok;) {
		uint32_t b = a;
		while (b < t->n_tok && t->step[b] == t->step[a])
			b++;
		for (uint32_t mi = 0; mi < h->n_moe; mi++, g++) {
			s->grp_start[g] = u;
			const uint64_t first = u;
			for (uint32_t i = a; i < b; i++) {
				const uint16_t *ex = k2tr_experts(t, i, mi);
				for (uint32_t j = 0; j < k; j++)
					if (!mark[ex[j]]) {
						mark[ex[j]] = 1;
						s->keys[u++] = h->moe_layers[mi] * E + ex[j];
					}
			}
			for (uint64_t q = first; q < u; q++)
				mark[s->keys[q] % E] = 0;
			qsort(s->keys + first, u - first, sizeof(uint32_t), cmp_u32);
		}
		a = b;
	}
	s->grp_start[g] = u;
	s->n_groups = g;
	s->n_uses = u;
	/* next use, walking back */
	for (uint32_t key = 0; key < s->n_keys; key++)
		last[key] = NEVER;
	for (uint64_t gg = s->n_groups; gg-- > 0;)
		for (uint64_t q = s->grp_start[gg]; q < s->grp_start[gg + 1]; q++) {
			s->next[q] = last[s->keys[q]];
			last[s->keys[q]] = (uint32_t)gg;
		}
	free(mark);
	free(last);
	*out = s;
	return 0;
}

void k2tr_sim_free(k2tr_sim *s)
{
	if (!s)
		return;
	free(s->grp_start);
	free(s->keys);
	free(s->next);
	free(s);
}

/* ---------------------------------------------------------------- replay */

struct table {
	uint32_t n;
	int64_t *key;             /* [n] key held, -1 empty */
	uint8_t *pinned;          /* [n] kept resident */
	uint32_t *free_slots, n_free;
	int32_t *key_slot;        /* [n_keys] */
};

/* The engine's victim_ok: a slot that is ready (all are, here) and unpinned. */
static int slot_ok(void *ctx, uint32_t s)
{
	const struct table *tb = ctx;
	return tb->key[s] >= 0 && !tb->pinned[s];
}

/* A slot for key, as xd_claim_slot: free, else the policy's victim emptied
 * (policy remove) and taken back. -1 when every slot is pinned. */
static int64_t claim(struct table *tb, const inf_policy_ops *pol, void *pst, uint32_t key,
		     k2tr_sim_result *r)
{
	int64_t s;
	if (tb->n_free)
		s = tb->free_slots[--tb->n_free];
	else {
		s = pol->victim(pst, slot_ok, tb);
		if (s < 0)
			return -1;
		pol->remove(pst, (uint32_t)s, (uint32_t)tb->key[s]);
		tb->key_slot[tb->key[s]] = -1;
		r->evictions++;
	}
	tb->key[s] = key;
	tb->key_slot[key] = (int32_t)s;
	return s;
}

int k2tr_sim_run(k2tr_sim *s, const inf_policy_ops *pol, uint32_t slots, const k2tr_pins *pins,
		 uint64_t image_bytes, k2tr_sim_result *out, k2_err *err)
{
	return k2tr_sim_run_layers(s, pol, slots, pins, image_bytes, out, NULL, err);
}

int k2tr_sim_run_layers(k2tr_sim *s, const inf_policy_ops *pol, uint32_t slots,
			const k2tr_pins *pins, uint64_t image_bytes, k2tr_sim_result *out,
			k2tr_sim_layer *per_layer, k2_err *err)
{
	const uint32_t n_moe = s->t->h.n_moe;
	const uint32_t n_pins = pins ? pins->n : 0;
	const int belady = pol == NULL;
	if (belady)
		pol = &belady_ops;
	memset(out, 0, sizeof(*out));
	snprintf(out->policy, sizeof(out->policy), "%s", pol->name);
	if (per_layer)
		memset(per_layer, 0, sizeof(*per_layer) * n_moe);
	out->slots = slots;
	out->pinned = n_pins;
	if (slots == 0)
		return k2_err_set(err, -EINVAL, "a cache of 0 experts");
	if (n_pins >= slots)
		return k2_err_set(err, -EINVAL, "%u pinned experts leave no slot of a cache of %u "
				  "experts for the others", n_pins, slots);
	struct table tb = {.n = slots};
	tb.key = malloc(sizeof(int64_t) * slots);
	tb.pinned = calloc(slots, 1);
	tb.free_slots = malloc(sizeof(uint32_t) * slots);
	tb.key_slot = malloc(sizeof(int32_t) * (s->n_keys ? s->n_keys : 1));
	void *pst = pol->create(slots, s->n_keys);
	uint8_t *present = malloc(s->t->h.n_experts); /* a group's plan */
	int rc = 0;
	if (!tb.key || !tb.pinned || !tb.free_slots || !tb.key_slot || !pst || !present) {
		rc = k2_err_set(err, -ENOMEM, "out of memory for a cache of %u experts", slots);
		goto out;
	}
	for (uint32_t i = 0; i < slots; i++) {
		tb.key[i] = -1;
		tb.free_slots[tb.n_free++] = slots - 1 - i;
	}
	for (uint32_t k = 0; k < s->n_keys; k++)
		tb.key_slot[k] = -1;
	struct belady *bst = belady ? pst : NULL;
	/* the pins, loaded first; their next use does not matter (never victims) */
	for (uint32_t i = 0; i < n_pins; i++) {
		const uint32_t key = pins->keys[i];
		if (key >= s->n_keys || tb.key_slot[key] >= 0) {
			rc = k2_err_set(err, -EINVAL, "pin %u: key %u repeated or out of range", i, key);
			goto out;
		}
		const int64_t sl = claim(&tb, pol, pst, key, out);
		tb.pinned[sl] = 1;
		pol->insert(pst, (uint32_t)sl, key);
		out->pin_bytes += image_bytes;
	}
	for (uint64_t g = 0; g < s->n_groups; g++) {
		const uint64_t a = s->grp_start[g], b = s->grp_start[g + 1];
		k2tr_sim_layer scratch, *ly = per_layer ? &per_layer[g % n_moe] : &scratch;
		/* plan_layer: which are present, read once */
		for (uint64_t q = a; q < b; q++)
			present[q - a] = tb.key_slot[s->keys[q]] >= 0;
		for (int pass = 0; pass < 2; pass++)
			for (uint64_t q = a; q < b; q++) {
				const uint32_t key = s->keys[q];
				const int32_t sl = tb.key_slot[key];
				if ((pass == 0) != present[q - a])
					continue;
				if (bst)
					bst->cur_next = s->next[q];
				out->acquisitions++;
				if (pass == 0) {
					out->hits++;
					ly->hits++;
					out->pinned_hits += tb.pinned[sl];
					pol->touch(pst, (uint32_t)sl, key);
					continue;
				}
				const int64_t ns = claim(&tb, pol, pst, key, out);
				if (ns < 0) {
					rc = k2_err_set(err, -EINVAL, "cache of %u experts: no slot to "
							"evict", slots);
					goto out;
				}
				out->misses++;
				ly->misses++;
				out->bytes_moved += image_bytes;
				pol->insert(pst, (uint32_t)ns, key);
				pol->touch(pst, (uint32_t)ns, key);
			}
	}
out:
	if (pst)
		pol->destroy(pst);
	free(present);
	free(tb.key);
	free(tb.pinned);
	free(tb.free_slots);
	free(tb.key_slot);
	return rc;
}
