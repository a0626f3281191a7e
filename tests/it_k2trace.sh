#!/bin/sh
# it_k2trace.sh — bin/k2trace against traces bin/infer records (docs/trace.md):
#   1. exactness: a k2gen model (4 layers, 3 MoE, 32 experts, top 8) laid out
#      as a plain directory (k2pack, then k2inspect --extract: no FUSE needed)
#      runs a 40-token prompt in chunks of 8 and 12 decode steps with
#      --expert-cache Nexperts --policy P --trace --stats, for P in lru, lfu
#      and N in 3, 8, 20, 48, 80 (and once with the prompt in one chunk);
#      k2trace sim --cache N --policy P on the trace gives the very hits,
#      misses and evictions infer --stats printed for the compute tier, and
#      the bytes it read; plain `k2trace sim TRACE` takes N and P from the
#      header; Belady's misses are never above LRU's or LFU's; --per-layer's
#      layers add up to the run;
#   2. stats: the text and --json outputs, the profile, and sim --pin with it;
#      infer --pin PROFILE gives the hits and misses sim --pin predicts
#      and with hot:PCT (pinned experts hit, never evicted);
#   3. bad traces: cut mid-line, cut at a line end (no end line), a header
#      that disagrees with the lines (top_k, n_routed_experts, moe_layers), a
#      trace without a header, a step out of order, a profile naming an
#      expert the model lacks: each one line "k2trace: FILE:LINE: …", exit 1;
#   4. the comparison of 1. can fail: a simulator planted to acquire a step's
#      experts in id order (not those present first, as the engine does)
#      disagrees with infer (skipped when the build folder lacks the objects).
set -u
here=$(cd "$(dirname "$0")" && pwd)
bin=${K2_BIN:-$here/../bin}
for b in k2gen k2pack k2inspect infer k2trace; do
	[ -x "$bin/$b" ] || { echo "it_k2trace: FAIL: $bin/$b not built"; exit 1; }
done
work=$(mktemp -d /tmp/it_k2trace.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
fails=0
fail() { echo "it_k2trace: FAIL: $*"; fails=$((fails + 1)); }
# num KEY FILE: the first number after "KEY": in FILE
num() { grep -o "\"$1\":[0-9.eE+-]*" "$2" | head -1 | cut -d: -f2; }

# the model, laid out like the mount
m=$work/model
if ! "$bin/k2gen" --seed 7 --layers 4 --experts 32 "$work/gen" >"$work/log" 2>&1 ||
   ! "$bin/k2pack" "$work/gen" "$work/m.k2" >>"$work/log" 2>&1 ||
   ! "$bin/k2inspect" "$work/m.k2" --list >"$work/list" 2>>"$work/log"; then
	echo "it_k2trace: FAIL: k2gen / k2pack / k2inspect: $(tail -3 "$work/log")"
	exit 1
fi
for e in $(awk '$2 == "file" || $2 == "dense" || $2 == "expert" { print $1 }' "$work/list"); do
	mkdir -p "$m/$(dirname "$e")"
	"$bin/k2inspect" "$work/m.k2" --extract "$e" "$m/$e" >/dev/null 2>>"$work/log" ||
		{ echo "it_k2trace: FAIL: k2inspect --extract $e: $(tail -1 "$work/log")"; exit 1; }
done
ids=1,5,9,13,17,21,25,29,33,37,41,45,49,53,57,61,65,69,73,77,81,85,89,93,97,101,105,109,113,117,121,125,129,133,137,141,145,149,153,157

# 1. exactness
echo "== sim against infer --stats (compute tier, CPU backend, no prefetch):"
busy=0
for run in lru:3 lru:8 lru:20 lru:48 lru:80 lfu:3 lfu:8 lfu:20 lfu:48 lfu:80 lru:20:256; do
	p=${run%%:*} n=${run#*:} batch=8
	case $n in *:*) batch=${n#*:} n=${n%%:*} ;; esac
	r=$work/$p-$n-$batch
	if ! "$bin/infer" --model "$m" --tokens "$ids" -n 13 --ignore-eos --threads 2 --batch "$batch" \
		--expert-cache "${n}experts" --policy "$p" --trace "$r.trace" --stats \
		>"$r.out" 2>"$r.err"; then
		fail "infer $p $n: $(cat "$r.err")"
		continue
	fi
	grep -o '"expert_cache":{[^}]*}' "$r.err" >"$r.cache"
	if ! "$bin/k2trace" sim "$r.trace" --cache "$n" --policy "$p" --json >"$r.sim" 2>"$r.simerr"; then
		fail "k2trace sim $p $n: $(cat "$r.simerr")"
		continue
	fi
	eh=$(num hits "$r.cache") em=$(num misses "$r.cache") ee=$(num evictions "$r.cache")
	eb=$(num bytes_read "$r.cache")
	sh=$(num hits "$r.sim") sm=$(num misses "$r.sim") se=$(num evictions "$r.sim")
	sb=$(num bytes_moved "$r.sim")
	if [ -n "$eh" ] && [ "$eh" = "$sh" ] && [ "$em" = "$sm" ] && [ "$ee" = "$se" ] &&
	   [ "$eb" = "$sb" ]; then
		echo "   $p, ${n} experts, chunks of $batch: infer and sim agree: $eh hits, $em misses, $ee evictions, $eb bytes"
	else
		fail "$p $n: infer hits $eh misses $em evictions $ee bytes $eb; sim hits $sh misses $sm evictions $se bytes $sb"
	fi
	[ "${eh:-0}" -gt 0 ] && [ "${ee:-0}" -gt 0 ] && busy=$((busy + 1))
	# Belady's optimum is a lower bound on the misses
	"$bin/k2trace" sim "$r.trace" --cache "$n" --policy belady --json >"$r.bel" 2>&1
	bm=$(num misses "$r.bel")
	if [ -z "$bm" ] || [ "$bm" -gt "${em:-0}" ]; then
		fail "$p $n: belady misses '$bm' above $p's $em"
	fi
done
# an exactness test that could not fail: at least a few runs both hit and evict
[ "$busy" -ge 4 ] || fail "only $busy runs both hit and evicted: the comparison proves little"
# without --cache / --policy the replay takes the header's
if "$bin/k2trace" sim "$work/lfu-20-8.trace" >"$work/def.out" 2>"$work/def.err" &&
   grep -q "^lfu  *20 " "$work/def.out"; then
	echo "   plain sim: $(grep '^lfu' "$work/def.out" | tr -s ' ')"
else
	fail "sim without --cache/--policy: $(cat "$work/def.out" "$work/def.err")"
fi
# --per-layer: the layers' misses add up to the run's
"$bin/k2trace" sim "$work/lru-20-8.trace" --per-layer --json >"$work/pl.json" 2>&1
sum=$(grep -o '"layer":[0-9]*,"hits":[0-9]*,"misses":[0-9]*' "$work/pl.json" |
	awk -F'"misses":' '{ s += $2 } END { print s + 0 }')
[ "$sum" = "$(num misses "$work/lru-20-8.cache")" ] ||
	fail "--per-layer: the layers' misses add to $sum: $(cut -c1-300 "$work/pl.json")"
# the trace's shape: header, a line per position, steps of 8 then 1, end line
t=$work/lru-8-8.trace
lines=$(grep -c '^{"pos"' "$t")
[ "$lines" -eq 52 ] || fail "trace has $lines token lines, want 40 + 12"
head -1 "$t" | grep -q '^{"k2trace":1,"model":{"num_hidden_layers":4,"n_routed_experts":32,"num_experts_per_tok":8,"moe_layers":\[1,2,3\]' ||
	fail "header: $(head -1 "$t")"
head -1 "$t" | grep -q '"expert_cache":8,"policy":"lru","prefetch":"none","batch":8' ||
	fail "header engine: $(head -1 "$t")"
tail -1 "$t" | grep -qx '{"end":{"tokens":52,"steps":17}}' || fail "end line: $(tail -1 "$t")"
sed -n 10p "$t" | grep -q '^{"pos":8,"token":33,"step":1,"experts":{"1":\[' ||
	fail "line 10: $(sed -n 10p "$t" | cut -c1-80)"

# 2. stats, profile, pins
echo "== stats and pins:"
if "$bin/k2trace" stats "$t" --profile "$work/prof" --top 12 >"$work/stats.txt" 2>&1 &&
   "$bin/k2trace" stats "$t" --json >"$work/stats.json" 2>&1; then
	sed 's/^/   /' "$work/stats.txt"
	grep -q '"tokens":52,"steps":17' "$work/stats.json" || fail "stats --json: $(cut -c1-200 "$work/stats.json")"
	sel=$(num selections "$work/stats.json")
	[ "$sel" = $((52 * 8)) ] || fail "stats: $sel selections in layer 1, want 416"
	np=$(grep -vc '^#' "$work/prof")
	[ "$np" -eq 12 ] || fail "profile has $np experts, want 12"
	# the profile's counts add up to no more than the selections, hottest first
	sort -k3,3nr -c "$work/prof" 2>/dev/null || grep -v '^#' "$work/prof" | sort -k3,3nr -c ||
		fail "profile not hottest first"
else
	fail "stats: $(cat "$work/stats.txt" "$work/stats.json")"
fi
if "$bin/k2trace" sim "$t" --cache 20 --policy lru,lfu,belady --pin "$work/prof" --json >"$work/pin.json" 2>&1 &&
   "$bin/k2trace" sim "$t" --cache 20,48 --policy lru --pin hot:25 >"$work/hot.txt" 2>&1; then
	ph=$(num pinned_hits "$work/pin.json") pn=$(num pinned "$work/pin.json")
	if [ "$pn" != 12 ] || [ "${ph:-0}" -eq 0 ]; then
		fail "--pin profile: pinned $pn, pinned hits $ph"
	fi
	grep -q '^lru  *20  *5 ' "$work/hot.txt" || fail "--pin hot:25 of 20: $(cat "$work/hot.txt")"
	echo "   --pin profile (12 of 20 slots): $(grep -o '"policy":"[a-z]*","cache":20,"pinned":12,"acquisitions":[0-9]*,"hits":[0-9]*' "$work/pin.json" | tr '\n' ' ')"
else
	fail "sim --pin: $(cat "$work/pin.json" "$work/hot.txt")"
fi
# the engine's own pinning (infer --pin PROFILE) against the simulator's
for p in lru lfu; do
	r=$work/pin-$p
	if "$bin/infer" --model "$m" --tokens "$ids" -n 13 --ignore-eos --threads 2 --batch 8 \
		--expert-cache 20experts --policy "$p" --pin "$work/prof" --trace "$r.trace" --stats \
		>"$r.out" 2>"$r.err" &&
	   "$bin/k2trace" sim "$r.trace" --cache 20 --policy "$p" --pin "$work/prof" --json \
		>"$r.sim" 2>"$r.simerr"; then
		grep -o '"expert_cache":{[^}]*}' "$r.err" >"$r.cache"
		eh=$(num hits "$r.cache") em=$(num misses "$r.cache")
		sh=$(num hits "$r.sim") sm=$(num misses "$r.sim")
		if [ -n "$eh" ] && [ "$eh" = "$sh" ] && [ "$em" = "$sm" ]; then
			echo "   infer --pin (12 of 20 slots, $p): infer and sim agree: $eh hits, $em misses"
		else
			fail "infer --pin $p: infer hits $eh misses $em; sim hits $sh misses $sm"
		fi
	else
		fail "infer --pin $p: $(cat "$r.err" "$r.simerr" 2>/dev/null | tail -3)"
	fi
done

# 3. bad traces and profiles: one line naming the file and line, exit 1
echo "== bad input:"
expect_bad() { # NAME WANT-IN-MESSAGE k2trace-args…
	name=$1 want=$2
	shift 2
	"$bin/k2trace" "$@" >"$work/bad.out" 2>"$work/bad.err"
	rc=$?
	nl=$(wc -l <"$work/bad.err")
	if [ "$rc" -ne 1 ] || [ "$nl" -ne 1 ] || ! grep -q "^k2trace: .*$want" "$work/bad.err"; then
		fail "$name: exit $rc, $nl lines: $(cat "$work/bad.err")"
	else
		echo "   $name: $(cat "$work/bad.err")"
	fi
}
b=$work/bad.trace
head -c 3000 "$t" >"$b"
expect_bad "cut mid-line" "bad.trace:[0-9]*: the line is cut short .*truncated" sim "$b" --cache 8
head -n 30 "$t" >"$b"
expect_bad "cut at a line end" "bad.trace:31: no end line after 29 tokens: the trace is truncated" stats "$b"
sed '1s/"num_experts_per_tok":8/"num_experts_per_tok":6/' "$t" >"$b"
expect_bad "header top_k 6" "bad.trace:2: experts: layer 1 has 8 entries; the header says num_experts_per_tok 6" sim "$b"
sed '1s/"n_routed_experts":32/"n_routed_experts":16/' "$t" >"$b"
expect_bad "header 16 experts" "bad.trace:2: experts: layer 1 entry [0-9] is not an expert id below n_routed_experts 16" stats "$b"
sed '1s/"moe_layers":\[1,2,3\]/"moe_layers":[1,2]/' "$t" >"$b"
expect_bad "header without layer 3" "bad.trace:2: experts: \"3\" is not a MoE layer of the header" sim "$b"
grep '^{"pos"' "$t" >"$b"
expect_bad "no header" "bad.trace:1: not a trace header" sim "$b"
sed '5s/"step":0/"step":2/' "$t" >"$b"
expect_bad "step out of order" "bad.trace:5: step 2 after step 0" stats "$b"
printf '# layer expert count\n1 3 10\n0 4 9\n' >"$work/bad.prof"
expect_bad "profile naming a dense layer" "bad.prof:3: layer 0 expert 4 is not a routed expert" \
	sim "$t" --cache 8 --pin "$work/bad.prof"
expect_bad "pins filling the cache" "12 pinned experts leave no slot of a cache of 12" \
	sim "$t" --cache 12 --pin "$work/prof"
expect_bad "unknown policy" "--policy: unknown policy 'fifo'" sim "$t" --policy fifo
"$bin/k2trace" --help | grep -q "^SYNOPSIS" || fail "--help has no SYNOPSIS"

# 4. a planted simulator: acquiring in id order must break the agreement
build=${K2_TESTS:+$(dirname "$K2_TESTS")}
build=${build:-$here/../build}
objs="$build/obj/tools/k2trace.o $build/obj/tools/lib/trace_read.o $build/obj/tools/lib/trace_stats.o"
echo "== planted simulator (a step's experts acquired in id order):"
# shellcheck disable=SC2086
if [ -f "$build/libinfer.a" ] && ls $objs >/dev/null 2>&1; then
	# objects built with sanitizers (make asan) link only with them
	san=
	nm "$build/obj/tools/k2trace.o" 2>/dev/null | grep -q __asan && san="-fsanitize=address,undefined"
	perl -0pe 's/if \(\(pass == 0\) != present\[q - a\]\)\n\t\t\t\t\tcontinue;/if (pass == 1)\n\t\t\t\t\tcontinue;/; s/if \(pass == 0\) \{\n(\t+)out->hits\+\+;/if (sl >= 0) {\n$1out->hits++;/' \
		"$here/../tools/lib/trace_sim.c" >"$work/sim_plant.c"
	# shellcheck disable=SC2046,SC2086
	if cmp -s "$here/../tools/lib/trace_sim.c" "$work/sim_plant.c"; then
		fail "the plant no longer applies to tools/lib/trace_sim.c (update it_k2trace.sh)"
	elif ! cc -std=gnu11 -O2 $san -I"$here/../tools/lib" -I"$here/../infer" -I"$here/../layout" \
		-I"$here/../kernels" $(pkg-config --cflags jansson) -c "$work/sim_plant.c" -o "$work/sim_plant.o" \
		>"$work/plant.log" 2>&1 ||
	   ! cc $san -o "$work/k2trace_plant" $objs "$work/sim_plant.o" "$build/libinfer.a" "$build/libcli.a" \
		"$build/liblayout.a" $(pkg-config --libs jansson libzstd liblz4 libxxhash) -lm -pthread \
		>>"$work/plant.log" 2>&1; then
		fail "the plant does not build: $(tail -3 "$work/plant.log")"
	else
		differ=0 runs=0
		for r in "$work"/*-8.trace; do
			runs=$((runs + 1))
			c=${r%.trace}.cache
			"$work/k2trace_plant" sim "$r" --json >"$work/plant.sim" 2>/dev/null
			[ "$(num misses "$work/plant.sim")" = "$(num misses "$c")" ] || differ=$((differ + 1))
		done
		if [ "$differ" -gt 0 ]; then
			echo "   caught: $differ of $runs runs disagree with infer"
		else
			fail "the planted simulator agrees with infer: the comparison cannot fail"
		fi
	fi
else
	echo "   skipped: $build lacks the objects (make test builds them)"
fi

if [ "$fails" -ne 0 ]; then
	echo "it_k2trace: $fails failure(s)"
	exit 1
fi
echo "it_k2trace: ok"
exit 0
