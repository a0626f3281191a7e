/* test_k2trace.c — Check suite for the routing trace reader, statistics and
 * cache simulator of tools/lib/trace.h, on small traces written here whose
 * answers are worked out by hand: LRU, LFU and Belady on textbook sequences,
 * the engine's order within a step (experts present first, then the misses),
 * pins; every kind of damaged or mismatched trace gives -EINVAL and a message
 * naming the file and line. The exactness against the engine itself is
 * tests/it_k2trace.sh's. */
#include "trace.h"

#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* 2 layers, layer 1 MoE with 8 experts, top_k k */
#define HDR(k) "{\"k2trace\":1,\"model\":{\"num_hidden_layers\":2,\"n_routed_experts\":8," \
	"\"num_experts_per_tok\":" #k ",\"moe_layers\":[1],\"expert_image_bytes\":1000}," \
	"\"engine\":{\"backend\":\"cpu\",\"compute_tier\":\"ram\",\"expert_cache\":3," \
	"\"policy\":\"lru\",\"prefetch\":\"none\",\"batch\":4,\"cpu_experts\":false,\"n_seqs\":1}}\n"

static char path[64];

static void write_text(const char *text)
{
	snprintf(path, sizeof(path), "/tmp/test_k2trace.XXXXXX");
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

/* A top-1 trace of layer 1 from groups like "1|3|0,1|1": one step per group,
 * one token per expert in it; written with its header and end line. */
static k2tr_trace *trace_of(const char *groups)
{
	char *buf = malloc(1 << 16);
	size_t n = 0;
	unsigned step = 0, pos = 0, tokens = 0;
	n += (size_t)snprintf(buf + n, (1 << 16) - n, "%s", HDR(1));
	for (const char *p = groups; *p;) {
		unsigned x = (unsigned)strtoul(p, (char **)&p, 10);
		n += (size_t)snprintf(buf + n, (1 << 16) - n,
				      "{\"pos\":%u,\"token\":7,\"step\":%u,\"experts\":{\"1\":[%u]},"
				      "\"weights\":{\"1\":[1.0]}}\n", pos++, step, x);
		tokens++;
		if (*p == '|')
			step++;
		if (*p)
			p++;
	}
	snprintf(buf + n, (1 << 16) - n, "{\"end\":{\"tokens\":%u,\"steps\":%u}}\n", tokens,
		 step + 1);
	write_text(buf);
	free(buf);
	k2_err err;
	k2tr_trace *t;
	ck_assert_msg(k2tr_read(path, &t, &err) == 0, "%s", err.msg);
	unlink(path);
	return t;
}

static k2tr_sim_result run(const k2tr_trace *t, const inf_policy_ops *pol, uint32_t slots,
			   const k2tr_pins *pins)
{
	k2tr_sim *s;
	k2tr_sim_result r;
	k2_err err;
	ck_assert_int_eq(k2tr_sim_create(t, &s, &err), 0);
	ck_assert_msg(k2tr_sim_run(s, pol, slots, pins, 1000, &r, &err) == 0, "%s", err.msg);
	k2tr_sim_free(s);
	ck_assert_uint_eq(r.hits + r.misses, r.acquisitions);
	return r;
}

START_TEST(test_read)
{
	write_text(HDR(2)
		   "{\"pos\":0,\"token\":5,\"step\":0,\"experts\":{\"1\":[3,6]},\"weights\":{\"1\":[0.75,0.25]}}\n"
		   "{\"pos\":1,\"token\":9,\"step\":0,\"experts\":{\"1\":[6,0]},\"weights\":{\"1\":[0.5,null]}}\n"
		   "{\"pos\":2,\"token\":4,\"step\":1,\"experts\":{\"1\":[7,1]}}\n"
		   "{\"end\":{\"tokens\":3,\"steps\":2}}\n");
	k2_err err;
	k2tr_trace *t;
	ck_assert_msg(k2tr_read(path, &t, &err) == 0, "%s", err.msg);
	unlink(path);
	ck_assert_uint_eq(t->n_tok, 3);
	ck_assert_uint_eq(t->n_steps, 2);
	ck_assert_uint_eq(t->h.n_moe, 1);
	ck_assert_uint_eq(t->h.moe_layers[0], 1);
	ck_assert_uint_eq(t->h.image_bytes, 1000);
	ck_assert_uint_eq(t->h.expert_cache, 3);
	ck_assert_str_eq(t->h.policy, "lru");
	ck_assert_int_eq(t->token[1], 9);
	ck_assert_uint_eq(t->step[2], 1);
	ck_assert_uint_eq(k2tr_experts(t, 1, 0)[0], 6);
	ck_assert_uint_eq(k2tr_experts(t, 2, 0)[1], 1);
	ck_assert(fabsf(t->weights[0] - 0.75f) < 1e-7f);
	ck_assert(isnan(t->weights[3]));
	ck_assert_int_eq(t->has_weights, 0); /* the last token line has none */
	k2tr_free(t);
}
END_TEST

/* Each damaged trace fails with -EINVAL and this in its message. */
static const struct {
	const char *text, *want;
} bad[] = {
	{"", "empty"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[2]}}\n{\"pos\":1,\"tok",
	 ":3: the line is cut short"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[2]}}\n",
	 ":3: no end line after 1 tokens"},
	{HDR(1) "{\"end\":{\"tokens\":1,\"steps\":1}}\n", ":2: the end line counts 1 tokens"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[2,3]}}\n",
	 ":2: experts: layer 1 has 2 entries; the header says num_experts_per_tok 1"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[8]}}\n",
	 ":2: experts: layer 1 entry 0 is not an expert id below n_routed_experts 8"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"0\":[1],\"1\":[2]}}\n",
	 ":2: experts: \"0\" is not a MoE layer"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{}}\n",
	 ":2: experts: MoE layer 1 of the header is missing"},
	{HDR(2) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[2,2]}}\n",
	 ":2: experts: layer 1 chooses expert 2 twice"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":1,\"experts\":{\"1\":[2]}}\n",
	 ":2: step 1 first, not step 0"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"experts\":{\"1\":[2]}}\n", ":2: token line: no integer \"step\""},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[2]},\"weights\":{\"1\":[\"x\"]}}\n",
	 ":2: weights: layer 1 entry 0 is not a number"},
	{HDR(1) "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[2]}}\n{\"end\":{\"tokens\":1,"
		"\"steps\":1}}\n{\"pos\":1}\n", ":4: a line after the end line"},
	{HDR(1) "not json\n", ":2: not a JSON object"},
	{"{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[2]}}\n", ":1: not a trace header"},
	{"{\"k2trace\":2}\n", ":1: trace format 2"},
	{"{\"k2trace\":1,\"model\":{\"num_hidden_layers\":2,\"n_routed_experts\":8,"
	 "\"num_experts_per_tok\":9,\"moe_layers\":[1],\"expert_image_bytes\":1},\"engine\":{}}\n",
	 ":1: model: \"num_experts_per_tok\" is 9, not in [1, 8]"},
	{"{\"k2trace\":1,\"model\":{\"num_hidden_layers\":2,\"n_routed_experts\":8,"
	 "\"num_experts_per_tok\":1,\"moe_layers\":[1,1],\"expert_image_bytes\":1},\"engine\":{}}\n",
	 ":1: model: \"moe_layers\" entry 1 is not a layer below 2, ascending"},
};

START_TEST(test_read_bad)
{
	write_text(bad[_i].text);
	k2_err err;
	k2tr_trace *t = (void *)1;
	int rc = k2tr_read(path, &t, &err);
	unlink(path);
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert_ptr_null(t);
	ck_assert_msg(strstr(err.msg, bad[_i].want) && strstr(err.msg, path), "case %d: '%s'", _i,
		      err.msg);
}
END_TEST

/* 0 1 2 0 3 0 1 2 3, one access a step, 3 slots: worked by hand. */
START_TEST(test_sim_textbook)
{
	k2tr_trace *t = trace_of("0|1|2|0|3|0|1|2|3");
	k2tr_sim_result r = run(t, &inf_policy_lru, 3, NULL);
	ck_assert_uint_eq(r.hits, 2);
	ck_assert_uint_eq(r.misses, 7);
	ck_assert_uint_eq(r.evictions, 4);
	ck_assert_uint_eq(r.bytes_moved, 7000);
	r = run(t, &inf_policy_lfu, 3, NULL);
	ck_assert_uint_eq(r.hits, 2);
	ck_assert_uint_eq(r.misses, 7);
	/* the one MoE layer's share is all of it */
	k2tr_sim *s;
	k2tr_sim_layer ly = {99, 99};
	k2_err err;
	ck_assert_int_eq(k2tr_sim_create(t, &s, &err), 0);
	ck_assert_int_eq(k2tr_sim_run_layers(s, &inf_policy_lru, 3, NULL, 1000, &r, &ly, &err), 0);
	ck_assert_uint_eq(ly.hits, 2);
	ck_assert_uint_eq(ly.misses, 7);
	k2tr_sim_free(s);
	/* Belady: evicts 2 at the first 3 (next used last), then one never used again */
	r = run(t, NULL, 3, NULL);
	ck_assert_str_eq(r.policy, "belady");
	ck_assert_uint_eq(r.hits, 4);
	ck_assert_uint_eq(r.misses, 5);
	k2tr_free(t);
}
END_TEST

/* LFU keeps the expert used three times where LRU drops it. */
START_TEST(test_sim_lru_vs_lfu)
{
	k2tr_trace *t = trace_of("0|0|0|1|2|3|0");
	k2tr_sim_result lru = run(t, &inf_policy_lru, 3, NULL);
	k2tr_sim_result lfu = run(t, &inf_policy_lfu, 3, NULL);
	ck_assert_uint_eq(lru.hits, 2);
	ck_assert_uint_eq(lru.misses, 5);
	ck_assert_uint_eq(lfu.hits, 3);
	ck_assert_uint_eq(lfu.misses, 4);
	k2tr_free(t);
}
END_TEST

/* Within a step the experts present are acquired first: in step 2 expert 1
 * is a hit before expert 0's miss evicts the least recent (3), so step 3's
 * expert 1 hits again. Acquiring in id order (0 first) would evict 1. */
START_TEST(test_sim_hits_first)
{
	k2tr_trace *t = trace_of("1|3|0,1|1");
	k2tr_sim_result r = run(t, &inf_policy_lru, 2, NULL);
	ck_assert_uint_eq(r.acquisitions, 5);
	ck_assert_uint_eq(r.hits, 2);
	ck_assert_uint_eq(r.misses, 3);
	/* an expert chosen by two tokens of one step is acquired once */
	k2tr_free(t);
	t = trace_of("4,4,4|4");
	r = run(t, &inf_policy_lru, 2, NULL);
	ck_assert_uint_eq(r.acquisitions, 2);
	ck_assert_uint_eq(r.hits, 1);
	k2tr_free(t);
}
END_TEST

/* A pinned expert is never evicted: 2 slots, expert 0 pinned in one, the
 * others share the other. */
START_TEST(test_sim_pins)
{
	k2tr_trace *t = trace_of("0|1|2|3|0|4|0");
	uint32_t key = 1 * 8 + 0;
	k2tr_pins pins = {.n = 1, .keys = &key};
	k2tr_sim_result plain = run(t, &inf_policy_lru, 2, NULL);
	k2tr_sim_result pinned = run(t, &inf_policy_lru, 2, &pins);
	ck_assert_uint_eq(plain.hits, 1); /* only the last 0, after 4 evicted 3 */
	ck_assert_uint_eq(pinned.hits, 3);
	ck_assert_uint_eq(pinned.pinned_hits, 3);
	ck_assert_uint_eq(pinned.misses, 4);
	ck_assert_uint_eq(pinned.pin_bytes, 1000);
	/* the hottest one, found by k2tr_pins_hot, is expert 0 */
	k2tr_pins hot;
	k2_err err;
	ck_assert_int_eq(k2tr_pins_hot(t, 1, &hot, &err), 0);
	ck_assert_uint_eq(hot.n, 1);
	ck_assert_uint_eq(hot.keys[0], key);
	k2tr_pins_free(&hot);
	/* pins must leave a slot */
	k2tr_sim *s;
	k2tr_sim_result r;
	ck_assert_int_eq(k2tr_sim_create(t, &s, &err), 0);
	ck_assert_int_eq(k2tr_sim_run(s, &inf_policy_lru, 1, &pins, 1000, &r, &err), -EINVAL);
	ck_assert_ptr_nonnull(strstr(err.msg, "leave no slot"));
	k2tr_sim_free(s);
	k2tr_free(t);
}
END_TEST

/* Statistics of a hand-made trace: expert 0 in every token, 1 and 2 half. */
START_TEST(test_stats)
{
	write_text(HDR(2)
		   "{\"pos\":0,\"token\":1,\"step\":0,\"experts\":{\"1\":[0,1]}}\n"
		   "{\"pos\":1,\"token\":1,\"step\":1,\"experts\":{\"1\":[0,1]}}\n"
		   "{\"pos\":2,\"token\":1,\"step\":2,\"experts\":{\"1\":[2,0]}}\n"
		   "{\"pos\":3,\"token\":1,\"step\":3,\"experts\":{\"1\":[0,2]}}\n"
		   "{\"end\":{\"tokens\":4,\"steps\":4}}\n");
	k2_err err;
	k2tr_trace *t;
	k2tr_stats *s;
	ck_assert_msg(k2tr_read(path, &t, &err) == 0, "%s", err.msg);
	unlink(path);
	ck_assert_int_eq(k2tr_stats_compute(t, 5, &s, &err), 0);
	const k2tr_layer_stats *l = &s->layers[0];
	ck_assert_uint_eq(l->selections, 8);
	ck_assert_uint_eq(l->used, 3);
	ck_assert_uint_eq(l->busiest, 0);
	ck_assert(fabs(l->busiest_share - 0.5) < 1e-12);
	ck_assert(fabs(l->top10_share - 0.5) < 1e-12); /* ceil(8/10) = 1 expert */
	ck_assert(fabs(l->entropy_bits - 1.5) < 1e-12); /* p = 1/2, 1/4, 1/4 */
	ck_assert(fabs(l->entropy_max - 3.0) < 1e-12);
	/* reuse: token 1 keeps both, token 2 keeps 0, token 3 keeps both: 5 of 6 */
	ck_assert(fabs(l->reuse_prev - 5.0 / 6.0) < 1e-12);
	ck_assert_uint_eq(l->n_pairs, 2);
	ck_assert_uint_eq(l->pairs[0].a, 0);
	ck_assert_uint_eq(l->pairs[0].b, 1);
	ck_assert_uint_eq(l->pairs[0].count, 2);
	ck_assert(fabs(l->pairs[0].lift - 2.0 * 4 / (4.0 * 2)) < 1e-12);
	/* the profile round-trips as pins */
	char prof[sizeof(path) + 8];
	snprintf(prof, sizeof(prof), "%s.prof", path);
	ck_assert_int_eq(k2tr_profile_write(prof, t, s, 2, &err), 0);
	k2tr_pins pins;
	ck_assert_msg(k2tr_pins_read(prof, t, &pins, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(pins.n, 2);
	ck_assert_uint_eq(pins.keys[0], 8 + 0);
	ck_assert_uint_eq(pins.keys[1], 8 + 1); /* 1 and 2 tie at 2: lower key first */
	k2tr_pins_free(&pins);
	unlink(prof);
	k2tr_stats_free(s);
	k2tr_free(t);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("k2trace");
	TCase *tc = tcase_create("trace");
	tcase_add_test(tc, test_read);
	tcase_add_loop_test(tc, test_read_bad, 0, (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, test_sim_textbook);
	tcase_add_test(tc, test_sim_lru_vs_lfu);
	tcase_add_test(tc, test_sim_hits_first);
	tcase_add_test(tc, test_sim_pins);
	tcase_add_test(tc, test_stats);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(suite());
	srunner_run_all(sr, CK_NORMAL);
	int failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
