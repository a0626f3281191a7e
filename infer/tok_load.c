/* tok_load.c — inf_tok_load for a HuggingFace tokenizer.json (what is
 * supported: tokenizer.h): jansson parses the file, except model.vocab and
 * model.merges when the file's outline allows (tok_json.c); this file reads
 * the rest (model options, added_tokens, normalizer, pre_tokenizer, decoder)
 * into the tables of tok_vocab.c and tok_pretok.c, then tokenizer_config.json
 * beside it (tok_config_*, which tok_tiktoken.c uses too). A tiktoken
 * vocabulary is handed to tok_tiktoken.c by its file name, and
 * inf_tok_open_dir picks the file of a model folder. */
#include "tok_impl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reads an optional boolean member; absent or null keeps *out. */
static int get_bool(const inf_tok *t, const json_t *obj, const char *key, const char *where,
		    bool *out, k2_err *err)
{
	json_t *v = json_object_get(obj, key);
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_boolean(v))
		return k2_err_set(err, -EINVAL, "%s: %s.%s: expected a boolean, found %s", t->path,
				  where, key, tok_json_type_name(v));
	*out = json_is_true(v);
	return 0;
}

/* `big` (may be NULL) locates model.vocab and model.merges in the file text
 * `text`, in which case jansson saw them blanked. */
static int parse_model(inf_tok *t, const json_t *model, const char *text,
		       const struct tok_json_big *big, k2_err *err)
{
	if (!json_is_object(model))
		return k2_err_set(err, -EINVAL, "%s: \"model\" missing or not an object", t->path);
	const char *type = json_string_value(json_object_get(model, "type"));
	if (!type)
		return k2_err_set(err, -EINVAL, "%s: model.type missing; only BPE is supported",
				  t->path);
	if (strcmp(type, "BPE") != 0)
		return k2_err_set(err, -ENOTSUP,
				  "%s: unsupported model type \"%s\" (only BPE is supported)",
				  t->path, type);
	json_t *v = json_object_get(model, "dropout");
	if (v && !json_is_null(v) && !(json_is_number(v) && json_number_value(v) == 0.0))
		return k2_err_set(err, -ENOTSUP, "%s: unsupported BPE feature: dropout", t->path);
	const char *unsupported_strings[] = {"continuing_subword_prefix", "end_of_word_suffix"};
	for (size_t i = 0; i < 2; i++) {
		v = json_object_get(model, unsupported_strings[i]);
		if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
			return k2_err_set(err, -ENOTSUP, "%s: unsupported BPE feature: %s", t->path,
					  unsupported_strings[i]);
	}
	bool byte_fallback = false;
	int rc = get_bool(t, model, "byte_fallback", "model", &byte_fallback, err);
	if (rc)
		return rc;
	if (byte_fallback)
		return k2_err_set(err, -ENOTSUP, "%s: unsupported BPE feature: byte_fallback",
				  t->path);
	if ((rc = get_bool(t, model, "fuse_unk", "model", &t->fuse_unk, err)) ||
	    (rc = get_bool(t, model, "ignore_merges", "model", &t->ignore_merges, err)))
		return rc;

	if ((rc = tok_json_vocab(t, model, text, big, err)))
		return rc;
	if (t->vocab.count == 0)
		return k2_err_set(err, -EINVAL, "%s: model.vocab is empty", t->path);

	t->unk_id = -1;
	v = json_object_get(model, "unk_token");
	if (v && !json_is_null(v)) {
		if (!json_is_string(v))
			return k2_err_set(err, -EINVAL, "%s: model.unk_token: expected a string",
					  t->path);
		t->unk_id = tok_strmap_get(&t->vocab, t->strs.p, json_string_value(v),
					   json_string_length(v));
		if (t->unk_id < 0)
			return k2_err_set(err, -EINVAL,
					  "%s: model.unk_token \"%.40s\" is not in the vocabulary",
					  t->path, json_string_value(v));
	}
	tok_vocab_byte_ids(t);
	return tok_json_merges(t, model, text, big, err);
}

static int parse_added(inf_tok *t, const json_t *arr, k2_err *err)
{
	if (!arr || json_is_null(arr))
		return 0;
	if (!json_is_array(arr))
		return k2_err_set(err, -EINVAL, "%s: added_tokens: expected an array", t->path);
	size_t n = json_array_size(arr);
	if (n > TOK_MAX_IDS)
		return k2_err_set(err, -EINVAL, "%s: added_tokens: too many (%zu)", t->path, n);
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(arr, i);
		char where[48];
		snprintf(where, sizeof(where), "added_tokens[%zu]", i);
		if (!json_is_object(o))
			return k2_err_set(err, -EINVAL, "%s: %s: expected an object", t->path, where);
		json_t *jid = json_object_get(o, "id");
		json_t *jc = json_object_get(o, "content");
		json_int_t id = json_is_integer(jid) ? json_integer_value(jid) : -1;
		if (id < 0 || id >= TOK_MAX_IDS)
			return k2_err_set(err, -EINVAL, "%s: %s.id: expected an id in [0, %u)",
					  t->path, where, TOK_MAX_IDS);
		if (!json_is_string(jc) || json_string_length(jc) == 0)
			return k2_err_set(err, -EINVAL, "%s: %s.content: expected a non-empty string",
					  t->path, where);
		struct tok_added a = {.id = (int32_t)id};
		int rc;
		if ((rc = get_bool(t, o, "special", where, &a.special, err)) ||
		    (rc = get_bool(t, o, "lstrip", where, &a.lstrip, err)) ||
		    (rc = get_bool(t, o, "rstrip", where, &a.rstrip, err)) ||
		    (rc = get_bool(t, o, "normalized", where, &a.normalized, err)) ||
		    (rc = get_bool(t, o, "single_word", where, &a.single_word, err)) ||
		    (rc = tok_added_add(t, &a, json_string_value(jc), json_string_length(jc), where,
					err)))
			return rc;
	}
	return tok_added_finish(t, err);
}

static int check_normalizer(const inf_tok *t, const json_t *n, int depth, k2_err *err)
{
	if (!n || json_is_null(n))
		return 0;
	const char *type = json_string_value(json_object_get(n, "type"));
	if (type && strcmp(type, "Sequence") == 0 && depth < 8) {
		json_t *list = json_object_get(n, "normalizers");
		if (!json_is_array(list))
			return k2_err_set(err, -EINVAL, "%s: normalizer Sequence without a list",
					  t->path);
		for (size_t i = 0; i < json_array_size(list); i++) {
			int rc = check_normalizer(t, json_array_get(list, i), depth + 1, err);
			if (rc)
				return rc;
		}
		return 0;
	}
	return k2_err_set(err, -ENOTSUP,
			  "%s: unsupported normalizer type \"%s\" (only none or an empty "
			  "Sequence is supported)",
			  t->path, type ? type : "?");
}

static int parse_split(inf_tok *t, const json_t *o, size_t i, k2_err *err)
{
	struct tok_split *s = &t->splits[t->n_splits];
	char what[64];
	snprintf(what, sizeof(what), "pre_tokenizer Split %zu", i);
	json_t *pat = json_object_get(o, "pattern");
	json_t *re = json_object_get(pat, "Regex");
	json_t *str = json_object_get(pat, "String");
	json_t *p = json_is_string(re) ? re : str;
	if (!json_is_string(p))
		return k2_err_set(err, -EINVAL, "%s: %s: pattern is not {\"Regex\"|\"String\": ...}",
				  t->path, what);
	const char *beh = json_string_value(json_object_get(o, "behavior"));
	static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
					    "MergedWithNext", "Contiguous"};
	size_t k = 0;
	while (beh && k < 5 && strcmp(beh, names[k]) != 0)
		k++;
	if (!beh || k == 5)
		return k2_err_set(err, -ENOTSUP, "%s: %s: unsupported behavior \"%s\"", t->path,
				  what, beh ? beh : "?");
	s->behavior = (enum tok_split_behavior)k;
	s->invert = false;
	int rc = get_bool(t, o, "invert", what, &s->invert, err);
	if (rc)
		return rc;
	s->re = NULL;
	if (p == str && json_string_length(p) == 0) {
		t->n_splits++;
		return 0;
	}
	rc = tok_regex_compile(t, json_string_value(p), json_string_length(p), p == str, what,
			       &s->re, err);
	if (rc)
		return rc;
	t->n_splits++;
	return 0;
}

static const char gpt2_pattern[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_pre_tokenizer(inf_tok *t, const json_t *pt, k2_err *err)
{
	if (!json_is_object(pt))
		return k2_err_set(err, -ENOTSUP,
				  "%s: unsupported pre_tokenizer (none): a ByteLevel pre-tokenizer "
				  "is required",
				  t->path);
	const char *type = json_string_value(json_object_get(pt, "type"));
	json_t *list;
	json_t *one = NULL;
	if (type && strcmp(type, "Sequence") == 0) {
		list = json_object_get(pt, "pretokenizers");
		if (!json_is_array(list))
			return k2_err_set(err, -EINVAL,
					  "%s: pre_tokenizer Sequence without a pretokenizers list",
					  t->path);
	} else {
		list = one = json_array();
		if (!one || json_array_append(one, (json_t *)pt))
			return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	}
	int rc = 0;
	size_t n = json_array_size(list);
	t->splits = calloc(n ? n : 1, sizeof(*t->splits));
	if (!t->splits) {
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		goto out;
	}
	bool byte_level = false;
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(list, i);
		const char *ty = json_string_value(json_object_get(o, "type"));
		if (byte_level) {
			rc = k2_err_set(err, -ENOTSUP,
					"%s: unsupported pre_tokenizer: \"%s\" after ByteLevel "
					"(ByteLevel must come last)",
					t->path, ty ? ty : "?");
			goto out;
		}
		if (ty && strcmp(ty, "Split") == 0) {
			if ((rc = parse_split(t, o, i, err)))
				goto out;
		} else if (ty && strcmp(ty, "ByteLevel") == 0) {
			bool use_regex = true;
			t->bl_prefix_space = true;
			if ((rc = get_bool(t, o, "add_prefix_space", "pre_tokenizer ByteLevel",
					   &t->bl_prefix_space, err)) ||
			    (rc = get_bool(t, o, "use_regex", "pre_tokenizer ByteLevel", &use_regex,
					   err)))
				goto out;
			if (use_regex &&
			    (rc = tok_regex_compile(t, gpt2_pattern, sizeof(gpt2_pattern) - 1, false,
						    "ByteLevel regex", &t->bl_re, err)))
				goto out;
			byte_level = true;
		} else {
			rc = k2_err_set(err, -ENOTSUP,
					"%s: unsupported pre_tokenizer type \"%s\" (only Split and "
					"ByteLevel are supported)",
					t->path, ty ? ty : "?");
			goto out;
		}
	}
	if (!byte_level)
		rc = k2_err_set(err, -ENOTSUP,
				"%s: unsupported pre_tokenizer: no ByteLevel step (only byte-level "
				"BPE is supported)",
				t->path);
out:
	json_decref(one);
	return rc;
}

static int check_decoder(const inf_tok *t, const json_t *d, k2_err *err)
{
	const char *type = json_string_value(json_object_get(d, "type"));
	if (type && strcmp(type, "ByteLevel") == 0)
		return 0;
	return k2_err_set(err, -ENOTSUP,
			  "%s: unsupported decoder type \"%s\" (only ByteLevel is supported)",
			  t->path, type ? type : "none");
}

int tok_config_read(const inf_tok *t, json_t **root, char **cpath, k2_err *err)
{
	*root = NULL;
	const char *slash = strrchr(t->path, '/');
	size_t dlen = slash ? (size_t)(slash - t->path + 1) : 0;
	char *p = malloc(dlen + sizeof("tokenizer_config.json"));
	if (!p)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	memcpy(p, t->path, dlen);
	strcpy(p + dlen, "tokenizer_config.json");
	*cpath = p;
	FILE *f = fopen(p, "rb");
	if (!f)
		return errno == ENOENT ? 0
				       : k2_err_set(err, -errno, "%s: cannot open: %s", p,
						    strerror(errno));
	json_error_t je;
	json_t *r = json_loadf(f, JSON_ALLOW_NUL, &je);
	fclose(f);
	if (!r)
		return k2_err_set(err, -EINVAL, "%s: invalid JSON at line %d column %d: %s", p,
				  je.line, je.column, je.text);
	if (!json_is_object(r)) {
		json_decref(r);
		return k2_err_set(err, -EINVAL, "%s: expected a JSON object", p);
	}
	*root = r;
	return 0;
}

int tok_config_apply(inf_tok *t, const json_t *root, const char *cpath, k2_err *err)
{
	t->bos_id = t->eos_id = -1;
	if (!root)
		return 0;
	int rc = get_bool(t, root, "add_bos_token", "tokenizer_config", &t->add_bos, err);
	if (rc)
		return rc;
	const char *keys[2] = {"bos_token", "eos_token"};
	int32_t *ids[2] = {&t->bos_id, &t->eos_id};
	for (int i = 0; i < 2; i++) {
		json_t *v = json_object_get(root, keys[i]);
		if (json_is_object(v))
			v = json_object_get(v, "content");
		if (!v || json_is_null(v))
			continue;
		if (!json_is_string(v))
			return k2_err_set(err, -EINVAL, "%s: %s: expected a string or an AddedToken",
					  cpath, keys[i]);
		*ids[i] = inf_tok_token_to_id(t, json_string_value(v), json_string_length(v));
		if (*ids[i] < 0)
			return k2_err_set(err, -EINVAL, "%s: %s \"%.60s\" is not a token of %s",
					  cpath, keys[i], json_string_value(v), t->path);
	}
	return 0;
}

/* tokenizer_config.json beside path: add_bos_token, bos_token, eos_token. */
static int parse_config(inf_tok *t, k2_err *err)
{
	json_t *root;
	char *cpath = NULL;
	int rc = tok_config_read(t, &root, &cpath, err);
	if (!rc)
		rc = tok_config_apply(t, root, cpath, err);
	json_decref(root);
	free(cpath);
	return rc;
}

#define TOK_MAX_FILE (1ull << 31) /* tokenizer.json files are megabytes */

int tok_read_file(const inf_tok *t, char **text, size_t *len, k2_err *err)
{
	FILE *f = fopen(t->path, "rb");
	if (!f)
		return k2_err_set(err, -errno, "%s: cannot open: %s", t->path, strerror(errno));
	struct stat st;
	size_t cap = 1 << 20, n = 0;
	if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0 &&
	    (unsigned long long)st.st_size < TOK_MAX_FILE)
		cap = (size_t)st.st_size + 1; /* +1: the loop stops on a short read */
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n, f);
		if (n < cap)
			break;
		char *nb = cap < TOK_MAX_FILE ? realloc(buf, cap * 2) : NULL;
		if (!nb) {
			free(buf);
			buf = NULL;
			break;
		}
		buf = nb;
		cap *= 2;
	}
	int rc = 0;
	if (!buf)
		rc = k2_err_set(err, -ENOMEM, "%s: out of memory or larger than %llu bytes",
				t->path, TOK_MAX_FILE);
	else if (ferror(f))
		rc = k2_err_set(err, -EIO, "%s: read error", t->path);
	fclose(f);
	if (rc) {
		free(buf);
		return rc;
	}
	*text = buf;
	*len = n;
	return 0;
}


/* True when path names a tiktoken vocabulary: a file called tiktoken.model
 * (Kimi-K2's name for it) or *.tiktoken (OpenAI's). */
static bool is_tiktoken_path(const char *path)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	size_t n = strlen(base);
	return strcmp(base, "tiktoken.model") == 0 ||
	       (n > 9 && strcmp(base + n - 9, ".tiktoken") == 0);
}

int inf_tok_open_dir(const char *dir, inf_tok **out, k2_err *err)
{
	*out = NULL;
	static const char *const names[] = {"tokenizer.json", "tiktoken.model"};
	char path[4096];
	for (int i = 0; i < 2; i++) {
		int w = snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (w < 0 || (size_t)w >= sizeof(path))
			return k2_err_set(err, -ENAMETOOLONG, "%s: path too long", dir);
		if (access(path, F_OK) == 0)
			return inf_tok_load(path, out, err);
	}
	return k2_err_set(err, -ENOENT, "%s: no tokenizer.json or tiktoken.model there", dir);
}

int inf_tok_load(const char *path, inf_tok **out, k2_err *err)
{
	*out = NULL;
	if (is_tiktoken_path(path))
		return tok_tiktoken_load(path, out, err);
	inf_tok *t;
	int rc = tok_new(path, &t, err);
	if (rc)
		return rc;
	json_t *root = NULL;
	char *text = NULL;
	size_t len = 0;
	struct tok_json_big big;
	bool fast;
	if ((rc = tok_read_file(t, &text, &len, err)) ||
	    (rc = tok_json_parse(t, text, len, true, &root, &big, &fast, err)))
		goto fail;
	if ((rc = parse_model(t, json_object_get(root, "model"), text, fast ? &big : NULL, err)) ||
	    (rc = parse_added(t, json_object_get(root, "added_tokens"), err)) ||
	    (rc = check_normalizer(t, json_object_get(root, "normalizer"), 0, err)) ||
	    (rc = parse_pre_tokenizer(t, json_object_get(root, "pre_tokenizer"), err)) ||
	    (rc = check_decoder(t, json_object_get(root, "decoder"), err)) ||
	    (rc = tok_decode_build(t, err)) || (rc = parse_config(t, err)))
		goto fail;
	json_decref(root);
	root = NULL;
	free(text);
	text = NULL;
	if ((rc = tok_pretok_init(t, err)))
		goto fail;
	*out = t;
	return 0;
fail:
	json_decref(root);
	free(text);
	inf_tok_free(t);
	return rc;
}
