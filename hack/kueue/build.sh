#!/usr/bin/env bash
# Build Kueue's controller manager (the admission controller a `kueue` Sweep hands its gangs to)
# from the Go module proxy, and take its CRDs and webhook manifests from the same module.
#
# Produces, for the pinned version below, in ${HYPERSWEEP_CACHE:-~/.cache/hypersweep}/kueue/<version>/bin/:
#   kueue                        the manager (sigs.k8s.io/kueue cmd/kueue)
#   crds/*.yaml                  the kueue.x-k8s.io CRDs (config/components/crd/bases)
#   webhook/manifests.yaml       its mutating/validating webhook configurations
#                                (config/components/webhook/manifests.yaml)
#
# Nothing but the module proxy is used.  The build happens once per machine: when every output
# is present and the stamp matches the pinned version the script exits immediately.
#
# Usage: bash hack/kueue/build.sh [--force]
set -euo pipefail

# Pinned version.  Must match KUEUE_VERSION in hypersweep/testing/_kueue.py (a test checks it).
KUEUE_VERSION="v0.17.0"
MODULE="sigs.k8s.io/kueue"

CACHE_ROOT="${HYPERSWEEP_CACHE:-${HOME}/.cache/hypersweep}/kueue"
VERSION_DIR="${CACHE_ROOT}/${KUEUE_VERSION}"
BIN_DIR="${VERSION_DIR}/bin"
WORK_DIR="${VERSION_DIR}/src"
STAMP="${BIN_DIR}/.version"
STAMP_CONTENT="${KUEUE_VERSION}"
OUTPUTS=(kueue crds/kueue.x-k8s.io_workloads.yaml webhook/manifests.yaml)

# shellcheck source=../lib/cached_build.sh
source "$(dirname "$0")/../lib/cached_build.sh"
parse_build_args "$@"
exit_if_built "${VERSION_DIR}.lock" "kueue up to date in ${BIN_DIR} (${KUEUE_VERSION})"
require_go 1.25 Kueue
begin_build "${BIN_DIR}/crds" "${BIN_DIR}/webhook"

log "resolving ${MODULE}@${KUEUE_VERSION}"
gomod="$(module_gomod "${MODULE}" "${KUEUE_VERSION}")"
mod="${WORK_DIR}/wrapper"
write_wrapper_module "${mod}" "${MODULE}" "${KUEUE_VERSION}" "${gomod}"

log "building kueue ${KUEUE_VERSION} (cmd/kueue)"
(
  cd "${mod}"
  CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags="-s -w" -o "${BIN_DIR}/kueue" "${MODULE}/cmd/kueue"
)

src="$(module_dir "${MODULE}" "${KUEUE_VERSION}")"
rm -f "${BIN_DIR}"/crds/*.yaml
cp "${src}"/config/components/crd/bases/*.yaml "${BIN_DIR}/crds/"
cp "${src}/config/components/webhook/manifests.yaml" "${BIN_DIR}/webhook/manifests.yaml"
chmod u+w "${BIN_DIR}"/crds/*.yaml "${BIN_DIR}/webhook/manifests.yaml"

for o in "${OUTPUTS[@]}"; do
  [[ -e "${BIN_DIR}/${o}" ]] || { echo "error: ${o} was not produced" >&2; exit 1; }
done
end_build "built ${OUTPUTS[*]} into ${BIN_DIR}"
