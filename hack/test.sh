#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what it needs (once, cached under
# ~/.cache/hypersweep), builds or reuses the local Kubernetes control plane, lints, then pytest.
# Extra arguments go to pytest, e.g. `bash hack/test.sh -k storage`.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${HYPERSWEEP_CACHE:-$HOME/.cache/hypersweep}"
venv="$cache/venv"
mkdir -p "$cache"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Python packages: a virtualenv outside the clone, reused; torch and TensorFlow are large.
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[dev]'

# PostgreSQL from Debian's package: the storage tests start their own server on loopback.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# Headless Chromium from Debian's package: the dashboard tests load the page as a person would.
if ! command -v chromium >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export HYPERSWEEP_REQUIRE_BROWSER=1

# nss_wrapper from Debian's package: the test node agent's cluster-DNS mode resolves pod names
# per process with it (hypersweep/testing/_cluster_dns.py), no root or namespace needed.
if ! ls /usr/lib/*/libnss_wrapper.so /usr/lib*/libnss_wrapper.so >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnss-wrapper >/dev/null
fi

# The Kubernetes control plane (etcd, kube-apiserver, scheduler, controller-manager, kwok).
if [ -f hack/k8s/build.sh ]; then
  bash hack/k8s/build.sh
  export HYPERSWEEP_REQUIRE_K8S=1
fi
# Gang schedulers the gang-scheduling tests hand trials to (scheduler-plugins' coscheduling),
# built from the Go module proxy like the control plane.
bash hack/gang/build.sh
# Kueue's manager (its CRDs and webhooks) for the `gang: kueue` tests, from the module proxy.
bash hack/kueue/build.sh
# SeaweedFS (an S3 server) for the object-storage checkpoint tests, built from the module proxy.
bash hack/seaweedfs/build.sh
export HYPERSWEEP_REQUIRE_S3=1
export HYPERSWEEP_REQUIRE_POSTGRES=1
# Ray and Ray Tune are dev dependencies: their tests fail rather than skip when missing.
export HYPERSWEEP_REQUIRE_RAY=1

export PATH="$venv/bin:$PATH"
ruff check .
mypy
exec python -m pytest "$@"
