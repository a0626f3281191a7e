#!/bin/sh
# it_k2pack.sh — bin/k2pack through its command line, on the fixtures:
#   - each fixture packs (--experts keep), `k2inspect --verify` passes, and
#     `k2inspect --extract dense/<name>` equals the tensor's payload cut out of
#     the safetensors file with the offsets of its header;
#   - --experts int4 of the bf16 fixture gives the int4 fixture's expert files;
#   - each bad input (a safetensors header pointing outside its file, a shard
#     missing from the index, a config.json lacking a required key, an F64
#     expert, a truncated safetensors file, a missing directory) gives exactly
#     one line "k2pack: …" naming the file, exit status 1, and leaves neither
#     OUT nor a temporary file; an OUT that existed before is left untouched.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${K2_BIN:=$here/../bin}"
F=${K2_FIXTURES:-$here/fixtures}
[ -d "$F/k2-tiny-bf16/model" ] || { echo "skip: fixtures not found at $F"; exit 77; }
for p in k2pack k2inspect; do
	[ -x "$K2_BIN/$p" ] || { echo "FAIL: $K2_BIN/$p missing"; exit 1; }
done
T=$(mktemp -d "${TMPDIR:-/tmp}/it_k2pack.XXXXXX")
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

# payload FILE NAME OUT: writes the payload of tensor NAME of safetensors FILE
# to OUT, cut at the data_offsets its header gives.
payload() {
	n=$(od -An -t u8 -N 8 "$1" | tr -d ' ')
	pat=$(printf '%s' "$2" | sed 's/\./\\./g')
	offs=$(head -c $((8 + n)) "$1" | tail -c "$n" | grep -o "\"$pat\":{[^}]*}" |
		sed 's/.*"data_offsets":\[\([0-9]*\),\([0-9]*\)\].*/\1 \2/')
	[ -n "$offs" ] || return 1
	a=${offs% *}
	b=${offs#* }
	tail -c +$((8 + n + a + 1)) "$1" | head -c $((b - a)) >"$3"
}

# shard_of DIR NAME: the safetensors file holding NAME
shard_of() {
	if [ -f "$1/model.safetensors.index.json" ]; then
		s=$(grep -o "\"$2\": *\"[^\"]*\"" "$1/model.safetensors.index.json" | sed 's/.*: *"\(.*\)"/\1/')
		echo "$1/$s"
	else
		echo "$1/model.safetensors"
	fi
}

# --- the fixtures pack, verify, and give their dense tensors back exactly
for m in bf16 fp8 int4; do
	src=$F/k2-tiny-$m/model
	if ! "$K2_BIN/k2pack" "$src" "$T/$m.k2" --experts keep --threads 2 >"$T/out" 2>"$T/err"; then
		fail "k2pack $m: $(cat "$T/err")"
		continue
	fi
	grep -q "^k2pack: .*154\|^k2pack: .*186" "$T/out" || fail "k2pack $m: summary line: $(cat "$T/out")"
	"$K2_BIN/k2inspect" "$T/$m.k2" --verify >"$T/v" 2>&1 || fail "k2inspect --verify $m: $(tail -3 "$T/v")"
	names="model.embed_tokens.weight lm_head.weight model.layers.2.mlp.gate.e_score_correction_bias model.layers.3.self_attn.kv_a_proj_with_mqa.weight model.norm.weight"
	[ "$m" = fp8 ] && names="$names model.layers.0.mlp.down_proj.weight_scale_inv model.layers.1.mlp.shared_experts.up_proj.weight_scale_inv"
	for t in $names; do
		file=$(shard_of "$src" "$t")
		payload "$file" "$t" "$T/want" || { fail "$m: $t not found in $file"; continue; }
		[ -s "$T/want" ] || { fail "$m: empty payload for $t"; continue; }
		"$K2_BIN/k2inspect" "$T/$m.k2" --extract "dense/$t" "$T/got" >/dev/null 2>"$T/err" ||
			{ fail "$m: extract dense/$t: $(cat "$T/err")"; continue; }
		cmp -s "$T/want" "$T/got" || fail "$m: dense/$t differs from its safetensors payload"
	done
	"$K2_BIN/k2inspect" "$T/$m.k2" --extract config.json "$T/got" >/dev/null 2>&1 &&
		cmp -s "$T/got" "$src/config.json" || fail "$m: config.json differs"
	ok "$m fixture packs, verifies, dense tensors and config.json byte for byte"
done

# --- bf16 --experts int4 reproduces the int4 fixture's experts
if "$K2_BIN/k2pack" "$F/k2-tiny-bf16/model" "$T/bf16-int4.k2" --experts int4 --codec lz4 \
	>/dev/null 2>"$T/err"; then
	for e in 001/000 002/017 003/031; do
		"$K2_BIN/k2inspect" "$T/bf16-int4.k2" --extract "experts/$e" "$T/a" >/dev/null &&
			"$K2_BIN/k2inspect" "$T/int4.k2" --extract "experts/$e" "$T/b" >/dev/null &&
			cmp -s "$T/a" "$T/b" || fail "experts/$e of bf16 --experts int4 differs from the int4 fixture"
	done
	ok "bf16 --experts int4 (lz4) == int4 fixture experts"
else
	fail "k2pack --experts int4: $(cat "$T/err")"
fi

# --- bad input: one line naming the file, exit 1, nothing left behind
# expect_bad WHAT SRC WORD: k2pack SRC must fail naming WORD
expect_bad() {
	out=$T/bad-out/out.k2
	rm -rf "$T/bad-out"
	mkdir -p "$T/bad-out"
	"$K2_BIN/k2pack" "$2" "$out" --threads 2 >"$T/out" 2>"$T/err"
	rc=$?
	lines=$(wc -l <"$T/err")
	if [ "$rc" -ne 1 ]; then
		fail "$1: exit status $rc, expected 1 ($(head -3 "$T/err"))"
	elif [ "$lines" -ne 1 ]; then
		fail "$1: $lines lines on stderr, expected 1: $(cat "$T/err")"
	elif ! grep -q "^k2pack: " "$T/err"; then
		fail "$1: message does not start with 'k2pack: ': $(cat "$T/err")"
	elif ! grep -qF "$3" "$T/err"; then
		fail "$1: message does not name $3: $(cat "$T/err")"
	elif [ -n "$(ls -A "$T/bad-out")" ]; then
		fail "$1: left behind: $(ls -A "$T/bad-out")"
	elif [ -s "$T/out" ]; then
		fail "$1: printed on stdout: $(cat "$T/out")"
	else
		ok "$1: $(cat "$T/err")"
	fi
}

# le64 N: N as 8 little-endian bytes
le64() {
	v=$1
	i=0
	while [ $i -lt 8 ]; do
		printf "\\$(printf %03o $((v % 256)))"
		v=$((v / 256))
		i=$((i + 1))
	done
}

FP8=$F/k2-tiny-fp8/model
# a header whose tensor ends past the end of the file
d=$T/outside
mkdir -p "$d"
cp "$FP8/config.json" "$d/"
hdr='{"model.norm.weight":{"dtype":"BF16","shape":[4096],"data_offsets":[0,8192]}}'
while [ $((${#hdr} % 8)) -ne 0 ]; do hdr="$hdr "; done
{ le64 ${#hdr}; printf '%s' "$hdr"; head -c 64 /dev/zero; } >"$d/model.safetensors"
expect_bad "header pointing outside its file" "$d" "model.safetensors"

# an index naming a shard that is not there
d=$T/noshard
mkdir -p "$d"
cp "$F/k2-tiny-bf16/model/config.json" "$F/k2-tiny-bf16/model/model.safetensors.index.json" "$d/"
ln -s "$F/k2-tiny-bf16/model/model-00001-of-00002.safetensors" "$d/"
expect_bad "shard missing from the index" "$d" "model-00002-of-00002.safetensors"

# an index whose weight_map lacks the tensors of a shard: experts go missing
d=$T/partial
mkdir -p "$d"
cp "$F/k2-tiny-bf16/model/config.json" "$d/"
ln -s "$F/k2-tiny-bf16/model/model-00001-of-00002.safetensors" "$F/k2-tiny-bf16/model/model-00002-of-00002.safetensors" "$d/"
grep -v 'model-00002-of-00002' "$F/k2-tiny-bf16/model/model.safetensors.index.json" |
	sed 'N;s/,\n *}/\n  }/;P;D' >"$d/model.safetensors.index.json"
expect_bad "tensors of a shard missing from the index" "$d" "missing tensor"

# a config.json lacking a required key
d=$T/nokey
mkdir -p "$d"
ln -s "$FP8/model.safetensors" "$d/"
grep -v '"hidden_size"' "$FP8/config.json" >"$d/config.json"
expect_bad "config.json lacking hidden_size" "$d" "config.json"
grep -q hidden_size "$T/err" || fail "config message does not name hidden_size: $(cat "$T/err")"

# an F64 expert: the header rewritten in place (same length, same byte span)
d=$T/f64
mkdir -p "$d"
cp "$FP8/config.json" "$d/"
n=$(od -An -t u8 -N 8 "$FP8/model.safetensors" | tr -d ' ')
{
	head -c 8 "$FP8/model.safetensors"
	head -c $((8 + n)) "$FP8/model.safetensors" | tail -c "$n" |
		sed 's/"model\.layers\.1\.mlp\.experts\.0\.gate_proj\.weight":{"dtype":"F8_E4M3","shape":\[64,256\]/"model.layers.1.mlp.experts.0.gate_proj.weight":{"dtype":"F64"    ,"shape":[16,128]/'
	tail -c +$((9 + n)) "$FP8/model.safetensors"
} >"$d/model.safetensors"
cmp -s "$d/model.safetensors" "$FP8/model.safetensors" && fail "F64 edit did not apply"
expect_bad "F64 expert" "$d" "F64"
grep -q "model.layers.1.mlp.experts.0.gate_proj.weight" "$T/err" || fail "F64 message does not name the tensor"

# a truncated safetensors file
d=$T/trunc
mkdir -p "$d"
cp "$FP8/config.json" "$d/"
sz=$(wc -c <"$FP8/model.safetensors")
head -c $((sz - 1000)) "$FP8/model.safetensors" >"$d/model.safetensors"
expect_bad "truncated safetensors" "$d" "model.safetensors"

# no such directory
expect_bad "missing source" "$T/does-not-exist" "does-not-exist"

# a failing run leaves an existing OUT alone
mkdir -p "$T/keep"
echo "keep me" >"$T/keep/out.k2"
"$K2_BIN/k2pack" "$T/trunc" "$T/keep/out.k2" >/dev/null 2>&1
[ "$(cat "$T/keep/out.k2")" = "keep me" ] || fail "a failed run replaced an existing OUT"
[ "$(ls -A "$T/keep")" = "out.k2" ] || fail "a failed run left $(ls -A "$T/keep")"
# a good run replaces it
"$K2_BIN/k2pack" "$FP8" "$T/keep/out.k2" --codec none >/dev/null 2>&1 &&
	"$K2_BIN/k2inspect" "$T/keep/out.k2" --verify >/dev/null 2>&1 || fail "replacing an existing OUT"
ok "existing OUT kept on failure, replaced on success"

# usage errors exit 2
"$K2_BIN/k2pack" "$FP8" "$T/u.k2" --experts int3 >/dev/null 2>&1
[ $? -eq 2 ] || fail "--experts int3 should exit 2"
"$K2_BIN/k2pack" "$FP8" >/dev/null 2>&1
[ $? -eq 2 ] || fail "one argument should exit 2"
"$K2_BIN/k2pack" --help | grep -q "usage: k2pack" || fail "--help"
[ -e "$T/u.k2" ] && fail "usage error created OUT"

if [ "$fails" -ne 0 ]; then
	echo "it_k2pack: $fails failure(s)"
	exit 1
fi
echo "it_k2pack: all passed"
