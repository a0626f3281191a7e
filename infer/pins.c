/* pins.c — experts kept resident in the compute tier for the engine's life
 * (inf_engine_pin, contract in infer.h): `infer --pin PROFILE`. */
#include "infer_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/xattr.h>

int inf_engine_pin(inf_engine *e, const uint32_t *keys, uint32_t n, k2_err *err)
{
	inf_experts *d = inf_engine_experts(e);
	const k2_model_config *c = inf_model_config(e->m);
	if (!d || !n)
		return 0;
	const int tier = inf_experts_compute_tier(d);
	inf_tier_stats ts;
	inf_experts_stats(d, tier, &ts);
	if (n >= ts.slots)
		return k2_err_set(err, -EINVAL, "%u pinned experts leave no slot of the expert cache "
				  "(%u experts) for the others", n, ts.slots);
	for (uint32_t i = 0; i < n; i++) {
		const uint32_t l = keys[i] / c->n_routed_experts, x = keys[i] % c->n_routed_experts;
		const inf_expert *ex;
		int rc = inf_experts_acquire(d, tier, l, x, &ex, err);
		if (rc < 0)
			return rc;
		inf_experts_release(d, tier, ex);
		inf_experts_pin(d, tier, l, x);
		/* and in k2fs's cache, where the mount takes hints (errors ignored:
		 * a plain directory has no user.k2.* names) */
		char path[INF_PATH_MAX];
		if (inf_expert_path(path, sizeof(path), inf_model_dir(e->m), l, x) == 0)
			(void)setxattr(path, "user.k2.prefetch", "pin", 3, 0);
	}
	/* the loads above are the pins' cost, not the run's misses */
	inf_experts_reset_stats(d);
	return 0;
}

int inf_engine_pin_profile(inf_engine *e, const char *path, uint32_t *n_pinned, k2_err *err)
{
	const k2_model_config *c = inf_model_config(e->m);
	uint8_t *moe = calloc(c->num_hidden_layers ? c->num_hidden_layers : 1, 1);
	if (!moe)
		return k2_err_set(err, -ENOMEM, "out of memory");
	for (uint32_t l = 0; l < c->num_hidden_layers; l++)
		moe[l] = (uint8_t)(inf_model_is_moe(e->m, l) != 0);
	uint32_t *keys, n;
	int rc = inf_profile_read(path, c->num_hidden_layers, moe, c->n_routed_experts, &keys, &n,
				  err);
	free(moe);
	if (rc < 0)
		return rc;
	rc = inf_engine_pin(e, keys, n, err);
	free(keys);
	if (rc == 0 && n_pinned)
		*n_pinned = n;
	return rc;
}
