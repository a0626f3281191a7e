// serve_page_check.mjs — the page k2serve serves at GET / (serve/page/index.html),
// driven in headless Chromium against a running server:
//
//     node tests/serve_page_check.mjs BASE_URL OUT_DIR      (BASE_URL: http://127.0.0.1:PORT)
//
// It opens the page at 1280×800, waits for the model name of /v1/models in
// #model, sets #max-tokens to K2_PAGE_MAX_TOKENS (default 48), asks a question
// in #prompt with Enter, waits until the answer has streamed (#messages
// aria-busy back to "false", a non-empty .msg[data-role=assistant]), asks a
// second one and checks that its request carried the first turn, waits for the
// page's next GET /k2/experts, then takes a screenshot (OUT_DIR/serve_page.png)
// and checks its pixels against /k2/experts fetched at the same moment (and
// again after the screenshot: the two must agree, else it tries again):
//   - inside #expert-map's box, each pixel whose hue is within HUE_TOL of a
//     tier's hue (the page declares them in the canvas's data-tier-hues) and
//     whose chroma is at least MIN_CHROMA counts for that tier; the pixels of
//     all tiers together, divided by the number of experts, are one cell's
//     area, and each tier's pixels must make as many cells as the JSON has
//     experts in that tier (± TOL_CELLS); the JSON must report at least one
//     resident (not "disk") expert, since the answer computed some;
//   - the cell grid is where those pixels are: the centre of every cell
//     (layer row, expert column) must have its expert's tier colour, and the
//     lightness of the centres must fall with log(1 + hits) (correlation
//     below MAX_HEAT_R) when hits vary;
//   - the tooltip over the hottest resident cell names its layer, expert, tier
//     and hits;
//   - the page logged no console error, threw nothing, and fetched nothing
//     but the server's own URLs.
// Exits 0 with one summary line, or 1 with "serve_page_check: FAIL: …" (the
// screenshot is kept either way). Needs the packages of tests/node
// (puppeteer-core, pngjs) and Chromium ($CHROMIUM, else /usr/bin/chromium);
// K2_PAGE_TIMEOUT (seconds, default 120) bounds each answer.
import { createRequire } from "node:module";
import { mkdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "node/package.json"));
const puppeteer = require("puppeteer-core");
const { PNG } = require("pngjs");

const HUE_TOL = 18;         // degrees either side of a tier's hue
const MIN_CHROMA = 24;      // max - min of R, G, B (0-255): below it a pixel is grey (background, text)
const TOL_CELLS = (n) => Math.max(1, Math.floor(n / 100));
const MAX_HEAT_R = -0.7;    // lightness against log(1 + hits)
const QUESTIONS = ["What is a mixture of experts?", "And why cache the experts?"];

const [base0, outDir] = process.argv.slice(2);
if (!base0 || !outDir) {
	console.error("usage: node serve_page_check.mjs BASE_URL OUT_DIR");
	process.exit(2);
}
const base = base0.replace(/\/+$/, "");
const answerMs = 1000 * (Number(process.env.K2_PAGE_TIMEOUT) || 120);
const shot = join(outDir, "serve_page.png");

class CheckFailure extends Error {}
function fail(msg) { throw new CheckFailure(msg); }

async function getJSON(path) {
	let r;
	try {
		r = await fetch(base + path, { cache: "no-store" });
	} catch (err) {
		fail(`GET ${path}: ${err.cause ? err.cause.message : err.message}`);
	}
	const text = await r.text();
	if (!r.ok) fail(`GET ${path}: HTTP ${r.status}: ${text.slice(0, 300)}`);
	try {
		return JSON.parse(text);
	} catch {
		fail(`GET ${path}: not JSON: ${text.slice(0, 300)}`);
	}
}

/* The tier index of an RGB pixel (index into tiers) by its hue, or -1 (grey, or no tier's hue). */
function classify(r, g, b, hues) {
	const max = Math.max(r, g, b), min = Math.min(r, g, b), c = max - min;
	if (c < MIN_CHROMA) return -1;
	let h;
	if (max === r) h = 60 * (((g - b) / c + 6) % 6);
	else if (max === g) h = 60 * ((b - r) / c + 2);
	else h = 60 * ((r - g) / c + 4);
	let best = -1, bestD = HUE_TOL + 1e-9;
	hues.forEach((hue, i) => {
		const d = Math.min(Math.abs(h - hue), 360 - Math.abs(h - hue));
		if (d <= bestD) { best = i; bestD = d; }
	});
	return best;
}

function pearson(xs, ys) {
	const n = xs.length;
	const mx = xs.reduce((a, b) => a + b, 0) / n, my = ys.reduce((a, b) => a + b, 0) / n;
	let sxy = 0, sxx = 0, syy = 0;
	for (let i = 0; i < n; i++) {
		sxy += (xs[i] - mx) * (ys[i] - my);
		sxx += (xs[i] - mx) ** 2;
		syy += (ys[i] - my) ** 2;
	}
	return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : 0;
}

/* analyse(png, box, hues, j): the screenshot's map against /k2/experts `j`.
 * Returns { problems: [...], facts: {...} }; an empty list means it matches. */
function analyse(png, box, hueOf, j) {
	const problems = [];
	const nL = j.layers.length, nE = j.n_experts, total = nL * nE;
	const hues = j.tiers.map((t) => hueOf[t]);
	const tol = TOL_CELLS(total);
	const want = j.tiers.map(() => 0);
	for (const row of j.tier) for (const t of row) want[t]++;
	const resident = j.tiers.map((t, i) => (t === "disk" ? -1 : i)).filter((i) => i >= 0);
	const wantResident = resident.reduce((a, i) => a + want[i], 0);

	const x0 = Math.max(0, Math.floor(box.x)), y0 = Math.max(0, Math.floor(box.y));
	const x1 = Math.min(png.width, Math.ceil(box.x + box.width)), y1 = Math.min(png.height, Math.ceil(box.y + box.height));
	const pix = j.tiers.map(() => 0);
	let minX = Infinity, minY = Infinity, maxX = -1, maxY = -1;
	const at = (x, y) => {
		const o = 4 * (y * png.width + x);
		return [png.data[o], png.data[o + 1], png.data[o + 2]];
	};
	for (let y = y0; y < y1; y++)
		for (let x = x0; x < x1; x++) {
			const t = classify(...at(x, y), hues);
			if (t < 0) continue;
			pix[t]++;
			if (x < minX) minX = x;
			if (x > maxX) maxX = x;
			if (y < minY) minY = y;
			if (y > maxY) maxY = y;
		}
	const allPix = pix.reduce((a, b) => a + b, 0);
	const facts = { want, pix, wantResident, total, tol };
	if (allPix < total) {
		problems.push(`the map is not drawn: ${allPix} pixels in tier colours inside #expert-map ` +
			`(${box.width}×${box.height} at ${Math.round(box.x)},${Math.round(box.y)}) for ${total} experts`);
		return { problems, facts };
	}
	const area = allPix / total;
	const drawn = pix.map((p) => p / area);
	facts.drawn = drawn;
	facts.drawnResident = resident.reduce((a, i) => a + drawn[i], 0);
	j.tiers.forEach((t, i) => {
		if (Math.abs(drawn[i] - want[i]) > tol)
			problems.push(`tier ${t}: ${pix[i]} pixels make ${drawn[i].toFixed(1)} cells of ` +
				`${area.toFixed(1)} pixels, /k2/experts has ${want[i]} experts there (±${tol})`);
	});
	if (allPix < 0.1 * box.width * box.height)
		problems.push(`the cells cover ${allPix} of the ${box.width * box.height} pixels of #expert-map`);

	// the grid: nE columns and nL rows across the tier-coloured pixels
	const px = (maxX - minX + 1) / nE, py = (maxY - minY + 1) / nL;
	facts.grid = { x: minX, y: minY, px, py };
	if (px < 1 || py < 1) {
		problems.push(`the tier-coloured pixels span ${maxX - minX + 1}×${maxY - minY + 1}, less than one per cell of ${nE}×${nL}`);
		return { problems, facts };
	}
	const centre = (l, e) => [Math.floor(minX + (e + 0.5) * px), Math.floor(minY + (l + 0.5) * py)];
	facts.centre = centre;
	const wrong = [], heat = [], light = [];
	for (let l = 0; l < nL; l++)
		for (let e = 0; e < nE; e++) {
			const [cx, cy] = centre(l, e);
			const rgb = at(cx, cy);
			const t = classify(...rgb, hues);
			if (t !== j.tier[l][e])
				wrong.push(`layer ${j.layers[l]} expert ${e}: ${t < 0 ? "rgb(" + rgb + ")" : j.tiers[t]}, want ${j.tiers[j.tier[l][e]]}`);
			else if (j.hits) {
				heat.push(Math.log1p(j.hits[l][e]));
				light.push((Math.max(...rgb) + Math.min(...rgb)) / 2);
			}
		}
	facts.cellsRight = total - wrong.length;
	if (wrong.length > tol)
		problems.push(`${wrong.length} of ${total} cells are not in their expert's tier colour (±${tol}), e.g. ${wrong.slice(0, 4).join("; ")}`);
	if (new Set(heat).size >= 2) {
		facts.heatR = pearson(heat, light);
		if (facts.heatR > MAX_HEAT_R)
			problems.push(`the cells' lightness does not follow log(1 + hits): correlation ${facts.heatR.toFixed(2)}, want < ${MAX_HEAT_R}`);
	}
	return { problems, facts };
}

async function main() {
	mkdirSync(outDir, { recursive: true });
	const models = await getJSON("/v1/models");
	const name = models && Array.isArray(models.data) && models.data[0] && models.data[0].id;
	if (typeof name !== "string" || !name) fail(`GET /v1/models: no data[0].id in ${JSON.stringify(models).slice(0, 200)}`);

	const browser = await puppeteer.launch({
		executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
		headless: true,
		args: ["--no-sandbox", "--disable-dev-shm-usage", "--force-color-profile=srgb"],
		defaultViewport: { width: 1280, height: 800, deviceScaleFactor: 1 },
	});
	let page;
	try {
		page = await browser.newPage();
		const errors = [], chats = [];
		const origin = new URL(base).origin;
		page.on("console", (m) => {
			if (m.type() === "error") errors.push(`console: ${m.text()}${m.location().url ? " (" + m.location().url + ")" : ""}`);
		});
		page.on("pageerror", (err) => errors.push(`uncaught: ${err.message}`));
		page.on("request", (r) => {
			const u = r.url();
			if (!u.startsWith("data:") && new URL(u).origin !== origin) errors.push(`fetched an outside URL: ${u}`);
			if (r.method() === "POST" && u.endsWith("/v1/chat/completions")) {
				try { chats.push(JSON.parse(r.postData() || "")); } catch { chats.push(null); }
			}
		});
		page.on("response", (r) => {
			if (r.status() >= 400) errors.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
		});

		const resp = await page.goto(base + "/", { waitUntil: "load" });
		if (!resp || resp.status() !== 200) fail(`GET /: HTTP ${resp ? resp.status() : "no response"}`);
		await page.waitForFunction((n) => {
			const m = document.getElementById("model");
			return m && m.textContent.trim() === n;
		}, { timeout: 15000 }, name).catch(async () => {
			fail(`#model never showed "${name}" (it shows "${await page.$eval("#model", (m) => m.textContent).catch(() => "no #model")}")`);
		});
		for (const id of ["prompt", "send", "messages", "expert-map"])
			if (!(await page.$("#" + id))) fail(`the page has no #${id}`);

		const maxTokens = Number(process.env.K2_PAGE_MAX_TOKENS) || 48;
		if (!(await page.$("#max-tokens"))) fail("the page has no #max-tokens");
		await page.$eval("#max-tokens", (el, n) => { el.value = String(n); }, maxTokens);

		// ask(q): types q, presses Enter, waits for the answer; returns its text and how many updates drew it
		const ask = async (q) => {
			const before = await page.$$eval('#messages .msg[data-role="assistant"]', (a) => a.length);
			await page.evaluate(() => {
				window.__k2updates = 0;
				new MutationObserver(() => { window.__k2updates++; })
					.observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
			});
			await page.type("#prompt", q);
			await page.keyboard.press("Enter");
			const h = await page.waitForFunction((n) => {
				const box = document.getElementById("messages");
				const a = box.querySelectorAll('.msg[data-role="assistant"]');
				if (a.length <= n) return false;
				const last = a[a.length - 1];
				const alert = last.querySelector('[role="alert"]');
				if (alert) return { error: alert.textContent };
				if (box.getAttribute("aria-busy") !== "false") return false;
				return { text: last.querySelector(".text").textContent, updates: window.__k2updates };
			}, { timeout: answerMs, polling: 50 }, before).catch(async () => {
				fail(`no answer to "${q}" within ${answerMs / 1000} s; #messages: ` +
					JSON.stringify(await page.$eval("#messages", (m) => m.innerText).catch(() => "?")).slice(0, 400));
			});
			const a = await h.jsonValue();
			if (a.error) fail(`the page shows an error for "${q}": ${a.error}`);
			if (!a.text) fail(`the answer to "${q}" is empty`);
			return a;
		};
		const a1 = await ask(QUESTIONS[0]);
		const a2 = await ask(QUESTIONS[1]);
		if (chats.length !== 2) fail(`${chats.length} POSTs to /v1/chat/completions for 2 questions`);
		for (const c of chats)
			if (!c || c.stream !== true || c.max_tokens !== maxTokens)
				fail(`a chat request without "stream": true and "max_tokens": ${maxTokens}: ${JSON.stringify(c).slice(0, 200)}`);
		const turns = chats[1].messages;
		const roles = Array.isArray(turns) ? turns.map((m) => m.role).join(",") : "";
		if (roles !== "user,assistant,user" || turns[0].content !== QUESTIONS[0] ||
		    turns[1].content !== a1.text || turns[2].content !== QUESTIONS[1])
			fail(`the second request does not carry the first turn: ${JSON.stringify(turns).slice(0, 400)}`);

		// the map: drawn from a /k2/experts answer fetched after the streaming ended
		const waitRefresh = async () => {
			const r = await page.waitForResponse((x) => x.url() === base + "/k2/experts" || x.url().endsWith("/k2/experts"),
				{ timeout: 15000 }).catch(() => fail("the page fetched no /k2/experts within 15 s"));
			await r.buffer().catch(() => {});
			await page.evaluate(() => new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(ok))));
		};
		await waitRefresh();
		let j, png, box, hueOf, res;
		for (let attempt = 1; ; attempt++) {
			const j1 = await getJSON("/k2/experts");
			await page.screenshot({ path: shot, type: "png" });
			const j2 = await getJSON("/k2/experts");
			j = j1;
			if (JSON.stringify(j1.tier) !== JSON.stringify(j2.tier) || JSON.stringify(j1.hits) !== JSON.stringify(j2.hits)) {
				if (attempt < 4) { await waitRefresh(); continue; }
				fail("/k2/experts keeps changing with no request running");
			}
			const bad = !Array.isArray(j.layers) || !Array.isArray(j.tiers) || !Array.isArray(j.tier) ||
				j.tier.length !== j.layers.length || j.tier.some((row) => !Array.isArray(row) || row.length !== j.n_experts ||
					row.some((t) => !Number.isInteger(t) || t < 0 || t >= j.tiers.length));
			if (bad) fail(`/k2/experts is not of the documented shape: ${JSON.stringify(j).slice(0, 300)}`);
			png = PNG.sync.read(readFileSync(shot));
			const m = await page.$eval("#expert-map", (c) => {
				const r = c.getBoundingClientRect();
				return { x: r.x, y: r.y, width: r.width, height: r.height, hues: c.dataset.tierHues || "", dpr: window.devicePixelRatio };
			});
			box = { x: m.x * m.dpr, y: m.y * m.dpr, width: Math.round(m.width * m.dpr), height: Math.round(m.height * m.dpr), dpr: m.dpr };
			if (box.width < 1 || box.height < 1) fail(`#expert-map has no size (${m.width}×${m.height})`);
			if (box.x < 0 || box.y < 0 || box.x + box.width > png.width || box.y + box.height > png.height)
				fail(`#expert-map (${box.width}×${box.height} at ${Math.round(box.x)},${Math.round(box.y)}) is not inside the ${png.width}×${png.height} window`);
			try { hueOf = JSON.parse(m.hues); } catch { hueOf = null; }
			if (!hueOf) fail(`#expert-map declares no tier hues (data-tier-hues="${m.hues}")`);
			for (const t of j.tiers)
				if (typeof hueOf[t] !== "number") fail(`#expert-map declares no hue for tier "${t}" (data-tier-hues=${m.hues})`);
			for (const t of j.tiers)
				for (const u of j.tiers) {
					const d = Math.abs(hueOf[t] - hueOf[u]);
					if (t < u && Math.min(d, 360 - d) < 2 * HUE_TOL)
						fail(`tiers ${t} and ${u} have hues less than ${2 * HUE_TOL}° apart (data-tier-hues=${m.hues})`);
				}
			res = analyse(png, box, hueOf, j);
			if (res.facts.wantResident === 0)
				fail(`/k2/experts reports no resident expert after ${j.tokens} tokens: nothing to check the map against`);
			if (!res.problems.length || attempt >= 3) break;
			await waitRefresh();
		}
		if (res.problems.length) fail(res.problems.join("\n  "));

		// the tooltip over the hottest resident cell
		const f = res.facts;
		let hot = null;
		j.tier.forEach((row, l) => row.forEach((t, e) => {
			if (j.tiers[t] === "disk") return;
			const h = j.hits ? j.hits[l][e] : 0;
			if (!hot || h > hot.h) hot = { l, e, t, h };
		}));
		const [cx, cy] = f.centre(hot.l, hot.e);
		await page.mouse.move(cx / box.dpr, cy / box.dpr);
		const tip = await page.waitForFunction(() => {
			const t = document.querySelector('[role="tooltip"]');
			return t && !t.hidden && t.offsetParent !== null && t.textContent.trim() ? t.textContent : false;
		}, { timeout: 3000 }).then((x) => x.jsonValue()).catch(() => fail("no visible tooltip (role=tooltip) over the map"));
		const nums = (tip.match(/\d+/g) || []).map(Number);
		for (const [what, v] of [["layer", j.layers[hot.l]], ["expert", hot.e], ["hits", hot.h]])
			if (!nums.includes(v)) fail(`the tooltip over layer ${j.layers[hot.l]} expert ${hot.e} lacks its ${what} ${v}: "${tip}"`);
		if (!tip.includes(j.tiers[hot.t])) fail(`the tooltip over layer ${j.layers[hot.l]} expert ${hot.e} lacks its tier ${j.tiers[hot.t]}: "${tip}"`);
		await page.mouse.move(0, 0);

		if (errors.length) fail(`the page reported errors:\n  ${errors.join("\n  ")}`);
		const resident = j.tiers.filter((t) => t !== "disk");
		console.log(`serve_page_check: ok: model ${name}; answers of ${a1.text.length} and ${a2.text.length} characters ` +
			`in ${a1.updates} and ${a2.updates} updates; map ${j.layers.length}×${j.n_experts}: ` +
			`resident (${resident.join(", ")}) ${f.drawnResident.toFixed(1)} cells drawn / ${f.wantResident} in /k2/experts, ` +
			j.tiers.map((t, i) => `${t} ${f.drawn[i].toFixed(1)}/${f.want[i]}`).join(", ") +
			`; ${f.cellsRight}/${f.total} cell centres in their tier's colour` +
			(f.heatR !== undefined ? `; lightness vs log hits r=${f.heatR.toFixed(2)}` : "") +
			`; screenshot ${shot}`);
	} catch (err) {
		if (page) await page.screenshot({ path: shot, type: "png" }).catch(() => {});
		throw err;
	} finally {
		await browser.close().catch(() => {});
	}
}

const watchdog = setTimeout(() => {
	console.log(`serve_page_check: FAIL: still running after ${(2 * answerMs + 120000) / 1000} s`);
	process.exit(1);
}, 2 * answerMs + 120000);
main().then(() => {
	clearTimeout(watchdog);
	process.exit(0);
}, (err) => {
	console.log(`serve_page_check: FAIL: ${err instanceof CheckFailure ? err.message : err.stack || err}`);
	process.exit(1);
});
