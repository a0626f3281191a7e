/* chat_load.c — finds a model's chat template (tokenizer_config.json's
 * "chat_template", string or named list, else chat_template.jinja beside it),
 * recognises it in the table of chat_known.c, and makes the template object.
 * Contract in chat.h. */
#include "chat_impl.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A tokenizer_config.json or chat_template.jinja larger than this is not one
 * (real ones are kilobytes; DeepSeek's with 818 added tokens is 30 kB). */
#define CHAT_FILE_MAX (64u << 20)

/* Reads path whole (NUL-terminated) after checking its size. */
static int read_small_file(const char *path, char **data, size_t *n, k2_err *err)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return k2_err_set(err, -errno, "%s: cannot open: %s", path, strerror(errno));
	if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > CHAT_FILE_MAX)
		return k2_err_set(err, -EFBIG, "%s: %lld bytes, more than the %u a chat template's "
					       "file may have", path, (long long)st.st_size,
				  CHAT_FILE_MAX);
	return k2_read_file(path, data, n, err);
}

static int template_new(const struct chat_known *k, const char *bos, inf_chat_template **out,
			k2_err *err)
{
	inf_chat_template *t = calloc(1, sizeof(*t));
	if (!t || !(t->bos = strdup(bos))) {
		free(t);
		return k2_err_set(err, -ENOMEM, "chat template %s: out of memory", k->name);
	}
	t->known = k;
	*out = t;
	return 0;
}

/* Recognises text[0..len) (read from path) and makes the object. */
static int recognise(const char *path, const char *text, size_t len, const char *bos,
		     inf_chat_template **out, k2_err *err)
{
	uint64_t fp = inf_chat_fingerprint(text, len);
	const struct chat_known *k = chat_known_by_text(fp, len);
	if (!k) {
		char names[256];
		chat_known_list(names, sizeof(names));
		return k2_err_set(err, -ENOTSUP,
				  "%s: chat template not recognised (XXH3-64 %016llx, %zu bytes); "
				  "known templates: %s; a modified template can be rendered as "
				  "one of them by name",
				  path, (unsigned long long)fp, len, names);
	}
	return template_new(k, bos ? bos : k->bos, out, err);
}

/* The "default" entry of the list form [{"name": ..., "template": ...}]. */
static int pick_default(const char *path, const json_t *list, const json_t **tpl, k2_err *err)
{
	size_t i;
	const json_t *e;
	json_array_foreach(list, i, e) {
		const json_t *name = json_object_get(e, "name");
		const json_t *text = json_object_get(e, "template");
		if (!json_is_object(e) || !json_is_string(name) || !json_is_string(text))
			return k2_err_set(err, -EINVAL, "%s: chat_template[%zu]: expected an object "
							"with string members name and template",
					  path, i);
		if (!strcmp(json_string_value(name), "default")) {
			*tpl = text;
			return 0;
		}
	}
	return k2_err_set(err, -ENOENT, "%s: chat_template is a list of %zu templates and none "
					"is named \"default\"", path, json_array_size(list));
}

/* The bos_token member: a string, or an AddedToken object's content. *bos
 * stays NULL when the member is absent or null. */
static int get_bos(const char *path, const json_t *root, const char **bos, k2_err *err)
{
	const json_t *v = json_object_get(root, "bos_token");
	*bos = NULL;
	if (json_is_object(v))
		v = json_object_get(v, "content");
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_string(v))
		return k2_err_set(err, -EINVAL, "%s: bos_token: expected a string or an AddedToken",
				  path);
	*bos = json_string_value(v);
	return 0;
}

/* The chat_template.jinja beside path (same folder). */
static int load_jinja_beside(const char *path, const char *bos, inf_chat_template **out,
			     k2_err *err)
{
	const char *slash = strrchr(path, '/');
	size_t dlen = slash ? (size_t)(slash - path + 1) : 0;
	char *jpath = malloc(dlen + sizeof("chat_template.jinja"));
	if (!jpath)
		return k2_err_set(err, -ENOMEM, "%s: out of memory", path);
	memcpy(jpath, path, dlen);
	strcpy(jpath + dlen, "chat_template.jinja");
	char *text = NULL;
	size_t len = 0;
	int rc;
	struct stat st;
	if (stat(jpath, &st) < 0 && errno == ENOENT)
		rc = k2_err_set(err, -ENOENT, "%s: no chat_template, and no %s beside it", path,
				jpath);
	else if (!(rc = read_small_file(jpath, &text, &len, err)))
		rc = recognise(jpath, text, len, bos, out, err);
	free(text);
	free(jpath);
	return rc;
}

int inf_chat_template_load(const char *path, inf_chat_template **out, k2_err *err)
{
	*out = NULL;
	char *data = NULL;
	size_t n = 0;
	int rc = read_small_file(path, &data, &n, err);
	if (rc)
		return rc;
	json_error_t je;
	json_t *root = json_loadb(data, n, JSON_REJECT_DUPLICATES, &je);
	free(data);
	if (!root)
		return k2_err_set(err, -EINVAL, "%s: invalid JSON at line %d column %d: %s", path,
				  je.line, je.column, je.text);
	if (!json_is_object(root)) {
		rc = k2_err_set(err, -EINVAL, "%s: expected a JSON object", path);
		goto out_root;
	}
	const char *bos;
	if ((rc = get_bos(path, root, &bos, err)))
		goto out_root;
	const json_t *tpl = json_object_get(root, "chat_template");
	if (!tpl || json_is_null(tpl)) {
		rc = load_jinja_beside(path, bos, out, err);
		goto out_root;
	}
	if (json_is_array(tpl) && (rc = pick_default(path, tpl, &tpl, err)))
		goto out_root;
	if (!json_is_string(tpl)) {
		rc = k2_err_set(err, -EINVAL, "%s: chat_template: expected a string or a list of "
					      "{name, template}", path);
		goto out_root;
	}
	rc = recognise(path, json_string_value(tpl), json_string_length(tpl), bos, out, err);
out_root:
	json_decref(root);
	return rc;
}

int inf_chat_template_by_name(const char *name, inf_chat_template **out, k2_err *err)
{
	*out = NULL;
	const struct chat_known *k = chat_known_by_name(name);
	if (!k) {
		char names[256];
		chat_known_list(names, sizeof(names));
		return k2_err_set(err, -ENOENT, "chat template \"%.80s\" is not one k2fs knows; "
						"known templates: %s", name ? name : "(null)", names);
	}
	return template_new(k, k->bos, out, err);
}

void inf_chat_template_free(inf_chat_template *t)
{
	if (!t)
		return;
	free(t->bos);
	free(t);
}

const char *inf_chat_template_name(const inf_chat_template *t)
{
	return t->known->name;
}

const char *inf_chat_template_end_of_turn(const inf_chat_template *t)
{
	return t->known->end_of_turn;
}
