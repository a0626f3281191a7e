#!/bin/sh
# Installs the Debian packages k2fs needs to build, test and run, if any is
# missing. Used by `make demo` and .ci/run. Needs root (or sudo) only when
# something is actually missing.
set -eu
pkgs="build-essential pkg-config clang libclang-rt-14-dev libfuse3-dev fuse3
      liburing-dev libzstd-dev liblz4-dev libxxhash-dev libpcre2-dev libjansson-dev
      check attr"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
