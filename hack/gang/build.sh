#!/usr/bin/env bash
# Build the gang scheduler the gang-scheduling tests hand trials to, from the Go module proxy.
#
# Produces, for the pinned version below, in ${HYPERSWEEP_GANG_CACHE:-~/.cache/hypersweep/gang}/bin/:
#   kube-scheduler-coscheduling   kube-scheduler with the coscheduling plugin
#                                 (sigs.k8s.io/scheduler-plugins cmd/scheduler)
#   crds/podgroups.yaml           the PodGroup CRD (scheduling.x-k8s.io) from the same module
#
# Nothing but the module proxy is used.  The build happens once per machine: when every
# output is present and the stamp matches the pinned versions the script exits immediately.
#
# sigs.k8s.io/scheduler-plugins depends on k8s.io/kubernetes and pins the staging modules
# with `replace` directives, which are ignored in a dependency: like hack/k8s/build.sh we
# generate a wrapper module carrying those replace directives.
#
# Usage: bash hack/gang/build.sh [--force]
set -euo pipefail

# The newest version the module proxy serves here.  scheduler-plugins v0.34 is built against
# Kubernetes 1.34's scheduler framework and talks to the 1.36 test API server like any client.
SCHEDULER_PLUGINS_VERSION="v0.34.7"
# Replace targets of scheduler-plugins' go.mod that the module proxy does not serve, and the
# nearest patch release it does (csi-translation-lib has no API change within a minor).
SP_REPLACE_OVERRIDES=("k8s.io/csi-translation-lib v0.34.5")

CACHE_ROOT="${HYPERSWEEP_GANG_CACHE:-${HOME}/.cache/hypersweep/gang}"
BIN_DIR="${CACHE_ROOT}/bin"
WORK_DIR="${CACHE_ROOT}/src"
STAMP="${BIN_DIR}/.versions"
STAMP_CONTENT="scheduler-plugins=${SCHEDULER_PLUGINS_VERSION}"
OUTPUTS=(kube-scheduler-coscheduling crds/podgroups.yaml)

# shellcheck source=../lib/cached_build.sh
source "$(dirname "$0")/../lib/cached_build.sh"
parse_build_args "$@"
exit_if_built "${CACHE_ROOT}.lock" "gang scheduler up to date in ${BIN_DIR} (${STAMP_CONTENT})"
require_go 1.24 "the gang scheduler"
begin_build "${BIN_DIR}/crds"
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

# --- coscheduling (scheduler-plugins) ------------------------------------------------------
log "building scheduler-plugins ${SCHEDULER_PLUGINS_VERSION} (kube-scheduler + coscheduling)"
sp_gomod="$(module_gomod sigs.k8s.io/scheduler-plugins "${SCHEDULER_PLUGINS_VERSION}")"
sp_mod="${WORK_DIR}/scheduler-plugins"
write_wrapper_module "${sp_mod}" sigs.k8s.io/scheduler-plugins "${SCHEDULER_PLUGINS_VERSION}" "${sp_gomod}"
for o in "${SP_REPLACE_OVERRIDES[@]}"; do
  read -r mod ver <<<"${o}"
  sed -i "s#^\(.*${mod//./\\.} => ${mod//./\\.}\) v[^ ]*\$#\1 ${ver}#" "${sp_mod}/go.mod"
done
(
  cd "${sp_mod}"
  go build -trimpath -ldflags="-s -w" -o "${BIN_DIR}/kube-scheduler-coscheduling" \
    sigs.k8s.io/scheduler-plugins/cmd/scheduler
)
sp_src="$(module_dir sigs.k8s.io/scheduler-plugins "${SCHEDULER_PLUGINS_VERSION}")"
cp "${sp_src}/manifests/coscheduling/crd.yaml" "${BIN_DIR}/crds/podgroups.yaml.tmp" 2>/dev/null \
  || cp "${sp_src}/config/crd/bases/scheduling.x-k8s.io_podgroups.yaml" "${BIN_DIR}/crds/podgroups.yaml.tmp"
chmod u+w "${BIN_DIR}/crds/podgroups.yaml.tmp"
mv "${BIN_DIR}/crds/podgroups.yaml.tmp" "${BIN_DIR}/crds/podgroups.yaml"

for o in "${OUTPUTS[@]}"; do
  [[ -e "${BIN_DIR}/${o}" ]] || { echo "error: ${o} was not produced" >&2; exit 1; }
done
end_build "built ${OUTPUTS[*]} into ${BIN_DIR}"
