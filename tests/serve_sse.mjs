// serve_sse.mjs — reads a server-sent-event stream that curl saved from
// k2serve (POST /v1/chat/completions or /v1/completions with "stream": true)
// and prints one JSON line summing it up, for the shell scripts to check:
//
//     node tests/serve_sse.mjs FILE
//
//   {"events": n,            data events, [DONE] included
//    "done": bool,           the last event is "data: [DONE]" and no other is
//    "text": "…",            the choices' text (chat: delta.content) concatenated
//    "objects": [...],       the distinct "object" fields of the chunks
//    "finish": "stop"|…,     the last non-null finish_reason (null: none)
//    "usage": {…}|null,      the usage of the chunk that has one (non-null)
//    "role": "assistant"|null, chat: the first delta's role
//    "error": {…}|null,      the error object of an {"error": …} event
//    "error_before_done": bool, that event is the last one before [DONE]
//    "problems": ["…"]}      what breaks the framing: lines other than
//                            "data: …", events that are not JSON, data after
//                            [DONE], a stream not ending in "\n\n"
import { readFileSync } from "node:fs";

const file = process.argv[2];
if (!file) {
	console.error("usage: node serve_sse.mjs FILE");
	process.exit(2);
}
const raw = readFileSync(file, "utf8");
const out = {
	events: 0, done: false, text: "", objects: [], finish: null, usage: null,
	role: null, error: null, error_before_done: false, problems: [],
};
if (raw.length && !raw.endsWith("\n\n")) out.problems.push("the stream does not end with a blank line");
const events = raw.split("\n\n").filter((e) => e.length);
let last = null;
for (const [i, ev] of events.entries()) {
	const lines = ev.split("\n");
	const data = [];
	for (const l of lines) {
		if (l.startsWith("data: ")) data.push(l.slice(6));
		else if (l.startsWith(":")) continue; // an SSE comment (keep-alive)
		else out.problems.push(`event ${i}: a line that is not "data: …": ${JSON.stringify(l.slice(0, 120))}`);
	}
	if (!data.length) continue;
	out.events++;
	const d = data.join("\n");
	if (out.done) out.problems.push(`event ${i} after [DONE]: ${d.slice(0, 120)}`);
	if (d === "[DONE]") {
		out.done = true;
		if (last === "error") out.error_before_done = true;
		last = "done";
		continue;
	}
	let j;
	try {
		j = JSON.parse(d);
	} catch {
		out.problems.push(`event ${i} is not JSON: ${d.slice(0, 120)}`);
		last = "bad";
		continue;
	}
	if (j.error) {
		out.error = j.error;
		last = "error";
		continue;
	}
	last = "chunk";
	if (j.object && !out.objects.includes(j.object)) out.objects.push(j.object);
	if (j.usage) out.usage = j.usage;
	for (const c of j.choices || []) {
		if (c.delta) {
			if (c.delta.role && out.role === null) out.role = c.delta.role;
			if (typeof c.delta.content === "string") out.text += c.delta.content;
		} else if (typeof c.text === "string") {
			out.text += c.text;
		}
		if (c.finish_reason) out.finish = c.finish_reason;
	}
}
console.log(JSON.stringify(out));
