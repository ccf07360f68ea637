#!/usr/bin/env bash
# Install Debian's chromium for the browser tests (tests/test_web.py) when it is missing.
# Playwright drives this browser (no browser download of its own). Needs root and apt-get;
# apt runs under a lock so that parallel set-ups do not collide.
#   JDT_CHROMIUM  the browser's path (default /usr/bin/chromium)
set -euo pipefail
browser=${JDT_CHROMIUM:-/usr/bin/chromium}
[ -x "$browser" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install-chromium: $browser is missing; install Debian's chromium package (needs root and apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
flock /tmp/apt.lock sh -c 'apt-get update -qq && apt-get install -y -qq chromium' >&2
[ -x "$browser" ] || { echo "install-chromium: apt installed chromium, but $browser is not there" >&2; exit 1; }
