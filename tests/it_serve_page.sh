#!/bin/sh
# it_serve_page.sh — the page k2serve serves at GET / (serve/page/index.html),
# in headless Chromium against a real k2serve:
#   1. a k2gen model with DeepSeek-V3's tokenizer, packed and mounted;
#      k2serve --model MNT --listen 127.0.0.1:0 starts and answers GET /health;
#   2. tests/serve_page_check.mjs drives the page: the model name shows, two
#      questions stream their answers (the second request carries the first
#      turn), and a screenshot's expert map matches GET /k2/experts cell by
#      cell (see that file for how);
#   3. SIGTERM stops k2serve with exit status 0 within 10 s.
# Exits 77 when Chromium, node or the packages of tests/node are missing
# (tools/install-deps.sh installs them). On failure the scratch folder, with
# the screenshot and k2serve's log, is kept and named.
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=${K2_BIN:-$here/../bin}
chromium=${CHROMIUM:-/usr/bin/chromium}

if [ ! -x "$chromium" ]; then
	echo "it_serve_page: skipped: no Chromium at $chromium"
	exit 77
fi
if ! command -v node >/dev/null 2>&1 || [ ! -d "$here/node/node_modules/puppeteer-core" ] ||
   [ ! -d "$here/node/node_modules/pngjs" ]; then
	echo "it_serve_page: skipped: node or tests/node/node_modules (puppeteer-core, pngjs) is missing"
	exit 77
fi
tokdir=${K2_TOKENIZERS:-$here/fixtures/tokenizers}/deepseek-v3
for p in k2serve k2gen k2pack k2fs; do
	[ -x "$bin/$p" ] || { echo "it_serve_page: FAIL: $bin/$p not built"; exit 1; }
done

work=$(mktemp -d /tmp/it_serve_page.XXXXXX)
pid=""
mnt=""
ok=0
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
	[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	[ -n "$mnt" ] && fusermount3 -u "$mnt" 2>/dev/null
	if [ "$ok" -eq 1 ]; then rm -rf "$work"; else echo "it_serve_page: kept $work"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fail() {
	echo "it_serve_page: FAIL: $*"
	if [ -s "$work/k2serve.log" ]; then
		echo "-- last lines of k2serve's output:"
		tail -n 20 "$work/k2serve.log"
	fi
	exit 1
}
# alive PID: the process runs (a child that exited stays a zombie until waited for)
alive() { [ -r "/proc/$1/stat" ] && ! grep -q ') Z' "/proc/$1/stat"; }
# ready URL: exit status 0 when GET URL (/health) answers 2xx with "status": "ok" (or no status)
ready() {
	node -e 'fetch(process.argv[1]).then(async (r) => {
		const j = await r.json().catch(() => ({}));
		process.exit(r.ok && (j.status === undefined || j.status === "ok") ? 0 : 1);
	}, () => process.exit(1))' "$1"
}

# 1. the model: a k2gen model with DeepSeek-V3's tokenizer (and its chat
# template), packed and mounted; k2serve on a port the system picks
"$bin/k2gen" --seed 3 --layers 3 --set vocab_size=129280 --tokenizer "$tokdir" \
	"$work/ckpt" >"$work/gen.log" 2>&1 || fail "k2gen: $(tail -2 "$work/gen.log")"
"$bin/k2pack" "$work/ckpt" "$work/model.k2" >"$work/gen.log" 2>&1 ||
	fail "k2pack: $(tail -2 "$work/gen.log")"
mkdir -p "$work/mnt"
"$bin/k2fs" "$work/model.k2" "$work/mnt" -o cache=256M 2>"$work/k2fs.err" ||
	fail "k2fs: $(cat "$work/k2fs.err")"
mnt="$work/mnt"
"$bin/k2serve" --model "$mnt" --listen 127.0.0.1:0 >"$work/k2serve.log" 2>&1 &
pid=$!
i=0
while alive "$pid" && ! grep -q "listening on" "$work/k2serve.log" && [ $i -lt 300 ]; do
	sleep 0.2
	i=$((i + 1))
done
alive "$pid" || fail "k2serve exited before listening"
port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$work/k2serve.log")
[ -n "$port" ] || fail "k2serve printed no address"
ready "http://127.0.0.1:$port/health" || fail "k2serve does not answer GET /health with status ok on port $port"

# 2. the page
node "$here/serve_page_check.mjs" "http://127.0.0.1:$port" "$work" >"$work/check.out" 2>&1
rc=$?
cat "$work/check.out"
[ "$rc" -eq 0 ] || fail "serve_page_check.mjs exited with status $rc"

# 3. SIGTERM: exit status 0 within 10 s (else SIGKILL: status 137)
kill -TERM "$pid"
(sleep 10 && kill -KILL "$pid" 2>/dev/null) &
watchdog=$!
wait "$pid"
rc=$?
pid=""
kill "$watchdog" 2>/dev/null
[ "$rc" -eq 0 ] || fail "k2serve exited with status $rc after SIGTERM (0 expected; 137: still running after 10 s)"

ok=1
echo "it_serve_page: ok"
exit 0
