#!/usr/bin/env bash
# Build SeaweedFS's `weed` binary (the S3-compatible server the checkpoint tests and the
# checkpoint benchmark run against) from the Go module proxy.
#
# Produces ${HYPERSWEEP_CACHE:-~/.cache/hypersweep}/seaweedfs/<version>/bin/weed, built once per
# machine: when the binary is present and the stamp matches the pinned version, the script exits
# immediately.
#
# SeaweedFS tags its releases without the `v` semantic-version prefix (e.g. `4.01`), so the module
# proxy only knows its commits as pseudo-versions; we pin one.  Its go.mod carries a `replace`
# directive, which `go install pkg@version` refuses, so (like hack/k8s/build.sh) we generate a
# small wrapper module that requires seaweedfs at the pinned version, copies its replace
# directives, and runs `go build` there.
#
# Usage: bash hack/seaweedfs/build.sh [--force]
set -euo pipefail

# Pinned version (a commit on master, 2026-11-09).  Must match SEAWEEDFS_VERSION in
# hypersweep/testing/_s3.py (a test checks it).
SEAWEEDFS_VERSION="v0.0.0-20261109003541-7506e5f91cd6"
MODULE="github.com/seaweedfs/seaweedfs"

CACHE_ROOT="${HYPERSWEEP_CACHE:-${HOME}/.cache/hypersweep}/seaweedfs"
VERSION_DIR="${CACHE_ROOT}/${SEAWEEDFS_VERSION}"
BIN_DIR="${VERSION_DIR}/bin"
WORK_DIR="${VERSION_DIR}/src"
STAMP="${BIN_DIR}/.version"
STAMP_CONTENT="${SEAWEEDFS_VERSION}"
OUTPUTS=(weed)

# shellcheck source=../lib/cached_build.sh
source "$(dirname "$0")/../lib/cached_build.sh"
parse_build_args "$@"
exit_if_built "${VERSION_DIR}.lock" "weed up to date in ${BIN_DIR} (${SEAWEEDFS_VERSION})"
require_go 1.26 SeaweedFS
begin_build "${BIN_DIR}"

log "resolving ${MODULE}@${SEAWEEDFS_VERSION}"
gomod="$(module_gomod "${MODULE}" "${SEAWEEDFS_VERSION}")"
mod="${WORK_DIR}/wrapper"
write_wrapper_module "${mod}" "${MODULE}" "${SEAWEEDFS_VERSION}" "${gomod}"

log "building weed ${SEAWEEDFS_VERSION}"
(
  cd "${mod}"
  CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags="-s -w" -o "${BIN_DIR}/weed" "${MODULE}/weed"
)
end_build "done: ${BIN_DIR}/weed"
