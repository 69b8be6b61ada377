"""Test helpers for hypersweep: a real local Kubernetes control plane and a node agent.

See :mod:`hypersweep.testing._k8s` for :class:`LocalCluster` and the node-pool helpers, and
:mod:`hypersweep.testing._node_agent` for the agent that really runs pods on a test node, and
:mod:`hypersweep.testing._chaos` for the chaos runs (operator and replica SIGKILLs),
:mod:`hypersweep.testing._gang_schedulers` for the coscheduling gang scheduler,
:mod:`hypersweep.testing._kueue` for Kueue's manager, and
:func:`mlflow_server` for a real MLflow tracking server, :class:`OperatorProcess` for the
operator as a process of its own, and :func:`free_port` and :func:`wait_until` for every test
of a real process.
"""

from hypersweep.testing._chaos import (
    GangChaosReport,
    OperatorChaosReport,
    chaos_sweep,
    gang_chaos_sweep,
    run_gang_chaos,
    run_operator_chaos,
    run_trainjob_gang_chaos,
)
from hypersweep.testing._gang_schedulers import (
    COSCHEDULER_NAME,
    GANG_BUILD_COMMAND,
    Coscheduler,
    gang_binaries_dir,
    missing_gang_binaries,
    start_coscheduler,
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
from hypersweep.testing._kueue import (
    KUEUE_BUILD_COMMAND,
    KUEUE_VERSION,
    KueueProcess,
    kueue_binaries_dir,
    missing_kueue_binaries,
    start_kueue,
)
from hypersweep.testing._mlflow import mlflow_server
from hypersweep.testing._node_agent import NodeAgent, expand_vars
from hypersweep.testing._operator import OperatorProcess
from hypersweep.testing._waiting import free_port, wait_until

__all__ = [
    "BUILD_COMMAND",
    "CONTROL_PLANE_BINARIES",
    "COSCHEDULER_NAME",
    "DEFAULT_K8S_VERSION",
    "GANG_BUILD_COMMAND",
    "KUEUE_BUILD_COMMAND",
    "KUEUE_VERSION",
    "KWOK_NODE_ANNOTATION",
    "KWOK_STAGES_FILE",
    "NODE_AGENT_LABEL",
    "POOL_LABEL",
    "BinaryCheck",
    "ClusterStartError",
    "Coscheduler",
    "GangChaosReport",
    "KueueProcess",
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
    "gang_binaries_dir",
    "gang_chaos_sweep",
    "kueue_binaries_dir",
    "missing_gang_binaries",
    "missing_kueue_binaries",
    "mlflow_server",
    "run_gang_chaos",
    "run_operator_chaos",
    "run_trainjob_gang_chaos",
    "start_coscheduler",
    "start_kueue",
    "wait_for_nodes_ready",
    "wait_until",
]
