/* fuzz_tok_json.c — libFuzzer target for the tokenizer's JSON fast path
 * (infer/tok_json.c). Any bytes are read as the text of a tokenizer.json
 * twice: as inf_tok_load reads it (the outline scan finds model.vocab and
 * model.merges, jansson parses the rest, the strict reader parses those two)
 * and by jansson alone (json_loadb of the whole text, then the two members
 * from its values). The contract the loader relies on:
 *   - when the scan declines (the outline is not what it expects), the loader
 *     reads the text with jansson alone: nothing to compare;
 *   - when it accepts, the fast path accepts exactly the texts jansson alone
 *     accepts, and then gives the same vocabulary (every id, its token string,
 *     the string -> id map) and the same merges (pair -> rank and merged id);
 *   - a refusal always comes with a message naming the file.
 * A broken promise aborts, for libFuzzer to report. Built by `make fuzz`. */
#include "tok_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_PATH "fuzz.json"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_tok_json: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	abort();
}

/* One reading of the text; 0 when the text gives a vocabulary and merges. */
static int read_tables(inf_tok *t, const char *text, size_t len, bool allow_fast, bool *fast,
		       k2_err *err)
{
	json_t *root;
	struct tok_json_big big;
	int rc = tok_json_parse(t, text, len, allow_fast, &root, &big, fast, err);
	if (rc)
		return rc;
	const json_t *model = json_object_get(root, "model");
	if (!json_is_object(model))
		rc = k2_err_set(err, -EINVAL, "%s: \"model\" missing or not an object", t->path);
	if (!rc)
		rc = tok_json_vocab(t, model, text, *fast ? &big : NULL, err);
	if (!rc)
		rc = tok_json_merges(t, model, text, *fast ? &big : NULL, err);
	json_decref(root);
	return rc;
}

static void check_refusal(int rc, const k2_err *err, const char *side)
{
	if (rc != -EINVAL && rc != -ENOMEM)
		fail("unexpected error code", side);
	if (strncmp(err->msg, FUZZ_PATH ": ", sizeof(FUZZ_PATH ": ") - 1) != 0)
		fail("a refusal's message does not name the file", err->msg);
}

static void check_same_tables(const inf_tok *a, const inf_tok *b)
{
	if (a->n_ids != b->n_ids || a->vocab.count != b->vocab.count ||
	    a->merges.count != b->merges.count)
		fail("different table sizes", NULL);
	for (uint32_t id = 0; id < a->n_ids; id++) {
		bool hole = a->str_off[id] == SIZE_MAX;
		if (hole != (b->str_off[id] == SIZE_MAX))
			fail("an id is a hole in one reading only", NULL);
		if (hole)
			continue;
		const char *s = a->strs.p + a->str_off[id];
		size_t n = a->str_len[id];
		if (n != b->str_len[id] || memcmp(s, b->strs.p + b->str_off[id], n) != 0)
			fail("an id has different token strings", NULL);
		if (tok_strmap_get(&a->vocab, a->strs.p, s, n) != (int32_t)id ||
		    tok_strmap_get(&b->vocab, b->strs.p, s, n) != (int32_t)id)
			fail("a token string maps to a different id", NULL);
	}
	for (size_t i = 0; i < a->merges.cap; i++) {
		const struct tok_u64_slot *sl = &a->merges.slots[i];
		uint64_t v;
		if (sl->key == UINT64_MAX)
			continue;
		if (!tok_u64map_get(&b->merges, sl->key, &v) || v != sl->val)
			fail("a merge differs", NULL);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* A private copy sized exactly, so ASan flags a read one past the end. */
	char *text = malloc(size ? size : 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	inf_tok *fast_tok = NULL, *slow_tok = NULL;
	k2_err fast_err = {{0}}, slow_err = {{0}};
	bool fast = false, slow_fast = false;
	if (tok_new(FUZZ_PATH, &fast_tok, &fast_err) || tok_new(FUZZ_PATH, &slow_tok, &slow_err))
		goto out;

	int fast_rc = read_tables(fast_tok, text, size, true, &fast, &fast_err);
	int slow_rc = read_tables(slow_tok, text, size, false, &slow_fast, &slow_err);
	if (slow_fast)
		fail("the fast path ran where it was not allowed", NULL);
	if (fast_rc)
		check_refusal(fast_rc, &fast_err, "fast path");
	if (slow_rc)
		check_refusal(slow_rc, &slow_err, "jansson");
	if (fast) {
		if (!fast_rc && slow_rc)
			fail("the fast path accepts what jansson refuses", slow_err.msg);
		if (fast_rc && !slow_rc)
			fail("the fast path refuses what jansson accepts", fast_err.msg);
		if (!fast_rc)
			check_same_tables(fast_tok, slow_tok);
	} else if ((fast_rc == 0) != (slow_rc == 0)) {
		fail("jansson alone gives two answers", NULL); /* both readings were jansson's */
	}
out:
	inf_tok_free(fast_tok);
	inf_tok_free(slow_tok);
	free(text);
	return 0;
}
