#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the web page's real-browser test, when it is missing
# and we are root (CI, containers). Otherwise says what to run and leaves the test to report it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (Debian package) for the web page's browser test" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
else
  echo "chromium is missing: install it (e.g. 'sudo apt-get install chromium') for the browser test" >&2
fi
