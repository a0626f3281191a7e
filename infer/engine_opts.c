/* engine_opts.c — engine option values as people spell them on a command line
 * (infer, k2serve, k2trace): contracts in infer.h. Depends on nothing of the
 * engine or the kernels, so a tool that only parses links it alone. */
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
