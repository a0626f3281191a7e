#!/bin/sh
# it_k2gen.sh — bin/k2gen through its command line:
#   - the same seed gives identical files (any thread count), another seed does
#     not; sharding writes model-0000i-of-0000N + model.safetensors.index.json;
#   - a seed's fp8 / int4 checkpoints are its bf16 weights quantized the hub's
#     way: k2pack --experts fp8|int4 of the bf16 one gives the same expert files
#     as k2pack --experts keep of the fp8 / int4 one;
#   - another DeepSeek-V3-family config through --set (q_lora_rank null,
#     n_group 4, topk_group 2, first_k_dense_replace 2) packs, with q_proj and
#     experts only from layer 2; --tokenizer files end up in the pack;
#   - `k2gen --preset k2 --layers 2 --experts 16 --set vocab_size=2048` (Kimi-K2's
#     real dims) makes a checkpoint that k2pack packs and k2inspect verifies;
#   - SIGTERM / SIGINT in the middle of k2pack or k2gen leaves no pack, no
#     checkpoint file and no temporary file.
set -u
: "${K2_BIN:?K2_BIN not set}"
for p in k2gen k2pack k2inspect; do
	[ -x "$K2_BIN/$p" ] || { echo "FAIL: $K2_BIN/$p missing"; exit 1; }
done
T=$(mktemp -d "${TMPDIR:-/tmp}/it_k2gen.XXXXXX")
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null; done
	rm -rf "$T"
}
trap cleanup EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }
gen() { "$K2_BIN/k2gen" "$@" >"$T/gen.out" 2>"$T/gen.err" || { fail "k2gen $*: $(cat "$T/gen.err")"; return 1; }; }
pack() { "$K2_BIN/k2pack" "$@" >"$T/pack.out" 2>"$T/pack.err" || { fail "k2pack $*: $(cat "$T/pack.err")"; return 1; }; }
# same_expert PACK_A PACK_B PATH
same_expert() {
	"$K2_BIN/k2inspect" "$1" --extract "$3" "$T/ea" >/dev/null 2>&1 &&
		"$K2_BIN/k2inspect" "$2" --extract "$3" "$T/eb" >/dev/null 2>&1 &&
		cmp -s "$T/ea" "$T/eb"
}
# interrupt TOOL PID SIG DIR: TOOL, running as PID with its stderr in $T/err,
# writes into DIR; sends it SIG once its temporary files there pass 20 MB (or
# after 30 s, or at once when it has exited), then passes when TOOL failed and
# DIR is empty or absent.
interrupt() {
	pids="$pids $2"
	i=0
	while [ $i -lt 300 ]; do
		s=$(cat "$4"/*.tmp-* 2>/dev/null | wc -c)
		[ "$s" -gt 20000000 ] && break
		kill -0 "$2" 2>/dev/null || break
		sleep 0.1
		i=$((i + 1))
	done
	kill -"$3" "$2" 2>/dev/null
	wait "$2"
	rc=$?
	if [ "$rc" -eq 0 ]; then
		fail "$1 finished before SIG$3 could interrupt it"
	elif [ -n "$(ls -A "$4" 2>/dev/null)" ]; then
		fail "interrupted $1 left: $(ls -A "$4")"
	else
		ok "SIG$3 during $1 (status $rc) leaves nothing: $(cat "$T/err")"
	fi
}

# --- determinism and sharding
gen --preset tiny --seed 7 --shard-size 4M "$T/a" &&
	gen --preset tiny --seed 7 --shard-size 4M --threads 1 "$T/b" &&
	gen --preset tiny --seed 8 --shard-size 4M "$T/c" && {
	n=$(ls "$T/a" | grep -c '^model-0000[0-9]-of-0000[0-9]\.safetensors$')
	[ "$n" -ge 3 ] || fail "4M shards of the tiny preset: $n shard files ($(ls "$T/a"))"
	[ -f "$T/a/model.safetensors.index.json" ] || fail "no model.safetensors.index.json"
	[ "$(ls "$T/a")" = "$(ls "$T/b")" ] || fail "same seed, different file names"
	for f in $(ls "$T/a"); do
		cmp -s "$T/a/$f" "$T/b/$f" || fail "same seed (2 threads vs 1): $f differs"
	done
	cmp -s "$T/a/model-00001-of-0000$n.safetensors" "$T/c/model-00001-of-0000$n.safetensors" &&
		fail "seeds 7 and 8 gave the same first shard"
	ls "$T/a" | grep -q tmp && fail "temporary files left: $(ls "$T/a")"
	ok "same seed -> identical files ($n shards), another seed differs"
}

# --- fp8 / int4 checkpoints are the bf16 weights quantized as the hub does
gen --preset tiny --seed 3 "$T/p16" && gen --preset tiny --seed 3 --format fp8 "$T/p8" &&
	gen --preset tiny --seed 3 --format int4 "$T/p4" &&
	pack "$T/p16" "$T/p16-fp8.k2" --experts fp8 && pack "$T/p8" "$T/p8.k2" &&
	pack "$T/p16" "$T/p16-int4.k2" --experts int4 && pack "$T/p4" "$T/p4.k2" && {
	grep -q '"quant_method": "fp8"' "$T/p8/config.json" || fail "fp8 config lacks quantization_config"
	grep -q '"quant_method": "compressed-tensors"' "$T/p4/config.json" || fail "int4 config lacks quantization_config"
	for e in 001/000 002/013 003/031; do
		same_expert "$T/p16-fp8.k2" "$T/p8.k2" "experts/$e" || fail "fp8: experts/$e differs"
		same_expert "$T/p16-int4.k2" "$T/p4.k2" "experts/$e" || fail "int4: experts/$e differs"
	done
	"$K2_BIN/k2inspect" "$T/p8.k2" --list >"$T/list" 2>&1
	grep -q 'dense/model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv' "$T/list" ||
		fail "fp8 checkpoint lacks kv_a_proj_with_mqa.weight_scale_inv"
	grep -q 'fp8-b128' "$T/list" || fail "fp8 pack's experts are not fp8-b128"
	ok "k2gen fp8/int4 == k2pack --experts fp8/int4 of the same seed's bf16"
}

# --- another config through --set, with a tokenizer
TOK=${K2_TOKENIZERS:-$(dirname "$0")/fixtures/tokenizers}/deepseek-v3
tokopt=""
[ -f "$TOK/tokenizer.json" ] && tokopt="--tokenizer $TOK"
gen --preset tiny --layers 3 --set q_lora_rank=null --set n_group=4 --set topk_group=2 \
	--set first_k_dense_replace=2 --set rope_scaling.beta_fast=32 $tokopt "$T/ds" &&
	pack "$T/ds" "$T/ds.k2" && {
	c=$T/ds/config.json
	grep -q '"q_lora_rank": null' "$c" && grep -q '"n_group": 4' "$c" && grep -q '"topk_group": 2' "$c" &&
		grep -q '"first_k_dense_replace": 2' "$c" && grep -q '"beta_fast": 32' "$c" ||
		fail "--set values missing from config.json"
	"$K2_BIN/k2inspect" "$T/ds.k2" --verify >/dev/null 2>&1 || fail "k2inspect --verify of the --set pack"
	"$K2_BIN/k2inspect" "$T/ds.k2" --list >"$T/list" 2>&1
	grep -q 'dense/model.layers.0.self_attn.q_proj.weight' "$T/list" || fail "no q_proj with q_lora_rank null"
	grep -q 'q_a_proj' "$T/list" && fail "q_a_proj present with q_lora_rank null"
	grep -q 'dense/model.layers.1.mlp.gate_proj.weight' "$T/list" || fail "layer 1 is not dense"
	grep -q 'experts/001/' "$T/list" && fail "experts in dense layer 1"
	grep -q 'experts/002/031' "$T/list" || fail "no experts/002/031"
	if [ -n "$tokopt" ]; then
		"$K2_BIN/k2inspect" "$T/ds.k2" --extract tokenizer.json "$T/tok" >/dev/null 2>&1 &&
			cmp -s "$T/tok" "$TOK/tokenizer.json" || fail "tokenizer.json not packed byte for byte"
	fi
	ok "--set q_lora_rank=null n_group=4 topk_group=2 first_k_dense_replace=2 packs"
}

# bad options
"$K2_BIN/k2gen" --preset tiny --set n_group=3 "$T/bad" >/dev/null 2>"$T/err"
[ $? -eq 1 ] && grep -q n_group "$T/err" || fail "n_group 3 of 32 experts: $(cat "$T/err")"
[ -e "$T/bad/config.json" ] && fail "a rejected config was written"
"$K2_BIN/k2gen" --preset huge "$T/bad" >/dev/null 2>&1
[ $? -eq 2 ] || fail "--preset huge should exit 2"

# --- Kimi-K2's real dimensions, cut to 2 layers and 16 experts
K=$T/k2
if gen --preset k2 --layers 2 --experts 16 --set vocab_size=2048 "$K"; then
	c=$K/config.json
	for kv in '"hidden_size": 7168' '"moe_intermediate_size": 2048' '"n_routed_experts": 16' \
		'"num_experts_per_tok": 8' '"kv_lora_rank": 512' '"q_lora_rank": 1536' \
		'"num_hidden_layers": 2' '"intermediate_size": 18432' '"bos_token_id": 163584' \
		'"routed_scaling_factor": 2.827' '"factor": 32.0'; do
		grep -qF "$kv" "$c" || fail "k2 preset config lacks $kv"
	done
	if pack "$K" "$T/k2.k2" --codec lz4; then
		"$K2_BIN/k2inspect" "$T/k2.k2" --verify >"$T/v" 2>&1 || fail "k2inspect --verify: $(tail -3 "$T/v")"
		"$K2_BIN/k2inspect" "$T/k2.k2" --list >"$T/list" 2>&1
		n=$(grep -c 'experts/001/0' "$T/list")
		[ "$n" -eq 16 ] || fail "k2 pack has $n experts in layer 1, expected 16"
		grep 'experts/001/015' "$T/list" | grep -q '7168' || fail "experts/001/015 is not 7168 wide"
		ok "k2 preset (2 layers, 16 experts): $(cat "$T/pack.out")"
	fi

	# --- SIGTERM in the middle of k2pack: no pack, no temporary file
	mkdir -p "$T/int"
	"$K2_BIN/k2pack" "$K" "$T/int/x.k2" --threads 1 >/dev/null 2>"$T/err" &
	interrupt k2pack $! TERM "$T/int"
	rm -rf "$K" "$T/k2.k2"
fi

# --- SIGINT in the middle of k2gen: no checkpoint file, no temporary file
"$K2_BIN/k2gen" --preset k2 --layers 2 --experts 16 --set vocab_size=2048 --threads 1 "$T/gi" \
	>/dev/null 2>"$T/err" &
interrupt k2gen $! INT "$T/gi"

if [ "$fails" -ne 0 ]; then
	echo "it_k2gen: $fails failure(s)"
	exit 1
fi
echo "it_k2gen: all passed"
