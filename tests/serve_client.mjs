// serve_client.mjs — k2serve through the official OpenAI client (the `openai`
// package of tests/node), checked against bin/infer on the same mount:
//
//     node tests/serve_client.mjs BASE_URL MODEL_ID MODEL_DIR INFER
//
//   1. models.list() lists MODEL_ID; models.retrieve(MODEL_ID) returns it;
//   2. chat.completions.create, greedy, not streamed: a chat.completion with
//      an assistant message, a finish_reason and usage that adds up; streamed
//      with stream_options.include_usage: the deltas (the first with role
//      "assistant") concatenate to the same content, and the usage chunk
//      equals the non-streamed usage;
//   3. completions.create, streamed and not, for a greedy run, two seeds at
//      temperature 1 and one at 0.7 with top_p 0.9: each text equals what
//      `INFER --model MODEL_DIR --prompt P -n N --temperature T --top-p P
//      --seed S` prints (less its final newline), and the two seeds differ;
//   4. a stop string taken from the greedy text: the text ends right before
//      its first occurrence, finish_reason "stop";
//   5. an unknown model: the client raises a 404 whose code is model_not_found.
// Prints one line per check; exits 0, or 1 after "serve_client: FAIL: …"
// lines naming what differs. K2_CLIENT_TIMEOUT (seconds, default 300) bounds
// each request.
import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "node/package.json"));
const { OpenAI } = require("openai");

const [base0, modelId, modelDir, infer] = process.argv.slice(2);
if (!base0 || !modelId || !modelDir || !infer) {
	console.error("usage: node serve_client.mjs BASE_URL MODEL_ID MODEL_DIR INFER");
	process.exit(2);
}
const timeoutMs = 1000 * (Number(process.env.K2_CLIENT_TIMEOUT) || 300);
const client = new OpenAI({
	baseURL: base0.replace(/\/+$/, "") + "/v1",
	apiKey: "k2serve-test",
	maxRetries: 0, // a 429 or 5xx is a finding here, not something to hide
	timeout: timeoutMs,
});

let fails = 0;
function fail(msg) {
	console.log(`serve_client: FAIL: ${msg}`);
	fails++;
}
const show = (s) => JSON.stringify(s.length > 160 ? s.slice(0, 160) + "…" : s);
/* Where a and b first differ, for a message. */
function firstDiff(a, b) {
	const ca = Array.from(a), cb = Array.from(b);
	let i = 0;
	while (i < ca.length && i < cb.length && ca[i] === cb[i]) i++;
	return `first difference at character ${i}: ${show(ca.slice(i, i + 20).join(""))} vs ${show(cb.slice(i, i + 20).join(""))}`;
}
function usageAddsUp(u, where) {
	if (!u || !Number.isInteger(u.prompt_tokens) || !Number.isInteger(u.completion_tokens) ||
	    u.total_tokens !== u.prompt_tokens + u.completion_tokens || u.prompt_tokens < 1) {
		fail(`${where}: usage ${JSON.stringify(u)} does not add up`);
		return false;
	}
	return true;
}

/* What bin/infer prints for these parameters, less the newline it ends with. */
function inferText(prompt, n, temperature, topP, seed) {
	const args = ["--model", modelDir, "--prompt", prompt, "-n", String(n),
		"--temperature", String(temperature), "--top-p", String(topP), "--seed", String(seed)];
	const out = execFileSync(infer, args, { encoding: "utf8", timeout: timeoutMs, stdio: ["ignore", "pipe", "pipe"] });
	if (!out.endsWith("\n")) fail(`infer ${args.join(" ")}: the output does not end with a newline`);
	return out.endsWith("\n") ? out.slice(0, -1) : out;
}

async function check(name, fn) {
	try {
		await fn();
	} catch (err) {
		fail(`${name}: ${err.constructor.name}: ${err.status ? `HTTP ${err.status} ` : ""}${err.message}`);
	}
}

// 1. models
await check("models", async () => {
	const ids = [];
	for await (const m of client.models.list()) ids.push(m.id);
	if (!ids.includes(modelId)) fail(`models.list(): ${JSON.stringify(ids)} lacks ${modelId}`);
	const m = await client.models.retrieve(modelId);
	if (m.id !== modelId || m.object !== "model") fail(`models.retrieve(${modelId}): ${JSON.stringify(m)}`);
	console.log(`models: ${JSON.stringify(ids)}`);
});

// 2. chat, not streamed and streamed
await check("chat", async () => {
	const req = {
		model: modelId,
		messages: [
			{ role: "system", content: "You are a terse assistant." },
			{ role: "user", content: "Name three colours." },
		],
		max_tokens: 12, temperature: 0, seed: 0,
	};
	const r = await client.chat.completions.create(req);
	const c = r.choices?.[0];
	if (r.object !== "chat.completion" || !String(r.id).startsWith("chatcmpl-") || r.model !== modelId)
		fail(`chat: object/id/model ${r.object} ${r.id} ${r.model}`);
	if (!c || c.message?.role !== "assistant" || typeof c.message.content !== "string")
		return fail(`chat: no assistant message: ${JSON.stringify(r).slice(0, 300)}`);
	if (!["stop", "length"].includes(c.finish_reason)) fail(`chat: finish_reason ${c.finish_reason}`);
	if (usageAddsUp(r.usage, "chat")) {
		if (r.usage.completion_tokens > 12) fail(`chat: ${r.usage.completion_tokens} completion tokens for max_tokens 12`);
		if (c.finish_reason === "length" && r.usage.completion_tokens !== 12)
			fail(`chat: finish_reason length after ${r.usage.completion_tokens} of 12 tokens`);
	}

	const s = await client.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
	let text = "", role = null, usage = null, finish = null, chunks = 0;
	for await (const ch of s) {
		chunks++;
		if (ch.object !== "chat.completion.chunk") fail(`chat stream: chunk object ${ch.object}`);
		if (ch.usage) usage = ch.usage;
		for (const d of ch.choices) {
			if (d.delta?.role && role === null) role = d.delta.role;
			if (typeof d.delta?.content === "string") text += d.delta.content;
			if (d.finish_reason) finish = d.finish_reason;
		}
	}
	if (role !== "assistant") fail(`chat stream: first role ${role}`);
	if (text !== c.message.content)
		fail(`chat stream: text ${show(text)} differs from the non-streamed ${show(c.message.content)}; ${firstDiff(text, c.message.content)}`);
	if (finish !== c.finish_reason) fail(`chat stream: finish_reason ${finish}, not streamed ${c.finish_reason}`);
	if (!usage) fail("chat stream: no usage chunk despite stream_options.include_usage");
	else if (JSON.stringify(usage) !== JSON.stringify(r.usage))
		fail(`chat stream: usage ${JSON.stringify(usage)}, not streamed ${JSON.stringify(r.usage)}`);
	console.log(`chat: ${show(c.message.content)} (${c.finish_reason}, ${JSON.stringify(r.usage)}); streamed in ${chunks} chunks: same`);
});

// 3. completions against infer
const prompt = "The capital of France is";
const N = 24;
const cases = [
	{ temperature: 0, top_p: 1, seed: 0 },
	{ temperature: 1, top_p: 1, seed: 1 },
	{ temperature: 1, top_p: 1, seed: 2 },
	{ temperature: 0.7, top_p: 0.9, seed: 5 },
];
const texts = [];
for (const p of cases) {
	const tag = `completions T=${p.temperature} top_p=${p.top_p} seed=${p.seed}`;
	await check(tag, async () => {
		const want = inferText(prompt, N, p.temperature, p.top_p, p.seed);
		texts.push(want);
		const req = { model: modelId, prompt, max_tokens: N, ...p };
		const r = await client.completions.create(req);
		const c = r.choices?.[0];
		if (r.object !== "text_completion" || !c || typeof c.text !== "string")
			return fail(`${tag}: not a text_completion: ${JSON.stringify(r).slice(0, 300)}`);
		if (c.text !== want)
			fail(`${tag}: not streamed ${show(c.text)}, infer ${show(want)}; ${firstDiff(c.text, want)}`);
		if (usageAddsUp(r.usage, tag) && c.finish_reason === "length" && r.usage.completion_tokens !== N)
			fail(`${tag}: finish_reason length after ${r.usage.completion_tokens} of ${N} tokens`);

		const s = await client.completions.create({ ...req, stream: true });
		let text = "", finish = null;
		for await (const ch of s) {
			for (const d of ch.choices) {
				text += d.text ?? "";
				if (d.finish_reason) finish = d.finish_reason;
			}
		}
		if (text !== want) fail(`${tag}: streamed ${show(text)}, infer ${show(want)}; ${firstDiff(text, want)}`);
		if (finish !== c.finish_reason) fail(`${tag}: streamed finish_reason ${finish}, not streamed ${c.finish_reason}`);
		console.log(`${tag}: ${show(want)} (${c.finish_reason}): server (streamed and not) = infer`);
	});
}
if (texts.length === cases.length && texts[1] === texts[2])
	fail(`seeds 1 and 2 at temperature 1 gave the same ${N} tokens: ${show(texts[1])}`);

// 4. a stop string from the greedy text
await check("stop", async () => {
	const greedy = Array.from(texts[0] ?? "");
	// three characters from the middle, none of them blank
	let k = Math.floor(greedy.length / 2);
	while (k + 3 <= greedy.length && /\s/.test(greedy.slice(k, k + 3).join(""))) k++;
	if (k + 3 > greedy.length) return fail(`stop: the greedy text ${show(texts[0] ?? "")} is too short`);
	const stop = greedy.slice(k, k + 3).join("");
	const whole = greedy.join("");
	const want = whole.slice(0, whole.indexOf(stop));
	const r = await client.completions.create({ model: modelId, prompt, max_tokens: N, temperature: 0, seed: 0, stop: [stop] });
	const c = r.choices?.[0];
	if (c?.text !== want || c?.finish_reason !== "stop")
		fail(`stop ${show(stop)}: got ${show(c?.text ?? "")} (${c?.finish_reason}), want ${show(want)} (stop)`);
	const s = await client.completions.create({ model: modelId, prompt, max_tokens: N, temperature: 0, seed: 0, stop, stream: true });
	let text = "", finish = null;
	for await (const ch of s)
		for (const d of ch.choices) {
			text += d.text ?? "";
			if (d.finish_reason) finish = d.finish_reason;
		}
	if (text !== want || finish !== "stop")
		fail(`stop ${show(stop)} streamed: got ${show(text)} (${finish}), want ${show(want)} (stop)`);
	console.log(`stop ${show(stop)}: ${show(want)} (stop), streamed and not`);
});

// 5. an unknown model through the client's error path
await check("unknown model", async () => {
	try {
		await client.completions.create({ model: "no-such-model", prompt, max_tokens: 2, temperature: 0 });
		fail("unknown model: the request succeeded");
	} catch (err) {
		if (err.status !== 404 || err.code !== "model_not_found")
			fail(`unknown model: ${err.constructor.name} status ${err.status} code ${err.code}: ${err.message}`);
		else console.log(`unknown model: ${err.constructor.name} 404 model_not_found: ${err.message}`);
	}
});

if (fails) {
	console.log(`serve_client: ${fails} failure(s)`);
	process.exit(1);
}
console.log("serve_client: ok");
