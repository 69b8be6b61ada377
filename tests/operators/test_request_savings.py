"""The pure parts of how the operator saves API requests per trial: a gang's pods deleted in
one ``deletecollection`` only when it deletes exactly what the plan says, and the client naming
that request as the API server's own counters do."""

from __future__ import annotations

from typing import Any

from hypersweep.kube._client import request_kind
from hypersweep.operators._trainjob import _collection_selector


def _pod(uid: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": f"p-{uid}"}, "status": {"phase": phase}}


def test_a_delete_of_a_collection_is_counted_as_deletecollection() -> None:
    assert request_kind("DELETE", "/api/v1/namespaces/ns/pods?labelSelector=x") == (
        "deletecollection",
        "pods",
    )
    assert request_kind("DELETE", "/api/v1/namespaces/ns/pods/p") == ("delete", "pods")


def test_one_request_deletes_a_gang_only_when_the_selectors_match_the_plan() -> None:
    alive = [_pod("a", "Running"), _pod("b", "Running"), _pod("c", "Succeeded")]
    every = {pod["metadata"]["uid"]: pod for pod in alive}
    running = {uid: pod for uid, pod in every.items() if uid != "c"}
    assert _collection_selector(every, alive) == ""
    assert _collection_selector(running, alive) == "status.phase!=Succeeded,status.phase!=Failed"
    # Some of the running pods only, or a single pod: deleted one by one, by uid.
    assert _collection_selector({"a": every["a"], "c": every["c"]}, alive) is None
    assert _collection_selector({"a": every["a"]}, alive) is None
