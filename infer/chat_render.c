/* chat_render.c — inf_chat_render: checks every message against what the
 * template's family renders, then lets the family write the text; and the
 * output buffer the families append to. Contract in chat.h. */
#include "chat_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int chat_buf_add(struct chat_buf *b, const char *s, size_t len)
{
	if (len > SIZE_MAX - 1 - b->len)
		return -ENOMEM;
	size_t need = b->len + len + 1;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < need)
			cap = cap > SIZE_MAX / 2 ? need : cap * 2;
		char *d = realloc(b->data, cap);
		if (!d)
			return -ENOMEM;
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, len);
	b->len += len;
	b->data[b->len] = 0;
	return 0;
}

int chat_buf_str(struct chat_buf *b, const char *s)
{
	return chat_buf_add(b, s, strlen(s));
}

static bool is_role(const char *r)
{
	return !strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant") ||
	       !strcmp(r, "tool");
}

/* 0 when the family of t renders message i, else -EINVAL with the reason. */
static int check_msg(const inf_chat_template *t, const inf_chat_msg *m, size_t i, k2_err *err)
{
	const char *name = t->known->name;
	if (!m->role)
		return k2_err_set(err, -EINVAL, "chat template %s: message %zu has no role", name,
				  i);
	if (!is_role(m->role))
		return k2_err_set(err, -EINVAL, "chat template %s: message %zu: role \"%.40s\" is "
						"not one it renders (system, user, assistant, tool)",
				  name, i, m->role);
	if (t->known->family == CHAT_FAMILY_KIMI && !t->known->kimi.tool_role &&
	    !strcmp(m->role, "tool"))
		return k2_err_set(err, -EINVAL, "chat template %s: message %zu: role \"tool\" is "
						"not rendered (its tool turns need a tool_call_id, "
						"which a plain message does not carry)",
				  name, i);
	if (!m->content)
		return k2_err_set(err, -EINVAL, "chat template %s: message %zu (%s) has no content",
				  name, i, m->role);
	return 0;
}

int inf_chat_render(const inf_chat_template *t, const inf_chat_msg *msgs, size_t n,
		    bool add_generation_prompt, char **out, size_t *len, k2_err *err)
{
	*out = NULL;
	*len = 0;
	if (n && !msgs)
		return k2_err_set(err, -EINVAL, "chat template %s: %zu messages at NULL",
				  t->known->name, n);
	for (size_t i = 0; i < n; i++) {
		int rc = check_msg(t, &msgs[i], i, err);
		if (rc)
			return rc;
	}
	struct chat_buf b = {0};
	int rc = chat_buf_add(&b, "", 0); /* an empty rendering is "" too */
	if (!rc) {
		switch (t->known->family) {
		case CHAT_FAMILY_KIMI:
			rc = chat_render_kimi(&t->known->kimi, msgs, n, add_generation_prompt, &b);
			break;
		case CHAT_FAMILY_DEEPSEEK_V3:
			rc = chat_render_deepseek_v3(t->bos, msgs, n, add_generation_prompt, &b);
			break;
		}
	}
	if (rc) {
		free(b.data);
		return k2_err_set(err, rc, "chat template %s: out of memory rendering %zu messages",
				  t->known->name, n);
	}
	*out = b.data;
	*len = b.len;
	return 0;
}
