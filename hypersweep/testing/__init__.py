"""Test helpers for hypersweep: a real local Kubernetes control plane and a node agent.

See :mod:`hypersweep.testing._k8s` for :class:`LocalCluster` and the node-pool helpers, and
:mod:`hypersweep.testing._node_agent` for the agent that really runs pods on a test node, and
:mod:`hypersweep.testing._chaos` for the chaos runs (operator and replica SIGKILLs), and
:func:`mlflow_server` for a real MLflow tracking server, :class:`OperatorProcess` for the
operator as a process of its own, and :func:`free_port` and :func:`wait_until` for every test
of a real process.
"""

from hypersweep.testing._chaos import (
    GangChaosReport,
    OperatorChaosReport,
    chaos_sweep,
    run_gang_chaos,
    run_operator_chaos,
)
from hypersweep.testing._k8s import (
    BUILD_COMMAND,
    CONTROL_PLANE_BINARIES,
    DEFAULT_K8S_VERSION,
    KWOK_NODE_ANNOTATION,
    KWOK_STAGES_FILE,
    NODE_AGENT_LABEL,
    POOL_LABEL,
    BinaryCheck,
    ClusterStartError,
    LocalCluster,
    NodeAgentProcess,
    apply_data_claim,
    binaries_dir,
    create_namespace,
    create_node_pool,
    find_binaries,
    wait_for_nodes_ready,
)
from hypersweep.testing._mlflow import mlflow_server
from hypersweep.testing._node_agent import NodeAgent, expand_vars
from hypersweep.testing._operator import OperatorProcess
from hypersweep.testing._waiting import free_port, wait_until

__all__ = [
    "BUILD_COMMAND",
    "CONTROL_PLANE_BINARIES",
    "DEFAULT_K8S_VERSION",
    "KWOK_NODE_ANNOTATION",
    "KWOK_STAGES_FILE",
    "NODE_AGENT_LABEL",
    "POOL_LABEL",
    "BinaryCheck",
    "ClusterStartError",
    "GangChaosReport",
    "LocalCluster",
    "NodeAgent",
    "NodeAgentProcess",
    "OperatorChaosReport",
    "OperatorProcess",
    "apply_data_claim",
    "binaries_dir",
    "chaos_sweep",
    "create_namespace",
    "create_node_pool",
    "expand_vars",
    "find_binaries",
    "free_port",
    "mlflow_server",
    "run_gang_chaos",
    "run_operator_chaos",
    "wait_for_nodes_ready",
    "wait_until",
]
