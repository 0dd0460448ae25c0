#!/usr/bin/env bash
# Installs Debian's chromium and its chromedriver for the browser test of the web console
# (tests/test_console.py) when either is missing. Non-interactive and quiet; the package lists are
# refreshed only if the first attempt fails (a fresh image may carry stale ones). Needs root (CI
# runs as root); elsewhere it says what is missing and leaves the test to skip.
set -u
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "install_browser.sh: chromium/chromedriver missing and no root apt-get here; the console test will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }
install || { apt-get update -qq && install; }
