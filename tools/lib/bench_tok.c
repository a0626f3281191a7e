/* bench_tok.c — `k2bench tok`: encode speed of the C tokenizer (infer/tok_*.c)
 * for Kimi-K2 (tiktoken.model) and DeepSeek-V3 (tokenizer.json) on the same
 * texts, and their ratio. Three corpora of --size bytes each:
 *
 *   fixtures  the texts of the reference encodings in the fixtures
 *             (kimi-k2/encodings.jsonl, more_encodings.jsonl,
 *             deepseek-v3/encodings.jsonl), one per line, repeated;
 *   english   English-like prose: words of a fixed list drawn with a fixed
 *             seed, capitals, punctuation, numbers, some contractions;
 *   cjk       Chinese-like text: Han characters drawn the same way, full-width
 *             punctuation, a little kana, Latin words and digits.
 *
 * The generated corpora are new text every run, so the tokenizers' piece
 * caches help as they would on text not seen before, no more (a run over the
 * same text again would be served from the cache). Per corpus: one untimed
 * warm-up run, then --runs timed runs, each tokenizer encoding the same text
 * in turn; MB/s is bytes / CPU seconds of this thread (the machine may be
 * shared), the median of the runs. */
#include "bench.h"
#include "cli.h"
#include "tokenizer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage_text[] =
	"usage: k2bench tok [options]\n"
	"\n"
	"Encode MB/s of the C tokenizer for Kimi-K2 (tiktoken.model) and DeepSeek-V3\n"
	"(tokenizer.json) on the same texts: the fixture texts repeated, an English-like\n"
	"and a CJK-like corpus; the median of the runs (CPU time) and kimi/deepseek.\n"
	"\n"
	"  --tokenizers DIR  folder holding kimi-k2/ and deepseek-v3/ (default:\n"
	"                    $K2_TOKENIZERS, else tests/fixtures/tokenizers)\n"
	"  --kimi DIR        Kimi-K2's tokenizer folder (default: TOKENIZERS/kimi-k2)\n"
	"  --deepseek DIR    DeepSeek-V3's tokenizer folder (default:\n"
	"                    TOKENIZERS/deepseek-v3)\n"
	"  --size SIZE       bytes per corpus (default 4M)\n"
	"  --runs N          timed encodes per corpus and tokenizer (default 5)\n"
	"  --json            one JSON line instead of the table\n"
	"  --help            this text\n";

#define N_CORPORA 3
#define N_TOKS 2

static double thread_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A growing text buffer; on allocation failure `bad` is set and text stops. */
struct buf {
	char *p;
	size_t len, cap;
	int bad;
};

static void buf_cat(struct buf *b, const char *s, size_t n)
{
	if (b->bad)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 1 << 16;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->bad = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void buf_str(struct buf *b, const char *s)
{
	buf_cat(b, s, strlen(s));
}

/* Appends the "text" of every line of a jsonl file. 0, or -1 with a message
 * on stderr. */
static int add_jsonl(struct buf *b, const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "k2bench tok: %s: cannot open\n", path);
		return -1;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t ll;
	int n = 0;
	while ((ll = getline(&line, &cap, f)) > 0) {
		json_t *o = json_loadb(line, (size_t)ll, 0, NULL);
		json_t *t = json_object_get(o, "text");
		if (json_is_string(t)) {
			buf_cat(b, json_string_value(t), json_string_length(t));
			buf_str(b, "\n");
			n++;
		}
		json_decref(o);
	}
	free(line);
	fclose(f);
	if (!n)
		fprintf(stderr, "k2bench tok: %s: no texts\n", path);
	return n ? 0 : -1;
}

static uint32_t rng_state = 0x2545f491u;

static uint32_t rng(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state % n;
}

static const char *const english_words[] = {
	"the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on",
	"are", "with", "as", "I", "his", "they", "be", "at", "one", "have", "this", "from", "or",
	"had", "by", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all",
	"there", "when", "up", "use", "your", "how", "said", "an", "each", "she", "which", "do",
	"their", "time", "if", "will", "way", "about", "many", "then", "them", "write", "would",
	"like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look",
	"more", "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people",
	"my", "over", "know", "water", "than", "call", "first", "who", "may", "down", "side",
	"been", "now", "find", "model", "expert", "token", "memory", "layer", "weights", "cache",
	"throughput", "latency", "filesystem", "inference", "tokenizer", "benchmark", "mixture",
	"attention", "router", "gradient", "parameters", "distributed", "compression", "kernel",
	"question", "answer", "because", "through", "between", "important", "different",
	"following", "without", "government", "development", "information", "understanding",
	"it's", "don't", "can't", "we're", "they'll", "I'm", "you'd", "isn't", "wasn't",
};

/* English-like lines of 6-30 words: sentences, a capital after each stop,
 * numbers and the odd quoted or parenthesised word. */
static void make_english(struct buf *b, size_t size)
{
	const size_t nw = sizeof(english_words) / sizeof(english_words[0]);
	while (!b->bad && b->len < size) {
		int words = 6 + (int)rng(25), cap = 1;
		for (int i = 0; i < words; i++) {
			const char *w = english_words[rng((uint32_t)nw)];
			if (i)
				buf_str(b, " ");
			uint32_t r = rng(40);
			if (r == 0) {
				char num[16];
				snprintf(num, sizeof(num), "%u", rng(r % 2 ? 100 : 100000));
				buf_str(b, num);
				continue;
			}
			if (r == 1)
				buf_str(b, "(");
			if (cap) {
				char c = w[0] >= 'a' && w[0] <= 'z' ? (char)(w[0] - 32) : w[0];
				buf_cat(b, &c, 1);
				buf_str(b, w + 1);
			} else {
				buf_str(b, w);
			}
			cap = 0;
			if (r == 1)
				buf_str(b, ")");
			else if (r < 5)
				buf_str(b, ",");
			else if (r < 8 || i == words - 1) {
				buf_str(b, r == 5 ? "?" : ".");
				cap = 1;
			}
		}
		buf_str(b, rng(4) ? "\n" : "\n\n");
	}
}

/* 500 frequent Chinese characters. */
static const char han_chars[] =
	"的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过"
	"家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所"
	"本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全"
	"工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教"
	"西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性"
	"通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲"
	"界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认"
	"算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红"
	"治决周保达办运武半候七必城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写"
	"呢识极令黄德收脸钱党倒未持取设始版双历越史商千片容研像找友孩站广改议形委早房音火际则首";

static const char *const cjk_punct[] = {"，", "。", "、", "：", "；", "！", "？", "「", "」", "（", "）"};
static const char *const cjk_other[] = {"的な", "です", "ます", "カタカナ", "Kimi", "MoE", "GPU",
					"Python", "2025", "3.14", "K2", "API"};

/* Chinese-like lines: runs of 2-20 Han characters between full-width
 * punctuation, now and then a kana word, a Latin word or a number. */
static void make_cjk(struct buf *b, size_t size)
{
	const uint32_t nh = (uint32_t)(sizeof(han_chars) - 1) / 3; /* each 3 bytes in UTF-8 */
	const uint32_t np = sizeof(cjk_punct) / sizeof(cjk_punct[0]);
	const uint32_t no = sizeof(cjk_other) / sizeof(cjk_other[0]);
	while (!b->bad && b->len < size) {
		int runs = 2 + (int)rng(8);
		for (int i = 0; i < runs; i++) {
			for (int k = 2 + (int)rng(19); k > 0; k--)
				buf_cat(b, han_chars + 3 * rng(nh), 3);
			if (rng(5) == 0)
				buf_str(b, cjk_other[rng(no)]);
			buf_str(b, cjk_punct[rng(np)]);
		}
		buf_str(b, "\n");
	}
}

/* The fixture texts, once each, one per line. */
static int read_fixtures(struct buf *b, const char *kimi_dir, const char *ds_dir)
{
	if (add_jsonl(b, kimi_dir, "encodings.jsonl") ||
	    add_jsonl(b, kimi_dir, "more_encodings.jsonl") || add_jsonl(b, ds_dir, "encodings.jsonl"))
		return -1;
	return b->bad ? -1 : 0;
}

struct result {
	double mbs;     /* median MB/s of CPU time */
	size_t ids;     /* ids of the last run's text */
	size_t bytes;   /* its bytes */
};

/* Encodes text with tok; *mbs gets bytes / CPU seconds / 1e6. 0 or -1. */
static int encode_timed(inf_tok *tok, const char *text, size_t len, double *mbs, size_t *n_ids)
{
	int32_t *ids;
	k2_err err = {{0}};
	double t0 = thread_cpu();
	if (inf_tok_encode(tok, text, len, &ids, n_ids, &err) < 0) {
		fprintf(stderr, "k2bench tok: %s\n", err.msg);
		return -1;
	}
	double dt = thread_cpu() - t0;
	free(ids);
	*mbs = len / (dt > 1e-9 ? dt : 1e-9) / 1e6;
	return 0;
}

/* Corpus c for run `run` (-1: the warm-up) into b: the fixture texts are
 * the same every run (they are a repetition anyway); the generated corpora
 * are new text each run, from a seed of (c, run), the same for both
 * tokenizers. */
static void make_corpus(int c, int run, const struct buf *fixtures, size_t size, struct buf *b)
{
	b->len = 0;
	rng_state = 0x2545f491u ^ (uint32_t)(c * 7919 + run + 1) * 2654435761u;
	if (!rng_state)
		rng_state = 1;
	if (c == 0)
		while (!b->bad && b->len < size)
			buf_cat(b, fixtures->p, fixtures->len);
	else if (c == 1)
		make_english(b, size);
	else
		make_cjk(b, size);
	if (b->len > size)
		b->len = size; /* may cut a character: bytes are bytes to both */
}

static inf_tok *load(const char *dir, double *ms)
{
	inf_tok *t = NULL;
	k2_err err = {{0}};
	double t0 = thread_cpu();
	if (inf_tok_open_dir(dir, &t, &err) < 0) {
		fprintf(stderr, "k2bench tok: %s\n", err.msg);
		return NULL;
	}
	*ms = (thread_cpu() - t0) * 1e3;
	return t;
}

int bench_tok_main(int argc, char **argv)
{
	const char *prog = "k2bench tok";
	const char *tokdir = getenv("K2_TOKENIZERS");
	const char *kimi_opt = NULL, *ds_opt = NULL;
	uint64_t size = 4u << 20;
	long runs = 5;
	int json = 0, bad = 0;
	if (!tokdir || !*tokdir)
		tokdir = "tests/fixtures/tokenizers";
	for (int i = 1; i < argc; i++) {
		const char *v;
		if (strcmp(argv[i], "--help") == 0) {
			k2cli_usage(stdout, usage_text);
			return 0;
		}
#define OPT(name) ((v = k2cli_opt_value(prog, argc, argv, &i, name, &bad)) != NULL)
		if (OPT("--tokenizers"))
			tokdir = v;
		else if (OPT("--kimi"))
			kimi_opt = v;
		else if (OPT("--deepseek"))
			ds_opt = v;
		else if (OPT("--size")) {
			if (k2cli_parse_size(prog, "--size", v, 1024, 1ull << 30, &size) < 0)
				return 2;
		} else if (OPT("--runs")) {
			if (k2cli_parse_long(prog, "--runs", v, 1, 100, &runs) < 0)
				return 2;
		} else if (strcmp(argv[i], "--json") == 0) {
			json = 1;
		} else {
			if (!bad)
				fprintf(stderr, "%s: unknown option '%s'\n", prog, argv[i]);
			return 2;
		}
#undef OPT
	}
	char kimi_dir[4096], ds_dir[4096];
	snprintf(kimi_dir, sizeof(kimi_dir), "%s", kimi_opt ? kimi_opt : tokdir);
	snprintf(ds_dir, sizeof(ds_dir), "%s", ds_opt ? ds_opt : tokdir);
	if (!kimi_opt)
		strncat(kimi_dir, "/kimi-k2", sizeof(kimi_dir) - strlen(kimi_dir) - 1);
	if (!ds_opt)
		strncat(ds_dir, "/deepseek-v3", sizeof(ds_dir) - strlen(ds_dir) - 1);

	static const char *const tok_names[N_TOKS] = {"kimi-k2", "deepseek-v3"};
	static const char *const corpus_names[N_CORPORA] = {"fixtures", "english", "cjk"};
	double load_ms[N_TOKS];
	inf_tok *toks[N_TOKS] = {load(kimi_dir, &load_ms[0]), NULL};
	if (toks[0])
		toks[1] = load(ds_dir, &load_ms[1]);
	struct buf fixtures = {0}, text = {0};
	struct result res[N_CORPORA][N_TOKS];
	double *mbs = calloc((size_t)(N_TOKS * runs), sizeof(*mbs));
	int rc = 1;
	if (!mbs || !toks[0] || !toks[1] || read_fixtures(&fixtures, kimi_dir, ds_dir))
		goto out;
	for (int c = 0; c < N_CORPORA; c++) {
		for (int run = -1; run < runs; run++) {
			make_corpus(c, run, &fixtures, size, &text);
			if (text.bad) {
				fprintf(stderr, "%s: out of memory for the %s corpus\n", prog,
					corpus_names[c]);
				goto out;
			}
			for (int k = 0; k < N_TOKS; k++) {
				double r;
				if (encode_timed(toks[k], text.p, text.len, &r, &res[c][k].ids) < 0)
					goto out;
				res[c][k].bytes = text.len;
				if (run >= 0)
					mbs[k * runs + run] = r;
			}
		}
		for (int k = 0; k < N_TOKS; k++)
			res[c][k].mbs = bench_median(mbs + k * runs, (size_t)runs);
	}
	if (json) {
		printf("{\"bench\":\"tok\",\"bytes\":%llu,\"runs\":%ld,\"load_ms\":{\"kimi-k2\":%.1f,"
		       "\"deepseek-v3\":%.1f},\"corpora\":[",
		       (unsigned long long)size, runs, load_ms[0], load_ms[1]);
		for (int c = 0; c < N_CORPORA; c++)
			printf("%s{\"name\":\"%s\",\"kimi-k2\":{\"mb_s\":%.2f,\"ids\":%zu},"
			       "\"deepseek-v3\":{\"mb_s\":%.2f,\"ids\":%zu},\"ratio\":%.3f}",
			       c ? "," : "", corpus_names[c], res[c][0].mbs, res[c][0].ids,
			       res[c][1].mbs, res[c][1].ids, res[c][0].mbs / res[c][1].mbs);
		printf("]}\n");
	} else {
		printf("k2bench tok: %llu bytes per corpus, median of %ld runs, MB/s of CPU time\n"
		       "load: kimi-k2 %.0f ms, deepseek-v3 %.0f ms (CPU)\n\n",
		       (unsigned long long)size, runs, load_ms[0], load_ms[1]);
		printf("%-10s %12s %12s %10s %16s %16s\n", "corpus", tok_names[0], tok_names[1],
		       "kimi/ds", "kimi bytes/id", "ds bytes/id");
		for (int c = 0; c < N_CORPORA; c++)
			printf("%-10s %12.1f %12.1f %10.2f %16.2f %16.2f\n", corpus_names[c],
			       res[c][0].mbs, res[c][1].mbs, res[c][0].mbs / res[c][1].mbs,
			       (double)res[c][0].bytes / (double)res[c][0].ids,
			       (double)res[c][1].bytes / (double)res[c][1].ids);
	}
	rc = 0;
out:
	free(mbs);
	free(fixtures.p);
	free(text.p);
	inf_tok_free(toks[0]);
	inf_tok_free(toks[1]);
	return rc;
}
