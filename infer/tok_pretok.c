/* tok_pretok.c — the pre-tokenizer: patterns of the tokenizer file compiled
 * with PCRE2 (Oniguruma's meaning kept), the added tokens cut out of the text
 * (AddedVocabulary::split_with_indices), and each Split pre-tokenizer's regex
 * and behavior applied to the remaining pieces (Pattern::find_matches and
 * NormalizedString::split of `tokenizers`). Contracts in tok_impl.h. */
#include "tok_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TOK_JIT_STACK_MAX (8u << 20)

/* Compiles a pattern from the file. Oniguruma's \s / \S are the Unicode
 * White_Space property; PCRE2's \s also takes U+180E, so they are rewritten.
 * Multiline because Oniguruma's Ruby syntax makes ^ and $ line anchors.
 * 0 or -EINVAL (message names the file and `what`). */
int tok_regex_compile(const inf_tok *t, const char *pat, size_t len, bool literal,
		      const char *what, pcre2_code **out, k2_err *err)
{
	struct tok_arena a = {0};
	uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF | PCRE2_MULTILINE;
	const char *src = pat;
	size_t srclen = len;
	if (literal) {
		opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_LITERAL; /* all it allows */
	} else {
		for (size_t i = 0; i < len; i++) {
			size_t n = pat[i] == '\\' && i + 1 < len ? 2 : 1; /* an escape is 2 bytes */
			const char *rep = pat + i;
			if (n == 2 && pat[i + 1] == 's')
				rep = "\\p{White_Space}", n = 15;
			else if (n == 2 && pat[i + 1] == 'S')
				rep = "\\P{White_Space}", n = 15;
			if (tok_arena_cat(&a, rep, n))
				goto nomem;
			if (pat[i] == '\\')
				i++;
		}
		src = a.p ? a.p : "";
		srclen = a.len;
	}
	int ec;
	PCRE2_SIZE eoff;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, srclen, opts, &ec, &eoff, NULL);
	if (!re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(ec, msg, sizeof(msg));
		free(a.p);
		return k2_err_set(err, -EINVAL, "%s: %s: regex error at offset %zu: %s", t->path,
				  what, (size_t)eoff, (const char *)msg);
	}
	free(a.p);
	(void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
	*out = re;
	return 0;
nomem:
	free(a.p);
	return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
}

int tok_pretok_init(inf_tok *t, k2_err *err)
{
	t->md = pcre2_match_data_create(1, NULL);
	t->mctx = pcre2_match_context_create(NULL);
	t->jit_stack = pcre2_jit_stack_create(32 * 1024, TOK_JIT_STACK_MAX, NULL);
	if (!t->md || !t->mctx)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", t->path);
	if (t->jit_stack) /* else the JIT's own 32 KiB default */
		pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
	return 0;
}

/* ------------------------------------------------------------ matching */

/* Runs re on subject[0..n) from `from`; 1 and [*s, *e) on a match, 0 when
 * none, -EINVAL on a PCRE2 failure (limits). */
static int re_find(inf_tok *t, const pcre2_code *re, const char *subj, size_t n, size_t from,
		   uint32_t opts, size_t *s, size_t *e, k2_err *err)
{
	int rc = pcre2_match(re, (PCRE2_SPTR)subj, n, from, opts, t->md, t->mctx);
	if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
		rc = pcre2_match(re, (PCRE2_SPTR)subj, n, from, opts | PCRE2_NO_JIT, t->md, t->mctx);
	if (rc == PCRE2_ERROR_NOMATCH)
		return 0;
	if (rc < 0) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(rc, msg, sizeof(msg));
		return k2_err_set(err, -EINVAL, "%s: regex failed on a %zu-byte piece: %s",
				  t->path, n, (const char *)msg);
	}
	PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
	*s = ov[0];
	*e = ov[1];
	return 1;
}

/* Whether the character at s[0..n) is in class re (anchored). */
static bool char_in(inf_tok *t, const pcre2_code *re, const char *s, size_t n)
{
	if (!n)
		return false;
	size_t k = tok_utf8_step((const uint8_t *)s, n);
	size_t a, b;
	return re_find(t, re, s, k, 0, PCRE2_ANCHORED, &a, &b, NULL) == 1;
}

/* Start of the character that ends at s[end] (exclusive), for end > 0. */
static size_t char_before(const char *s, size_t end)
{
	size_t i = end - 1;
	while (i > 0 && end - i < 4 && ((uint8_t)s[i] & 0xc0) == 0x80)
		i--;
	if (tok_utf8_step((const uint8_t *)s + i, end - i) != end - i)
		i = end - 1; /* not one character: the last byte stands alone */
	return i;
}

/* Splits the text pieces of in on the added tokens of trie `which`, into out
 * (AddedVocabulary::split_with_indices). 0 or -ENOMEM. */
static int split_added(inf_tok *t, int which, const char *text, const struct tok_pvec *in,
		       struct tok_pvec *out)
{
	const struct tok_trie *tr = &t->trie[which];
	out->n = 0;
	for (size_t p = 0; p < in->n; p++) {
		const struct tok_piece *pc = &in->v[p];
		if (pc->id >= 0 || !tr->n) {
			if (tok_pvec_push(out, pc->off, pc->len, pc->id, 0))
				return -ENOMEM;
			continue;
		}
		const char *s = text + pc->off;
		size_t n = pc->len, start_offset = 0, i = 0;
		while (i < n) {
			size_t mlen = 0;
			int32_t k = tok_trie_longest(tr, (const uint8_t *)s + i, n - i, &mlen);
			if (k < 0) {
				i++;
				continue;
			}
			const struct tok_added *a = &t->added[k];
			size_t start = i, stop = i + mlen;
			i = stop;
			if (a->single_word) {
				bool start_space = start == 0 ||
					!char_in(t, t->re_alnum, s + char_before(s, start),
						 start - char_before(s, start));
				bool stop_space = stop == n || !char_in(t, t->re_alnum, s + stop, n - stop);
				if (!start_space || !stop_space)
					continue;
			}
			if (a->lstrip) {
				size_t ns = start;
				while (ns > 0) {
					size_t b = char_before(s, ns);
					if (!char_in(t, t->re_space, s + b, ns - b))
						break;
					ns = b;
				}
				start = ns > start_offset ? ns : start_offset;
			}
			if (a->rstrip) {
				while (stop < n && char_in(t, t->re_space, s + stop, n - stop))
					stop += tok_utf8_step((const uint8_t *)s + stop, n - stop);
			}
			if (start > stop)
				continue;
			if (start > start_offset &&
			    tok_pvec_push(out, pc->off + start_offset, start - start_offset, -1, 0))
				return -ENOMEM;
			if (tok_pvec_push(out, pc->off + start, stop - start, a->id, 0))
				return -ENOMEM;
			start_offset = stop;
		}
		if (start_offset < n &&
		    tok_pvec_push(out, pc->off + start_offset, n - start_offset, -1, 0))
			return -ENOMEM;
	}
	return 0;
}

/* tokenizers' Pattern::find_matches over the onig crate's find_iter: an
 * empty match right after the previous match is skipped. */
int tok_find_matches(inf_tok *t, const pcre2_code *re, const char *s, size_t n, k2_err *err)
{
	struct tok_pvec *m = &t->marks;
	m->n = 0;
	if (!re) /* an empty String pattern: HF finds nothing */
		return n ? tok_pvec_push(m, 0, n, -1, 0) : 0;
	size_t prev = 0, last_end = 0, last_match_end = SIZE_MAX;
	while (last_end <= n) {
		size_t ms, me;
		int rc = re_find(t, re, s, n, last_end, 0, &ms, &me, err);
		if (rc < 0)
			return rc;
		if (rc == 0)
			break;
		if (ms == me && last_match_end == me) {
			last_end += last_end < n
					    ? tok_utf8_step((const uint8_t *)s + last_end, n - last_end)
					    : 1;
			continue;
		}
		last_end = me;
		last_match_end = me;
		if (prev != ms && tok_pvec_push(m, prev, ms - prev, -1, 0))
			return -ENOMEM;
		if (tok_pvec_push(m, ms, me - ms, -1, 1))
			return -ENOMEM;
		prev = me;
	}
	if (prev != n && tok_pvec_push(m, prev, n - prev, -1, 0))
		return -ENOMEM;
	return 0;
}

/* One Split pre-tokenizer over every text piece of in, into out. */
static int split_regex(inf_tok *t, const struct tok_split *sp, const char *text,
		       const struct tok_pvec *in, struct tok_pvec *out, k2_err *err)
{
	out->n = 0;
	for (size_t p = 0; p < in->n; p++) {
		const struct tok_piece *pc = &in->v[p];
		if (pc->id >= 0) {
			if (tok_pvec_push(out, pc->off, pc->len, pc->id, 0))
				return -ENOMEM;
			continue;
		}
		int rc = tok_find_matches(t, sp->re, text + pc->off, pc->len, err);
		if (rc)
			return rc;
		struct tok_pvec *m = &t->marks;
		if (sp->invert)
			for (size_t i = 0; i < m->n; i++)
				m->v[i].is_match = !m->v[i].is_match;
		/* Fold the marks in place (k <= i always), as tokenizers'
		 * NormalizedString::split does per behavior; is_match of a kept
		 * piece then means "remove". */
		size_t k = 0;
		bool prev_match = false;
		switch (sp->behavior) {
		case TOK_SPLIT_ISOLATED:
			for (size_t i = 0; i < m->n; i++)
				m->v[i].is_match = 0;
			k = m->n;
			break;
		case TOK_SPLIT_REMOVED:
			k = m->n;
			break;
		case TOK_SPLIT_CONTIGUOUS:
		case TOK_SPLIT_MERGED_WITH_PREVIOUS:
			/* grow the previous piece: Contiguous over a run of equal
			 * flags, MergedWithPrevious by a match after a non-match */
			for (size_t i = 0; i < m->n; i++) {
				bool im = m->v[i].is_match;
				bool join = sp->behavior == TOK_SPLIT_CONTIGUOUS
						    ? im == prev_match
						    : im && !prev_match;
				if (join && k > 0)
					m->v[k - 1].len = m->v[i].off + m->v[i].len - m->v[k - 1].off;
				else
					m->v[k++] = m->v[i];
				m->v[k - 1].is_match = 0;
				prev_match = im;
			}
			break;
		case TOK_SPLIT_MERGED_WITH_NEXT:
			/* right to left, growing the next piece to the left; k counts
			 * pieces kept at the end of the array */
			for (size_t i = m->n; i-- > 0;) {
				bool im = m->v[i].is_match;
				if (im && !prev_match && k > 0) {
					struct tok_piece *nx = &m->v[m->n - k];
					nx->len = nx->off + nx->len - m->v[i].off;
					nx->off = m->v[i].off;
				} else {
					k++;
					m->v[m->n - k] = m->v[i];
				}
				m->v[m->n - k].is_match = 0;
				prev_match = im;
			}
			memmove(m->v, m->v + (m->n - k), k * sizeof(*m->v));
			break;
		}
		for (size_t i = 0; i < k; i++) {
			if (m->v[i].is_match || m->v[i].len == 0)
				continue;
			if (tok_pvec_push(out, pc->off + m->v[i].off, m->v[i].len, -1, 0))
				return -ENOMEM;
		}
	}
	return 0;
}

int tok_pretokenize(inf_tok *t, const char *text, size_t len, const struct tok_pvec **out,
		    k2_err *err)
{
	struct tok_pvec *a = &t->pa, *b = &t->pb, *tmp;
	int rc;
	a->n = 0;
	if (len && (rc = tok_pvec_push(a, 0, len, -1, 0)))
		return rc;
	for (int pass = 0; pass < 2; pass++) {
		if ((rc = split_added(t, pass, text, a, b)))
			return rc;
		tmp = a, a = b, b = tmp;
	}
	for (size_t i = 0; i < t->n_splits; i++) {
		if ((rc = split_regex(t, &t->splits[i], text, a, b, err)))
			return rc;
		tmp = a, a = b, b = tmp;
	}
	*out = a;
	return 0;
}
