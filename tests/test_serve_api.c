/* test_serve_api.c — serve/api_*.c, the OpenAI layer of k2serve: request
 * bodies of both endpoints (every field read back; every validation error
 * with its status, type, param, code and wording; text that is not UTF-8 as
 * raw bytes or as \u escapes, named by its parameter), the error object, the
 * completion objects and the server-sent events parsed back with jansson, the
 * stop-sequence matcher (pieces cut anywhere, overlapping prefixes, several
 * stop strings, checked against a brute-force reference), and the Prometheus
 * text exposition line by line. */
#define _GNU_SOURCE /* memmem */
#include "api.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stop_ref.h"
#include "test_util.h"

#define CHAT API_ENDPOINT_CHAT
#define COMPL API_ENDPOINT_COMPLETIONS

static int parse_n(enum api_endpoint ep, const char *body, size_t n, struct api_request *r,
		   struct api_error *e)
{
	memset(e, 0, sizeof(*e));
	return api_request_parse(ep, body, n, NULL, 0, r, e);
}

static int parse(enum api_endpoint ep, const char *body, struct api_request *r,
		 struct api_error *e)
{
	return parse_n(ep, body, strlen(body), r, e);
}

/* Parses JSON we produced: strict (no NUL escapes needed here). */
static json_t *load(const char *s, size_t n)
{
	json_error_t je;
	json_t *j = json_loadb(s, n, 0, &je);
	EXPECT(j != NULL, "not JSON (%s): %.*s", je.text, (int)n, s);
	return j;
}

static const char *jstr(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	EXPECT(json_is_string(v), "'%s' is not a string", key);
	return json_string_value(v);
}

static long long jint(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	EXPECT(json_is_integer(v), "'%s' is not an integer", key);
	return json_integer_value(v);
}

/* ---------------------------------------------------------------- valid requests */

START_TEST(test_chat_full)
{
	static const char body[] =
		"{\"model\":\"kimi-k2\",\"messages\":["
		"{\"role\":\"system\",\"content\":\"Be brief.\"},"
		"{\"role\":\"developer\",\"content\":\"dev\"},"
		"{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hello, \"},"
		"{\"type\":\"text\",\"text\":\"w\\u00f6rld \\ud83d\\ude00\"}],\"name\":\"bob\"},"
		"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
		"{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"c1\"}],"
		"\"stream\":true,\"stream_options\":{\"include_usage\":true},"
		"\"max_completion_tokens\":128,\"temperature\":0,\"top_p\":0.5,\"seed\":-1,"
		"\"stop\":[\"\\n\\n\",\"END\"],\"n\":1,\"user\":\"u-1\",\"presence_penalty\":0,"
		"\"frequency_penalty\":0.0,\"logprobs\":false,\"tools\":[],\"tool_choice\":\"auto\","
		"\"response_format\":{\"type\":\"text\"},\"logit_bias\":{},\"some_future_field\":[1,{}],"
		"\"best_of\":7,\"echo\":true}";
	struct api_request r;
	struct api_error e;
	ck_assert_int_eq(parse(CHAT, body, &r, &e), 0);
	ck_assert_int_eq(r.endpoint, CHAT);
	ck_assert_str_eq(r.model, "kimi-k2");
	ck_assert_int_eq(r.model_index, -1);
	ck_assert_uint_eq(r.n_messages, 5);
	ck_assert_int_eq(r.messages[0].role, API_ROLE_SYSTEM);
	ck_assert_str_eq(r.messages[0].content, "Be brief.");
	ck_assert_int_eq(r.messages[1].role, API_ROLE_SYSTEM); /* developer */
	ck_assert_int_eq(r.messages[2].role, API_ROLE_USER);
	ck_assert_str_eq(r.messages[2].content, "Hello, w\xc3\xb6rld \xf0\x9f\x98\x80");
	ck_assert_uint_eq(r.messages[2].content_len, strlen("Hello, w\xc3\xb6rld \xf0\x9f\x98\x80"));
	ck_assert_int_eq(r.messages[3].role, API_ROLE_ASSISTANT);
	ck_assert_str_eq(r.messages[3].content, "");
	ck_assert_int_eq(r.messages[4].role, API_ROLE_TOOL);
	ck_assert_str_eq(r.messages[4].content, "42");
	ck_assert_ptr_null(r.prompt);
	ck_assert(r.stream && r.include_usage);
	ck_assert_uint_eq(r.max_tokens, 128);
	ck_assert(r.temperature == 0 && r.top_p == 0.5);
	ck_assert(r.has_seed);
	ck_assert(r.seed == UINT64_MAX);
	ck_assert_uint_eq(r.n_stop, 2);
	ck_assert_str_eq(r.stop[0], "\n\n");
	ck_assert_uint_eq(r.stop_len[0], 2);
	ck_assert_str_eq(r.stop[1], "END");
	api_request_free(&r);
	ck_assert_ptr_null(r.model);
	api_request_free(&r); /* twice is harmless: it was zeroed */
	api_request_free(NULL);
}
END_TEST

START_TEST(test_chat_defaults)
{
	struct api_request r;
	struct api_error e;
	ck_assert_int_eq(parse(CHAT,
			       "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\"}],"
			       "\"stream\":null,\"temperature\":null,\"stop\":null,\"seed\":null,"
			       "\"max_tokens\":null,\"stream_options\":null}",
			       &r, &e),
			 0);
	ck_assert(!r.stream && !r.include_usage && !r.has_seed);
	ck_assert_uint_eq(r.max_tokens, 0);
	ck_assert(r.temperature == 1 && r.top_p == 1);
	ck_assert_uint_eq(r.n_stop, 0);
	ck_assert_str_eq(r.messages[0].content, "");
	api_request_free(&r);

	/* Integer temperature, the largest seed, max_tokens equal under both names,
	 * an empty stop array, stream_options without include_usage. */
	ck_assert_int_eq(parse(CHAT,
			       "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
			       "\"temperature\":2,\"seed\":9223372036854775807,\"max_tokens\":5,"
			       "\"max_completion_tokens\":5,\"stop\":[],\"stream\":true,"
			       "\"stream_options\":{}}",
			       &r, &e),
			 0);
	ck_assert(r.temperature == 2);
	ck_assert(r.seed == 9223372036854775807ull);
	ck_assert_uint_eq(r.max_tokens, 5);
	ck_assert_uint_eq(r.n_stop, 0);
	ck_assert(r.stream && !r.include_usage);
	api_request_free(&r);

	ck_assert_int_eq(parse(CHAT,
			       "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
			       "\"seed\":-9223372036854775808}",
			       &r, &e),
			 0);
	ck_assert(r.seed == 0x8000000000000000ull);
	api_request_free(&r);
}
END_TEST

START_TEST(test_completions_valid)
{
	struct api_request r;
	struct api_error e;
	ck_assert_int_eq(parse(COMPL, "{\"model\":\"m\",\"prompt\":\"Once upon\"}", &r, &e), 0);
	ck_assert_int_eq(r.endpoint, COMPL);
	ck_assert_str_eq(r.prompt, "Once upon");
	ck_assert_uint_eq(r.prompt_len, 9);
	ck_assert_ptr_null(r.messages);
	ck_assert_uint_eq(r.n_messages, 0);
	ck_assert_uint_eq(r.max_tokens, 16); /* OpenAI's default for completions */
	api_request_free(&r);

	ck_assert_int_eq(parse(COMPL,
			       "{\"model\":\"m\",\"prompt\":[\"one\"],\"stop\":\"\\n\",\"max_tokens\":3,"
			       "\"echo\":false,\"suffix\":\"\",\"best_of\":1,\"logprobs\":null,"
			       "\"messages\":5,\"tools\":[{\"x\":1}]}",
			       &r, &e),
			 0);
	ck_assert_str_eq(r.prompt, "one");
	ck_assert_uint_eq(r.n_stop, 1);
	ck_assert_str_eq(r.stop[0], "\n");
	ck_assert_uint_eq(r.max_tokens, 3);
	api_request_free(&r);

	ck_assert_int_eq(parse(COMPL, "{\"model\":\"m\",\"prompt\":\"\"}", &r, &e), 0);
	ck_assert_str_eq(r.prompt, "");
	api_request_free(&r);
}
END_TEST

START_TEST(test_model_list)
{
	static const struct api_model_info models[] = {
		{.id = "deepseek-v3", .created = 1, .max_context = 4096},
		{.id = "kimi-k2", .created = 2},
	};
	struct api_request r;
	struct api_error e = {0};
	const char *ok = "{\"model\":\"kimi-k2\",\"prompt\":\"x\",\"max_tokens\":100000}";
	ck_assert_int_eq(api_request_parse(COMPL, ok, strlen(ok), models, 2, &r, &e), 0);
	ck_assert_int_eq(r.model_index, 1);
	api_request_free(&r);

	const char *big = "{\"model\":\"deepseek-v3\",\"prompt\":\"x\",\"max_tokens\":4097}";
	ck_assert_int_eq(api_request_parse(COMPL, big, strlen(big), models, 2, &r, &e), -EINVAL);
	ck_assert_str_eq(e.param, "max_tokens");
	ck_assert_ptr_nonnull(strstr(e.message, "'max_tokens' is too large: 4097"));
	const char *fits = "{\"model\":\"deepseek-v3\",\"prompt\":\"x\",\"max_tokens\":4096}";
	ck_assert_int_eq(api_request_parse(COMPL, fits, strlen(fits), models, 2, &r, &e), 0);
	ck_assert_int_eq(r.model_index, 0);
	api_request_free(&r);

	const char *unknown = "{\"model\":\"gpt-9\",\"prompt\":\"x\"}";
	ck_assert_int_eq(api_request_parse(COMPL, unknown, strlen(unknown), models, 2, &r, &e),
			 -ENOENT);
	ck_assert_int_eq(e.status, 404);
	ck_assert_str_eq(e.type, "invalid_request_error");
	ck_assert_str_eq(e.code, "model_not_found");
	ck_assert_str_eq(e.param, "model");
	ck_assert_str_eq(e.message,
			 "The model `gpt-9` does not exist or you do not have access to it.");
	ck_assert_ptr_null(r.model);
	ck_assert_int_eq(r.model_index, -1);

	/* A malformed field is reported before the unknown model. */
	const char *both = "{\"model\":\"gpt-9\",\"prompt\":\"x\",\"temperature\":9}";
	ck_assert_int_eq(api_request_parse(COMPL, both, strlen(both), models, 2, &r, &e), -EINVAL);
	ck_assert_str_eq(e.param, "temperature");
}
END_TEST

/* ---------------------------------------------------------------- errors */

#define M "\"model\":\"m\","
#define MSG(x) M "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]," x
#define NULLP ((const char *)0)

static const struct bad_case {
	enum api_endpoint ep;
	const char *body;
	int status;
	const char *param; /* NULL: param null */
	const char *code;
	const char *msg;   /* a substring of the message */
} bad_cases[] = {
	/* model */
	{CHAT, "{}", 400, "model", "missing_required_parameter", "you must provide a model parameter"},
	{CHAT, "{\"model\":null,\"messages\":[]}", 400, "model", "missing_required_parameter", "model"},
	{CHAT, "{\"model\":5}", 400, "model", "invalid_type", "'model' must be a string"},
	{CHAT, "{\"model\":\"\"}", 400, "model", "invalid_value", "'model' must not be empty"},
	/* messages */
	{CHAT, "{" M "\"x\":1}", 400, "messages", "missing_required_parameter", "'messages' is required"},
	{CHAT, "{" M "\"messages\":{}}", 400, "messages", "invalid_type", "'messages' must be an array"},
	{CHAT, "{" M "\"messages\":[]}", 400, "messages", "invalid_value", "at least one message"},
	{CHAT, "{" M "\"messages\":[1]}", 400, "messages[0]", "invalid_type", "'messages[0]' must be an object"},
	{CHAT, "{" M "\"messages\":[{\"content\":\"x\"}]}", 400, "messages[0].role",
	 "missing_required_parameter", "'messages[0].role' is required"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"},"
	 "{\"role\":\"robot\",\"content\":\"c\"}]}", 400, "messages[2].role", "invalid_value",
	 "'messages[2].role' must be one of 'system', 'developer', 'user', 'assistant', 'tool'"},
	{CHAT, "{" M "\"messages\":[{\"role\":7,\"content\":\"x\"}]}", 400, "messages[0].role",
	 "invalid_value", "must be one of"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"function\",\"content\":\"x\"}]}", 400,
	 "messages[0].role", "invalid_value", "must be one of"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\\u0000\",\"content\":\"x\"}]}", 400,
	 "messages[0].role", "invalid_value", "must be one of"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content",
	 "missing_required_parameter", "'messages[0].content' is required for a user message"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"system\",\"content\":null}]}", 400,
	 "messages[0].content", "missing_required_parameter", "required for a system message"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content",
	 "invalid_type", "'messages[0].content' must be a string or an array of text parts"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[]}]}", 400, "messages[0].content",
	 "invalid_value", "'messages[0].content' must not be an empty array"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
	 "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}}]}]}", 400, "messages[0].content[1].type",
	 "unsupported_value", "'messages[0].content[1].type' must be 'text'"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}", 400,
	 "messages[0].content[0]", "invalid_type", "'messages[0].content[0]' must be an object"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}", 400,
	 "messages[0].content[0].text", "invalid_type", "'messages[0].content[0].text' must be a string"},
	/* prompt */
	{COMPL, "{" M "\"x\":1}", 400, "prompt", "missing_required_parameter", "'prompt' is required"},
	{COMPL, "{" M "\"prompt\":[1,2,3]}", 400, "prompt", "invalid_type", "token ids are not supported"},
	{COMPL, "{" M "\"prompt\":[\"a\",\"b\"]}", 400, "prompt", "unsupported_value",
	 "'prompt' holds 2 prompts; this server takes one per request"},
	{COMPL, "{" M "\"prompt\":[]}", 400, "prompt", "invalid_type",
	 "'prompt' must be a string or an array of one string"},
	{COMPL, "{" M "\"prompt\":5}", 400, "prompt", "invalid_type", "must be a string or an array"},
	{COMPL, "{" M "\"prompt\":[[1]]}", 400, "prompt", "invalid_type", "must be a string or an array"},
	/* stream */
	{CHAT, "{" MSG("\"stream\":\"yes\"}"), 400, "stream", "invalid_type", "'stream' must be a boolean"},
	{CHAT, "{" MSG("\"stream_options\":{\"include_usage\":true}}"), 400, "stream_options",
	 "invalid_value", "'stream_options' is only allowed when 'stream' is true"},
	{CHAT, "{" MSG("\"stream\":false,\"stream_options\":{}}"), 400, "stream_options",
	 "invalid_value", "only allowed when 'stream' is true"},
	{CHAT, "{" MSG("\"stream\":true,\"stream_options\":1}"), 400, "stream_options",
	 "invalid_type", "'stream_options' must be an object"},
	{COMPL, "{" M "\"prompt\":\"p\",\"stream\":true,\"stream_options\":{\"include_usage\":1}}", 400,
	 "stream_options.include_usage", "invalid_type",
	 "'stream_options.include_usage' must be a boolean"},
	/* max_tokens */
	{CHAT, "{" MSG("\"max_tokens\":0}"), 400, "max_tokens", "invalid_value",
	 "'max_tokens' must be an integer of at least 1"},
	{CHAT, "{" MSG("\"max_tokens\":1.5}"), 400, "max_tokens", "invalid_type", "must be an integer"},
	{CHAT, "{" MSG("\"max_tokens\":\"10\"}"), 400, "max_tokens", "invalid_type", "must be an integer"},
	{CHAT, "{" MSG("\"max_tokens\":4294967296}"), 400, "max_tokens", "invalid_value",
	 "'max_tokens' is too large: 4294967296"},
	{COMPL, "{" M "\"prompt\":\"p\",\"max_completion_tokens\":-3}", 400, "max_completion_tokens",
	 "invalid_value", "'max_completion_tokens' must be an integer of at least 1"},
	{CHAT, "{" MSG("\"max_tokens\":5,\"max_completion_tokens\":6}"), 400, "max_tokens",
	 "invalid_value", "'max_tokens' (5) and 'max_completion_tokens' (6) name the same limit"},
	/* sampling */
	{CHAT, "{" MSG("\"temperature\":2.5}"), 400, "temperature", "invalid_value",
	 "'temperature' must be a number between 0 and 2"},
	{CHAT, "{" MSG("\"temperature\":-0.1}"), 400, "temperature", "invalid_value",
	 "'temperature' must be a number between 0 and 2"},
	{CHAT, "{" MSG("\"temperature\":\"1\"}"), 400, "temperature", "invalid_type",
	 "'temperature' must be a number between 0 and 2"},
	{CHAT, "{" MSG("\"top_p\":0}"), 400, "top_p", "invalid_value",
	 "'top_p' must be a number greater than 0 and at most 1"},
	{CHAT, "{" MSG("\"top_p\":1.01}"), 400, "top_p", "invalid_value", "greater than 0 and at most 1"},
	{CHAT, "{" MSG("\"top_p\":true}"), 400, "top_p", "invalid_type", "greater than 0 and at most 1"},
	{CHAT, "{" MSG("\"seed\":1.5}"), 400, "seed", "invalid_type", "'seed' must be an integer"},
	{CHAT, "{" MSG("\"seed\":\"1\"}"), 400, "seed", "invalid_type", "'seed' must be an integer"},
	/* stop */
	{CHAT, "{" MSG("\"stop\":\"\"}"), 400, "stop", "invalid_value", "'stop' must not be an empty string"},
	{CHAT, "{" MSG("\"stop\":5}"), 400, "stop", "invalid_type",
	 "'stop' must be a string or an array of at most 4 non-empty strings"},
	{CHAT, "{" MSG("\"stop\":{}}"), 400, "stop", "invalid_type", "'stop' must be a string or an array"},
	{CHAT, "{" MSG("\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}"), 400, "stop", "invalid_value",
	 "'stop' holds 5 strings; at most 4 are allowed"},
	{CHAT, "{" MSG("\"stop\":[\"a\",\"\"]}"), 400, "stop[1]", "invalid_value",
	 "'stop[1]' must be a non-empty string"},
	{CHAT, "{" MSG("\"stop\":[\"a\",3]}"), 400, "stop[1]", "invalid_type",
	 "'stop[1]' must be a non-empty string"},
	/* n, best_of, penalties */
	{CHAT, "{" MSG("\"n\":2}"), 400, "n", "unsupported_value", "'n' must be 1"},
	{CHAT, "{" MSG("\"n\":0}"), 400, "n", "unsupported_value", "'n' must be 1"},
	{CHAT, "{" MSG("\"n\":\"1\"}"), 400, "n", "invalid_type", "'n' must be an integer"},
	{COMPL, "{" M "\"prompt\":\"p\",\"best_of\":3}", 400, "best_of", "unsupported_value",
	 "'best_of' must be 1"},
	{CHAT, "{" MSG("\"presence_penalty\":0.5}"), 400, "presence_penalty", "unsupported_value",
	 "'presence_penalty' is not supported by this server: only 0 is accepted"},
	{CHAT, "{" MSG("\"frequency_penalty\":3}"), 400, "frequency_penalty", "invalid_value",
	 "'frequency_penalty' must be a number between -2 and 2"},
	{COMPL, "{" M "\"prompt\":\"p\",\"frequency_penalty\":-1}", 400, "frequency_penalty",
	 "unsupported_value", "only 0 is accepted"},
	/* parameters this server cannot honour */
	{CHAT, "{" MSG("\"logprobs\":true}"), 400, "logprobs", "unsupported_parameter",
	 "'logprobs' is not supported by this server"},
	{COMPL, "{" M "\"prompt\":\"p\",\"logprobs\":5}", 400, "logprobs", "unsupported_parameter",
	 "'logprobs' is not supported"},
	{CHAT, "{" MSG("\"top_logprobs\":2}"), 400, "top_logprobs", "unsupported_parameter", "'top_logprobs'"},
	{CHAT, "{" MSG("\"tools\":[{\"type\":\"function\"}]}"), 400, "tools", "unsupported_parameter",
	 "'tools' is not supported"},
	{CHAT, "{" MSG("\"functions\":[{}]}"), 400, "functions", "unsupported_parameter", "'functions'"},
	{CHAT, "{" MSG("\"response_format\":{\"type\":\"json_object\"}}"), 400, "response_format",
	 "unsupported_parameter", "'response_format' is not supported"},
	{CHAT, "{" MSG("\"logit_bias\":{\"50256\":-100}}"), 400, "logit_bias", "unsupported_parameter",
	 "'logit_bias'"},
	{COMPL, "{" M "\"prompt\":\"p\",\"echo\":true}", 400, "echo", "unsupported_parameter", "'echo'"},
	{COMPL, "{" M "\"prompt\":\"p\",\"suffix\":\"s\"}", 400, "suffix", "unsupported_parameter", "'suffix'"},
	/* JSON itself */
	{CHAT, "", 400, NULLP, "invalid_json", "We could not parse the JSON body of your request"},
	{CHAT, "{\"model\":\"m\",", 400, NULLP, "invalid_json", "We could not parse the JSON body"},
	{CHAT, "{\"model\":\"m\"} {}", 400, NULLP, "invalid_json", "We could not parse the JSON body"},
	{CHAT, "[1,2]", 400, NULLP, "invalid_json", "The request body must be a JSON object, not an array"},
	{CHAT, "\"x\"", 400, NULLP, "invalid_json", "must be a JSON object, not a single value"},
	{CHAT, "{" MSG("\"seed\":99999999999999999999}"), 400, "seed", "invalid_value",
	 "'seed' is out of range: too big integer"},
	{COMPL, "{" M "\"prompt\":\"p\",\"max_tokens\":1e999}", 400, "max_tokens", "invalid_value",
	 "'max_tokens' is out of range"},
	{CHAT, "{\"model\":\"m\"\xff}", 400, NULLP, "invalid_json", "We could not parse"},
	/* text that is not UTF-8: raw bytes */
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"a\xff\"}]}", 400,
	 "messages[0].content", "invalid_encoding",
	 "'messages[0].content' is not valid UTF-8 (byte 0xff at offset 52)"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"ok\"},{\"role\":\"user\",\"content\":"
	 "[{\"type\":\"text\",\"text\":\"fine\"},{\"type\":\"text\",\"text\":\"\xc0\x80\"}]}]}", 400,
	 "messages[1].content[1].text", "invalid_encoding",
	 "'messages[1].content[1].text' is not valid UTF-8 (byte 0xc0"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"\xed\xa0\x80\"}]}", 400,
	 "messages[0].content", "invalid_encoding", "not valid UTF-8 (byte 0xed"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"\xf4\x90\x80\x80\"}]}", 400,
	 "messages[0].content", "invalid_encoding", "not valid UTF-8 (byte 0xf4"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"ab\xe2\x82\"}]}", 400,
	 "messages[0].content", "invalid_encoding", "not valid UTF-8 (byte 0xe2"},
	{CHAT, "{\"model\":\"\xff\",\"messages\":[]}", 400, "model", "invalid_encoding",
	 "'model' is not valid UTF-8"},
	{COMPL, "{" M "\"prompt\":[\"\xfe\"]}", 400, "prompt[0]", "invalid_encoding",
	 "'prompt[0]' is not valid UTF-8"},
	{CHAT, "{" MSG("\"stop\":[\"a\",\"b\x80\"]}"), 400, "stop[1]", "invalid_encoding",
	 "'stop[1]' is not valid UTF-8"},
	{CHAT, "{" MSG("\"metadata\":{\"k\":[1,\"\xff\"]}}"), 400, "metadata.k[1]", "invalid_encoding",
	 "'metadata.k[1]' is not valid UTF-8"},
	{CHAT, "{\"model\":\"m\",\"\xff\":1}", 400, NULLP, "invalid_encoding",
	 "A key in the request body is not valid UTF-8"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"x\",\"\xc3\":1}]}", 400,
	 "messages[0]", "invalid_encoding", "A key in 'messages[0]' is not valid UTF-8"},
	/* text that is not UTF-8: \u escapes of lone surrogates */
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}", 400,
	 "messages[0].content", "invalid_encoding",
	 "'messages[0].content' holds the escape \\ud800, a lone UTF-16 surrogate"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"x\\uDC00y\"}]}", 400,
	 "messages[0].content", "invalid_encoding", "holds the escape \\uDC00"},
	{CHAT, "{" MSG("\"stop\":[\"ok\",\"\\ud800\\u0041\"]}"), 400, "stop[1]", "invalid_encoding",
	 "'stop[1]' holds the escape \\ud800\\u0041"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
	 "\"text\":\"\\ud83d\\ud83d\"}]}]}", 400, "messages[0].content[0].text", "invalid_encoding",
	 "holds the escape \\ud83d\\ud83d"},
	{COMPL, "{" M "\"prompt\":\"\\udfff\"}", 400, "prompt", "invalid_encoding", "\\udfff"},
	/* NUL characters */
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", 400,
	 "messages[0].content", "invalid_value", "'messages[0].content' contains a NUL character"},
	{CHAT, "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\\u0000\"}]}]}",
	 400, "messages[0].content[0].text", "invalid_value", "contains a NUL character"},
	{CHAT, "{" MSG("\"stop\":\"\\u0000\"}"), 400, "stop", "invalid_value", "'stop' contains a NUL"},
	{COMPL, "{" M "\"prompt\":[\"a\\u0000\"]}", 400, "prompt[0]", "invalid_value",
	 "'prompt[0]' contains a NUL"},
	{CHAT, "{\"model\":\"m\\u0000\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400,
	 "model", "invalid_value", "'model' contains a NUL"},
};

START_TEST(test_validation_errors)
{
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		const struct bad_case *c = &bad_cases[i];
		struct api_request r;
		struct api_error e;
		int rc = parse(c->ep, c->body, &r, &e);
		EXPECT(rc == -EINVAL, "case %zu (%s): rc %d", i, c->body, rc);
		EXPECT(e.status == c->status, "case %zu: status %d", i, e.status);
		EXPECT(e.type && !strcmp(e.type, "invalid_request_error"), "case %zu: type %s", i,
		       e.type);
		EXPECT(!strcmp(e.param, c->param ? c->param : ""), "case %zu (%s): param '%s', want '%s'",
		       i, c->body, e.param, c->param ? c->param : "");
		EXPECT(e.code && !strcmp(e.code, c->code), "case %zu (%s): code %s, want %s", i, c->body,
		       e.code, c->code);
		EXPECT(strstr(e.message, c->msg), "case %zu (%s): message \"%s\" lacks \"%s\"", i,
		       c->body, e.message, c->msg);
		EXPECT(r.model == NULL && r.messages == NULL && r.prompt == NULL && r.n_stop == 0,
		       "case %zu: the request was not emptied", i);
		/* Whatever the body held, the error object is valid JSON. */
		size_t len;
		char *j = api_error_json(&e, &len);
		EXPECT(j != NULL, "case %zu: no error JSON", i);
		json_decref(load(j, len));
		free(j);
	}
	printf("serve_api: %zu malformed bodies refused as expected\n",
	       sizeof(bad_cases) / sizeof(bad_cases[0]));
}
END_TEST

START_TEST(test_surrogate_pair_and_body_limit)
{
	struct api_request r;
	struct api_error e;
	/* A correct pair of surrogate escapes is one character. */
	ck_assert_int_eq(parse(COMPL, "{\"model\":\"m\",\"prompt\":\"\\uD83D\\uDE00!\"}", &r, &e), 0);
	ck_assert_str_eq(r.prompt, "\xf0\x9f\x98\x80!");
	api_request_free(&r);

	/* 1 MiB + 1 is refused before it is read; 1 MiB of valid JSON is not. */
	size_t n = API_BODY_MAX + 1;
	char *big = malloc(n);
	ck_assert_ptr_nonnull(big);
	memset(big, ' ', n);
	const char *head = "{\"model\":\"m\",\"prompt\":\"p\"}";
	memcpy(big, head, strlen(head));
	ck_assert_int_eq(parse_n(COMPL, big, n, &r, &e), -E2BIG);
	ck_assert_int_eq(e.status, 413);
	ck_assert_str_eq(e.code, "request_too_large");
	ck_assert_int_eq(parse_n(COMPL, big, n - 1, &r, &e), 0);
	api_request_free(&r);
	free(big);

	/* Misuse by the caller is a 500, not a crash. */
	ck_assert_int_eq(api_request_parse(API_ENDPOINT_MODELS, "{}", 2, NULL, 0, &r, &e), -EINVAL);
	ck_assert_int_eq(e.status, 500);
	ck_assert_str_eq(e.type, "server_error");
	ck_assert_int_eq(r.model_index, -1);
	e.status = 0;
	ck_assert_int_eq(api_request_parse(CHAT, NULL, 5, NULL, 0, &r, &e), -EINVAL);
	ck_assert_int_eq(e.status, 500);
	ck_assert_int_eq(api_request_parse(CHAT, "{}", 2, NULL, 1, &r, &e), -EINVAL);
	ck_assert_int_eq(api_request_parse(CHAT, "{}", 2, NULL, 0, NULL, NULL), -EINVAL);
}
END_TEST

START_TEST(test_error_json)
{
	struct api_error e;
	ck_assert_int_eq(api_error_set(&e, 400, API_ERR_INVALID_REQUEST, "messages[2].role",
				       "invalid_value", "'%s' must be one of %s", "messages[2].role",
				       "x"),
			 -EINVAL);
	size_t len;
	char *s = api_error_json(&e, &len);
	ck_assert_uint_eq(len, strlen(s));
	json_t *j = load(s, len), *o = json_object_get(j, "error");
	ck_assert_uint_eq(json_object_size(j), 1);
	ck_assert_uint_eq(json_object_size(o), 4);
	ck_assert_str_eq(jstr(o, "message"), "'messages[2].role' must be one of x");
	ck_assert_str_eq(jstr(o, "type"), "invalid_request_error");
	ck_assert_str_eq(jstr(o, "param"), "messages[2].role");
	ck_assert_str_eq(jstr(o, "code"), "invalid_value");
	json_decref(j);
	free(s);

	/* No param, no code: JSON nulls. */
	ck_assert_int_eq(api_error_route(&e, "POST", "/v1/foo"), -ENOENT);
	ck_assert_int_eq(e.status, 404);
	s = api_error_json(&e, &len);
	j = load(s, len);
	o = json_object_get(j, "error");
	ck_assert_str_eq(jstr(o, "message"), "Invalid URL (POST /v1/foo)");
	ck_assert(json_is_null(json_object_get(o, "param")));
	ck_assert(json_is_null(json_object_get(o, "code")));
	json_decref(j);
	free(s);

	/* Bytes from the wire are quoted as printable ASCII. */
	api_error_route(&e, "GET", "/v1/\xff\"\n");
	ck_assert_str_eq(e.message, "Invalid URL (GET /v1/?\"?)");
	ck_assert_int_eq(api_error_method(&e, "GET", "/v1/completions"), -EPERM);
	ck_assert_int_eq(e.status, 405);
	ck_assert_str_eq(e.message, "Method GET is not allowed on /v1/completions");
	ck_assert_int_eq(api_error_too_large(&e, 2000000), -E2BIG);
	ck_assert_ptr_nonnull(strstr(e.message, "2000000 bytes"));
	ck_assert_ptr_nonnull(strstr(e.message, "1048576"));
	ck_assert_int_eq(api_error_busy(&e), -EBUSY);
	ck_assert_int_eq(e.status, 429);
	ck_assert_str_eq(e.type, "requests");
	ck_assert_str_eq(e.code, "rate_limit_exceeded");
	ck_assert_int_eq(api_error_context_length(&e, CHAT, 4096, 4000, 200), -EINVAL);
	ck_assert_str_eq(e.param, "messages");
	ck_assert_str_eq(e.code, "context_length_exceeded");
	ck_assert_str_eq(e.message,
			 "This model's maximum context length is 4096 tokens. However, you requested "
			 "4200 tokens (4000 in the messages, 200 in the completion). Please reduce the "
			 "length of the messages or completion.");
	api_error_context_length(&e, COMPL, 10, 8, 5);
	ck_assert_str_eq(e.param, "prompt");

	/* A message cut at the field's end stays valid UTF-8; bad bytes in it are
	 * repaired in the JSON. */
	char longtext[600];
	memset(longtext, 'a', sizeof(longtext));
	memcpy(longtext + 509, "\xe2\x82\xac", 3);
	longtext[599] = '\0';
	api_error_set(&e, 500, API_ERR_SERVER, NULL, NULL, "%s", longtext);
	ck_assert_uint_eq(strlen(e.message), 509);
	api_error_set(&e, 500, API_ERR_SERVER, NULL, NULL, "bad \xff byte");
	s = api_error_json(&e, &len);
	j = load(s, len);
	ck_assert_str_eq(jstr(json_object_get(j, "error"), "message"), "bad \xef\xbf\xbd byte");
	json_decref(j);
	free(s);
	ck_assert_int_eq(api_error_set(NULL, 418, NULL, NULL, NULL, "x"), -EIO);

	/* The out-of-memory fallback is itself the right shape. */
	j = load(API_ERROR_JSON_OOM, strlen(API_ERROR_JSON_OOM));
	ck_assert_str_eq(jstr(json_object_get(j, "error"), "type"), "server_error");
	json_decref(j);
}
END_TEST

/* ---------------------------------------------------------------- responses */

START_TEST(test_completion_objects)
{
	char id[API_ID_MAX];
	ck_assert_int_eq(api_make_id(CHAT, 7, id, sizeof(id)), 0);
	struct api_completion c = {
		.endpoint = CHAT, .id = id, .created = 1700000000, .model = "kimi-k2",
		.text = "Hi \"there\"\n\xf0\x9f\x98\x80", .finish = API_FINISH_STOP,
		.prompt_tokens = 12, .completion_tokens = 5,
	};
	c.text_len = strlen(c.text);
	size_t len;
	char *s = api_completion_json(&c, &len);
	ck_assert_ptr_nonnull(s);
	ck_assert_uint_eq(len, strlen(s));
	ck_assert_ptr_null(strchr(s, '\n')); /* compact: one line */
	json_t *j = load(s, len);
	ck_assert_str_eq(jstr(j, "id"), id);
	ck_assert_str_eq(jstr(j, "object"), "chat.completion");
	ck_assert_int_eq(jint(j, "created"), 1700000000);
	ck_assert_str_eq(jstr(j, "model"), "kimi-k2");
	json_t *ch = json_object_get(j, "choices");
	ck_assert_uint_eq(json_array_size(ch), 1);
	json_t *c0 = json_array_get(ch, 0);
	ck_assert_int_eq(jint(c0, "index"), 0);
	ck_assert_str_eq(jstr(c0, "finish_reason"), "stop");
	ck_assert(json_is_null(json_object_get(c0, "logprobs")));
	json_t *msg = json_object_get(c0, "message");
	ck_assert_str_eq(jstr(msg, "role"), "assistant");
	ck_assert_str_eq(jstr(msg, "content"), c.text);
	json_t *u = json_object_get(j, "usage");
	ck_assert_int_eq(jint(u, "prompt_tokens"), 12);
	ck_assert_int_eq(jint(u, "completion_tokens"), 5);
	ck_assert_int_eq(jint(u, "total_tokens"), 17);
	json_decref(j);
	free(s);

	/* text_completion; invalid UTF-8 in the text becomes U+FFFD; length. */
	c.endpoint = COMPL;
	c.text = "ab\xff\xe2\x82";
	c.text_len = 5;
	c.finish = API_FINISH_LENGTH;
	s = api_completion_json(&c, &len);
	j = load(s, len);
	ck_assert_str_eq(jstr(j, "object"), "text_completion");
	c0 = json_array_get(json_object_get(j, "choices"), 0);
	ck_assert_str_eq(jstr(c0, "text"), "ab\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
	ck_assert_str_eq(jstr(c0, "finish_reason"), "length");
	ck_assert_ptr_null(json_object_get(c0, "message"));
	json_decref(j);
	free(s);

	/* NULL text is "", a NUL inside the text survives as \u0000. */
	c.text = NULL;
	s = api_completion_json(&c, &len);
	j = load(s, len);
	ck_assert_str_eq(jstr(json_array_get(json_object_get(j, "choices"), 0), "text"), "");
	json_decref(j);
	free(s);
	c.text = "a\0b";
	c.text_len = 3;
	s = api_completion_json(&c, &len);
	ck_assert_ptr_nonnull(strstr(s, "\"a\\u0000b\""));
	free(s);
	ck_assert_ptr_null(api_completion_json(NULL, &len));
}
END_TEST

/* Checks one event's framing and returns its JSON. */
static json_t *event(char *ev, const size_t *lenp)
{
	size_t len = *lenp;
	EXPECT(ev != NULL, "no event");
	EXPECT(len == strlen(ev), "length %zu, strlen %zu", len, strlen(ev));
	EXPECT(len > 8 && !strncmp(ev, "data: ", 6), "not a data line: %s", ev);
	EXPECT(ev[len - 2] == '\n' && ev[len - 1] == '\n', "not ended by a blank line: %s", ev);
	EXPECT(memchr(ev, '\n', len - 2) == NULL, "a newline inside the event: %s", ev);
	EXPECT(memchr(ev, '\r', len) == NULL, "a CR inside the event: %s", ev);
	json_t *j = load(ev + 6, len - 8);
	free(ev);
	return j;
}

static json_t *first_choice(json_t *j)
{
	json_t *ch = json_object_get(j, "choices");
	EXPECT(json_array_size(ch) == 1, "choices has %zu entries", json_array_size(ch));
	return json_array_get(ch, 0);
}

START_TEST(test_sse_chat)
{
	struct api_stream st = {.endpoint = CHAT, .id = "chatcmpl-1", .created = 5,
				.model = "kimi-k2", .include_usage = true};
	size_t len;
	json_t *j = event(api_sse_start(&st, &len), &len), *c;
	ck_assert_str_eq(jstr(j, "object"), "chat.completion.chunk");
	ck_assert_str_eq(jstr(j, "id"), "chatcmpl-1");
	ck_assert_int_eq(jint(j, "created"), 5);
	ck_assert(json_is_null(json_object_get(j, "usage")));
	c = first_choice(j);
	ck_assert_int_eq(jint(c, "index"), 0);
	ck_assert(json_is_null(json_object_get(c, "finish_reason")));
	json_t *d = json_object_get(c, "delta");
	ck_assert_str_eq(jstr(d, "role"), "assistant");
	ck_assert_str_eq(jstr(d, "content"), "");
	json_decref(j);

	const char *pieces[] = {"Hel", "lo\n\nthere \"x\"", "\xe2\x82\xac"};
	for (int i = 0; i < 3; i++) {
		j = event(api_sse_text(&st, pieces[i], strlen(pieces[i]), &len), &len);
		c = first_choice(j);
		d = json_object_get(c, "delta");
		ck_assert_uint_eq(json_object_size(d), 1);
		ck_assert_str_eq(jstr(d, "content"), pieces[i]);
		ck_assert(json_is_null(json_object_get(c, "finish_reason")));
		ck_assert(json_is_null(json_object_get(j, "usage")));
		json_decref(j);
	}
	j = event(api_sse_finish(&st, API_FINISH_LENGTH, &len), &len);
	c = first_choice(j);
	ck_assert_uint_eq(json_object_size(json_object_get(c, "delta")), 0);
	ck_assert_str_eq(jstr(c, "finish_reason"), "length");
	json_decref(j);

	j = event(api_sse_usage(&st, 10, 3, &len), &len);
	ck_assert_uint_eq(json_array_size(json_object_get(j, "choices")), 0);
	ck_assert(json_is_array(json_object_get(j, "choices")));
	json_t *u = json_object_get(j, "usage");
	ck_assert_int_eq(jint(u, "prompt_tokens"), 10);
	ck_assert_int_eq(jint(u, "completion_tokens"), 3);
	ck_assert_int_eq(jint(u, "total_tokens"), 13);
	json_decref(j);
	ck_assert_str_eq(API_SSE_DONE, "data: [DONE]\n\n");

	/* Without include_usage the chunks carry no usage key at all. */
	st.include_usage = false;
	j = event(api_sse_text(&st, "x", 1, &len), &len);
	ck_assert_ptr_null(json_object_get(j, "usage"));
	json_decref(j);

	struct api_error e;
	api_error_set(&e, 503, API_ERR_SERVER, NULL, NULL, "the server is shutting down");
	j = event(api_sse_error(&e, &len), &len);
	ck_assert_str_eq(jstr(json_object_get(j, "error"), "type"), "server_error");
	json_decref(j);
	ck_assert_ptr_null(api_sse_text(NULL, "x", 1, &len));
}
END_TEST

START_TEST(test_sse_completions)
{
	struct api_stream st = {.endpoint = COMPL, .id = "cmpl-1", .created = 5, .model = "m"};
	size_t len = 99;
	char *s = api_sse_start(&st, &len);
	ck_assert_ptr_nonnull(s);
	ck_assert_str_eq(s, "");
	ck_assert_uint_eq(len, 0);
	free(s);
	json_t *j = event(api_sse_text(&st, "abc", 3, &len), &len);
	ck_assert_str_eq(jstr(j, "object"), "text_completion");
	json_t *c = first_choice(j);
	ck_assert_str_eq(jstr(c, "text"), "abc");
	ck_assert(json_is_null(json_object_get(c, "finish_reason")));
	ck_assert_ptr_null(json_object_get(c, "delta"));
	json_decref(j);
	j = event(api_sse_finish(&st, API_FINISH_STOP, &len), &len);
	c = first_choice(j);
	ck_assert_str_eq(jstr(c, "text"), "");
	ck_assert_str_eq(jstr(c, "finish_reason"), "stop");
	json_decref(j);
	st.include_usage = true;
	j = event(api_sse_usage(&st, 1, 2, &len), &len);
	ck_assert_str_eq(jstr(j, "object"), "text_completion");
	ck_assert_int_eq(jint(json_object_get(j, "usage"), "total_tokens"), 3);
	json_decref(j);
}
END_TEST

START_TEST(test_models_health_ids)
{
	static const struct api_model_info models[] = {
		{.id = "kimi-k2", .created = 1752000000, .owned_by = "moonshotai"},
		{.id = "deepseek-v3", .created = 1},
	};
	size_t len;
	char *s = api_models_json(models, 2, &len);
	json_t *j = load(s, len);
	ck_assert_str_eq(jstr(j, "object"), "list");
	json_t *d = json_object_get(j, "data");
	ck_assert_uint_eq(json_array_size(d), 2);
	ck_assert_str_eq(jstr(json_array_get(d, 0), "id"), "kimi-k2");
	ck_assert_str_eq(jstr(json_array_get(d, 0), "object"), "model");
	ck_assert_int_eq(jint(json_array_get(d, 0), "created"), 1752000000);
	ck_assert_str_eq(jstr(json_array_get(d, 0), "owned_by"), "moonshotai");
	ck_assert_str_eq(jstr(json_array_get(d, 1), "owned_by"), "k2serve");
	json_decref(j);
	free(s);
	s = api_models_json(NULL, 0, &len);
	ck_assert_str_eq(s, "{\"object\":\"list\",\"data\":[]}");
	free(s);
	s = api_model_json(&models[1], &len);
	j = load(s, len);
	ck_assert_str_eq(jstr(j, "id"), "deepseek-v3");
	json_decref(j);
	free(s);

	struct api_health h = {.status = "ok", .model = "kimi-k2", .uptime_s = 12.5,
			       .active_requests = 3, .queued_requests = 1};
	s = api_health_json(&h, &len);
	j = load(s, len);
	ck_assert_str_eq(jstr(j, "status"), "ok");
	ck_assert_str_eq(jstr(j, "model"), "kimi-k2");
	ck_assert(json_real_value(json_object_get(j, "uptime_s")) == 12.5);
	ck_assert_int_eq(jint(json_object_get(j, "requests"), "active"), 3);
	ck_assert_int_eq(jint(json_object_get(j, "requests"), "queued"), 1);
	json_decref(j);
	free(s);

	/* Ids: the prefix, fixed length, distinct for distinct seqs. */
	char id[API_ID_MAX], prev[API_ID_MAX] = "";
	ck_assert_int_eq(api_make_id(COMPL, 0, id, sizeof(id) - 1), -ENOSPC);
	for (uint64_t seq = 0; seq < 1000; seq++) {
		ck_assert_int_eq(api_make_id(seq & 1 ? CHAT : COMPL, seq, id, sizeof(id)), 0);
		const char *pre = seq & 1 ? "chatcmpl-" : "cmpl-";
		EXPECT(!strncmp(id, pre, strlen(pre)) && strlen(id) == strlen(pre) + 24, "id %s", id);
		EXPECT(strcmp(id + strlen(pre), prev), "ids repeat");
		strcpy(prev, id + strlen(pre));
	}
	ck_assert_str_eq(api_finish_name(API_FINISH_STOP), "stop");
	ck_assert_ptr_null(api_finish_name(API_FINISH_NONE));
	ck_assert_str_eq(api_role_name(API_ROLE_TOOL), "tool");
	ck_assert_ptr_null(api_role_name(API_ROLE_COUNT));
	ck_assert_str_eq(api_endpoint_name(CHAT), "chat_completions");
}
END_TEST

/* jansson's allocations fail from the fail_after-th on (-1: never). */
static long fail_after = -1;

static void *failing_malloc(size_t n)
{
	if (fail_after == 0)
		return NULL;
	if (fail_after > 0)
		fail_after--;
	return malloc(n);
}

START_TEST(test_out_of_memory)
{
	/* Every builder and the parser, with jansson's k-th allocation failing for
	 * every k until one succeeds: NULL or an error, never a crash (and no
	 * leak, which the ASan build reports). */
	static const char body[] =
		"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
		"\"text\":\"a\"}]}],\"stop\":[\"x\",\"y\"],\"stream\":true,"
		"\"stream_options\":{\"include_usage\":true}}";
	static const struct api_model_info models[] = {{.id = "m"}, {.id = "n"}};
	struct api_stream st = {.endpoint = CHAT, .id = "i", .model = "m", .include_usage = true};
	struct api_completion c = {.endpoint = CHAT, .id = "i", .model = "m", .text = "t",
				   .text_len = 1, .finish = API_FINISH_STOP};
	struct api_health h = {.status = "ok", .model = "m"};
	struct api_error e;
	api_error_route(&e, "GET", "/x");
	int done = 0, failures = 0;
	for (long k = 0; k < 5000 && done < 11; k++) {
		done = 0;
		char *out[10];
		size_t len;
		json_set_alloc_funcs(failing_malloc, free);
		fail_after = k;
		struct api_request r;
		struct api_error pe;
		int rc = api_request_parse(CHAT, body, strlen(body), NULL, 0, &r, &pe);
		out[0] = api_completion_json(&c, &len);
		out[1] = api_sse_start(&st, &len);
		out[2] = api_sse_text(&st, "x", 1, &len);
		out[3] = api_sse_finish(&st, API_FINISH_STOP, &len);
		out[4] = api_sse_usage(&st, 1, 2, &len);
		out[5] = api_models_json(models, 2, &len);
		out[6] = api_model_json(&models[0], &len);
		out[7] = api_health_json(&h, &len);
		out[8] = api_error_json(&e, &len);
		out[9] = api_sse_error(&e, &len);
		fail_after = -1;
		json_set_alloc_funcs(malloc, free);
		/* jansson reports some failed allocations as the syntax error they
		 * cause, which then reads as a 400 "invalid_json". */
		EXPECT(rc == 0 || (rc == -ENOMEM && pe.status == 500) ||
			       (rc == -EINVAL && !strcmp(pe.code, "invalid_json")),
		       "k %ld: rc %d status %d (%s)", k, rc, pe.status, pe.message);
		if (rc == 0) {
			ck_assert_uint_eq(r.n_messages, 1);
			api_request_free(&r);
			done++;
		} else {
			failures++;
		}
		for (int i = 0; i < 10; i++) {
			done += out[i] != NULL;
			free(out[i]);
		}
	}
	ck_assert_int_eq(done, 11);
	ck_assert_int_gt(failures, 0);
}
END_TEST

/* ---------------------------------------------------------------- stop matcher */

struct fed {
	char out[4096];
	size_t len;
	int hit;
};

/* Feeds pieces (NULL-terminated) to a matcher over stops; flushes unless hit. */
static void run_stop(const char *const *stops, uint32_t n, const char *const *pieces, struct fed *f,
		     const size_t *expect_after)
{
	size_t lens[API_STOP_MAX];
	for (uint32_t i = 0; i < n; i++)
		lens[i] = strlen(stops[i]);
	api_stop *m;
	ck_assert_int_eq(api_stop_new(stops, lens, n, &m), 0);
	memset(f, 0, sizeof(*f));
	for (int i = 0; pieces[i]; i++) {
		const char *e;
		size_t el;
		int rc = api_stop_feed(m, pieces[i], strlen(pieces[i]), &e, &el);
		ck_assert_int_ge(rc, 0);
		EXPECT(!f->hit || (rc == 1 && el == 0), "output after the stop");
		memcpy(f->out + f->len, e, el);
		f->len += el;
		f->hit = rc;
		if (expect_after)
			EXPECT(f->len == expect_after[i], "after piece %d: %zu bytes out, want %zu", i,
			       f->len, expect_after[i]);
	}
	const char *e;
	size_t el;
	ck_assert_int_eq(api_stop_flush(m, &e, &el), 0);
	EXPECT(!f->hit || el == 0, "flush after a stop gave text");
	memcpy(f->out + f->len, e, el);
	f->len += el;
	f->out[f->len] = '\0';
	api_stop_free(m);
}

START_TEST(test_stop_basic)
{
	struct fed f;
	const char *none[] = {NULL};
	run_stop(none, 0, (const char *[]){"Hello", " world", NULL}, &f, (size_t[]){5, 11});
	ck_assert_str_eq(f.out, "Hello world");
	ck_assert_int_eq(f.hit, 0);

	const char *stop1[] = {"STOP"};
	run_stop(stop1, 1, (const char *[]){"Hello STOP world", NULL}, &f, (size_t[]){6});
	ck_assert_str_eq(f.out, "Hello ");
	ck_assert_int_eq(f.hit, 1);

	/* Split over four pieces: "S" and "ST" are held back, never sent. */
	run_stop(stop1, 1, (const char *[]){"Hel", "lo S", "T", "OP more", "x", NULL}, &f,
		 (size_t[]){3, 6, 6, 6, 6});
	ck_assert_str_eq(f.out, "Hello ");
	ck_assert_int_eq(f.hit, 1);

	/* A held prefix that does not go on is released with the next piece. */
	const char *abc[] = {"abc"};
	run_stop(abc, 1, (const char *[]){"xab", "d", "a", NULL}, &f, (size_t[]){1, 4, 4});
	ck_assert_str_eq(f.out, "xabda"); /* the flush releases the last "a" */
	ck_assert_int_eq(f.hit, 0);

	/* Overlapping prefixes: "abcab" | "cabd" must still find "abcabd" at 3. */
	const char *ov[] = {"abcabd"};
	run_stop(ov, 1, (const char *[]){"a", "b", "c", "a", "b", "c", "a", "b", "d", NULL}, &f,
		 (size_t[]){0, 0, 0, 0, 0, 3, 3, 3, 3});
	ck_assert_str_eq(f.out, "abc");
	ck_assert_int_eq(f.hit, 1);
	const char *aa[] = {"aab"};
	run_stop(aa, 1, (const char *[]){"aa", "aa", "ab!", NULL}, &f, (size_t[]){0, 2, 3});
	ck_assert_str_eq(f.out, "aaa");

	/* Several stop strings: the first completed wins ("c" before "abcd")... */
	const char *two[] = {"abcd", "c"};
	run_stop(two, 2, (const char *[]){"xab", "cd", NULL}, &f, (size_t[]){1, 3});
	ck_assert_str_eq(f.out, "xab");
	/* ...and of two completed at the same byte, the longer one. */
	const char *suf[] = {"bc", "abc"};
	run_stop(suf, 2, (const char *[]){"xa", "bc", NULL}, &f, (size_t[]){1, 1});
	ck_assert_str_eq(f.out, "x");
	/* The hold is the longest prefix of any of them. */
	const char *mix[] = {"END", "\n\n", "<|im_end|>"};
	run_stop(mix, 3, (const char *[]){"ok\n", "<|im", "_", "en", "d|>tail", NULL}, &f,
		 (size_t[]){2, 3, 3, 3, 3});
	ck_assert_str_eq(f.out, "ok\n");
	ck_assert_int_eq(f.hit, 1);

	/* Empty pieces, empty stop strings ignored, UTF-8 cut only at boundaries. */
	const char *with_empty[] = {"", "\xe2\x82\xac!"};
	run_stop(with_empty, 2, (const char *[]){"", "1\xe2\x82", "", "\xac", "!x", NULL}, &f,
		 (size_t[]){0, 1, 1, 1, 1});
	ck_assert_str_eq(f.out, "1");
	ck_assert_int_eq(f.hit, 1);
}
END_TEST

START_TEST(test_stop_long_and_errors)
{
	/* A long stop string with a self-overlapping prefix, fed a byte at a time. */
	size_t n = 5000;
	char *stop = malloc(n + 2), *text = malloc(2 * n + 2);
	memset(stop, 'a', n);
	stop[n] = 'b';
	stop[n + 1] = '\0';
	memset(text, 'a', 2 * n);
	text[2 * n] = 'b';
	text[2 * n + 1] = '\0';
	size_t len = n + 1;
	api_stop *m;
	ck_assert_int_eq(api_stop_new((const char *const *)&stop, &len, 1, &m), 0);
	size_t out = 0;
	int rc = 0;
	for (size_t i = 0; i <= 2 * n && rc == 0; i++) {
		const char *e;
		size_t el;
		rc = api_stop_feed(m, text + i, 1, &e, &el);
		out += el;
	}
	ck_assert_int_eq(rc, 1);
	ck_assert_uint_eq(out, n);
	api_stop_free(m);
	free(stop);
	free(text);

	const char *s[5] = {"a", "b", "c", "d", "e"};
	size_t l[5] = {1, 1, 1, 1, 1};
	ck_assert_int_eq(api_stop_new(s, l, 5, &m), -EINVAL);
	ck_assert_int_eq(api_stop_new(NULL, NULL, 1, &m), -EINVAL);
	ck_assert_int_eq(api_stop_new(s, l, 1, &m), 0);
	const char *e;
	size_t el;
	ck_assert_int_eq(api_stop_feed(m, NULL, 1, &e, &el), -EINVAL);
	ck_assert_int_eq(api_stop_feed(NULL, "x", 1, &e, &el), -EINVAL);
	ck_assert_int_eq(api_stop_feed(m, NULL, 0, &e, &el), 0);
	ck_assert_uint_eq(el, 0);
	api_stop_free(m);
	api_stop_free(NULL);
}
END_TEST

START_TEST(test_stop_random)
{
	uint64_t x = 42;
#define RND() (x = x * 6364136223846793005ull + 1442695040888963407ull, (unsigned)(x >> 33))
	long hits = 0;
	for (int round = 0; round < 20000; round++) {
		int ns = (int)(RND() % 5);
		char stops[4][8];
		size_t lens[4];
		const char *ptrs[4];
		for (int i = 0; i < ns; i++) {
			lens[i] = 1 + RND() % 6;
			for (size_t k = 0; k < lens[i]; k++)
				stops[i][k] = (char)('a' + RND() % 3);
			ptrs[i] = stops[i];
		}
		char text[64];
		size_t n = RND() % 60;
		for (size_t k = 0; k < n; k++)
			text[k] = (char)('a' + RND() % 3);
		api_stop *m;
		ck_assert_int_eq(api_stop_new(ptrs, lens, (uint32_t)ns, &m), 0);
		long at = stop_ref_at(text, n, ptrs, lens, ns);
		char out[64];
		size_t out_len = 0, fed = 0;
		int rc = 0;
		while (fed < n || (fed == 0 && n == 0)) {
			size_t piece = RND() % 5; /* 0 to 4 bytes, empty pieces included */
			if (piece > n - fed)
				piece = n - fed;
			const char *e;
			size_t el;
			rc = api_stop_feed(m, text + fed, piece, &e, &el);
			ck_assert_int_ge(rc, 0);
			memcpy(out + out_len, e, el);
			out_len += el;
			fed += piece;
			if (rc == 1)
				break;
			/* Nothing is held back that could not start a stop string. */
			EXPECT(out_len == stop_ref_safe(text, fed, ptrs, lens, ns),
			       "round %d: %zu of %zu bytes sent, want %zu", round, out_len, fed,
			       stop_ref_safe(text, fed, ptrs, lens, ns));
			if (n == 0)
				break;
		}
		if (rc == 0) {
			const char *e;
			size_t el;
			api_stop_flush(m, &e, &el);
			memcpy(out + out_len, e, el);
			out_len += el;
		}
		size_t want = at < 0 ? n : (size_t)at;
		EXPECT(rc == (at >= 0), "round %d: hit %d, reference %ld", round, rc, at);
		EXPECT(out_len == want && !memcmp(out, text, want),
		       "round %d: sent %zu bytes, want %zu", round, out_len, want);
		hits += rc;
		api_stop_free(m);
	}
	printf("serve_api: stop matcher agreed with the reference on 20000 texts (%ld stopped)\n",
	       hits);
#undef RND
}
END_TEST

/* ---------------------------------------------------------------- metrics */

/* The value of the sample line that starts with `series ` in text, or -1. */
static double sample(const char *text, const char *series)
{
	size_t n = strlen(series);
	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (!strncmp(p, series, n) && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	return -1;
}

START_TEST(test_metrics_text)
{
	struct api_metrics m = {0};
	api_metrics_request(&m, CHAT, 200);
	api_metrics_request(&m, CHAT, 200);
	api_metrics_request(&m, CHAT, 400);
	api_metrics_request(&m, COMPL, 503);
	api_metrics_request(&m, (enum api_endpoint)99, 404);
	api_metrics_request(&m, API_ENDPOINT_MODELS, 302);
	api_metrics_tokens(&m, 100, 20, 1500000000ull);
	api_metrics_tokens(&m, 5, 1, 250000000ull);
	api_metrics_ttft(&m, 0.03);  /* le 0.05 */
	api_metrics_ttft(&m, 0.05);  /* le 0.05: bounds are inclusive */
	api_metrics_ttft(&m, 0.7);   /* le 1 */
	api_metrics_ttft(&m, 500);   /* +Inf */
	api_metrics_ttft(&m, -1);    /* counts as 0 */
	m.n_tiers = 2;
	strcpy(m.tier[0].name, "device");
	m.tier[0].hits = 90;
	m.tier[0].misses = 10;
	strcpy(m.tier[1].name, "r\"a\\m");
	m.tier[1].hits = 7;
	m.prefetch_issued = 50;
	m.prefetch_useful = 40;
	m.bytes_read = 123456789012ull;
	m.active_requests = 3;
	m.queued_requests = 2;
	size_t len;
	char *t = api_metrics_text(&m, &len);
	ck_assert_ptr_nonnull(t);
	ck_assert_uint_eq(len, strlen(t));
	ck_assert(len > 0 && t[len - 1] == '\n');

	/* Every line: a HELP, a TYPE naming the family just helped, or a sample of
	 * that family: name{labels} value. */
	char family[128] = "", type[32] = "";
	int samples = 0;
	for (char *line = t; *line;) {
		char *nl = strchr(line, '\n');
		ck_assert_ptr_nonnull(nl);
		*nl = '\0';
		if (!strncmp(line, "# HELP ", 7)) {
			EXPECT(sscanf(line + 7, "%127s", family) == 1, "HELP without a name");
			EXPECT(!strncmp(family, "k2serve_", 8), "unprefixed family %s", family);
			type[0] = '\0';
		} else if (!strncmp(line, "# TYPE ", 7)) {
			char name[128];
			EXPECT(sscanf(line + 7, "%127s %31s", name, type) == 2, "bad TYPE: %s", line);
			EXPECT(!strcmp(name, family), "TYPE %s after HELP %s", name, family);
			EXPECT(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
				       !strcmp(type, "histogram"), "type %s", type);
			if (!strcmp(type, "counter"))
				EXPECT(strlen(name) > 6 && !strcmp(name + strlen(name) - 6, "_total"),
				       "counter %s without _total", name);
		} else {
			EXPECT(type[0], "a sample before its TYPE: %s", line);
			EXPECT(!strncmp(line, family, strlen(family)), "sample %s outside %s", line,
			       family);
			const char *rest = line + strlen(family);
			if (!strcmp(type, "histogram")) {
				EXPECT(!strncmp(rest, "_bucket{le=\"", 12) || !strncmp(rest, "_sum ", 5) ||
					       !strncmp(rest, "_count ", 7), "histogram line %s", line);
			} else {
				EXPECT(*rest == ' ' || *rest == '{', "sample %s", line);
			}
			const char *sp = strrchr(line, ' ');
			char *end;
			strtod(sp + 1, &end);
			EXPECT(sp && *end == '\0' && end > sp + 1, "value of %s", line);
			samples++;
		}
		line = nl + 1;
	}
	free(t);
	t = api_metrics_text(&m, &len);

	ck_assert(sample(t, "k2serve_requests_total{endpoint=\"chat_completions\",code=\"2xx\"}") == 2);
	ck_assert(sample(t, "k2serve_requests_total{endpoint=\"chat_completions\",code=\"4xx\"}") == 1);
	ck_assert(sample(t, "k2serve_requests_total{endpoint=\"completions\",code=\"5xx\"}") == 1);
	ck_assert(sample(t, "k2serve_requests_total{endpoint=\"other\",code=\"4xx\"}") == 1);
	ck_assert(sample(t, "k2serve_requests_total{endpoint=\"models\",code=\"other\"}") == 1);
	ck_assert(sample(t, "k2serve_requests_total{endpoint=\"health\",code=\"2xx\"}") == 0);
	ck_assert(sample(t, "k2serve_prompt_tokens_total") == 105);
	ck_assert(sample(t, "k2serve_generated_tokens_total") == 21);
	ck_assert_ptr_nonnull(strstr(t, "\nk2serve_decode_seconds_total 1.750000000\n"));
	ck_assert(sample(t, "k2serve_time_to_first_token_seconds_bucket{le=\"0.05\"}") == 3);
	ck_assert(sample(t, "k2serve_time_to_first_token_seconds_bucket{le=\"0.5\"}") == 3);
	ck_assert(sample(t, "k2serve_time_to_first_token_seconds_bucket{le=\"1\"}") == 4);
	ck_assert(sample(t, "k2serve_time_to_first_token_seconds_bucket{le=\"120\"}") == 4);
	ck_assert(sample(t, "k2serve_time_to_first_token_seconds_bucket{le=\"+Inf\"}") == 5);
	ck_assert(sample(t, "k2serve_time_to_first_token_seconds_count") == 5);
	ck_assert_ptr_nonnull(strstr(t, "\nk2serve_time_to_first_token_seconds_sum 500.780000000\n"));
	ck_assert(sample(t, "k2serve_expert_hits_total{tier=\"device\"}") == 90);
	ck_assert(sample(t, "k2serve_expert_misses_total{tier=\"device\"}") == 10);
	ck_assert(sample(t, "k2serve_expert_hits_total{tier=\"r\\\"a\\\\m\"}") == 7);
	ck_assert(sample(t, "k2serve_prefetch_issued_total") == 50);
	ck_assert(sample(t, "k2serve_prefetch_useful_total") == 40);
	ck_assert(sample(t, "k2serve_read_bytes_total") == 123456789012.0);
	ck_assert(sample(t, "k2serve_requests_active") == 3);
	ck_assert(sample(t, "k2serve_requests_queued") == 2);
	ck_assert_ptr_nonnull(strstr(t, "# TYPE k2serve_time_to_first_token_seconds histogram\n"));
	ck_assert_ptr_nonnull(strstr(t, "# TYPE k2serve_requests_active gauge\n"));
	/* Buckets are cumulative: never decreasing, in order of their bounds. */
	double prev = 0;
	for (int b = 0; b < API_TTFT_BUCKETS; b++) {
		char series[96];
		snprintf(series, sizeof(series), "k2serve_time_to_first_token_seconds_bucket{le=\"%g\"}",
			 api_ttft_bounds[b]);
		double v = sample(t, series);
		EXPECT(v >= prev, "bucket %s = %g after %g", series, v, prev);
		prev = v;
	}
	free(t);
	printf("serve_api: %d metric samples\n", samples);

	/* n_tiers out of range is clamped; an unterminated name is cut at 16. */
	m.n_tiers = 99;
	memset(m.tier[2].name, 'x', sizeof(m.tier[2].name));
	t = api_metrics_text(&m, &len);
	ck_assert_ptr_nonnull(strstr(t, "{tier=\"xxxxxxxxxxxxxxxx\"}"));
	free(t);
	ck_assert_ptr_null(api_metrics_text(NULL, &len));
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("serve_api");
	TU_ADD_TESTS(tu_tcase(s, "requests", 60), test_chat_full, test_chat_defaults,
		     test_completions_valid, test_model_list, test_validation_errors,
		     test_surrogate_pair_and_body_limit);
	TU_ADD_TESTS(tu_tcase(s, "responses", 60), test_error_json, test_completion_objects,
		     test_sse_chat, test_sse_completions, test_models_health_ids,
		     test_out_of_memory);
	TU_ADD_TESTS(tu_tcase(s, "stop", 60), test_stop_basic, test_stop_long_and_errors,
		     test_stop_random);
	TU_ADD_TESTS(tu_tcase(s, "metrics", 60), test_metrics_text);
	return s;
}

int main(void)
{
	return tu_run_suite(suite());
}
