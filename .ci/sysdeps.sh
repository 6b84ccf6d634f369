#!/usr/bin/env bash
# System packages the project needs beyond Python: git-annex for DataLad (TVSD). Debian's package is recent
# enough (>= 10.20230126). Idempotent; uses sudo only when not root; says what to do when it cannot install.
set -euo pipefail
if command -v git-annex >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "git-annex is missing and this user cannot install it: install the git-annex package (DataLad needs it)" >&2
    exit 1
  fi
fi
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q git-annex >/dev/null || { $SUDO apt-get update -q && $SUDO apt-get install -y -q git-annex; }
elif command -v brew >/dev/null 2>&1; then
  brew install git-annex
else
  echo "git-annex is missing: install it with your package manager (DataLad needs it for TVSD)" >&2
  exit 1
fi
