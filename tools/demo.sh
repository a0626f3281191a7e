#!/bin/sh
# make demo: the main job end to end on a small synthetic model.
#   generate a checkpoint (k2gen) -> pack it (k2pack) -> mount it (k2fs)
#   -> look at it (ls, getfattr) -> generate tokens against the mount (infer)
#   -> print the filesystem's stats -> unmount.
# Work files go to $K2_DEMO_DIR (default /tmp/k2-demo), removed at the end
# unless K2_DEMO_KEEP=1.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${K2_BIN:-$here/bin}
work=${K2_DEMO_DIR:-/tmp/k2-demo}
tok=${K2_TOKENIZER_DIR:-${K2_TOKENIZERS:-$here/tests/fixtures/tokenizers}/deepseek-v3}
mnt=$work/mnt
pid=""

cleanup() {
	if mountpoint -q "$mnt" 2>/dev/null; then fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"; fi
	[ -n "$pid" ] && wait "$pid" 2>/dev/null || true
	[ "${K2_DEMO_KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT INT TERM
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

rm -rf "$work"
mkdir -p "$work" "$mnt"

step "1. generate a synthetic Kimi-K2-architecture checkpoint (tiny dims, 4 layers, 32 experts)"
if [ -f "$tok/tokenizer.json" ]; then
	"$bin/k2gen" --preset tiny --seed 7 --set vocab_size=129280 --tokenizer "$tok" "$work/ckpt"
	prompt_args="--prompt"
	prompt="The filesystem serves every expert as a file."
else
	echo "(no tokenizer at $tok: generating from token ids instead of text)"
	"$bin/k2gen" --preset tiny --seed 7 "$work/ckpt"
	prompt_args="--tokens"
	prompt="1,100,200,300,400,500"
fi
ls -l "$work/ckpt"

step "2. pack it: experts re-quantized to int4-g32, lz4 blocks"
"$bin/k2pack" "$work/ckpt" "$work/model.k2" --experts int4 --codec lz4
"$bin/k2inspect" "$work/model.k2" --verify

step "3. mount it"
"$bin/k2fs" "$work/model.k2" "$mnt" -f -o cache=64M &
pid=$!
i=0
until mountpoint -q "$mnt"; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "demo: k2fs did not mount"; exit 1; }
	sleep 0.1
done
ls "$mnt"
ls "$mnt/experts" | head -5
ls -l "$mnt/experts/001" | head -5
getfattr -d -m user.k2 "$mnt/experts/001/000"
xxd "$mnt/experts/001/000" | head -3

step "4. generate 32 tokens against the mount, router-driven prefetch, 48-expert cache"
"$bin/infer" --model "$mnt" $prompt_args "$prompt" -n 32 --ignore-eos \
	--prefetch router --expert-cache 48experts --stats
echo

step "5. what the filesystem saw"
getfattr --only-values -n user.k2.stats "$mnt"
echo

step "6. unmount"
fusermount3 -u "$mnt"
wait "$pid" || true
pid=""
echo "demo: done"
