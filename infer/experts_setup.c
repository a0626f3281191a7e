/* experts_setup.c — creating and destroying the expert directory
 * (experts_impl.h): the tiers' tables and policies, the device slots sized
 * from each MoE layer's image layout, the RAM readers; and its counters. */
#include "experts_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

const char *inf_tier_name(int tier)
{
	return tier == INF_TIER_DEVICE ? "device" : "ram";
}

/* ---------------------------------------------------------------- stats */

void inf_experts_stats(inf_experts *d, int tier, inf_tier_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (!d || tier < 0 || tier >= INF_TIERS || !d->t[tier].present)
		return;
	pthread_mutex_lock(&d->lock);
	*out = d->t[tier].st;
	out->slots = d->t[tier].n_slots;
	pthread_mutex_unlock(&d->lock);
}

double inf_experts_take_read_s(inf_experts *d)
{
	if (!d || !d->slots)
		return 0;
	kern_slots_stats ks;
	d->be->ops->slots_stats(d->slots, &ks);
	if (ks.loads <= d->rate_loads)
		return 0;
	const double per = (ks.read_seconds - d->rate_read_s) / (double)(ks.loads - d->rate_loads);
	d->rate_loads = ks.loads;
	d->rate_read_s = ks.read_seconds;
	return per;
}

void inf_experts_reset_stats(inf_experts *d)
{
	pthread_mutex_lock(&d->lock);
	for (int tier = 0; tier < INF_TIERS; tier++) {
		inf_tier_stats *st = &d->t[tier].st;
		const uint64_t slot_bytes = st->slot_bytes;
		memset(st, 0, sizeof(*st));
		st->slot_bytes = slot_bytes;
	}
	pthread_mutex_unlock(&d->lock);
}

uint32_t inf_experts_loading(inf_experts *d, int tier)
{
	if (!d || tier < 0 || tier >= INF_TIERS)
		return 0;
	pthread_mutex_lock(&d->lock);
	uint32_t n = d->t[tier].n_loading;
	pthread_mutex_unlock(&d->lock);
	return n;
}

void inf_experts_count_miss(inf_experts *d, int tier)
{
	if (!d || tier < 0 || tier >= INF_TIERS)
		return;
	pthread_mutex_lock(&d->lock);
	d->t[tier].st.misses++;
	pthread_mutex_unlock(&d->lock);
}

/* ---------------------------------------------------------------- create / destroy */

static int tier_init(inf_experts *d, int tier, uint32_t n_slots)
{
	struct tier *t = &d->t[tier];
	t->present = 1;
	t->n_slots = n_slots;
	t->slots = calloc(n_slots, sizeof(*t->slots));
	t->free_slots = malloc(sizeof(uint32_t) * n_slots);
	t->key_slot = malloc(sizeof(int32_t) * (d->n_keys ? d->n_keys : 1));
	t->pst = d->pol->create(n_slots, d->n_keys);
	if (!t->slots || !t->free_slots || !t->key_slot || !t->pst)
		return -ENOMEM;
	for (uint32_t i = 0; i < n_slots; i++) {
		t->slots[i].fd = -1;
		t->slots[i].src = -1;
		t->free_slots[t->n_free++] = n_slots - 1 - i;
	}
	for (uint32_t k = 0; k < d->n_keys; k++)
		t->key_slot[k] = -1;
	t->st.slots = n_slots;
	return 0;
}

static void tier_free(inf_experts *d, int tier)
{
	struct tier *t = &d->t[tier];
	if (t->slots)
		for (uint32_t i = 0; i < t->n_slots; i++) {
			if (t->slots[i].fd >= 0)
				close(t->slots[i].fd);
			free(t->slots[i].buf);
		}
	if (t->pst)
		d->pol->destroy(t->pst);
	free(t->slots);
	free(t->free_slots);
	free(t->key_slot);
}

/* The layout of every MoE layer's images, from its experts/LLL/000; returns
 * the largest image. */
static int read_layouts(inf_experts *d, uint64_t *max_bytes, k2_err *err)
{
	*max_bytes = 0;
	for (uint32_t l = 0; l < d->n_layers; l++) {
		if (!k2_config_is_moe_layer(&d->cfg, l))
			continue;
		uint64_t size;
		int rc = inf_expert_layout(d->dir, &d->cfg, l, 0, &d->lay[l], &size, err);
		if (rc < 0)
			return rc;
		if (d->lay[l].image_bytes > *max_bytes)
			*max_bytes = d->lay[l].image_bytes;
	}
	return 0;
}

int inf_experts_create(const char *dir, const k2_model_config *cfg, const inf_experts_opts *o,
		       inf_experts **out, k2_err *err)
{
	int rc;
	*out = NULL;
	if (!o->ram_slots && !o->device_slots)
		return k2_err_set(err, -EINVAL, "expert directory: needs at least one slot");
	if (o->device_slots && (!o->be || !o->be->ops->slots_create))
		return k2_err_set(err, -EINVAL, "expert directory: a device tier needs a backend "
				  "with device slots");
	inf_experts *d = calloc(1, sizeof(*d));
	if (!d)
		return k2_err_set(err, -ENOMEM, "out of memory");
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->changed, NULL);
	pthread_cond_init(&d->work, NULL);
	pthread_cond_init(&d->idle, NULL);
	d->cfg = *cfg;
	d->n_layers = cfg->num_hidden_layers;
	d->n_experts = cfg->n_routed_experts;
	d->n_keys = d->n_layers * d->n_experts;
	d->pol = o->policy ? o->policy : &inf_policy_lru;
	d->be = o->be;
	d->dir = strdup(dir);
	d->lay = calloc(d->n_layers ? d->n_layers : 1, sizeof(k2x_layout));
	d->epoch = calloc(d->n_layers ? d->n_layers : 1, sizeof(uint32_t));
	d->q = calloc(READER_QUEUE, sizeof(*d->q));
	if (!d->dir || !d->lay || !d->epoch || !d->q) {
		rc = k2_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	if ((o->ram_slots && tier_init(d, INF_TIER_RAM, o->ram_slots) < 0) ||
	    (o->device_slots && tier_init(d, INF_TIER_DEVICE, o->device_slots) < 0)) {
		rc = k2_err_set(err, -ENOMEM, "expert directory: out of memory for its slots");
		goto fail;
	}
	if (o->device_slots) {
		uint64_t slot_bytes;
		if ((rc = read_layouts(d, &slot_bytes, err)) < 0)
			goto fail;
		kern_slots_opts so = {.n_slots = o->device_slots, .slot_bytes = slot_bytes,
				      .io_threads = o->device_io_threads > 0
							    ? (uint32_t)o->device_io_threads : 0};
		if ((rc = o->be->ops->slots_create(o->be, &so, &d->slots, err)) < 0)
			goto fail;
		d->t[INF_TIER_DEVICE].st.slot_bytes = slot_bytes;
		/* every device load in flight holds a descriptor */
		struct rlimit rl;
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max &&
		    rl.rlim_cur < (rlim_t)o->device_slots + 256) {
			rl.rlim_cur = rl.rlim_max;
			(void)setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	if (o->ram_slots && o->io_threads > 0) {
		d->th = calloc((size_t)o->io_threads, sizeof(pthread_t));
		if (!d->th) {
			rc = k2_err_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
		for (int i = 0; i < o->io_threads; i++) {
			if (pthread_create(&d->th[i], NULL, xd_reader_main, d) != 0)
				break;
			d->n_th++;
		}
	}
	*out = d;
	return 0;
fail:
	inf_experts_destroy(d);
	return rc;
}

void inf_experts_destroy(inf_experts *d)
{
	if (!d)
		return;
	if (d->n_th) {
		pthread_mutex_lock(&d->lock);
		d->stop = 1;
		pthread_cond_broadcast(&d->work);
		pthread_mutex_unlock(&d->lock);
		for (int i = 0; i < d->n_th; i++)
			pthread_join(d->th[i], NULL);
	}
	if (d->q)
		for (uint32_t i = 0; i < d->q_len; i++)
			free(d->q[(d->q_head + i) % READER_QUEUE].hint);
	/* finishes the device loads in flight before their descriptors close */
	if (d->slots)
		d->be->ops->slots_destroy(d->slots);
	for (int tier = 0; tier < INF_TIERS; tier++)
		if (d->t[tier].present || d->t[tier].slots)
			tier_free(d, tier);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->changed);
	pthread_cond_destroy(&d->work);
	pthread_cond_destroy(&d->idle);
	free(d->th);
	free(d->q);
	free(d->epoch);
	free(d->lay);
	free(d->dir);
	free(d);
}
