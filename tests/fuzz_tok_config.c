/* fuzz_tok_config.c — libFuzzer target for the readers of tokenizer_config.json:
 * the tokenizer's (infer/tok_load.c tok_config_read / tok_config_apply:
 * add_bos_token, bos_token, eos_token; infer/tok_tiktoken.c add_specials:
 * added_tokens_decoder) and the chat template loader's (infer/chat_load.c
 * inf_chat_template_load: chat_template as a string or a named list,
 * bos_token). Both read a file by path, so each input is written as
 * tokenizer_config.json into a private folder (under /dev/shm when there is
 * one) beside a small tiktoken.model (the 256 single bytes, then "he" and
 * "ll": the special-token slots start at id 258), and read from there with
 * inf_tok_load and inf_chat_template_load, exactly as a model folder is. The
 * contract:
 *   - a refusal is -EINVAL (or -ENOMEM; for the chat loader also -ENOENT and
 *     -ENOTSUP) with a message naming a file of the folder;
 *   - an accepted config gives a tokenizer in which every entry of
 *     added_tokens_decoder is its id (both ways, and it encodes to itself
 *     alone), every slot it leaves empty is "<|reserved_token_N|>", the
 *     bos/eos ids are those of the bos_token/eos_token strings, add_bos is
 *     add_bos_token, and the input text (its first 2 KiB) encodes and decodes
 *     to itself;
 *   - the chat loader gives the outcome a reading of the same JSON by the
 *     rules of chat.h gives (which error, which template, which bos_token),
 *     and an accepted template renders a fixed conversation.
 * A broken promise aborts, for libFuzzer to report. Built by `make fuzz`. */
#include "chat_impl.h"
#include "tok_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MINI_RANKS 258u /* 256 bytes, "he", "ll" */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64], vocab_path[96], config_path[96];

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz_tok_config: %s%s%s\n", what, detail ? ": " : "",
		detail ? detail : "");
	abort();
}

static void remove_dir(void)
{
	unlink(vocab_path);
	unlink(config_path);
	rmdir(dir);
}

static size_t b64(const uint8_t *s, size_t n, char *out)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t o = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) |
			     (i + 2 < n ? s[i + 2] : 0);
		out[o++] = a[v >> 18];
		out[o++] = a[(v >> 12) & 63];
		out[o++] = i + 1 < n ? a[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < n ? a[v & 63] : '=';
	}
	return o;
}

static int write_file(const char *path, const void *data, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	size_t done = 0;
	while (done < n) {
		ssize_t w = write(fd, (const char *)data + done, n - done);
		if (w <= 0)
			break;
		done += (size_t)w;
	}
	close(fd);
	return done == n ? 0 : -1;
}

/* The folder and its tiktoken.model, once. */
static int setup(void)
{
	if (dir[0])
		return 0;
	struct stat st;
	snprintf(dir, sizeof(dir), "%s/fuzz_tok_config.XXXXXX",
		 stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp");
	if (!mkdtemp(dir)) {
		dir[0] = '\0';
		return -1;
	}
	snprintf(vocab_path, sizeof(vocab_path), "%s/tiktoken.model", dir);
	snprintf(config_path, sizeof(config_path), "%s/tokenizer_config.json", dir);
	atexit(remove_dir);
	char text[256 * 12 + 64];
	size_t n = 0;
	for (int b = 0; b < 256; b++) {
		uint8_t one = (uint8_t)b;
		n += b64(&one, 1, text + n);
		n += (size_t)sprintf(text + n, " %d\n", b);
	}
	n += b64((const uint8_t *)"he", 2, text + n);
	n += (size_t)sprintf(text + n, " 256\n");
	n += b64((const uint8_t *)"ll", 2, text + n);
	n += (size_t)sprintf(text + n, " 257\n");
	return write_file(vocab_path, text, n);
}

static void check_message(const char *msg)
{
	if (strncmp(msg, dir, strlen(dir)) != 0)
		fail("a refusal does not name a file of the folder", msg);
}

/* ------------------------------------------------------------ tokenizer */

/* A member that is a string, or an AddedToken object's content; NULL when
 * absent or null (the caller knows it was accepted). */
static const json_t *token_string(const json_t *root, const char *key)
{
	const json_t *v = json_object_get(root, key);
	if (json_is_object(v))
		v = json_object_get(v, "content");
	return json_is_string(v) ? v : NULL;
}

static void check_encodes_to(inf_tok *t, const char *s, size_t n, int32_t id)
{
	int32_t *ids;
	size_t ni;
	k2_err err = {{0}};
	if (inf_tok_encode(t, s, n, &ids, &ni, &err))
		fail("encode failed", err.msg);
	if (ni != 1 || ids[0] != id)
		fail("a special token does not encode to its id alone", s);
	free(ids);
}

static void check_roundtrip(inf_tok *t, const char *s, size_t n)
{
	int32_t *ids;
	size_t ni, dl;
	char *d;
	k2_err err = {{0}};
	if (inf_tok_encode(t, s, n, &ids, &ni, &err))
		fail("encode failed", err.msg);
	if (inf_tok_decode(t, ids, ni, INF_TOK_RAW, &d, &dl))
		fail("decode failed", NULL);
	if (dl != n || memcmp(d, s, n) != 0)
		fail("the config's text does not round-trip", NULL);
	free(d);
	free(ids);
}

static void check_tokenizer(inf_tok *t, const char *text, size_t len)
{
	json_error_t je;
	json_t *root = json_loadb(text, len, JSON_ALLOW_NUL, &je);
	if (!json_is_object(root))
		fail("a tokenizer was made from a config that is not a JSON object", NULL);
	bool taken[256] = {0};
	const json_t *atd = json_object_get(root, "added_tokens_decoder");
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)atd, key, v) {
		long id = strtol(key, NULL, 10);
		if (id < (long)MINI_RANKS || id >= (long)MINI_RANKS + 256)
			fail("an accepted added token outside the special slots", key);
		taken[id - MINI_RANKS] = true;
		const json_t *c = json_object_get(v, "content");
		const char *s = json_string_value(c);
		size_t n = json_string_length(c), got_n;
		if (inf_tok_token_to_id(t, s, n) != id)
			fail("an added token's content is not its id", s);
		const char *got;
		if (inf_tok_decode_id(t, (int32_t)id, &got, &got_n) || got_n != n ||
		    memcmp(got, s, n))
			fail("an added token's id does not decode to its content", s);
		const json_t *sp = json_object_get(v, "special");
		if (inf_tok_is_special(t, (int32_t)id) != (!sp || json_is_true(sp)))
			fail("an added token's special flag is not the file's", s);
		check_encodes_to(t, s, n, (int32_t)id);
	}
	for (uint32_t i = 0; i < 256; i++) {
		if (taken[i])
			continue;
		char c[48];
		int n = snprintf(c, sizeof(c), "<|reserved_token_%u|>", MINI_RANKS + i);
		if (inf_tok_token_to_id(t, c, (size_t)n) != (int32_t)(MINI_RANKS + i))
			fail("an empty slot is not its reserved token", c);
	}
	const json_t *bos = token_string(root, "bos_token"), *eos = token_string(root, "eos_token");
	int32_t bos_id;
	bool add = inf_tok_bos(t, &bos_id);
	if (bos_id != (bos ? inf_tok_token_to_id(t, json_string_value(bos), json_string_length(bos))
			   : -1) ||
	    inf_tok_eos_id(t) != (eos ? inf_tok_token_to_id(t, json_string_value(eos),
							     json_string_length(eos))
				      : -1))
		fail("bos or eos is not the config's token", NULL);
	const json_t *ab = json_object_get(root, "add_bos_token");
	if (add != (json_is_true(ab) && bos_id >= 0))
		fail("add_bos is not the config's add_bos_token", NULL);
	json_decref(root);
	/* (a prefix: BPE over a long text without merges is slow, and
	 * fuzz_tiktoken covers encoding at length) */
	check_roundtrip(t, text, len < 2048 ? len : 2048);
}

/* ------------------------------------------------------------ chat template */

/* What inf_chat_template_load must give for this text, by chat.h's rules:
 * the error, else the known template and the bos_token (NULL: the known
 * template's own). */
static int chat_expected(const char *text, size_t len, const struct chat_known **known,
			 const char **bos, json_t **keep)
{
	json_error_t je;
	*known = NULL;
	*bos = NULL;
	json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	*keep = root;
	if (!json_is_object(root))
		return -EINVAL;
	const json_t *b = json_object_get(root, "bos_token");
	if (json_is_object(b))
		b = json_object_get(b, "content");
	if (b && !json_is_null(b) && !json_is_string(b))
		return -EINVAL;
	*bos = json_string_value(b);
	const json_t *tpl = json_object_get(root, "chat_template");
	if (!tpl || json_is_null(tpl))
		return -ENOENT; /* no chat_template.jinja in the folder */
	if (json_is_array(tpl)) {
		const json_t *pick = NULL;
		for (size_t i = 0; i < json_array_size(tpl) && !pick; i++) {
			const json_t *e = json_array_get(tpl, i);
			const json_t *name = json_object_get(e, "name");
			const json_t *t = json_object_get(e, "template");
			if (!json_is_object(e) || !json_is_string(name) || !json_is_string(t))
				return -EINVAL;
			if (!strcmp(json_string_value(name), "default"))
				pick = t;
		}
		if (!pick)
			return -ENOENT;
		tpl = pick;
	}
	if (!json_is_string(tpl))
		return -EINVAL;
	size_t n = json_string_length(tpl);
	*known = chat_known_by_text(inf_chat_fingerprint(json_string_value(tpl), n), n);
	return *known ? 0 : -ENOTSUP;
}

static void check_chat(const char *text, size_t len)
{
	const struct chat_known *known;
	const char *bos;
	json_t *root;
	int want = chat_expected(text, len, &known, &bos, &root);
	inf_chat_template *t = NULL;
	k2_err err = {{0}};
	int rc = inf_chat_template_load(config_path, &t, &err);
	if (rc == -ENOMEM)
		goto out;
	if (rc != want) {
		char why[96];
		snprintf(why, sizeof(why), "loader %d, rules %d: %.60s", rc, want, err.msg);
		fail("the chat loader's outcome differs from chat.h's rules", why);
	}
	if (rc) {
		check_message(err.msg);
		goto out;
	}
	if (t->known != known || strcmp(inf_chat_template_name(t), known->name) ||
	    strcmp(t->bos, bos ? bos : known->bos))
		fail("the chat loader made another template or bos_token", known->name);
	static const inf_chat_msg msgs[] = {{"system", "Be brief."},
					    {"user", "Hello"},
					    {"assistant", "Hi."},
					    {"user", "Again"}};
	char *out;
	size_t out_len;
	rc = inf_chat_render(t, msgs, 4, true, &out, &out_len, &err);
	if (rc == 0) {
		if (out_len != strlen(out) || !strstr(out, "Again"))
			fail("a rendered conversation lacks its last message", NULL);
		free(out);
	} else if (rc != -ENOMEM) {
		fail("a recognised template does not render a plain conversation", err.msg);
	}
out:
	json_decref(root);
	inf_chat_template_free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (setup() || write_file(config_path, data, size))
		return 0;
	/* A private copy sized exactly, so ASan flags a read one past the end. */
	char *text = malloc(size ? size : 1);
	if (!text)
		return 0;
	memcpy(text, data, size);

	inf_tok *t = NULL;
	k2_err err = {{0}};
	int rc = inf_tok_load(vocab_path, &t, &err);
	if (rc) {
		if (rc != -EINVAL && rc != -ENOMEM)
			fail("unexpected error code", err.msg);
		check_message(err.msg);
	} else {
		check_tokenizer(t, text, size);
		inf_tok_free(t);
	}
	check_chat(text, size);
	free(text);
	return 0;
}
