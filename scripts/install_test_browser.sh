#!/usr/bin/env bash
# Debian's chromium and chromedriver, which tests/test_live_browser.py drives with Selenium (browsers that test tools
# download themselves cannot install here). Idempotent: does nothing when both are there. .ci/run calls it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

usage() {
  cat <<'USAGE'
usage: scripts/install_test_browser.sh [--dry-run]

Installs the Debian packages chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) with apt-get,
as root or through sudo. Without apt-get it installs nothing and says so: the browser test then skips, naming
this script.
Options:
  --dry-run   print the commands, run nothing
  -h, --help  this help
USAGE
}

sdpo_parse_args "$@"
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium and chromedriver are installed: $(chromium --version 2>/dev/null | head -1)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  sdpo_warn "apt-get not found: install chromium and its chromedriver with this system's package manager;" \
    "tests/test_live_browser.py skips without them"
  exit 0
fi
sudo=()
if ((EUID != 0)); then
  command -v sudo >/dev/null 2>&1 || sdpo_die "not root and no sudo: run as root: apt-get install -y chromium chromium-driver"
  sudo=(sudo)
fi
update=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update)
install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
  chromium-driver)
echo "commands:"
sdpo_quote_words "${update[@]}"
sdpo_quote_words "${install[@]}"
if ((DRY_RUN)); then
  echo "dry run: nothing was executed"
  exit 0
fi
"${update[@]}"
"${install[@]}"
chromium --version
