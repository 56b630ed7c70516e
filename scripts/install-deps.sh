#!/usr/bin/env bash
# Installs the Debian packages that building and testing need, skipping
# those already present. Runs apt-get through sudo when not root.
set -euo pipefail
pkgs=(meson ninja-build pkg-config gcc g++ clang libclang-rt-14-dev python3 python3-venv
      libmicrohttpd-dev libcjson-dev libcurl4-openssl-dev libpcre2-dev libutf8proc-dev curl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
