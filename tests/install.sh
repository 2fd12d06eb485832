#!/usr/bin/env bash
# Installs everything the test suite needs: the package with its test extras,
# and the real clients and reference servers that the real-client tests drive
# (skopeo, buildah, umoci, busybox-static, Debian's docker-registry).
# Without root, the Debian packages are skipped and those tests say why they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    skopeo buildah umoci busybox-static docker-registry >/dev/null
else
  echo "tests/install.sh: not root (or no apt-get): skipping skopeo/buildah/umoci/busybox-static/docker-registry" >&2
fi
python -m pip install -q -e '.[test]'
