#!/bin/sh
# Installs what k2fs needs to build, test and run, if any is missing: the
# Debian packages below, then the npm packages of tests/node (the reference
# implementations the tests compare against: tiktoken, @huggingface/jinja,
# the openai client, ...; versions pinned by its package-lock.json). Used by
# `make demo` and .ci/run. Needs root (or sudo) only when a Debian package is
# actually missing; npm needs the registry only when tests/node/node_modules
# is absent.
set -eu
pkgs="build-essential pkg-config clang libclang-rt-14-dev libfuse3-dev fuse3
      liburing-dev libzstd-dev liblz4-dev libxxhash-dev libpcre2-dev libjansson-dev
      libmicrohttpd-dev check attr chromium curl"
# Node.js from Debian only where no node is installed already.
command -v node >/dev/null 2>&1 || pkgs="$pkgs nodejs"
command -v npm >/dev/null 2>&1 || pkgs="$pkgs npm"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "install-deps: installing:$missing"
	sudo=""
	[ "$(id -u)" -eq 0 ] || sudo="sudo"
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	# shellcheck disable=SC2086
	$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
here=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$here/tests/node/node_modules" ]; then
	echo "install-deps: npm ci in tests/node"
	(cd "$here/tests/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
