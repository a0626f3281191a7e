/* engine_opts.c — the engine options as people spell them on a command line
 * (infer, k2serve): contracts in infer.h. */
#include "infer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int inf_parse_expert_cache(const char *s, uint32_t *count, uint64_t *bytes)
{
	size_t l = strlen(s);
	const char *suf = "experts";
	size_t sl = strlen(suf);
	*count = 0;
	*bytes = 0;
	if (l > sl && strcmp(s + l - sl, suf) == 0) {
		char *end;
		errno = 0;
		unsigned long v = strtoul(s, &end, 10);
		if (end != s + l - sl || errno || v == 0 || v > UINT32_MAX)
			return -EINVAL;
		*count = (uint32_t)v;
		return 0;
	}
	if (l > 6 && strcmp(s + l - 6, "expert") == 0)
		return -EINVAL;
	if (k2_parse_size(s, bytes) < 0 || *bytes == 0)
		return -EINVAL;
	return 0;
}

int inf_prefetch_mode(const char *name)
{
	if (strcmp(name, "none") == 0)
		return INF_PREFETCH_NONE;
	if (strcmp(name, "router") == 0)
		return INF_PREFETCH_ROUTER;
	return -EINVAL;
}

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
