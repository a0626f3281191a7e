// serve_load.mjs — a bounded load on a running k2serve, with plain fetch:
//
//     node tests/serve_load.mjs BASE_URL MODEL_ID PID [CLIENTS [ROUNDS [PER_ROUND [INFER MODEL_DIR]]]]
//
// ROUNDS (default 3) rounds; in each, CLIENTS (default 8) clients run
// together, each sending PER_ROUND (default 2) requests one after another,
// cycling through chat and completions, streamed and not, with small
// max_tokens. A 429 must carry Retry-After; the client waits that long and
// sends the request again (at most 100 times), so no request is lost. Every
// request must end in 200 with text and a finish_reason (streamed: SSE ending
// in data: [DONE]). Requests with the same endpoint, prompt and seed recur in
// every round, streamed and not, and with different neighbours: their texts
// must be equal (a sequence's tokens do not depend on what decodes beside it);
// with INFER and MODEL_DIR, each completions text must also equal what
// `INFER --model MODEL_DIR --prompt P -n N --temperature T --top-p 1 --seed S`
// prints (less its final newline), as it does for a request alone.
// After the first round and after the last, the server's resident set
// (VmRSS of /proc/PID/status) is read; the last may exceed the first by at
// most 5%. Then /health must show nothing active or queued, and /metrics must
// have counted every 200 and every 429 sent to the two endpoints.
// Prints the numbers; exits 0, or 1 after "serve_load: FAIL: …" lines.
// K2_LOAD_TIMEOUT (seconds, default 300) bounds each request.
import { readFileSync } from "node:fs";
import { execFileSync } from "node:child_process";

const [base0, modelId, pidArg, clientsArg, roundsArg, perArg, infer, modelDir] = process.argv.slice(2);
if (!base0 || !modelId || !pidArg || (infer && !modelDir)) {
	console.error("usage: node serve_load.mjs BASE_URL MODEL_ID PID [CLIENTS [ROUNDS [PER_ROUND [INFER MODEL_DIR]]]]");
	process.exit(2);
}
const base = base0.replace(/\/+$/, "");
const CLIENTS = Number(clientsArg) || 8;
const ROUNDS = Number(roundsArg) || 3;
const PER_ROUND = Number(perArg) || 2;
const RSS_GROWTH = 1.05;
const MAX_RETRIES = 100;
const timeoutMs = 1000 * (Number(process.env.K2_LOAD_TIMEOUT) || 300);

let fails = 0;
function fail(msg) {
	console.log(`serve_load: FAIL: ${msg}`);
	fails++;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function rssKiB() {
	const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pidArg}/status`, "utf8"));
	if (!m) throw new Error(`no VmRSS in /proc/${pidArg}/status`);
	return Number(m[1]);
}

const PROMPTS = ["Tell me about the sea.", "List some prime numbers:", "Once upon a time", "Why is the sky blue?"];
/* The i-th request of client c in round r. */
function request(c, i, r) {
	const n = c * PER_ROUND + i;
	const chat = (c + i) % 2 === 0;
	const stream = ((n >> 1) + r) % 2 === 0;  // the same request, streamed in one round, not in the next
	const p = n % PROMPTS.length;
	const seed = 100 + (n % 6);
	const body = { model: modelId, max_tokens: 8 + (n % 3) * 4, temperature: 0.9, top_p: 1, seed, stream };
	if (chat) body.messages = [{ role: "user", content: PROMPTS[p] }];
	else body.prompt = PROMPTS[p];
	const key = `${chat ? "chat" : "completions"} ${JSON.stringify(PROMPTS[p])} seed ${seed} max_tokens ${body.max_tokens}`;
	return { path: chat ? "/v1/chat/completions" : "/v1/completions", body, chat, stream, key };
}

/* infer's text for a completions request (memoised by key), or null without INFER. */
const inferTexts = new Map();
function inferText(q) {
	if (!infer || q.chat) return null;
	if (!inferTexts.has(q.key)) {
		const b = q.body;
		const out = execFileSync(infer, ["--model", modelDir, "--prompt", b.prompt, "-n", String(b.max_tokens),
			"--temperature", String(b.temperature), "--top-p", String(b.top_p), "--seed", String(b.seed)],
			{ encoding: "utf8", timeout: timeoutMs, stdio: ["ignore", "pipe", "pipe"] });
		inferTexts.set(q.key, out.endsWith("\n") ? out.slice(0, -1) : out);
	}
	return inferTexts.get(q.key);
}
let differ = 0, inferDiffer = 0;

const count = { ok: 0, busy: 0, streamed: 0 };
const okBy = { "/v1/chat/completions": 0, "/v1/completions": 0 };
const busyBy = { "/v1/chat/completions": 0, "/v1/completions": 0 };
const texts = new Map(); // key -> [text, where]

/* The SSE body of a streamed reply: its text and finish_reason, or a problem. */
function parseSSE(raw, chat) {
	const ev = raw.split("\n\n").filter((e) => e.length);
	if (!ev.length || ev[ev.length - 1] !== "data: [DONE]") return { problem: `does not end with data: [DONE]: ${JSON.stringify(raw.slice(-200))}` };
	let text = "", finish = null;
	for (const e of ev.slice(0, -1)) {
		// lines starting with ":" are SSE comments (keep-alives)
		const lines = e.split("\n").filter((l) => !l.startsWith(":"));
		if (!lines.length) continue;
		if (lines.length !== 1 || !lines[0].startsWith("data: "))
			return { problem: `an event that is not one "data: …" line: ${JSON.stringify(e.slice(0, 120))}` };
		let j;
		try { j = JSON.parse(lines[0].slice(6)); } catch { return { problem: `an event that is not JSON: ${JSON.stringify(e.slice(0, 120))}` }; }
		if (j.error) return { problem: `an error event: ${JSON.stringify(j.error)}` };
		for (const c of j.choices || []) {
			text += (chat ? c.delta?.content : c.text) ?? "";
			if (c.finish_reason) finish = c.finish_reason;
		}
	}
	return { text, finish };
}

async function one(c, i, r) {
	const q = request(c, i, r);
	const where = `round ${r + 1} client ${c} request ${i} (${q.key}${q.stream ? ", streamed" : ""})`;
	for (let attempt = 0; attempt <= MAX_RETRIES; attempt++) {
		let res, raw;
		try {
			res = await fetch(base + q.path, {
				method: "POST",
				headers: { "Content-Type": "application/json" },
				body: JSON.stringify(q.body),
				signal: AbortSignal.timeout(timeoutMs),
			});
			raw = await res.text();
		} catch (err) {
			return fail(`${where}: ${err.cause ? err.cause.message : err.message}`);
		}
		if (res.status === 429) {
			count.busy++;
			busyBy[q.path]++;
			const ra = res.headers.get("retry-after");
			if (ra === null || !/^\d+$/.test(ra.trim())) return fail(`${where}: 429 without a Retry-After of seconds (${ra}): ${raw.slice(0, 200)}`);
			await sleep(Math.max(1000 * Number(ra), 100));
			continue;
		}
		if (res.status !== 200) return fail(`${where}: HTTP ${res.status}: ${raw.slice(0, 300)}`);
		count.ok++;
		okBy[q.path]++;
		let text, finish;
		if (q.stream) {
			count.streamed++;
			const s = parseSSE(raw, q.chat);
			if (s.problem) return fail(`${where}: ${s.problem}`);
			({ text, finish } = s);
		} else {
			let j;
			try { j = JSON.parse(raw); } catch { return fail(`${where}: not JSON: ${raw.slice(0, 200)}`); }
			const ch = j.choices?.[0];
			text = q.chat ? ch?.message?.content : ch?.text;
			finish = ch?.finish_reason;
			if (typeof text !== "string") return fail(`${where}: no text: ${raw.slice(0, 300)}`);
		}
		if (!["stop", "length"].includes(finish)) fail(`${where}: finish_reason ${finish}`);
		const seen = texts.get(q.key);
		if (!seen) texts.set(q.key, [text, where]);
		else if (seen[0] !== text) {
			differ++;
			fail(`${where}: text ${JSON.stringify(text)}, but ${seen[1]} got ${JSON.stringify(seen[0])}`);
		}
		const want = inferText(q);
		if (want !== null && text !== want) {
			inferDiffer++;
			fail(`${where}: text ${JSON.stringify(text)}, infer ${JSON.stringify(want)}`);
		}
		return;
	}
	fail(`${where}: still 429 after ${MAX_RETRIES} tries`);
}

async function getText(path) {
	const r = await fetch(base + path, { signal: AbortSignal.timeout(30000) });
	return [r.status, await r.text()];
}

const rss = [];
const t0 = Date.now();
for (let r = 0; r < ROUNDS; r++) {
	const tr = Date.now();
	await Promise.all(Array.from({ length: CLIENTS }, async (_, c) => {
		for (let i = 0; i < PER_ROUND; i++) await one(c, i, r);
	}));
	rss.push(rssKiB());
	console.log(`round ${r + 1}: ${CLIENTS} clients × ${PER_ROUND} requests in ${((Date.now() - tr) / 1000).toFixed(1)} s; ` +
		`so far ${count.ok} answered (${count.streamed} streamed), ${count.busy} times 429; VmRSS ${rss[r]} kB`);
}
const want = CLIENTS * PER_ROUND * ROUNDS;
if (count.ok !== want) fail(`${count.ok} requests answered of ${want}`);
const growth = rss[rss.length - 1] / rss[0];
console.log(`VmRSS after round 1: ${rss[0]} kB, after round ${ROUNDS}: ${rss[rss.length - 1]} kB (×${growth.toFixed(4)}, at most ×${RSS_GROWTH}); ` +
	`${((Date.now() - t0) / 1000).toFixed(1)} s in all`);
console.log(`${texts.size} distinct requests: ${differ} answers differ from an earlier answer to the same request` +
	(infer ? `; ${inferDiffer} completions differ from infer's text (${inferTexts.size} checked)` : ""));
if (growth > RSS_GROWTH) fail(`VmRSS grew from ${rss[0]} kB to ${rss[rss.length - 1]} kB (×${growth.toFixed(4)} > ×${RSS_GROWTH})`);

// nothing left behind, and nothing lost on the way
const [hs, hb] = await getText("/health");
let h = null;
try { h = JSON.parse(hb); } catch { /* below */ }
if (hs !== 200 || !h || h.requests?.active !== 0 || h.requests?.queued !== 0)
	fail(`/health after the load: HTTP ${hs}: ${hb.slice(0, 300)}`);
const [ms, mb] = await getText("/metrics");
const sample = (name) => {
	const line = mb.split("\n").find((l) => l.startsWith(name + " "));
	return line === undefined ? NaN : Number(line.slice(name.length + 1));
};
if (ms !== 200) fail(`/metrics: HTTP ${ms}`);
for (const [path, ep] of [["/v1/chat/completions", "chat_completions"], ["/v1/completions", "completions"]]) {
	const ok = sample(`k2serve_requests_total{endpoint="${ep}",code="2xx"}`);
	const busy = sample(`k2serve_requests_total{endpoint="${ep}",code="4xx"}`);
	console.log(`/metrics ${ep}: 2xx ${ok} (sent ${okBy[path]}), 4xx ${busy} (429s seen ${busyBy[path]})`);
	if (ok !== okBy[path]) fail(`/metrics counts ${ok} 2xx replies on ${ep}, the clients got ${okBy[path]}`);
	if (busy !== busyBy[path]) fail(`/metrics counts ${busy} 4xx replies on ${ep}, the clients got ${busyBy[path]} 429s`);
}

if (fails) {
	console.log(`serve_load: ${fails} failure(s)`);
	process.exit(1);
}
console.log("serve_load: ok");
