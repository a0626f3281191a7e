#!/bin/sh
# Runs every Check suite in $K2_TESTS, then every integration script tests/it_*.sh.
# Each suite prints Check's own summary; this script closes with one line
# "N passed, N failed" counting suites and scripts, and exits 1 if any failed.
# A script that cannot run here (no /dev/fuse, no GPU) exits 77 and is counted
# as skipped, with the reason it printed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${K2_BIN:=$here/../bin}" "${K2_TESTS:=$here/../build/tests}"
export K2_BIN K2_TESTS
export K2_FIXTURES="${K2_FIXTURES:-$here/fixtures}"
export K2_TOKENIZERS="${K2_TOKENIZERS:-$here/fixtures/tokenizers}"
export CK_FORK=yes
pass=0 fail=0 skip=0 failed=""
for t in "$K2_TESTS"/test_*; do
	[ -x "$t" ] || continue
	echo "== $(basename "$t")"
	if "$t"; then pass=$((pass + 1)); else fail=$((fail + 1)); failed="$failed $(basename "$t")"; fi
done
for s in "$here"/it_*.sh; do
	[ -f "$s" ] || continue
	echo "== $(basename "$s")"
	sh "$s"; rc=$?
	case $rc in
	0) pass=$((pass + 1)) ;;
	77) skip=$((skip + 1)) ;;
	*) fail=$((fail + 1)); failed="$failed $(basename "$s")" ;;
	esac
done
[ -n "$failed" ] && echo "failed:$failed"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
