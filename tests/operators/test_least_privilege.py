"""Least privilege, derived rather than copied: the API server's audit log of this session
records every request of the operator's ServiceAccount (every operator in these tests runs as
it); the rules ``deploy/base`` and ``deploy/overlays/namespaced`` grant must be exactly what it
used, checked with SubjectAccessReviews (what ``kubectl auth can-i`` asks) against the real
RBAC authorizer. Trial pods get no service-account token and run as non-root.

The audit-derived tests run after every other test of the session; the exact comparison needs
the whole operator suite to have run (as ``hack/test.sh`` runs it)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from hypersweep.testing import LocalCluster, create_namespace

from .conftest import (
    OPERATOR_NAMESPACE,
    OPERATOR_USER,
    SECRETS_BINDING,
    Namespace,
    OperatorProcess,
    kubectl_json,
    operator_suite_deselected,
    rbac_objects,
    wait_until,
)
from .test_sweep import create_sweep, wait_sweep

pytestmark = pytest.mark.k8s

#: (apiGroup, resource[/subresource], verb): what a rule grants or a request used.
Permission = tuple[str, str, str]

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
#: Resources the operator must not touch at all, probed besides everything it used.
UNRELATED: list[tuple[str, str]] = [
    ("", "configmaps"),
    ("", "pods/exec"),
    ("", "pods/eviction"),
    ("", "serviceaccounts"),
    ("", "namespaces"),
    ("", "persistentvolumeclaims"),
    ("apps", "deployments"),
    ("batch", "jobs"),
    ("rbac.authorization.k8s.io", "rolebindings"),
    ("rbac.authorization.k8s.io", "clusterrolebindings"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
]
#: Granted, but used only with Volcano, which the test cluster does not run (scheduler-plugins'
#: coscheduling does run: test_gang_schedulers.py creates PodGroups through the operator).
EXTERNAL_SCHEDULERS: set[Permission] = {
    ("scheduling.volcano.sh", "podgroups", "create"),
}
SA_GROUPS = ["system:serviceaccounts", "system:authenticated"]
#: The leader labels its own pod (in the operator's namespace), which its Service selects.
LEADER_LABEL: Permission = ("", "pods", "patch")


def _resource(ref: dict[str, Any]) -> str:
    sub = ref.get("subresource")
    return f"{ref['resource']}/{sub}" if sub else str(ref["resource"])


def operator_requests(cluster: LocalCluster) -> list[dict[str, Any]]:
    """The audit events of the operator's requests to resources (not discovery)."""
    return [
        e
        for e in cluster.audit_events()
        if e["user"]["username"] == OPERATOR_USER and e.get("objectRef", {}).get("resource")
    ]


def used_permissions(events: Iterable[dict[str, Any]]) -> dict[Permission, set[str]]:
    """(group, resource, verb) -> the namespaces it was used in ("" for cluster scope)."""
    used: dict[Permission, set[str]] = {}
    for event in events:
        ref = event["objectRef"]
        key = (ref.get("apiGroup", ""), _resource(ref), event["verb"])
        used.setdefault(key, set()).add(ref.get("namespace", ""))
    return used


def granted(rules: list[dict[str, Any]]) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def rules_of(objects: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    rules: list[dict[str, Any]] = found["rules"]
    return rules


def allowed(
    cluster: LocalCluster, user: str, groups: list[str], permission: Permission, namespace: str
) -> bool:
    """What ``kubectl auth can-i --as=user`` answers: a SubjectAccessReview."""
    from kubernetes import client

    group, resource, verb = permission
    resource, _, subresource = resource.partition("/")
    attributes = client.V1ResourceAttributes(
        group=group, resource=resource, subresource=subresource or None, verb=verb
    )
    if namespace:
        attributes.namespace = namespace
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user, groups=groups, resource_attributes=attributes
        )
    )
    answer = client.AuthorizationV1Api(cluster.api_client()).create_subject_access_review(review)
    return bool(answer.status.allowed)


def probes(used: Iterable[Permission]) -> set[Permission]:
    """Every verb on every resource the operator used or must not touch."""
    resources = {(g, r) for g, r, _ in used} | set(UNRELATED)
    return {(g, r, v) for g, r in resources for v in VERBS}


def whole_operator_suite_ran(request: pytest.FixtureRequest) -> list[str]:
    """Why the session is not the whole operator suite (empty when it is)."""
    here = Path(__file__).resolve().parent
    modules = {Path(str(item.path)).name for item in request.session.items}
    missing = sorted(
        p.name for p in here.glob("test_*.py") if p.name not in modules and p != Path(__file__)
    )
    return [f"not collected: {m}" for m in missing] + [
        f"deselected: {d}" for d in operator_suite_deselected()
    ]


@pytest.mark.run_last
def test_the_operator_used_nothing_it_was_not_granted(cluster: LocalCluster) -> None:
    events = operator_requests(cluster)
    assert events, "no request of the operator's ServiceAccount in the audit log"
    refused = [
        (e["verb"], _resource(e["objectRef"]), e["objectRef"].get("namespace"))
        for e in events
        if e.get("responseStatus", {}).get("code") == 403
    ]
    assert not refused, f"the operator was refused: {sorted(set(refused))}"
    objects = rbac_objects("deploy/base")
    rules = [
        *rules_of(objects, "ClusterRole", "hypersweep-operator"),
        *rules_of(objects, "ClusterRole", SECRETS_BINDING),
        *rules_of(objects, "Role", "hypersweep-operator-leader"),
    ]
    unused_grants = set(used_permissions(events)) - granted(rules)
    assert not unused_grants, f"used but not granted by deploy/base: {sorted(unused_grants)}"


@pytest.mark.run_last
def test_deploy_base_grants_exactly_what_the_operator_used(
    cluster: LocalCluster, request: pytest.FixtureRequest
) -> None:
    partial = whole_operator_suite_ran(request)
    if partial:
        pytest.skip(f"needs the whole operator suite in this session: {partial[:3]}")
    used = used_permissions(operator_requests(cluster))
    objects = rbac_objects("deploy/base")
    cluster_wide = granted(rules_of(objects, "ClusterRole", "hypersweep-operator"))
    secrets = granted(rules_of(objects, "ClusterRole", SECRETS_BINDING))
    leader = granted(rules_of(objects, "Role", "hypersweep-operator-leader"))

    # Leases and the leader's label on its own pod: only in the operator's own namespace;
    # Secrets: only in sweeps' namespaces.
    leases = {p: ns for p, ns in used.items() if p[1] == "leases" or p == LEADER_LABEL}
    assert set(leases) == leader, (sorted(leases), sorted(leader))
    assert all(ns == {OPERATOR_NAMESPACE} for ns in leases.values()), leases
    used_secrets = {p for p in used if p[1] == "secrets"}
    assert used_secrets == secrets, (sorted(used_secrets), sorted(secrets))
    rest = set(used) - set(leases) - used_secrets
    assert rest == cluster_wide - EXTERNAL_SCHEDULERS, (
        f"granted, never used: {sorted(cluster_wide - EXTERNAL_SCHEDULERS - rest)}; "
        f"used, not granted: {sorted(rest - cluster_wide)}"
    )
    assert cluster_wide.issuperset(EXTERNAL_SCHEDULERS)

    # The authorizer agrees: in a namespace with the Secrets binding (and the operator's own),
    # exactly what was used (and the PodGroups); in one without it, the same less Secrets;
    # leases only at home.
    with_secrets = "rbac-probe-with-secrets"
    without = "rbac-probe-without"
    for name in (with_secrets, without):
        create_namespace(cluster.api_client(), name)
    cluster.kubectl(
        "create",
        "rolebinding",
        SECRETS_BINDING,
        "-n",
        with_secrets,
        f"--clusterrole={SECRETS_BINDING}",
        f"--serviceaccount={OPERATOR_NAMESPACE}:hypersweep-operator",
    )
    expected = (set(used) | EXTERNAL_SCHEDULERS) - set(leases)
    groups = [*SA_GROUPS, f"system:serviceaccounts:{OPERATOR_NAMESPACE}"]
    wrong = []
    for permission in sorted(probes(used) | EXTERNAL_SCHEDULERS):
        cluster_scoped = permission[1] == "nodes"
        for namespace, grant in (
            (with_secrets, expected),
            (without, expected - used_secrets),
            # deploy/base binds the Secrets role in its own namespace (the default for sweeps).
            (OPERATOR_NAMESPACE, expected | set(leases)),
        ):
            scope = "" if cluster_scoped else namespace
            if allowed(cluster, OPERATOR_USER, groups, permission, scope) != (permission in grant):
                wrong.append((permission, scope))
    assert not wrong, f"the authorizer's answers differ from what was used: {sorted(set(wrong))}"


@pytest.mark.run_last
def test_namespaced_overlay_grants_exactly_what_the_operator_used(
    cluster: LocalCluster, request: pytest.FixtureRequest
) -> None:
    partial = whole_operator_suite_ran(request)
    if partial:
        pytest.skip(f"needs the whole operator suite in this session: {partial[:3]}")
    used = used_permissions(operator_requests(cluster))
    objects = rbac_objects("deploy/overlays/namespaced")
    namespace = "ml"  # the overlay's namespace
    role = granted(rules_of(objects, "Role", "hypersweep-operator"))
    # The namespaced operator runs with --no-watch-nodes: nothing cluster-scoped is granted.
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    namespaced = {p for p, scopes in used.items() if scopes != {""}}
    assert role == namespaced, (
        f"granted, never used: {sorted(role - namespaced)}; "
        f"used, not granted: {sorted(namespaced - role)}"
    )

    # Apply the overlay's RBAC and ask the authorizer as the overlay's ServiceAccount.
    create_namespace(cluster.api_client(), namespace)
    items = {"apiVersion": "v1", "kind": "List", "items": objects}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(items))
    user = f"system:serviceaccount:{namespace}:hypersweep-operator"
    groups = [*SA_GROUPS, f"system:serviceaccounts:{namespace}"]
    create_namespace(cluster.api_client(), "rbac-probe-elsewhere")
    wrong = []
    for permission in sorted(probes(used)):
        if permission[1] == "nodes":
            if allowed(cluster, user, groups, permission, ""):
                wrong.append((permission, ""))
            continue
        for scope, grant in ((namespace, role), ("rbac-probe-elsewhere", set())):
            if allowed(cluster, user, groups, permission, scope) != (permission in grant):
                wrong.append((permission, scope))
    assert not wrong, f"the authorizer's answers differ from what was used: {sorted(set(wrong))}"


def test_trial_pods_mount_no_token_and_run_as_non_root(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess, tmp_path: Path
) -> None:
    # The strictest Pod Security Standard: the API server itself refuses a root or privileged pod.
    cluster.kubectl(
        "label", "namespace", namespace.name, "pod-security.kubernetes.io/enforce=restricted"
    )
    release = tmp_path / "release"
    create_sweep(
        cluster,
        namespace,
        "locked",
        "wait_for_release",
        max_trials=1,
        parallelism=1,
        env={"HYPERSWEEP_TEST_RELEASE": str(release)},
    )

    def running_pod() -> dict[str, Any] | None:
        for pod in kubectl_json(cluster, "get", "pods", "-n", namespace.name)["items"]:
            if pod["status"].get("phase") == "Running":
                return dict(pod)
        return None

    pod = wait_until(running_pod, 120, "the trial pod to run")
    spec = pod["spec"]
    # As admitted and stored by the API server (its ServiceAccount admission would have added
    # a projected token volume had the pod not opted out).
    assert spec["automountServiceAccountToken"] is False
    projected = [
        source
        for volume in spec.get("volumes") or []
        for source in (volume.get("projected") or {}).get("sources") or []
    ]
    assert not [s for s in projected if "serviceAccountToken" in s], spec["volumes"]
    mounts = [m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts") or []]
    assert not [m for m in mounts if "serviceaccount" in m], mounts
    assert spec["securityContext"]["runAsNonRoot"] is True
    for container in spec["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
    release.write_text("go")
    status = wait_sweep(cluster, namespace, "locked", operator)
    assert status["trials"]["succeeded"] == 1, status


def test_a_leftover_trial_secret_is_replaced_without_update_permission(
    cluster: LocalCluster, namespace: Namespace, operator: OperatorProcess
) -> None:
    # What a driver killed between a trial's Secret and its TrainJob leaves: the next one
    # replaces it (delete, create: the operator has no "update" on Secrets). A stale token
    # kept would have every report of the trial refused.
    stale = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "left-trial-0-trial", "labels": {"hypersweep.io/sweep": "left"}},
        "stringData": {"token": "stale"},
    }
    cluster.kubectl("apply", "-n", namespace.name, "-f", "-", input=json.dumps(stale))
    create_sweep(
        cluster,
        namespace,
        "left",
        "learning_curve",
        max_trials=1,
        parallelism=1,
        space={
            "lr": {"type": "float", "low": 0.0, "high": 1.0},
            "steps": {"type": "constant", "value": 3},
        },
    )
    status = wait_sweep(cluster, namespace, "left", operator)
    assert status["trials"]["succeeded"] == 1, (status, operator.log_tail(60))
