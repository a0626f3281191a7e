#!/bin/sh
# it_serve_load.sh — a bounded load on bin/k2serve over 127.0.0.1: the k2gen
# model with the DeepSeek-V3 tokenizer (it_infer.sh 3b's), packed and
# mounted, served with --parallel 4 --queue 2, and tests/serve_load.mjs's 8
# clients × 2 requests × 3 rounds (chat and completions, streamed and not,
# 8 to 16 tokens each): every request answered (a 429 retried after its
# Retry-After, none lost), equal requests given equal text whatever decoded
# beside them, and completions equal to bin/infer's text; the server's VmRSS
# after the last round at most 5% above the one after the first; nothing
# active or queued at the end; /metrics counting every reply; then SIGTERM:
# exit status 0 within 10 s. Prints the numbers.
# K2_LOAD_CLIENTS, K2_LOAD_ROUNDS, K2_LOAD_PER_ROUND change the load.
# Exits 77 when node, curl, tests/node's openai package, /dev/fuse, bin/k2gen
# or the DeepSeek-V3 tokenizer is missing; keeps its scratch folder on failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
name=it_serve_load
# shellcheck source=tests/serve_helpers.sh
. "$here/serve_helpers.sh"
serve_require
serve_scratch
serve_model

serve_start k2serve.log --parallel 4 --queue 2 --ctx 512
echo "== k2serve --parallel 4 --queue 2 on $base (pid $spid)"
# the whole load is bounded: the script's own requests time out after 300 s
# each, and this watchdog ends it after 20 minutes on the slowest machine
K2_LOAD_TIMEOUT=300 timeout 1200 node "$here/serve_load.mjs" "$base" "$(basename "$model")" "$spid" \
	"${K2_LOAD_CLIENTS:-8}" "${K2_LOAD_ROUNDS:-3}" "${K2_LOAD_PER_ROUND:-2}" "$bin/infer" "$model" \
	>"$work/load.out" 2>&1
rc=$?
sed 's/^/   /' "$work/load.out"
why=""
[ "$rc" -eq 124 ] && why=" (still running after 20 minutes)"
[ "$rc" -eq 0 ] || fail "serve_load.mjs exited with status $rc$why"
alive "$spid" || fatal "k2serve died under the load"
serve_stop 10
[ "$src" -eq 0 ] || fail "SIGTERM after the load: k2serve exited with status $src (137: still running after 10 s)"

if [ "$fails" -ne 0 ]; then
	[ -s "$work/k2serve.log" ] && { echo "-- last lines of k2serve.log:"; tail -n 20 "$work/k2serve.log"; }
	echo "it_serve_load: $fails failure(s)"
	exit 1
fi
echo "it_serve_load: ok"
exit 0
