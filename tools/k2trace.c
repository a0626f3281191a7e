/* k2trace — reads routing traces written by infer --trace (docs/trace.md):
 * statistics of where the experts' work goes, and a simulator that replays a
 * trace through the engine's own expert cache policies (tools/lib/trace.h).
 * Exits 1 with one line "k2trace: <message>" on bad usage or a bad trace. */
#include "cli.h"
#include "infer.h"
#include "trace.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
"NAME\n"
"    k2trace - statistics and cache simulation from infer's routing traces\n"
"\n"
"SYNOPSIS\n"
"    k2trace stats TRACE [--json] [--pairs N] [--profile FILE [--top N]]\n"
"    k2trace sim TRACE [--cache N[,N...]] [--policy P[,P...]]\n"
"                [--pin FILE | --pin hot:PCT] [--image-bytes SIZE] [--per-layer]\n"
"                [--json]\n"
"    k2trace --help\n"
"\n"
"DESCRIPTION\n"
"    TRACE is a file written by infer --trace: a header naming the model's\n"
"    shape and the engine's options, one line per token position with its\n"
"    step (the forward chunk it ran in) and each MoE layer's experts and\n"
"    route weights, and an end line (docs/trace.md). k2trace reads the whole\n"
"    file and checks it first: a trace cut short, a line that is not JSON or\n"
"    one that disagrees with the header (a layer that is not a MoE layer,\n"
"    another number of experts per token, an expert id out of range, a step\n"
"    out of order) is reported on one line naming the file and the line, and\n"
"    k2trace exits 1.\n"
"\n"
"    stats prints, per MoE layer: the experts used at least once; the busiest\n"
"    expert and its share of the layer's selections (tokens x top_k); the\n"
"    share of the busiest tenth of the experts; the entropy of the selections\n"
"    in bits against log2(experts), the uniform maximum; the share of a\n"
"    token's experts that the previous token also chose (reuse_prev; the\n"
"    reuse of independent choices is top_k / experts); and the pairs of\n"
"    experts chosen together by the most tokens, with their lift (tokens\n"
"    choosing both against what independent choices would give).\n"
"\n"
"    sim replays the trace through an expert cache of N experts per policy, in\n"
"    the order the CPU engine's compute tier uses it without prefetch: per\n"
"    step and MoE layer, the experts the step's tokens chose, ascending, each\n"
"    once; those present are hits, then each absent one is a miss that takes a\n"
"    free slot or evicts the policy's victim. The policies are the engine's\n"
"    own code (infer/cache_policy.c), so a trace recorded with\n"
"    infer --expert-cache Nexperts --policy P replays to the hits and misses\n"
"    that infer --stats printed for it. Traces recorded with --prefetch\n"
"    router, --cpu-experts or on a GPU's device tier replay as if recorded\n"
"    without them (a note says so).\n"
"\n"
"OPTIONS\n"
"    --json\n"
"        One JSON object on standard output instead of the text.\n"
"\n"
"    --pairs N (stats)\n"
"        Co-activated pairs listed per layer (default 3 in text, 10 in JSON).\n"
"\n"
"    --profile FILE (stats)\n"
"        Writes the hottest experts of all MoE layers, most chosen first: lines\n"
"        \"# ...\" then \"layer expert count\". sim --pin reads it.\n"
"\n"
"    --top N (stats)\n"
"        Experts in the profile (default: a tenth of all routed experts).\n"
"\n"
"    --cache N[,N...] (sim)\n"
"        Cache sizes to simulate: a count of experts (\"64\" or \"64experts\")\n"
"        or bytes (\"512M\", divided by the expert image size). Default: the\n"
"        cache the trace was recorded with.\n"
"\n"
"    --policy P[,P...] (sim)\n"
"        lru, lfu (the engine's policies) and belady, the optimum: evict the\n"
"        expert whose next use is farthest ahead, the bound no policy beats.\n"
"        Default: the policy the trace was recorded with.\n"
"\n"
"    --pin FILE, --pin hot:PCT (sim)\n"
"        Keeps experts resident: loaded once before the replay (pin_bytes) and\n"
"        never evicted; the rest of the cache is shared as before. FILE is a\n"
"        profile (stats --profile); hot:PCT pins the trace's own hottest\n"
"        experts, PCT percent of each cache size (an oracle: the profile of\n"
"        the very trace replayed). Pins must leave at least one slot.\n"
"\n"
"    --per-layer (sim)\n"
"        Each MoE layer's hits, misses and hit rate too, under each row (in\n"
"        JSON, a \"layers\" list in each run).\n"
"\n"
"    --image-bytes SIZE (sim)\n"
"        The size of one expert image, for bytes moved (default: the trace\n"
"        header's expert_image_bytes).\n"
"\n"
"    --help\n"
"        Prints this text and exits 0.\n"
"\n"
"OUTPUT (sim)\n"
"    One row per policy and cache size: hits, misses, hit rate, evictions,\n"
"    bytes moved (misses x image bytes: what the cache read from the mount; in\n"
"    bytes with --json), the pinned experts and the hits on them.\n"
"\n"
"EXIT STATUS\n"
"    0   success\n"
"    1   bad usage, or a trace that cannot be read, is truncated or disagrees\n"
"        with its header; one line on standard error says what and where\n"
"\n"
"EXAMPLES\n"
"    infer --model /mnt/k2 --prompt \"...\" -n 256 --trace run.trace\n"
"    k2trace stats run.trace --profile hot.txt --top 512\n"
"    k2trace sim run.trace --cache 256,1024,4096 --policy lru,lfu,belady\n"
"    k2trace sim run.trace --cache 1024 --policy lru --pin hot.txt\n";

#define PROG "k2trace"

static int fail(const char *msg)
{
	fprintf(stderr, PROG ": %s\n", msg);
	return 1;
}

/* ---------------------------------------------------------------- stats */

static int cmd_stats(int argc, char **argv)
{
	const char *pos[1], *profile = NULL, *v;
	int npos = 0, bad = 0, json = 0;
	long pairs = -1, top = -1;
	for (int i = 2; i < argc && !bad; i++) {
		if (strcmp(argv[i], "--json") == 0)
			json = 1;
		else if ((v = k2cli_opt_value(PROG, argc, argv, &i, "--pairs", &bad)))
			bad = k2cli_parse_long(PROG, "--pairs", v, 0, 1000000, &pairs) < 0;
		else if ((v = k2cli_opt_value(PROG, argc, argv, &i, "--top", &bad)))
			bad = k2cli_parse_long(PROG, "--top", v, 1, UINT32_MAX, &top) < 0;
		else if ((v = k2cli_opt_value(PROG, argc, argv, &i, "--profile", &bad)))
			profile = v;
		else if (!bad)
			k2cli_other_arg(PROG, argv[i], pos, 1, &npos, &bad);
	}
	if (bad)
		return 1;
	if (npos != 1)
		return fail("stats: give one TRACE (try --help)");
	if (top >= 0 && !profile)
		return fail("stats: --top sizes the --profile: give --profile FILE");
	k2_err err;
	k2tr_trace *t;
	k2tr_stats *s;
	if (k2tr_read(pos[0], &t, &err) < 0)
		return fail(err.msg);
	if (pairs < 0)
		pairs = json ? 10 : 3;
	if (k2tr_stats_compute(t, (uint32_t)pairs, &s, &err) < 0) {
		k2tr_free(t);
		return fail(err.msg);
	}
	int rc = 0;
	if (json)
		rc = k2tr_stats_print_json(stdout, t, s) < 0 ? fail("out of memory") : 0;
	else
		k2tr_stats_print(stdout, t, s);
	if (rc == 0 && profile) {
		const uint64_t all = (uint64_t)t->h.n_moe * t->h.n_experts;
		const uint32_t n = top > 0 ? (uint32_t)top : (uint32_t)((all + 9) / 10);
		if (k2tr_profile_write(profile, t, s, n, &err) < 0)
			rc = fail(err.msg);
	}
	k2tr_stats_free(s);
	k2tr_free(t);
	return rc;
}

/* ---------------------------------------------------------------- sim */

struct sim_opts {
	const char *trace, *cache, *policy, *pin, *image;
	int json, per_layer;
};

/* --cache's list into counts (n of them, at most max). */
static int parse_caches(const char *list, uint64_t image, uint32_t *out, int max, int *n)
{
	char buf[1024];
	snprintf(buf, sizeof(buf), "%s", list);
	*n = 0;
	for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		uint32_t count = 0;
		uint64_t bytes = 0;
		char *end;
		errno = 0;
		unsigned long long v = strtoull(tok, &end, 10);
		if (end != tok && *end == 0 && !errno && v > 0 && v <= UINT32_MAX)
			count = (uint32_t)v;
		else if (inf_parse_expert_cache(tok, &count, &bytes) < 0) {
			fprintf(stderr, PROG ": --cache: '%s' is not a count of experts (64, "
				"64experts) or a size (512M)\n", tok);
			return -EINVAL;
		} else if (bytes) {
			if (!image || bytes / image == 0 || bytes / image > UINT32_MAX) {
				fprintf(stderr, PROG ": --cache: %s holds no whole expert image of %" PRIu64
					" bytes\n", tok, image);
				return -EINVAL;
			}
			count = (uint32_t)(bytes / image);
		}
		if (*n == max) {
			fprintf(stderr, PROG ": --cache: more than %d sizes\n", max);
			return -EINVAL;
		}
		out[(*n)++] = count;
	}
	if (*n == 0) {
		fprintf(stderr, PROG ": --cache: no size in '%s'\n", list);
		return -EINVAL;
	}
	return 0;
}

/* --policy's list: NULL entries are belady. */
static int parse_policies(const char *list, const inf_policy_ops **out, int max, int *n)
{
	char buf[256];
	snprintf(buf, sizeof(buf), "%s", list);
	*n = 0;
	for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		const inf_policy_ops *p = NULL;
		if (strcmp(tok, "belady") != 0 && !(p = inf_policy_find(tok))) {
			fprintf(stderr, PROG ": --policy: unknown policy '%s' (lru, lfu, belady)\n", tok);
			return -EINVAL;
		}
		if (*n == max) {
			fprintf(stderr, PROG ": --policy: more than %d policies\n", max);
			return -EINVAL;
		}
		out[(*n)++] = p;
	}
	if (*n == 0) {
		fprintf(stderr, PROG ": --policy: no policy in '%s'\n", list);
		return -EINVAL;
	}
	return 0;
}

/* bytes as "12.3 GiB" into buf. */
static const char *human_bytes(uint64_t b, char *buf, size_t n)
{
	static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double v = (double)b;
	int u = 0;
	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	snprintf(buf, n, u ? "%.1f %s" : "%.0f %s", v, unit[u]);
	return buf;
}

/* What the replay does not model, as a note on stderr. */
static void sim_notes(const k2tr_trace *t)
{
	const k2tr_header *h = &t->h;
	if (strcmp(h->prefetch, "none") != 0)
		fprintf(stderr, PROG ": note: %s was recorded with --prefetch %s; the replay has "
			"demand loads only\n", t->path, h->prefetch);
	if (strcmp(h->compute_tier, "ram") != 0 || h->cpu_experts)
		fprintf(stderr, PROG ": note: %s was recorded on the %s tier%s; the replay follows "
			"the CPU engine's RAM tier\n", t->path, h->compute_tier,
			h->cpu_experts ? " with --cpu-experts" : "");
}

static double rate(uint64_t hits, uint64_t misses)
{
	return hits + misses ? (double)hits / (double)(hits + misses) : 0.0;
}

/* One run; with its layers when ly is non-NULL. */
static json_t *result_json(const k2tr_trace *t, const k2tr_sim_result *r,
			   const k2tr_sim_layer *ly)
{
	const uint64_t acq = r->hits + r->misses;
	json_t *layers = NULL;
	if (ly) {
		layers = json_array();
		for (uint32_t i = 0; i < t->h.n_moe && layers; i++)
			json_array_append_new(layers, json_pack("{s:I, s:I, s:I, s:f}", "layer",
								(json_int_t)t->h.moe_layers[i], "hits",
								(json_int_t)ly[i].hits, "misses",
								(json_int_t)ly[i].misses, "hit_rate",
								rate(ly[i].hits, ly[i].misses)));
	}
	json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:I}",
			 "policy", r->policy, "cache", (json_int_t)r->slots,
			 "pinned", (json_int_t)r->pinned, "acquisitions", (json_int_t)r->acquisitions,
			 "hits", (json_int_t)r->hits, "misses", (json_int_t)r->misses,
			 "hit_rate", acq ? (double)r->hits / acq : 0.0,
			 "evictions", (json_int_t)r->evictions, "pinned_hits",
			 (json_int_t)r->pinned_hits, "bytes_moved", (json_int_t)r->bytes_moved,
			 "pin_bytes", (json_int_t)r->pin_bytes);
	if (o && layers)
		json_object_set_new(o, "layers", layers);
	else
		json_decref(layers);
	return o;
}

static int cmd_sim(int argc, char **argv)
{
	struct sim_opts o = {0};
	const char *pos[1], *v;
	int npos = 0, bad = 0;
	for (int i = 2; i < argc && !bad; i++) {
		if (strcmp(argv[i], "--json") == 0)
			o.json = 1;
		else if (strcmp(argv[i], "--per-layer") == 0)
			o.per_layer = 1;
		else if ((v = k2cli_opt_value(PROG, argc, argv, &i, "--cache", &bad)))
			o.cache = v;
		else if ((v = k2cli_opt_value(PROG, argc, argv, &i, "--policy", &bad)))
			o.policy = v;
		else if ((v = k2cli_opt_value(PROG, argc, argv, &i, "--pin", &bad)))
			o.pin = v;
		else if ((v = k2cli_opt_value(PROG, argc, argv, &i, "--image-bytes", &bad)))
			o.image = v;
		else if (!bad)
			k2cli_other_arg(PROG, argv[i], pos, 1, &npos, &bad);
	}
	if (bad)
		return 1;
	if (npos != 1)
		return fail("sim: give one TRACE (try --help)");
	o.trace = pos[0];
	uint64_t image = 0;
	if (o.image && k2cli_parse_size(PROG, "--image-bytes", o.image, 1, UINT64_MAX, &image) < 0)
		return 1;
	long pin_pct = -1;
	if (o.pin && strncmp(o.pin, "hot:", 4) == 0 &&
	    k2cli_parse_long(PROG, "--pin hot:PCT", o.pin + 4, 0, 100, &pin_pct) < 0)
		return 1;

	k2_err err;
	k2tr_trace *t;
	if (k2tr_read(o.trace, &t, &err) < 0)
		return fail(err.msg);
	if (!o.image)
		image = t->h.image_bytes;
	enum { MAX_RUNS = 64 };
	uint32_t caches[MAX_RUNS];
	const inf_policy_ops *pols[8];
	int n_cache = 0, n_pol = 0, rc = 1;
	k2tr_sim *sim = NULL;
	k2tr_pins pins = {0};
	k2tr_sim_layer *ly = NULL;
	json_t *runs = json_array();
	char msg[sizeof(err.msg) + 16];
	if (o.cache) {
		if (parse_caches(o.cache, image, caches, MAX_RUNS, &n_cache) < 0)
			goto out;
	} else if (t->h.expert_cache) {
		caches[n_cache++] = t->h.expert_cache;
	} else {
		fail("sim: the trace names no expert cache size: give --cache N");
		goto out;
	}
	if (parse_policies(o.policy ? o.policy : t->h.policy[0] ? t->h.policy : "lru", pols, 8,
			   &n_pol) < 0)
		goto out;
	if (o.pin && pin_pct < 0 && k2tr_pins_read(o.pin, t, &pins, &err) < 0) {
		fail(err.msg);
		goto out;
	}
	if (o.per_layer && !(ly = calloc(t->h.n_moe, sizeof(*ly)))) {
		fail("out of memory");
		goto out;
	}
	if (k2tr_sim_create(t, &sim, &err) < 0) {
		fail(err.msg);
		goto out;
	}
	sim_notes(t);
	if (!o.json) {
		char hb[32];
		printf("%s: %u tokens in %" PRIu64 " steps; %u MoE layers of %u experts, top %u; "
		       "image %s\n", t->path, t->n_tok, t->n_steps, t->h.n_moe, t->h.n_experts,
		       t->h.top_k, human_bytes(image, hb, sizeof(hb)));
		printf("%-7s %8s %7s %10s %10s %8s %10s %12s %12s\n", "policy", "cache", "pinned",
		       "hits", "misses", "hit_rate", "evictions", "bytes_moved", "pinned_hits");
	}
	for (int p = 0; p < n_pol; p++)
		for (int c = 0; c < n_cache; c++) {
			k2tr_pins hot = {0};
			const k2tr_pins *use = o.pin ? &pins : NULL;
			if (pin_pct >= 0) {
				if (k2tr_pins_hot(t, (uint32_t)((uint64_t)caches[c] * pin_pct / 100), &hot,
						  &err) < 0) {
					fail(err.msg);
					goto out;
				}
				use = &hot;
			}
			k2tr_sim_result r;
			int src = k2tr_sim_run_layers(sim, pols[p], caches[c], use, image, &r, ly,
						      &err);
			k2tr_pins_free(&hot);
			if (src < 0) {
				snprintf(msg, sizeof(msg), "sim: %s", err.msg);
				fail(msg);
				goto out;
			}
			if (o.json)
				json_array_append_new(runs, result_json(t, &r, ly));
			else {
				char hb[32];
				printf("%-7s %8u %7u %10" PRIu64 " %10" PRIu64 " %8.4f %10" PRIu64
				       " %12s %12" PRIu64 "\n", r.policy, r.slots, r.pinned, r.hits,
				       r.misses, rate(r.hits, r.misses), r.evictions,
				       human_bytes(r.bytes_moved, hb, sizeof(hb)), r.pinned_hits);
				for (uint32_t i = 0; ly && i < t->h.n_moe; i++)
					printf("  layer %-5u %18" PRIu64 " %10" PRIu64 " %8.4f\n",
					       t->h.moe_layers[i], ly[i].hits, ly[i].misses,
					       rate(ly[i].hits, ly[i].misses));
			}
		}
	if (o.json) {
		json_t *top = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:o}", "trace", t->path,
					"tokens", (json_int_t)t->n_tok, "steps",
					(json_int_t)t->n_steps, "moe_layers", (json_int_t)t->h.n_moe,
					"n_routed_experts", (json_int_t)t->h.n_experts, "image_bytes",
					(json_int_t)image, "runs", json_incref(runs));
		char *txt = top ? json_dumps(top, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		json_decref(top);
		if (!txt) {
			fail("out of memory");
			goto out;
		}
		printf("%s\n", txt);
		free(txt);
	}
	rc = 0;
out:
	json_decref(runs);
	free(ly);
	k2tr_sim_free(sim);
	k2tr_pins_free(&pins);
	k2tr_free(t);
	return rc;
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			k2cli_usage(stdout, usage_text);
			return 0;
		}
	if (argc < 2) {
		k2cli_usage(stderr, usage_text);
		return 1;
	}
	if (strcmp(argv[1], "stats") == 0)
		return cmd_stats(argc, argv);
	if (strcmp(argv[1], "sim") == 0)
		return cmd_sim(argc, argv);
	fprintf(stderr, PROG ": unknown command '%s' (stats, sim; try --help)\n", argv[1]);
	return 1;
}
