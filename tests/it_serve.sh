#!/bin/sh
# it_serve.sh — bin/k2serve over HTTP with real clients (curl, the official
# openai npm package), on the k2gen model with the DeepSeek-V3 tokenizer
# (it_infer.sh 3b's model), packed and mounted:
#   1. k2serve --ctx 2048 starts, says "k2serve: listening on http://…", and
#      answers GET /health, /v1/models, /v1/models/{id}, /metrics, /k2/experts, /;
#      a chat completion, not streamed and streamed (curl -N: SSE chunks
#      ending in data: [DONE]);
#   2. bad input, each with its status and OpenAI error object
#      ({"error":{message,type,param,code}}): malformed JSON 400, a body over
#      1 MiB 413, an unknown model 404 model_not_found, prompt + max_tokens
#      beyond the context 400 context_length_exceeded, bytes that are not
#      UTF-8 400; an unknown route 404, a wrong method 405; then the server
#      still answers;
#   3. tests/serve_client.mjs: the openai client, chat and completions,
#      streamed and not; completions equal bin/infer's text for a greedy run
#      and three sampled ones (see that file);
#   4. SIGTERM while a stream is open: the stream ends with an error event
#      and data: [DONE], k2serve exits 0 within 10 s;
#   5. k2serve --parallel 1 --queue 1: with one request decoding and one
#      queued, a third is refused with 429, a Retry-After header and an error
#      object; the two clients go away and both slots empty;
#   6. a client that disconnects mid-stream: within 3 s /health shows no
#      request active; the tokens counted by GET /k2/experts and by /metrics'
#      k2serve_generated_tokens_total stop growing, below max_tokens, the
#      latter counting at least the tokens the client received; the same
#      (/health, /k2/experts) when the client of a non-streamed request gives
#      up after 1 s; and the single slot serves the next request.
# Exits 77 when node, curl, tests/node's openai package, /dev/fuse, bin/k2gen
# or the DeepSeek-V3 tokenizer is missing. On failure the scratch folder (the
# replies, k2serve's logs) is kept and named.
# shellcheck disable=SC2015 # "A && B || fail …": fails when either is false, as meant
set -u
here=$(cd "$(dirname "$0")" && pwd)
name=it_serve
# shellcheck source=tests/serve_helpers.sh
. "$here/serve_helpers.sh"
serve_require
serve_scratch
serve_model

# expect_error WHAT STATUS CODE OUT: the reply in OUT (status $st) is STATUS
# with an OpenAI error object whose code is CODE (alternatives "a|b"; "-":
# any, null included)
expect_error() {
	what=$1 want=$2 code=$3 out=$4
	if [ "$st" != "$want" ]; then
		fail "$what: HTTP $st, want $want: $(head -c 300 "$out") $(cat "$out.curlerr")"
		return
	fi
	shape=$(jget "$out" 'const e = j.error;
		!e || typeof e !== "object" ? "no error object" :
		typeof e.message !== "string" || !e.message ? "error.message is not a non-empty string" :
		typeof e.type !== "string" || !e.type ? "error.type is not a non-empty string" :
		!("param" in e) || (e.param !== null && typeof e.param !== "string") ? "error.param is neither a string nor null" :
		!("code" in e) || (e.code !== null && typeof e.code !== "string") ? "error.code is neither a string nor null" : "ok"')
	if [ "$shape" != ok ]; then
		fail "$what: $shape: $(head -c 300 "$out")"
		return
	fi
	got=$(jget "$out" 'j.error.code === null ? "null" : j.error.code')
	if [ "$code" != - ] && ! echo "|$code|" | grep -qF "|$got|"; then
		fail "$what: error.code $got, want $code: $(head -c 300 "$out")"
		return
	fi
	ctype=$(grep -i '^content-type:' "$out.hdr" | tr -d '\r' | cut -d' ' -f2-)
	case $ctype in
	application/json*) ;;
	*) fail "$what: Content-Type '$ctype', want application/json" ;;
	esac
	echo "   $what: $st $(jget "$out" 'j.error.type + " " + j.error.code + " param=" + j.error.param + ": " + j.error.message')"
}
# sse_field FILE EXPR: EXPR over serve_sse.mjs's summary of FILE
sse_field() {
	node "$here/serve_sse.mjs" "$1" >"$1.sum" || echo '{}' >"$1.sum"
	jget "$1.sum" "$2"
}
# wait_events FILE N SECONDS: 0 once FILE holds N "data:" lines
wait_events() {
	i=0
	while [ "$(grep -c '^data: ' "$1" 2>/dev/null)" -lt "$2" ] && [ $i -lt $(($3 * 10)) ]; do
		sleep 0.1
		i=$((i + 1))
	done
	[ "$(grep -c '^data: ' "$1" 2>/dev/null)" -ge "$2" ]
}
# wait_health EXPR SECONDS: 0 once EXPR over GET /health is true
wait_health() {
	i=0
	while [ "$(health_field "$1")" != true ] && [ $i -lt $(($2 * 10)) ]; do
		sleep 0.1
		i=$((i + 1))
	done
	[ "$(health_field "$1")" = true ]
}
# bg_curl OUT BODY PATH: a streamed POST in the background, output in OUT; $!
bg_curl() {
	curl -sN --max-time 300 -H 'Content-Type: application/json' -d "$2" "$base$3" >"$1" 2>"$1.err" &
}
# experts_tokens: GET /k2/experts' "tokens"
experts_tokens() {
	curl -sS --max-time 30 "$base/k2/experts" >"$work/experts.json" 2>/dev/null
	jget "$work/experts.json" 'j.tokens'
}
J='-H Content-Type:application/json'
mid=$(basename "$model")

# 1. a server and what a client sees first
serve_start k2serve.log --ctx 2048
echo "== k2serve on $base (pid $spid)"
st=$(http "$work/health" GET /health)
if [ "$st" = 200 ]; then
	echo "   GET /health: $(cat "$work/health")"
	[ "$(jget "$work/health" 'j.requests.active === 0 && j.requests.queued === 0')" = true ] ||
		fail "GET /health: requests.active/queued not both 0 when idle: $(cat "$work/health")"
else
	fail "GET /health: HTTP $st"
fi
st=$(http "$work/models" GET /v1/models)
[ "$st" = 200 ] && [ "$(jget "$work/models" 'j.object === "list" && j.data.some((m) => m.id === "'"$mid"'" && m.object === "model")')" = true ] ||
	fail "GET /v1/models: HTTP $st, want 200 listing model $mid: $(head -c 300 "$work/models")"
st=$(http "$work/model1" GET "/v1/models/$mid")
[ "$st" = 200 ] && [ "$(jget "$work/model1" 'j.id')" = "$mid" ] ||
	fail "GET /v1/models/$mid: HTTP $st: $(head -c 300 "$work/model1")"
st=$(http "$work/page" GET /)
ctype=$(grep -i '^content-type:' "$work/page.hdr" | tr -d '\r' | cut -d' ' -f2-)
[ "$st" = 200 ] && [ "$ctype" = "text/html; charset=utf-8" ] && grep -qi '<html' "$work/page" ||
	fail "GET /: HTTP $st, Content-Type '$ctype', want 200 text/html; charset=utf-8 with a page"
st=$(http "$work/experts" GET /k2/experts)
[ "$st" = 200 ] && [ "$(jget "$work/experts" 'typeof j === "object" && j !== null && !Array.isArray(j)')" = true ] ||
	fail "GET /k2/experts: HTTP $st, want 200 with a JSON map: $(head -c 300 "$work/experts")"

chat='{"model":"'$mid'","messages":[{"role":"user","content":"Hello! Who are you?"}],"max_tokens":16,"temperature":0,"seed":0}'
# shellcheck disable=SC2086
st=$(http "$work/chat" POST /v1/chat/completions $J -d "$chat")
if [ "$st" = 200 ]; then
	ok=$(jget "$work/chat" 'j.object === "chat.completion" && j.choices[0].message.role === "assistant" &&
		typeof j.choices[0].message.content === "string" && ["stop", "length"].includes(j.choices[0].finish_reason) &&
		j.usage.total_tokens === j.usage.prompt_tokens + j.usage.completion_tokens && j.usage.completion_tokens <= 16')
	[ "$ok" = true ] || fail "chat completion: not a chat.completion with usage: $(head -c 400 "$work/chat")"
	echo "   chat: $(jget "$work/chat" 'JSON.stringify(j.choices[0].message.content) + " " + j.choices[0].finish_reason + " " + JSON.stringify(j.usage)')"
else
	fail "chat completion: HTTP $st: $(head -c 300 "$work/chat")"
fi
schat='{"model":"'$mid'","messages":[{"role":"user","content":"Hello! Who are you?"}],"max_tokens":16,"temperature":0,"seed":0,"stream":true}'
curl -sSN --max-time 300 -D "$work/schat.hdr" -H 'Content-Type: application/json' -d "$schat" \
	"$base/v1/chat/completions" >"$work/schat" 2>"$work/schat.err" || fail "streamed chat: curl: $(cat "$work/schat.err")"
ctype=$(grep -i '^content-type:' "$work/schat.hdr" | tr -d '\r' | cut -d' ' -f2-)
case $ctype in text/event-stream*) ;; *) fail "streamed chat: Content-Type '$ctype', want text/event-stream" ;; esac
[ "$(tail -c 14 "$work/schat")" = "data: [DONE]" ] ||
	fail "streamed chat: does not end with data: [DONE]: $(tail -c 200 "$work/schat")"
sum=$(sse_field "$work/schat" 'j.done && j.problems.length === 0 && j.role === "assistant" && j.error === null &&
	j.objects.join() === "chat.completion.chunk" && j.finish !== null')
[ "$sum" = true ] || fail "streamed chat: $(cat "$work/schat.sum")"
want=$(jget "$work/chat" 'j.choices[0].message.content')
got=$(jget "$work/schat.sum" 'j.text')
[ "$got" = "$want" ] || fail "streamed chat: text '$got', the non-streamed one '$want'"
echo "   streamed chat: $(jget "$work/schat.sum" 'j.events') events, ends with data: [DONE], same text"

# 2. bad input
echo "== bad input:"
# shellcheck disable=SC2086
st=$(http "$work/e1" POST /v1/chat/completions $J -d '{"model": "'"$mid"'", "messages": [')
expect_error "malformed JSON" 400 - "$work/e1"
node -e 'process.stdout.write(JSON.stringify({model: process.argv[1], prompt: "a ".repeat(600000), max_tokens: 1}))' \
	"$mid" >"$work/big.json"
# shellcheck disable=SC2086
st=$(http "$work/e2" POST /v1/completions $J --data-binary @"$work/big.json")
expect_error "body of $(wc -c <"$work/big.json") bytes" 413 - "$work/e2"
# shellcheck disable=SC2086
st=$(http "$work/e3" POST /v1/chat/completions $J -d '{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}')
expect_error "unknown model" 404 model_not_found "$work/e3"
# 2048 positions: a prompt of a few tokens and max_tokens 2046 do not fit, max_tokens 2049 alone neither
# shellcheck disable=SC2086
st=$(http "$work/e4" POST /v1/completions $J -d '{"model":"'"$mid"'","prompt":"one two three four five six","max_tokens":2046}')
expect_error "prompt + max_tokens 2046 > --ctx 2048" 400 context_length_exceeded "$work/e4"
# shellcheck disable=SC2086
st=$(http "$work/e4b" POST /v1/chat/completions $J -d '{"model":"'"$mid"'","messages":[{"role":"user","content":"hi"}],"max_tokens":2049}')
# max_tokens alone beyond the context: OpenAI answers this one with param
# max_tokens, code invalid_value; context_length_exceeded is as good
expect_error "chat max_tokens 2049 > --ctx 2048" 400 "context_length_exceeded|invalid_value" "$work/e4b"
printf '{"model":"%s","prompt":"abc\377\376def","max_tokens":2}' "$mid" >"$work/bad8.json"
# shellcheck disable=SC2086
st=$(http "$work/e5" POST /v1/completions $J --data-binary @"$work/bad8.json")
expect_error "bytes FF FE in the prompt" 400 - "$work/e5"
printf '{"model":"%s","messages":[{"role":"user","content":"caf\303"}],"max_tokens":2}' "$mid" >"$work/bad8c.json"
# shellcheck disable=SC2086
st=$(http "$work/e6" POST /v1/chat/completions $J --data-binary @"$work/bad8c.json")
expect_error "a cut UTF-8 sequence in messages[0].content" 400 - "$work/e6"
# shellcheck disable=SC2086
st=$(http "$work/e7" POST /v1/completions $J -d '{"model":"'"$mid"'","prompt":"\ud800","max_tokens":2}')
expect_error "a lone surrogate escape in the prompt" 400 - "$work/e7"
st=$(http "$work/e8" GET /v1/no-such-route)
expect_error "GET /v1/no-such-route" 404 - "$work/e8"
st=$(http "$work/e9" GET /v1/chat/completions)
expect_error "GET /v1/chat/completions" 405 - "$work/e9"
# shellcheck disable=SC2086
st=$(http "$work/e10" POST /health $J -d '{}')
expect_error "POST /health" 405 - "$work/e10"
st=$(http "$work/e11" GET /v1/models/no-such-model)
expect_error "GET /v1/models/no-such-model" 404 - "$work/e11"
# the server still answers, and serves a completion
st=$(http "$work/after" GET /health)
[ "$st" = 200 ] || fail "GET /health after the bad input: HTTP $st"
# shellcheck disable=SC2086
st=$(http "$work/after2" POST /v1/completions $J -d '{"model":"'"$mid"'","prompt":"Still there?","max_tokens":4,"temperature":0}')
[ "$st" = 200 ] && [ "$(jget "$work/after2" 'typeof j.choices[0].text')" = string ] ||
	fail "a completion after the bad input: HTTP $st: $(head -c 300 "$work/after2")"
echo "   after the bad input: /health $st, a completion $(jget "$work/after2" 'JSON.stringify(j.choices[0].text)')"

# 3. the openai client, against infer
echo "== the openai client (tests/serve_client.mjs):"
K2_CLIENT_TIMEOUT=300 node "$here/serve_client.mjs" "$base" "$mid" "$model" "$bin/infer" >"$work/client.out" 2>&1
rc=$?
sed 's/^/   /' "$work/client.out"
[ "$rc" -eq 0 ] || fail "serve_client.mjs exited with status $rc"

# /metrics after all that: the families, counters that moved
st=$(http "$work/metrics" GET /metrics)
ctype=$(grep -i '^content-type:' "$work/metrics.hdr" | tr -d '\r' | cut -d' ' -f2-)
case $ctype in text/plain*) ;; *) fail "GET /metrics: Content-Type '$ctype', want text/plain" ;; esac
for fam in k2serve_requests_total k2serve_generated_tokens_total k2serve_prompt_tokens_total \
	k2serve_time_to_first_token_seconds; do
	grep -q "^# TYPE $fam " "$work/metrics" || fail "GET /metrics: no family $fam"
done
gen=$(awk '$1 == "k2serve_generated_tokens_total" { print $2 }' "$work/metrics")
ok2=$(awk '$1 == "k2serve_requests_total{endpoint=\"completions\",code=\"2xx\"}" { print $2 }' "$work/metrics")
bad4=$(awk '$1 ~ /^k2serve_requests_total\{endpoint="(chat_)?completions",code="4xx"\}$/ { s += $2 } END { print s + 0 }' "$work/metrics")
ttft=$(awk '$1 == "k2serve_time_to_first_token_seconds_count" { print $2 }' "$work/metrics")
[ "${gen:-0}" -gt 0 ] 2>/dev/null || fail "GET /metrics: k2serve_generated_tokens_total '$gen' after generating"
[ "${ok2:-0}" -gt 0 ] 2>/dev/null || fail "GET /metrics: no 2xx completions counted ('$ok2')"
[ "${bad4:-0}" -ge 7 ] 2>/dev/null || fail "GET /metrics: $bad4 4xx completions counted, 7 bad requests sent there (before the client's)"
[ "${ttft:-0}" -gt 0 ] 2>/dev/null || fail "GET /metrics: time-to-first-token count '$ttft'"
echo "   /metrics: generated $gen tokens, completions 2xx $ok2, (chat_)completions 4xx $bad4, ttft count $ttft"

# 4. SIGTERM with a stream open
echo "== SIGTERM during a stream:"
bg_curl "$work/term.sse" '{"model":"'"$mid"'","prompt":"Tell me a long story.","max_tokens":2000,"temperature":1,"seed":9,"stream":true}' /v1/completions
cpid=$!
pids="$pids $cpid"
wait_events "$work/term.sse" 3 120 || fail "SIGTERM: the stream did not start within 120 s: $(head -c 300 "$work/term.sse")"
t0=$(now_ms)
serve_stop 10
t1=$(now_ms)
[ "$src" -eq 0 ] || fail "SIGTERM: k2serve exited with status $src (0 expected; 137: still running after 10 s)"
i=0
while alive "$cpid" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
alive "$cpid" && fail "SIGTERM: curl's stream is still open 10 s after k2serve exited"
sum=$(sse_field "$work/term.sse" 'j.done && j.error !== null && j.error_before_done && j.problems.length === 0')
[ "$sum" = true ] || fail "SIGTERM: the stream does not end with an error event then data: [DONE]: $(cat "$work/term.sse.sum"); its end: $(tail -c 300 "$work/term.sse")"
echo "   exit status $src after $((t1 - t0)) ms; the stream's end: $(tail -c 200 "$work/term.sse" | tr '\n' ' ')"

# 5. 429: one slot, one place in the queue
echo "== k2serve --parallel 1 --queue 1:"
serve_start k2serve-1.log --parallel 1 --queue 1
long='{"model":"'"$mid"'","prompt":"Count to ten thousand.","max_tokens":3000,"temperature":1,"stream":true,"seed":'
for try in 1 2 3; do
	bg_curl "$work/q1.sse" "${long}1}" /v1/completions
	c1=$!
	pids="$pids $c1"
	wait_health 'j.requests.active === 1' 60 || fail "429: the first request is not active after 60 s: $(cat "$work/health.json")"
	bg_curl "$work/q2.sse" "${long}2}" /v1/completions
	c2=$!
	pids="$pids $c2"
	wait_health 'j.requests.active === 1 && j.requests.queued === 1' 60 ||
		fail "429: not one active and one queued after 60 s: $(cat "$work/health.json")"
	# shellcheck disable=SC2086
	st=$(http "$work/r429" POST /v1/completions $J -d '{"model":"'"$mid"'","prompt":"And me?","max_tokens":8,"temperature":0}')
	# shellcheck disable=SC2086
	st2=$(http "$work/r429s" POST /v1/chat/completions $J -d '{"model":"'"$mid"'","messages":[{"role":"user","content":"me too"}],"max_tokens":8,"stream":true}')
	busy=$(health_field 'j.requests.active === 1 && j.requests.queued === 1')
	kill "$c1" "$c2" 2>/dev/null
	wait "$c1" "$c2" 2>/dev/null
	# a long request that ended by itself (end of sequence) freed its place: try again
	[ "$busy" = true ] || [ "$st" = 429 ] || { echo "   (a long request ended early; again)"; continue; }
	break
done
expect_error "a third request" 429 - "$work/r429"
ra=$(grep -i '^retry-after:' "$work/r429.hdr" | tr -d '\r' | cut -d' ' -f2)
case $ra in
[0-9]*) echo "   Retry-After: $ra" ;;
*) fail "429: no Retry-After header with a number of seconds: '$ra'" ;;
esac
st=$st2
expect_error "a fourth request, streamed" 429 - "$work/r429s"
grep -qi '^retry-after: *[0-9]' "$work/r429s.hdr" || fail "429 (streamed request): no Retry-After header"
wait_health 'j.requests.active === 0 && j.requests.queued === 0' 3 ||
	fail "429: 3 s after both clients left, /health says $(cat "$work/health.json")"

# 6. a client that goes away mid-stream. Two counters: /metrics'
# k2serve_generated_tokens_total, and GET /k2/experts' "tokens" (the
# scheduler's, which moves while a request decodes)
echo "== a client that disconnects:"
g0=$(metric k2serve_generated_tokens_total)
k0=$(experts_tokens)
bg_curl "$work/dc.sse" '{"model":"'"$mid"'","prompt":"Write forever.","max_tokens":3000,"temperature":1,"seed":4,"stream":true}' /v1/completions
cpid=$!
pids="$pids $cpid"
wait_events "$work/dc.sse" 4 120 || fail "disconnect: the stream did not start within 120 s"
gm=$(metric k2serve_generated_tokens_total)
kill "$cpid"
wait "$cpid" 2>/dev/null
t0=$(now_ms)
# events with text: each carries at least one generated token
got=$(grep -c '^data: {.*"text":"[^"]' "$work/dc.sse")
if wait_health 'j.requests.active === 0 && j.requests.queued === 0' 3; then
	t1=$(now_ms)
	# the expert map is refreshed when the scheduler goes idle: let it
	sleep 0.5
	g1=$(metric k2serve_generated_tokens_total)
	k1=$(experts_tokens)
	sleep 1.5
	g2=$(metric k2serve_generated_tokens_total)
	k2=$(experts_tokens)
	echo "   the client left after $got events with text; no request active $((t1 - t0)) ms later"
	echo "   /k2/experts tokens: $k0 before, $k1 0.5 s later, $k2 1.5 s after that"
	echo "   k2serve_generated_tokens_total: $g0 before, $gm while streaming, $g1 0.5 s later, $g2 1.5 s after that"
	[ "$k1" = "$k2" ] || fail "disconnect: /k2/experts' tokens still grow after the client left: $k1 then $k2"
	[ "$g1" = "$g2" ] || fail "disconnect: k2serve_generated_tokens_total still grows: $g1 then $g2"
	[ $((k2 - k0)) -lt 3000 ] 2>/dev/null ||
		fail "disconnect: $((k2 - k0)) tokens generated for the request: it ran to max_tokens 3000"
	[ $((g2 - g0)) -ge "$got" ] 2>/dev/null ||
		fail "disconnect: k2serve_generated_tokens_total moved by $((g2 - g0)) ($g0 -> $g2) for a request whose client received $got events with text before leaving"
else
	fail "disconnect: 3 s after the client left, /health says $(cat "$work/health.json")"
fi
# a client of a non-streamed request that gives up (curl --max-time 1)
k0=$(experts_tokens)
curl -sS --max-time 1 -H 'Content-Type: application/json' -o /dev/null \
	-d '{"model":"'"$mid"'","prompt":"Write forever.","max_tokens":3000,"temperature":1,"seed":5}' \
	"$base/v1/completions" 2>/dev/null
t0=$(now_ms)
if wait_health 'j.requests.active === 0 && j.requests.queued === 0' 3; then
	t1=$(now_ms)
	sleep 0.5
	k1=$(experts_tokens)
	sleep 1.5
	k2=$(experts_tokens)
	echo "   a non-streamed request's client gave up after 1 s: no request active $((t1 - t0)) ms later; /k2/experts tokens $k0 -> $k1 -> $k2"
	[ "$k1" = "$k2" ] || fail "disconnect (not streamed): /k2/experts' tokens still grow: $k1 then $k2"
else
	fail "disconnect (not streamed): 3 s after the client gave up, /health says $(cat "$work/health.json")"
fi
# the only slot serves the next request
# shellcheck disable=SC2086
st=$(http "$work/next" POST /v1/completions $J --max-time 120 -d '{"model":"'"$mid"'","prompt":"Next.","max_tokens":4,"temperature":0}')
[ "$st" = 200 ] || fail "disconnect: the next request on the single slot: HTTP $st: $(head -c 300 "$work/next")"
serve_stop 10
[ "$src" -eq 0 ] || fail "SIGTERM (idle): k2serve exited with status $src"

if [ "$fails" -ne 0 ]; then
	echo "it_serve: $fails failure(s)"
	exit 1
fi
echo "it_serve: ok"
exit 0
