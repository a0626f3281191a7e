/* test_chat.c — infer/chat*.c against @huggingface/jinja: every line of
 * fixtures/chat/rendered.jsonl (mkref.mjs rendered fixtures/chat/
 * conversations.json with every template of fixtures/chat/templates/) must
 * come out of inf_chat_render byte for byte, and the tokenizer of the
 * template's model must encode it to the line's ids. Also: every stored
 * template is recognised through each way a model ships it (a string, the
 * named list, chat_template.jinja), the pairs a template cannot render are
 * refused naming the role, and bad files (not JSON, no template, an unknown
 * template, wrong types, truncations) fail with the file named. */
#include "chat.h"
#include "tokenizer.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

static const char *tokenizers(void)
{
	const char *f = getenv("K2_TOKENIZERS");
	return f && *f ? f : "tests/fixtures/tokenizers";
}

static void chat_path(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/chat/%s", tu_fixtures(), name);
}

/* The known templates and the model family (tokenizer folder) of each. */
static const struct {
	const char *name, *family;
} tpls[] = {
	{"kimi-k2-fixture", "kimi-k2"},
	{"kimi-k2-instruct", "kimi-k2"},
	{"kimi-k2-thinking", "kimi-k2"},
	{"deepseek-v3", "deepseek-v3"},
};
#define N_TPLS (sizeof(tpls) / sizeof(tpls[0]))

static char *read_text(const char *path, size_t *n)
{
	char *d = NULL;
	k2_err err = {{0}};
	EXPECT(k2_read_file(path, &d, n, &err) == 0, "%s", err.msg);
	return d;
}

static json_t *load_json(const char *path)
{
	json_error_t je;
	json_t *j = json_load_file(path, 0, &je);
	EXPECT(j != NULL, "%s: %s", path, je.text);
	return j;
}

static char *tpl_text(const char *name, size_t *n)
{
	char p[1024], f[128];
	snprintf(f, sizeof(f), "templates/%s.jinja", name);
	chat_path(p, sizeof(p), f);
	return read_text(p, n);
}

/* The model's tokenizer_config.json with its chat template replaced. */
static json_t *config_with(const char *family, json_t *chat_template)
{
	char p[1024];
	snprintf(p, sizeof(p), "%s/%s/tokenizer_config.json", tokenizers(), family);
	json_t *c = load_json(p);
	if (chat_template)
		json_object_set_new(c, "chat_template", chat_template);
	else
		json_object_del(c, "chat_template");
	return c;
}

static const char *write_json(const char *name, json_t *j)
{
	const char *p = tu_tmp_path(name);
	EXPECT(json_dump_file(j, p, JSON_COMPACT) == 0, "cannot write %s", p);
	json_decref(j);
	return p;
}

static const char *write_text(const char *name, const char *s)
{
	const char *p = tu_tmp_path(name);
	tu_write_file(p, s, strlen(s));
	return p;
}

/* Loads template i the way its model ships it: the fixture and DeepSeek-V3
 * from their tokenizer_config.json, Kimi-K2-Instruct as a string member of
 * Kimi's tokenizer_config.json, Kimi-K2-Thinking as chat_template.jinja
 * beside a tokenizer_config.json without one (both in dir). */
static inf_chat_template *load_tpl(size_t i, const char *dir)
{
	char p[1024];
	k2_err err = {{0}};
	inf_chat_template *t = NULL;
	if (!strcmp(tpls[i].name, "kimi-k2-fixture") || !strcmp(tpls[i].name, "deepseek-v3")) {
		snprintf(p, sizeof(p), "%s/%s/tokenizer_config.json", tokenizers(), tpls[i].family);
	} else {
		size_t n;
		char *text = tpl_text(tpls[i].name, &n);
		json_t *c;
		if (!strcmp(tpls[i].name, "kimi-k2-thinking")) {
			c = config_with(tpls[i].family, NULL);
			snprintf(p, sizeof(p), "%s/chat_template.jinja", dir);
			tu_write_file(p, text, n);
		} else {
			c = config_with(tpls[i].family, json_stringn(text, n));
		}
		free(text);
		snprintf(p, sizeof(p), "%s/tokenizer_config.json", dir);
		EXPECT(json_dump_file(c, p, JSON_COMPACT) == 0, "cannot write %s", p);
		json_decref(c);
	}
	EXPECT(inf_chat_template_load(p, &t, &err) == 0, "%s: %s", tpls[i].name, err.msg);
	ck_assert_str_eq(inf_chat_template_name(t), tpls[i].name);
	return t;
}

/* ----------------------------------------------------- the reference lines */

static inf_tok *toks[2]; /* kimi-k2, deepseek-v3; NULL when not loadable */

static void toks_setup(void)
{
	char p[1024];
	k2_err err = {{0}};
	snprintf(p, sizeof(p), "%s/deepseek-v3/tokenizer.json", tokenizers());
	if (inf_tok_load(p, &toks[1], &err))
		fprintf(stderr, "cannot load %s: %s\n", p, err.msg);
	snprintf(p, sizeof(p), "%s/kimi-k2", tokenizers());
	if (inf_tok_open_dir(p, &toks[0], &err))
		fprintf(stderr, "cannot load %s: %s\n", p, err.msg);
}

static void toks_teardown(void)
{
	for (int i = 0; i < 2; i++) {
		inf_tok_free(toks[i]);
		toks[i] = NULL;
	}
}

static inf_chat_msg *conv_msgs(const json_t *conv, size_t *n)
{
	const json_t *ms = json_object_get(conv, "messages");
	EXPECT(json_is_array(ms), "conversation without messages");
	*n = json_array_size(ms);
	inf_chat_msg *m = calloc(*n + 1, sizeof(*m));
	for (size_t i = 0; i < *n; i++) {
		const json_t *e = json_array_get(ms, i);
		m[i].role = json_string_value(json_object_get(e, "role"));
		m[i].content = json_string_value(json_object_get(e, "content"));
		EXPECT(m[i].role && m[i].content, "message %zu: role and content expected", i);
	}
	return m;
}

static size_t tpl_index(const char *name)
{
	for (size_t i = 0; i < N_TPLS; i++)
		if (!strcmp(tpls[i].name, name))
			return i;
	ck_abort_msg("rendered.jsonl names an unknown template %s", name);
	return 0;
}

/* Prints where a and b first differ. */
static void expect_same(const char *got, size_t gl, const char *want, size_t wl,
			const char *what)
{
	size_t i = 0;
	while (i < gl && i < wl && got[i] == want[i])
		i++;
	EXPECT(gl == wl && i == gl, "%s: %zu bytes, expected %zu; first difference at %zu: "
				    "got \"%.60s\", expected \"%.60s\"",
	       what, gl, wl, i, got + i, want + i);
}

START_TEST(test_rendered_jsonl)
{
	char p[1024];
	chat_path(p, sizeof(p), "conversations.json");
	json_t *convs = load_json(p);
	size_t n_convs = json_array_size(convs);
	EXPECT(n_convs >= 20, "%s: %zu conversations", p, n_convs);

	inf_chat_template *t[N_TPLS];
	for (size_t i = 0; i < N_TPLS; i++)
		t[i] = load_tpl(i, tu_tmpdir);

	chat_path(p, sizeof(p), "rendered.jsonl");
	FILE *f = fopen(p, "r");
	EXPECT(f != NULL, "cannot open %s", p);
	char *line = NULL;
	size_t cap = 0;
	ssize_t ll;
	int lines = 0, id_lines[2] = {0, 0};
	unsigned char seen[N_TPLS][64][2] = {{{0}}};
	while ((ll = getline(&line, &cap, f)) > 0) {
		json_error_t je;
		json_t *o = json_loadb(line, (size_t)ll, 0, &je);
		EXPECT(o != NULL, "%s line %d: %s", p, lines + 1, je.text);
		const char *name = json_string_value(json_object_get(o, "template"));
		json_int_t ci = json_integer_value(json_object_get(o, "conversation"));
		bool agp = json_is_true(json_object_get(o, "add_generation_prompt"));
		const json_t *jt = json_object_get(o, "text"), *jids = json_object_get(o, "ids");
		EXPECT(name && json_is_string(jt) && json_is_array(jids) && ci >= 0 &&
			       (size_t)ci < n_convs && ci < 64,
		       "%s line %d: bad fields", p, lines + 1);
		size_t ti = tpl_index(name);
		seen[ti][ci][agp]++;

		size_t nm;
		inf_chat_msg *msgs = conv_msgs(json_array_get(convs, (size_t)ci), &nm);
		char *out;
		size_t len;
		k2_err err = {{0}};
		char what[160];
		snprintf(what, sizeof(what), "%s, conversation %d, add_generation_prompt %d", name,
			 (int)ci, agp);
		EXPECT(inf_chat_render(t[ti], msgs, nm, agp, &out, &len, &err) == 0, "%s: %s",
		       what, err.msg);
		EXPECT(out[len] == 0, "%s: not NUL-terminated", what);
		expect_same(out, len, json_string_value(jt), json_string_length(jt), what);

		int fam = !strcmp(tpls[ti].family, "deepseek-v3");
		if (toks[fam]) {
			int32_t *ids;
			size_t n_ids;
			EXPECT(inf_tok_encode(toks[fam], out, len, &ids, &n_ids, &err) == 0,
			       "%s: encode: %s", what, err.msg);
			size_t nw = json_array_size(jids), k = 0;
			while (k < n_ids && k < nw &&
			       ids[k] == (int32_t)json_integer_value(json_array_get(jids, k)))
				k++;
			EXPECT(n_ids == nw && k == nw, "%s: %zu ids, expected %zu; first difference "
						       "at id %zu",
			       what, n_ids, nw, k);
			free(ids);
			id_lines[fam]++;
		}
		free(out);
		free(msgs);
		json_decref(o);
		lines++;
	}
	free(line);
	fclose(f);

	/* every pair a template renders is in the file once per add_generation_prompt */
	int expected = 0;
	for (size_t ti = 0; ti < N_TPLS; ti++)
		for (size_t ci = 0; ci < n_convs; ci++) {
			const json_t *u = json_object_get(json_array_get(convs, ci), "unsupported");
			bool refused = json_object_get(u, tpls[ti].name) != NULL;
			for (int a = 0; a < 2; a++)
				EXPECT(seen[ti][ci][a] == !refused, "%s, conversation %zu, "
								    "add_generation_prompt %d: %d lines",
				       tpls[ti].name, ci, a, seen[ti][ci][a]);
			expected += refused ? 0 : 2;
		}
	ck_assert_int_eq(lines, expected);
	printf("chat: %d rendered lines equal @huggingface/jinja's; ids checked for %d "
	       "(DeepSeek-V3 %d, Kimi-K2 %d)\n",
	       lines, id_lines[0] + id_lines[1], id_lines[1], id_lines[0]);
	EXPECT(toks[1] != NULL, "the DeepSeek-V3 tokenizer did not load");
	EXPECT(toks[0] != NULL, "the Kimi-K2 tokenizer did not load");
	for (size_t i = 0; i < N_TPLS; i++)
		inf_chat_template_free(t[i]);
	json_decref(convs);
}
END_TEST

/* The conversations a template cannot render in the plain subset are
 * refused, naming the role. */
START_TEST(test_unsupported_refused)
{
	char p[1024];
	chat_path(p, sizeof(p), "conversations.json");
	json_t *convs = load_json(p);
	int refused = 0;
	for (size_t ti = 0; ti < N_TPLS; ti++) {
		inf_chat_template *t = load_tpl(ti, tu_tmpdir);
		for (size_t ci = 0; ci < json_array_size(convs); ci++) {
			const json_t *conv = json_array_get(convs, ci);
			const char *role = json_string_value(
				json_object_get(json_object_get(conv, "unsupported"), tpls[ti].name));
			if (!role)
				continue;
			size_t nm;
			inf_chat_msg *msgs = conv_msgs(conv, &nm);
			char *out = (char *)1;
			size_t len = 1;
			k2_err err = {{0}};
			ck_assert_int_eq(inf_chat_render(t, msgs, nm, true, &out, &len, &err),
					 -EINVAL);
			ck_assert_ptr_null(out);
			char quoted[64];
			snprintf(quoted, sizeof(quoted), "\"%s\"", role);
			EXPECT(strstr(err.msg, quoted) && strstr(err.msg, tpls[ti].name),
			       "message does not name the role and template: %s", err.msg);
			free(msgs);
			refused++;
		}
		inf_chat_template_free(t);
	}
	ck_assert_int_ge(refused, 3);
	json_decref(convs);
}
END_TEST

/* ----------------------------------------------------------- recognition */

/* Every stored template file is recognised under its own name, and the
 * accessors agree with the table. */
START_TEST(test_known_files)
{
	size_t i = 0;
	for (; inf_chat_known_name(i); i++)
		ck_assert_str_eq(inf_chat_known_name(i), tpls[i].name);
	ck_assert_uint_eq(i, N_TPLS);
	for (i = 0; i < N_TPLS; i++) {
		size_t n;
		char *text = tpl_text(tpls[i].name, &n);
		json_t *c = json_object();
		json_object_set_new(c, "chat_template", json_stringn(text, n));
		const char *p = write_json("tokenizer_config.json", c);
		inf_chat_template *t = NULL;
		k2_err err = {{0}};
		EXPECT(inf_chat_template_load(p, &t, &err) == 0, "%s: %s", tpls[i].name, err.msg);
		ck_assert_str_eq(inf_chat_template_name(t), tpls[i].name);
		const char *eot = inf_chat_template_end_of_turn(t);
		if (!strcmp(tpls[i].family, "kimi-k2"))
			ck_assert_str_eq(eot, "<|im_end|>");
		else
			ck_assert_str_eq(eot, "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81"
					      "sentence\xef\xbd\x9c>");
		inf_chat_template_free(t);

		/* by name: the same renderer */
		EXPECT(inf_chat_template_by_name(tpls[i].name, &t, &err) == 0, "%s", err.msg);
		ck_assert_str_eq(inf_chat_template_name(t), tpls[i].name);
		inf_chat_template_free(t);

		/* one byte more is another template */
		char *more = malloc(n + 2);
		memcpy(more, text, n);
		memcpy(more + n, "\n", 2);
		ck_assert(inf_chat_fingerprint(more, n + 1) != inf_chat_fingerprint(text, n));
		c = json_object();
		json_object_set_new(c, "chat_template", json_stringn(more, n + 1));
		p = write_json("tokenizer_config.json", c);
		ck_assert_int_eq(inf_chat_template_load(p, &t, &err), -ENOTSUP);
		ck_assert_ptr_null(t);
		free(more);
		free(text);
	}
	inf_chat_template_free(NULL);
}
END_TEST

/* The list form takes "default"; the config's bos_token is what DeepSeek
 * writes; a forced name renders a modified template. */
START_TEST(test_list_form_and_bos)
{
	size_t n;
	char *ds = tpl_text("deepseek-v3", &n);
	json_t *list = json_array();
	json_array_append_new(list, json_pack("{s:s, s:s}", "name", "tool_use", "template",
					      "{{ tools }}"));
	json_array_append_new(list, json_pack("{s:s, s:s%}", "name", "default", "template", ds,
					      n));
	json_t *c = json_object();
	json_object_set_new(c, "chat_template", list);
	json_object_set_new(c, "bos_token", json_pack("{s:s}", "content", "<B>"));
	const char *p = write_json("tokenizer_config.json", c);
	inf_chat_template *t = NULL;
	k2_err err = {{0}};
	EXPECT(inf_chat_template_load(p, &t, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(inf_chat_template_name(t), "deepseek-v3");
	inf_chat_msg m[] = {{"system", "S"}, {"user", "U"}};
	char *out;
	size_t len;
	ck_assert_int_eq(inf_chat_render(t, m, 2, true, &out, &len, &err), 0);
	ck_assert_str_eq(out, "<B>S<\xef\xbd\x9cUser\xef\xbd\x9c>U<\xef\xbd\x9c"
			      "Assistant\xef\xbd\x9c>");
	ck_assert_uint_eq(len, strlen(out));
	free(out);
	inf_chat_template_free(t);

	/* no messages at all */
	ck_assert_int_eq(inf_chat_template_by_name("kimi-k2-fixture", &t, &err), 0);
	ck_assert_int_eq(inf_chat_render(t, NULL, 0, false, &out, &len, &err), 0);
	ck_assert_str_eq(out, "");
	ck_assert_uint_eq(len, 0);
	free(out);
	inf_chat_template_free(t);
	free(ds);
}
END_TEST

/* --------------------------------------------------------------- errors */

static void expect_load_error(const char *path, int code, const char *needle)
{
	inf_chat_template *t = (inf_chat_template *)1;
	k2_err err = {{0}};
	int rc = inf_chat_template_load(path, &t, &err);
	EXPECT(rc == code, "%s: returned %d (%s), expected %d", path, rc, err.msg, code);
	ck_assert_ptr_null(t);
	EXPECT(strstr(err.msg, path) != NULL, "message does not name %s: %s", path, err.msg);
	EXPECT(!needle || strstr(err.msg, needle), "message lacks \"%s\": %s", needle, err.msg);
}

START_TEST(test_load_errors)
{
	expect_load_error(tu_tmp_path("absent.json"), -ENOENT, NULL);
	expect_load_error(write_text("a.json", "{\"chat_template\": \"x\""), -EINVAL, "JSON");
	expect_load_error(write_text("b.json", "[1, 2]"), -EINVAL, "object");
	expect_load_error(write_text("c.json", "{\"chat_template\": 7}"), -EINVAL, "chat_template");
	expect_load_error(write_text("d.json", "{\"chat_template\": \"a\", \"chat_template\": "
					       "\"b\"}"),
			  -EINVAL, NULL);
	expect_load_error(write_text("e.json", "{\"chat_template\": [{\"name\": \"rag\", "
					       "\"template\": \"x\"}]}"),
			  -ENOENT, "default");
	expect_load_error(write_text("f.json", "{\"chat_template\": [{\"name\": \"default\"}]}"),
			  -EINVAL, "chat_template[0]");
	expect_load_error(write_text("g.json", "{\"chat_template\": \"x\", \"bos_token\": 1}"),
			  -EINVAL, "bos_token");
	expect_load_error(write_text("h.json", "{\"chat_template\": \"a\\u0000b\"}"), -EINVAL,
			  NULL);

	/* no chat_template and no chat_template.jinja beside */
	const char *p = write_json("tokenizer_config.json", config_with("kimi-k2", NULL));
	expect_load_error(p, -ENOENT, "chat_template");

	/* unknown template: the fingerprint and the known names in the message */
	const char *tpl = "{% for m in messages %}{{ m.content }}{% endfor %}";
	json_t *c = json_object();
	json_object_set_new(c, "chat_template", json_string(tpl));
	p = write_json("tokenizer_config.json", c);
	char fp[32];
	snprintf(fp, sizeof(fp), "%016llx",
		 (unsigned long long)inf_chat_fingerprint(tpl, strlen(tpl)));
	expect_load_error(p, -ENOTSUP, fp);
	for (size_t i = 0; i < N_TPLS; i++)
		expect_load_error(p, -ENOTSUP, tpls[i].name);

	/* an unknown chat_template.jinja is named itself */
	p = write_json("tokenizer_config.json", config_with("kimi-k2", NULL));
	const char *jp = write_text("chat_template.jinja", tpl);
	inf_chat_template *t = NULL;
	k2_err err = {{0}};
	ck_assert_int_eq(inf_chat_template_load(p, &t, &err), -ENOTSUP);
	EXPECT(strstr(err.msg, jp), "message does not name %s: %s", jp, err.msg);

	/* forced names */
	ck_assert_int_eq(inf_chat_template_by_name("llama-3", &t, &err), -ENOENT);
	ck_assert_ptr_null(t);
	EXPECT(strstr(err.msg, "llama-3") && strstr(err.msg, "kimi-k2-instruct"), "%s", err.msg);
	ck_assert_int_eq(inf_chat_template_by_name(NULL, &t, &err), -ENOENT);
}
END_TEST

/* Every truncation of a real tokenizer_config.json fails cleanly, naming
 * the file (or, cut after the template's end, still loads). */
START_TEST(test_truncated_configs)
{
	char src[1024];
	snprintf(src, sizeof(src), "%s/deepseek-v3/tokenizer_config.json", tokenizers());
	size_t n;
	char *d = read_text(src, &n);
	const char *p = tu_tmp_path("tokenizer_config.json");
	int loaded = 0;
	for (size_t cut = 0; cut < n; cut += 1 + cut / 8) {
		tu_write_file(p, d, cut);
		inf_chat_template *t = NULL;
		k2_err err = {{0}};
		int rc = inf_chat_template_load(p, &t, &err);
		if (rc == 0) {
			loaded++;
			inf_chat_template_free(t);
		} else {
			EXPECT(strstr(err.msg, p), "cut %zu: %s", cut, err.msg);
		}
	}
	ck_assert_int_eq(loaded, 0); /* the file ends with "}": every cut is bad JSON */
	free(d);
}
END_TEST

START_TEST(test_render_errors)
{
	inf_chat_template *t;
	k2_err err = {{0}};
	char *out;
	size_t len;
	for (size_t i = 0; i < N_TPLS; i++) {
		ck_assert_int_eq(inf_chat_template_by_name(tpls[i].name, &t, &err), 0);
		inf_chat_msg bad_role[] = {{"user", "hi"}, {"developer", "be brief"}};
		ck_assert_int_eq(inf_chat_render(t, bad_role, 2, true, &out, &len, &err), -EINVAL);
		ck_assert_ptr_null(out);
		EXPECT(strstr(err.msg, "\"developer\"") && strstr(err.msg, "message 1") &&
			       strstr(err.msg, tpls[i].name),
		       "%s", err.msg);
		inf_chat_msg upper[] = {{"User", "hi"}};
		ck_assert_int_eq(inf_chat_render(t, upper, 1, true, &out, &len, &err), -EINVAL);
		inf_chat_msg no_role[] = {{NULL, "hi"}};
		ck_assert_int_eq(inf_chat_render(t, no_role, 1, true, &out, &len, &err), -EINVAL);
		inf_chat_msg no_content[] = {{"system", "s"}, {"user", NULL}};
		ck_assert_int_eq(inf_chat_render(t, no_content, 2, true, &out, &len, &err),
				 -EINVAL);
		EXPECT(strstr(err.msg, "message 1"), "%s", err.msg);
		ck_assert_int_eq(inf_chat_render(t, NULL, 3, true, &out, &len, &err), -EINVAL);
		inf_chat_template_free(t);
	}
	/* Kimi-K2-Thinking's tool turns need a tool_call_id */
	ck_assert_int_eq(inf_chat_template_by_name("kimi-k2-thinking", &t, &err), 0);
	inf_chat_msg tool[] = {{"user", "q"}, {"tool", "r"}};
	ck_assert_int_eq(inf_chat_render(t, tool, 2, false, &out, &len, &err), -EINVAL);
	EXPECT(strstr(err.msg, "\"tool\"") && strstr(err.msg, "tool_call_id"), "%s", err.msg);
	inf_chat_template_free(t);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("chat");
	TCase *tc = tu_tcase(s, "reference", 120);
	tcase_add_unchecked_fixture(tc, toks_setup, toks_teardown);
	tcase_add_checked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	TU_ADD_TESTS(tc, test_rendered_jsonl, test_unsupported_refused);

	tc = tu_tcase(s, "files", 30);
	tcase_add_checked_fixture(tc, tu_tmpdir_setup, tu_tmpdir_teardown);
	TU_ADD_TESTS(tc, test_known_files, test_list_form_and_bos, test_load_errors,
		     test_truncated_configs, test_render_errors);
	return s;
}

int main(void)
{
	return tu_run_suite(suite());
}
