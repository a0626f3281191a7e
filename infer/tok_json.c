/* tok_json.c — model.vocab and model.merges of a tokenizer.json, read two
 * ways that must agree (tests/fuzz_tok_json.c checks that they do).
 *
 * The fast path: the two members are 99% of a tokenizer.json (7.8 MB, 255k
 * strings for DeepSeek-V3), and jansson takes over half a second to build and
 * free them as JSON values. find_big_members() locates them with a lenient
 * scan of the document's outline; jansson then parses the document with just
 * those two values blanked, and parse_vocab_text() / parse_merges_text() read
 * them strictly (same rules as jansson: UTF-8 checked, escapes and surrogate
 * pairs decoded, control characters refused). When the outline is not what
 * the scan expects, the whole file goes through jansson instead, and
 * parse_vocab_json() / parse_merges_json() read the two members from its
 * values.
 *
 * A key given twice in one object is refused by both readings: jansson alone
 * would keep the last value, which the one-pass fast path cannot follow (it
 * refuses a model.vocab key given twice), and the outline scan compares keys
 * undecoded, so "model" and "mod\u0065l" would have it read a different
 * model.vocab than jansson. */
#include "tok_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* NUL allowed in strings (not in keys), keys given twice refused */
#define TOK_JSON_FLAGS (JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES)

const char *tok_json_type_name(const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: return "object";
	case JSON_ARRAY: return "array";
	case JSON_STRING: return "string";
	case JSON_INTEGER: return "integer";
	case JSON_REAL: return "number";
	case JSON_TRUE:
	case JSON_FALSE: return "boolean";
	default: return "null";
	}
}

/* ------------------------------------------------------------ the fast path */

struct scan {
	const char *p;
	size_t n, i;
};

static void sc_ws(struct scan *s)
{
	while (s->i < s->n && (s->p[s->i] == ' ' || s->p[s->i] == '\n' || s->p[s->i] == '\r' ||
			       s->p[s->i] == '\t'))
		s->i++;
}

static bool sc_eat(struct scan *s, char c)
{
	sc_ws(s);
	if (s->i < s->n && s->p[s->i] == c) {
		s->i++;
		return true;
	}
	return false;
}

/* Past a string (at its quote) without decoding it. */
static bool sc_skip_string(struct scan *s)
{
	if (s->i >= s->n || s->p[s->i] != '"')
		return false;
	for (s->i++; s->i < s->n; s->i++) {
		if (s->p[s->i] == '\\')
			s->i++;
		else if (s->p[s->i] == '"') {
			s->i++;
			return true;
		}
	}
	return false;
}

/* Past any value, counting brackets (their kinds are checked later);
 * *items gets the number of members of an object or array (commas at its
 * own depth + 1), a guide for sizing tables. */
static bool sc_skip_value(struct scan *s, size_t *items)
{
	*items = 0;
	sc_ws(s);
	if (s->i >= s->n)
		return false;
	char c = s->p[s->i];
	if (c == '"')
		return sc_skip_string(s);
	if (c == '{' || c == '[') {
		size_t depth = 0;
		while (s->i < s->n) {
			c = s->p[s->i];
			if (c == '"') {
				if (!sc_skip_string(s))
					return false;
				continue;
			}
			s->i++;
			if (c == '{' || c == '[')
				depth++;
			else if ((c == '}' || c == ']') && --depth == 0)
				return (*items)++, true;
			else if (c == ',' && depth == 1)
				(*items)++;
		}
		return false;
	}
	size_t start = s->i;
	while (s->i < s->n && !strchr(",}] \t\r\n", s->p[s->i]))
		s->i++;
	return s->i > start;
}

/* Reads a key (raw, no escapes expected) and its colon into *k, *kl. */
static bool sc_key(struct scan *s, const char **k, size_t *kl)
{
	sc_ws(s);
	size_t start = s->i;
	if (!sc_skip_string(s))
		return false;
	*k = s->p + start + 1;
	*kl = s->i - start - 2;
	return sc_eat(s, ':');
}

static bool key_is(const char *k, size_t kl, const char *want)
{
	return kl == strlen(want) && memcmp(k, want, kl) == 0;
}

/* Steps to the next member of the object being scanned, s just past its
 * '{' (first) or past a member's value: 1 with the member's key in *k, *kl
 * and s at its value; 0 with s past the object's '}'; -1 when the text is not
 * that. */
static int sc_member(struct scan *s, bool first, const char **k, size_t *kl)
{
	if (!first && !sc_eat(s, ',') && !(s->i < s->n && s->p[s->i] == '}'))
		return -1;
	if (sc_eat(s, '}'))
		return 0;
	if (!sc_key(s, k, kl))
		return -1;
	sc_ws(s);
	return 1;
}

static bool find_big_members(const char *p, size_t n, struct tok_json_big *bm)
{
	struct scan s = {p, n, 0};
	const char *k, *mk;
	size_t kl, mkl, items;
	int r, mr;
	memset(bm, 0, sizeof(*bm));
	if (!sc_eat(&s, '{'))
		return false;
	for (bool first = true; (r = sc_member(&s, first, &k, &kl)) > 0; first = false) {
		if (!key_is(k, kl, "model") || s.i >= n || p[s.i] != '{') {
			if (!sc_skip_value(&s, &items))
				return false;
			continue;
		}
		s.i++;
		/* a later "model" wins (and jansson refuses the key given twice) */
		bm->vocab_len = bm->merges_len = 0;
		for (bool mf = true; (mr = sc_member(&s, mf, &mk, &mkl)) > 0; mf = false) {
			size_t start = s.i;
			if (!sc_skip_value(&s, &items))
				return false;
			if (key_is(mk, mkl, "vocab")) {
				bm->vocab_off = start, bm->vocab_len = s.i - start;
				bm->vocab_items = items;
			} else if (key_is(mk, mkl, "merges")) {
				bm->merges_off = start, bm->merges_len = s.i - start;
				bm->merges_items = items;
			}
		}
		if (mr < 0)
			return false;
	}
	if (r < 0)
		return false;
	sc_ws(&s);
	return s.i == n && bm->vocab_len >= 2 && bm->merges_len >= 2 &&
	       p[bm->vocab_off] == '{' && p[bm->merges_off] == '[';
}

/* The file with the two big values emptied, for jansson: each becomes its
 * brackets around the newlines it had, and the last line's indentation, so
 * jansson's line and column numbers still match the file. malloc'd; NULL
 * when out of memory. */
static char *outline_copy(const char *p, size_t n, const struct tok_json_big *bm, size_t *out_len)
{
	size_t off[2] = {bm->vocab_off, bm->merges_off}, len[2] = {bm->vocab_len, bm->merges_len};
	if (off[1] < off[0]) {
		size_t o = off[0], l = len[0];
		off[0] = off[1], len[0] = len[1];
		off[1] = o, len[1] = l;
	}
	/* a value of len bytes with L newlines, the last at offset last_nl >= L,
	 * becomes len + L - last_nl <= len bytes: n bytes are enough */
	char *c = malloc(n + 1);
	size_t k = 0, from = 0;
	for (int i = 0; c && i < 2; i++) {
		/* the values were scanned from one bracket to its match: len >= 2 */
		const char *v = p + off[i];
		memcpy(c + k, p + from, off[i] - from);
		k += off[i] - from;
		c[k++] = v[0];
		size_t last_nl = 0, lines = 0;
		for (const char *q = v; (q = memchr(q, '\n', (size_t)(v + len[i] - q))); q++)
			lines++, last_nl = (size_t)(q - v);
		from = off[i] + len[i];
		if (lines) {
			memset(c + k, '\n', lines);
			k += lines;
			memset(c + k, ' ', len[i] - 2 - last_nl);
			k += len[i] - 2 - last_nl;
		}
		c[k++] = v[len[i] - 1];
	}
	if (!c)
		return NULL;
	memcpy(c + k, p + from, n - from);
	*out_len = k + n - from;
	return c;
}

static int hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
				    : -1;
}

static bool sc_hex4(struct scan *s, uint32_t *v)
{
	if (s->n - s->i < 4)
		return false;
	*v = 0;
	for (int k = 0; k < 4; k++) {
		int h = hexval(s->p[s->i + (size_t)k]);
		if (h < 0)
			return false;
		*v = *v << 4 | (uint32_t)h;
	}
	s->i += 4;
	return true;
}

/* Decodes the string at s->i into out (appended, NUL-terminated); *off and
 * *len locate it. NULL on success, else what is wrong. */
static const char *sc_string(struct scan *s, struct tok_arena *out, size_t *off, size_t *len)
{
	sc_ws(s);
	if (s->i >= s->n || s->p[s->i] != '"')
		return "expected a string";
	s->i++;
	*off = out->len;
	for (;;) {
		size_t run = s->i;
		while (run < s->n && s->p[run] != '"' && s->p[run] != '\\' &&
		       (uint8_t)s->p[run] >= 0x20 && (uint8_t)s->p[run] < 0x80)
			run++;
		if (run > s->i) {
			if (tok_arena_reserve(out, run - s->i + 1))
				return "out of memory";
			memcpy(out->p + out->len, s->p + s->i, run - s->i);
			out->len += run - s->i;
			s->i = run;
		}
		if (s->i >= s->n)
			return "unterminated string";
		uint8_t c = (uint8_t)s->p[s->i];
		char u[4];
		size_t ul;
		if (c == '"') {
			s->i++;
			break;
		} else if (c < 0x20) {
			return "control character in a string";
		} else if (c >= 0x80) {
			int bad;
			int k = tok_utf8_seq((const uint8_t *)s->p + s->i, s->n - s->i, &bad);
			if (k <= 0)
				return "invalid UTF-8";
			memcpy(u, s->p + s->i, (size_t)k);
			ul = (size_t)k;
			s->i += (size_t)k;
		} else { /* backslash */
			if (++s->i >= s->n)
				return "unterminated string";
			char e = s->p[s->i++];
			const char *simple = strchr("\"\\/bfnrt", e);
			if (e && simple) {
				u[0] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
				ul = 1;
			} else if (e == 'u') {
				uint32_t cp, lo;
				if (!sc_hex4(s, &cp))
					return "bad \\u escape";
				if (cp >= 0xdc00 && cp <= 0xdfff)
					return "lone low surrogate";
				if (cp >= 0xd800 && cp <= 0xdbff) {
					if (s->n - s->i < 2 || s->p[s->i] != '\\' || s->p[s->i + 1] != 'u')
						return "lone high surrogate";
					s->i += 2;
					if (!sc_hex4(s, &lo) || lo < 0xdc00 || lo > 0xdfff)
						return "bad surrogate pair";
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				}
				ul = tok_utf8_put(cp, u);
			} else {
				return "bad escape";
			}
		}
		if (tok_arena_reserve(out, ul + 1))
			return "out of memory";
		memcpy(out->p + out->len, u, ul);
		out->len += ul;
	}
	*len = out->len - *off;
	if (tok_arena_reserve(out, 1))
		return "out of memory";
	out->p[out->len++] = 0;
	return NULL;
}

static const char *sc_int(struct scan *s, long long *v)
{
	sc_ws(s);
	bool neg = s->i < s->n && s->p[s->i] == '-';
	size_t start = s->i += neg;
	*v = 0;
	while (s->i < s->n && s->p[s->i] >= '0' && s->p[s->i] <= '9') {
		if (s->i - start >= 12)
			return "number too large";
		*v = *v * 10 + (s->p[s->i++] - '0');
	}
	if (s->i == start || (s->p[start] == '0' && s->i - start > 1))
		return "expected an integer";
	if (s->i < s->n && strchr(".eE", s->p[s->i]))
		return "expected an integer";
	if (neg)
		*v = -*v;
	return NULL;
}

static int sc_fail(const inf_tok *t, const char *what, size_t at, const char *why, k2_err *err)
{
	return k2_err_set(err, strcmp(why, "out of memory") ? -EINVAL : -ENOMEM,
			  "%s: invalid JSON in %s at byte offset %zu: %s", t->path, what, at, why);
}

/* Reads one item of a list (a member of an object, an element of an array)
 * at s into t: NULL when read (then *rc is 0, or -errno with the message in
 * err), else what is wrong with the JSON at s. buf is scratch, empty at each
 * call; index counts the items from 0. */
typedef const char *sc_item_fn(inf_tok *t, struct scan *s, struct tok_arena *buf, size_t index,
			       int *rc, k2_err *err);

/* Reads p[off, off+n), which must be one JSON object (open '{') or array
 * (open '[') and nothing else, calling item for each of its items. what
 * names the list in messages. 0 or -errno. */
static int sc_list(inf_tok *t, const char *p, size_t off, size_t n, char open, const char *what,
		   sc_item_fn *item, k2_err *err)
{
	struct scan s = {p + off, n, 0};
	struct tok_arena buf = {0};
	const char *why = NULL;
	bool obj = open == '{';
	int rc = 0;
	size_t index = 0;
	if (!sc_eat(&s, open)) {
		why = obj ? "expected an object" : "expected an array";
		goto bad;
	}
	if (sc_eat(&s, obj ? '}' : ']'))
		goto end;
	do {
		buf.len = 0;
		if ((why = item(t, &s, &buf, index++, &rc, err)))
			goto bad;
		if (rc)
			goto out;
	} while (sc_eat(&s, ','));
	if (!sc_eat(&s, obj ? '}' : ']')) {
		why = obj ? "expected ',' or '}'" : "expected ',' or ']'";
		goto bad;
	}
end:
	sc_ws(&s);
	if (s.i != s.n)
		why = "trailing bytes";
bad:
	if (why)
		rc = sc_fail(t, what, off + s.i, why, err);
out:
	free(buf.p);
	return rc;
}

/* "token": id */
static const char *vocab_item(inf_tok *t, struct scan *s, struct tok_arena *key, size_t index,
			      int *rc, k2_err *err)
{
	size_t ko, kl;
	long long id;
	const char *why;
	(void)index;
	if ((why = sc_string(s, key, &ko, &kl)))
		return why;
	if (memchr(key->p + ko, 0, kl)) /* jansson refuses these keys */
		return "NUL byte in object key not supported";
	if (!sc_eat(s, ':'))
		return "expected ':'";
	sc_ws(s);
	if (s->i < s->n && s->p[s->i] != '-' && (s->p[s->i] < '0' || s->p[s->i] > '9')) {
		*rc = tok_vocab_add(t, key->p + ko, kl, -1, err); /* names the entry */
		return NULL;
	}
	if ((why = sc_int(s, &id)))
		return why;
	*rc = tok_vocab_add(t, key->p + ko, kl, id, err);
	return NULL;
}

/* "left right" or ["left", "right"]; index is the merge's rank */
static const char *merges_item(inf_tok *t, struct scan *s, struct tok_arena *str, size_t index,
			       int *rc, k2_err *err)
{
	size_t ao, al, bo, bl;
	const char *why;
	sc_ws(s);
	if (s->i < s->n && s->p[s->i] == '"') {
		if ((why = sc_string(s, str, &ao, &al)))
			return why;
		*rc = tok_merges_add_line(t, str->p + ao, al, index, err);
		return NULL;
	}
	if (!sc_eat(s, '['))
		return "expected a string or a pair of strings";
	if ((why = sc_string(s, str, &ao, &al)))
		return why;
	if (!sc_eat(s, ','))
		return "expected a pair of strings";
	if ((why = sc_string(s, str, &bo, &bl)))
		return why;
	if (!sc_eat(s, ']'))
		return "expected a pair of strings";
	*rc = tok_merges_add(t, str->p + ao, al, str->p + bo, bl, index, err);
	return NULL;
}

static int parse_vocab_text(inf_tok *t, const char *p, size_t off, size_t n, size_t items,
			    k2_err *err)
{
	if (tok_strmap_grow(&t->vocab, items < TOK_MAX_IDS ? items : TOK_MAX_IDS))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	return sc_list(t, p, off, n, '{', "model.vocab", vocab_item, err);
}

static int parse_merges_text(inf_tok *t, const char *p, size_t off, size_t n, size_t items,
			     k2_err *err)
{
	if (tok_u64map_grow(&t->merges, items < TOK_MAX_IDS ? items : TOK_MAX_IDS))
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	return sc_list(t, p, off, n, '[', "model.merges", merges_item, err);
}

/* ------------------------------------------------------------ through jansson */

/* model.vocab and model.merges from jansson values (the slow path). */
static int parse_vocab_json(inf_tok *t, const json_t *vocab, k2_err *err)
{
	if (!json_is_object(vocab))
		return k2_err_set(err, -EINVAL, "%s: model.vocab missing or not an object", t->path);
	const char *key;
	size_t klen;
	json_t *val;
	json_object_keylen_foreach((json_t *)vocab, key, klen, val) {
		long long id = json_is_integer(val) ? (long long)json_integer_value(val) : -1;
		int rc = tok_vocab_add(t, key, klen, id, err);
		if (rc)
			return rc;
	}
	return 0;
}

static int parse_merges_json(inf_tok *t, const json_t *merges, k2_err *err)
{
	if (!json_is_array(merges))
		return k2_err_set(err, -EINVAL, "%s: model.merges missing or not an array", t->path);
	for (size_t i = 0; i < json_array_size(merges); i++) {
		json_t *m = json_array_get(merges, i);
		int rc;
		if (json_is_string(m)) {
			rc = tok_merges_add_line(t, json_string_value(m), json_string_length(m), i, err);
		} else if (json_is_array(m) && json_array_size(m) == 2 &&
			   json_is_string(json_array_get(m, 0)) &&
			   json_is_string(json_array_get(m, 1))) {
			json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
			rc = tok_merges_add(t, json_string_value(a), json_string_length(a),
					    json_string_value(b), json_string_length(b), i, err);
		} else {
			rc = k2_err_set(err, -EINVAL,
					"%s: model.merges[%zu]: expected a string or a pair of "
					"strings, found %s",
					t->path, i, tok_json_type_name(m));
		}
		if (rc)
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------------ the loader's entry points */

int tok_json_parse(const inf_tok *t, const char *text, size_t len, bool allow_fast, json_t **root,
		   struct tok_json_big *big, bool *fast, k2_err *err)
{
	json_error_t je;
	*root = NULL;
	*fast = false;
	/* A NUL byte is never valid JSON, but jansson skips one that follows a
	 * number or a literal ({"a": 4\0} loads); the fast path would refuse it.
	 * Refused here, before either reading. */
	const char *nul = memchr(text, 0, len);
	if (nul)
		return k2_err_set(err, -EINVAL, "%s: invalid JSON at byte offset %zu: NUL byte",
				  t->path, (size_t)(nul - text));
	*fast = allow_fast && find_big_members(text, len, big);
	if (*fast) {
		size_t copy_len;
		char *copy = outline_copy(text, len, big, &copy_len);
		if (!copy)
			return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
		*root = json_loadb(copy, copy_len, TOK_JSON_FLAGS, &je);
		free(copy);
	} else {
		*root = json_loadb(text, len, TOK_JSON_FLAGS, &je);
	}
	if (!*root)
		return k2_err_set(err, -EINVAL, "%s: invalid JSON at line %d column %d: %s", t->path,
				  je.line, je.column, je.text);
	if (!json_is_object(*root)) {
		json_decref(*root);
		*root = NULL;
		return k2_err_set(err, -EINVAL, "%s: expected a JSON object at the top", t->path);
	}
	return 0;
}

int tok_json_vocab(inf_tok *t, const json_t *model, const char *text,
		   const struct tok_json_big *big, k2_err *err)
{
	return big ? parse_vocab_text(t, text, big->vocab_off, big->vocab_len, big->vocab_items, err)
		   : parse_vocab_json(t, json_object_get(model, "vocab"), err);
}

int tok_json_merges(inf_tok *t, const json_t *model, const char *text,
		    const struct tok_json_big *big, k2_err *err)
{
	return big ? parse_merges_text(t, text, big->merges_off, big->merges_len, big->merges_items,
				       err)
		   : parse_merges_json(t, json_object_get(model, "merges"), err);
}
