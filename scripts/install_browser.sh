#!/usr/bin/env bash
# Headless Chromium + chromedriver (Debian packages) for the browser test of the HTML report
# (tests marked `browser`; they skip with a reason when these are absent). Needs root (or sudo).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "chromium and chromedriver already installed: $(chromium --version 2>/dev/null | head -1)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
chromium --version 2>/dev/null | head -1
chromedriver --version
