#!/usr/bin/env bash
# Installs the Debian packages transferkit's demo and tests need.
# Why a script: `make` must do all set-up on a fresh machine, and Debian packages
# are outside pip's reach. Idempotent: does nothing when everything is present.
set -euo pipefail

need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
if [ "${TRANSFERKIT_BROWSER_TESTS:-1}" = "1" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
fi
[ ${#need[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "transferkit: please install these system packages by hand: ${need[*]}" >&2
  exit 0
fi
sudo=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "transferkit: not root and no sudo; install by hand: ${need[*]}" >&2
    exit 0
  fi
fi
echo "transferkit: installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q "${need[@]}" >/dev/null
}
