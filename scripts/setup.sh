#!/usr/bin/env bash
# Install everything nixdist's tests, demo and benchmarks need on a Debian 12 machine, as root:
# Debian's Nix 2.8 and OpenSSH server, then a virtual environment with nixdist and its test
# dependencies. Idempotent and quiet when there is nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nix-store >/dev/null 2>&1 || need+=(nix-bin)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
# Root filesystems of other Nix versions for the farm (nixdist farm rootfs).
[ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
# A static busybox (/bin/busybox): the builder of the derivations that tests build in Nix's
# sandbox, which holds nothing but store paths (tests/integration/test_remote_build_behaviours.py).
# (Debian's busybox package is linked dynamically; busybox-static replaces it.)
dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' ||
  need+=(busybox-static)
# Headless Chromium for the dashboard's browser test.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian starts a system sshd and nix-daemon where systemd runs; neither is needed here.
mkdir -p /nix/store 2>/dev/null || true

# Nix run as root builds locally as the build users of `build-users-group` (default: nixbld),
# and fails if that group is missing. Debian creates them in nix-setup-systemd, which the
# install above leaves out (--no-install-recommends): create them as its postinst does, only
# what is missing, 32 users as NixOS and Nix's installer have.
if [ "$(id -u)" = 0 ]; then
  if ! getent group nixbld >/dev/null; then
    echo "setup: creating group nixbld"
    groupadd --system nixbld
  fi
  missing=()
  for n in $(seq 1 32); do
    id "nixbld$n" >/dev/null 2>&1 || missing+=("nixbld$n")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: creating build users ${missing[*]}"
    for user in "${missing[@]}"; do
      useradd --system --comment "Nix build user ${user#nixbld}" --home-dir /var/empty \
        --gid nixbld --groups nixbld --no-user-group --shell /usr/sbin/nologin "$user"
    done
  fi
fi

if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt .venv/.installed ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
