/* engine_cli.c — the engine options of a command line checked and set in one
 * place for infer and k2serve (inf_engine_opts_cli, contract in infer.h). Apart
 * from engine_opts.c because it asks the kernels which backends exist. */
#include "infer.h"

#include <errno.h>

int inf_engine_opts_cli(inf_engine_opts *eo, const char *backend, const char *cache,
			const char *policy, const char *prefetch, k2_err *err)
{
	eo->backend = backend ? backend : kern_backend_default();
	if (!kern_backend_known(eo->backend))
		return k2_err_set(err, -EINVAL, "--backend: unknown backend '%s' (%s)", eo->backend,
				  kern_backend_names());
	const int pf = inf_prefetch_mode(prefetch ? prefetch : "none");
	if (pf < 0)
		return k2_err_set(err, -EINVAL, "--prefetch: unknown mode '%s' (none, router)",
				  prefetch);
	eo->prefetch = pf;
	eo->policy = policy ? policy : "lru";
	if (!inf_policy_find(eo->policy))
		return k2_err_set(err, -EINVAL, "--policy: unknown policy '%s' (lru, lfu)", eo->policy);
	eo->cache_experts = 0;
	eo->cache_bytes = 0;
	if (cache && inf_parse_expert_cache(cache, &eo->cache_experts, &eo->cache_bytes) < 0)
		return k2_err_set(err, -EINVAL, "--expert-cache: '%s' is not a size (64M, 2G) or a "
				  "count (48experts)", cache);
	return 0;
}
