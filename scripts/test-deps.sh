#!/usr/bin/env bash
# System packages the integration tests drive for real: Chromium renders the evaluation report.
# Installs them from Debian when missing (needs root or sudo); a no-op when they are there.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null || echo "apt-get update failed; trying the cached package lists" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
