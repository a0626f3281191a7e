# tests/serve_helpers.sh — sourced by the scripts that test bin/k2serve over
# HTTP (it_serve.sh, it_serve_load.sh). Expects $here (the tests folder) and
# $name (the script's name, which starts every line these helpers print).
# Defaults K2_BIN and K2_TOKENIZERS and sets $bin, $tokdir.
#
#   serve_require          exits 77 (skipped, with the reason) unless node, curl,
#                          tests/node's openai package, /dev/fuse, bin/k2gen and
#                          the DeepSeek-V3 tokenizer are here; exits 1 when
#                          bin/k2serve, k2fs or k2pack is not built
#   serve_scratch          $work, a trap that kills the processes in $pids,
#                          unmounts $mounted and removes $work (kept, and named,
#                          when a check failed); $fails and fail()
#   serve_model            the k2gen model with the DeepSeek-V3 tokenizer (as
#                          it_infer.sh 3b makes it), packed and mounted: $model
#   serve_start LOG ARGS…  k2serve --model $model --listen 127.0.0.1:<free port>
#                          ARGS…, retried on a port race; $spid, $port, $base
#   serve_stop [SECONDS]   SIGTERM to $spid; its exit status ($src; 137: it was
#                          still running after SECONDS, default 10, and was killed)
#   http OUT METHOD PATH [curl args…]
#                          one request with curl: body in OUT, headers in
#                          OUT.hdr; prints the status (000: no reply)
#   jget FILE EXPR         prints EXPR (JavaScript, the parsed JSON is j) over
#                          FILE's JSON; "(not JSON)" when it does not parse
#   health_field EXPR      jget over GET /health
#   metric NAME            a sample's value from GET /metrics (NAME with labels)

# shellcheck shell=sh disable=SC2034,SC2154 # the variables set here are the callers'
: "${K2_BIN:=$here/../bin}" "${K2_TOKENIZERS:=$here/fixtures/tokenizers}"
bin=$K2_BIN
tokdir=$K2_TOKENIZERS/deepseek-v3

serve_require() {
	for c in node curl fusermount3; do
		command -v "$c" >/dev/null 2>&1 || { echo "$name: skipped: $c is not installed"; exit 77; }
	done
	if [ ! -d "$here/node/node_modules/openai" ]; then
		echo "$name: skipped: tests/node/node_modules/openai is missing (cd tests/node && npm ci)"
		exit 77
	fi
	if [ ! -c /dev/fuse ] || [ ! -r /dev/fuse ] || [ ! -w /dev/fuse ]; then
		echo "$name: skipped: /dev/fuse is not usable here"
		exit 77
	fi
	[ -x "$bin/k2gen" ] || { echo "$name: skipped: $bin/k2gen is not built"; exit 77; }
	[ -f "$tokdir/tokenizer.json" ] || { echo "$name: skipped: no tokenizer at $tokdir"; exit 77; }
	for b in "$bin/k2serve" "$bin/k2fs" "$bin/k2pack" "$bin/infer"; do
		[ -x "$b" ] || { echo "$name: FAIL: $b is not built"; exit 1; }
	done
}

serve_scratch() {
	work=$(mktemp -d "/tmp/$name.XXXXXX")
	pids=""
	mounted=""
	fails=0
	spid=""
	trap serve_cleanup EXIT
	trap 'exit 1' INT TERM
}
# shellcheck disable=SC2317 # run by the EXIT trap
serve_cleanup() {
	for p in $spid $pids; do kill -KILL "$p" 2>/dev/null; done
	for p in $spid $pids; do wait "$p" 2>/dev/null; done
	for m in $mounted; do fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null; done
	if [ "$fails" -eq 0 ]; then rm -rf "$work"; else echo "$name: kept $work"; fi
}
fail() {
	echo "$name: FAIL: $*"
	fails=$((fails + 1))
}
# fatal MESSAGE: a failure after which nothing else can be checked
fatal() {
	fail "$*"
	for l in "$work"/k2serve*.log; do
		[ -s "$l" ] || continue
		echo "-- last lines of $(basename "$l"):"
		tail -n 20 "$l"
	done
	exit 1
}
# alive PID: the process runs (a child that exited stays a zombie until waited for)
alive() { [ -r "/proc/$1/stat" ] && ! grep -q ') Z' "/proc/$1/stat"; }
free_port() {
	node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
# ready URL: 0 when GET URL answers 2xx with "status": "ok"
ready() {
	node -e 'fetch(process.argv[1], { signal: AbortSignal.timeout(5000) }).then(async (r) => {
		const j = await r.json().catch(() => ({}));
		process.exit(r.ok && j.status === "ok" ? 0 : 1);
	}, () => process.exit(1))' "$1"
}
now_ms() { date +%s%3N; }

serve_model() {
	"$bin/k2gen" --seed 3 --layers 3 --set vocab_size=129280 --tokenizer "$tokdir" \
		"$work/gen" >"$work/gen.log" 2>&1 || fatal "k2gen: $(tail -3 "$work/gen.log")"
	"$bin/k2pack" "$work/gen" "$work/gen.k2" >"$work/pack.log" 2>&1 ||
		fatal "k2pack: $(tail -3 "$work/pack.log")"
	model=$work/mnt
	mkdir -p "$model"
	"$bin/k2fs" "$work/gen.k2" "$model" -o cache=256M 2>"$work/k2fs.err" ||
		fatal "k2fs: $(cat "$work/k2fs.err")"
	mounted="$mounted $model"
	i=0
	while [ ! -f "$model/config.json" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	[ -f "$model/tokenizer_config.json" ] || fatal "the mount $model shows no tokenizer_config.json"
}

serve_start() {
	log=$work/$1
	shift
	for try in 1 2 3; do
		port=$(free_port) || fatal "no free port"
		base=http://127.0.0.1:$port
		"$bin/k2serve" --model "$model" --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
		spid=$!
		i=0
		# a slow machine: up to 120 s to load and answer
		while alive "$spid" && ! ready "$base/health" && [ $i -lt 600 ]; do
			sleep 0.2
			i=$((i + 1))
		done
		alive "$spid" && break
		wait "$spid"
		rc=$?
		spid=""
		grep -qi "in use" "$log" && [ "$try" -lt 3 ] && continue
		fatal "k2serve $* exited with status $rc before answering /health"
	done
	ready "$base/health" || fatal "k2serve $* does not answer GET /health with status ok after 120 s"
	grep -q "k2serve: listening on http://127.0.0.1:$port" "$log" ||
		fail "k2serve's output lacks 'k2serve: listening on http://127.0.0.1:$port': $(head -5 "$log")"
}

serve_stop() {
	kill -TERM "$spid"
	(sleep "${1:-10}" && kill -KILL "$spid" 2>/dev/null) &
	watchdog=$!
	wait "$spid"
	src=$?
	spid=""
	kill "$watchdog" 2>/dev/null
	wait "$watchdog" 2>/dev/null
}

http() {
	out=$1 meth=$2 path=$3
	shift 3
	: >"$out.hdr"
	curl -sS --max-time 300 -o "$out" -D "$out.hdr" -w '%{http_code}' -X "$meth" "$@" \
		"$base$path" 2>"$out.curlerr"
}

jget() {
	node -e 'const fs = require("fs");
		let j;
		try { j = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); }
		catch { console.log("(not JSON)"); process.exit(0); }
		let v;
		try { v = eval(process.argv[2]); } catch (e) { v = "(" + e.message + ")"; }
		console.log(typeof v === "string" ? v : JSON.stringify(v));' "$1" "$2"
}
health_field() {
	curl -sS --max-time 30 "$base/health" >"$work/health.json" 2>/dev/null || { echo "(no reply)"; return; }
	jget "$work/health.json" "$1"
}
metric() {
	curl -sS --max-time 30 "$base/metrics" 2>/dev/null |
		awk -v n="$1" '$1 == n { print $2; found = 1 } END { if (!found) print "(absent)" }'
}
