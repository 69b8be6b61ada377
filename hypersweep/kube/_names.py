"""Names shared by the operator, the launcher and trial pods: API group, labels, environment.

They are part of the public contract: labels and annotations are what ``kubectl get -l`` and
other tools select on, and the environment variables are what trial code may read.
"""

from __future__ import annotations

GROUP = "hypersweep.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# --- labels and annotations on the objects the controllers create --------------------------

#: On a TrainJob's pods and services: the TrainJob's name.
JOB_NAME_LABEL = f"{GROUP}/job-name"
#: On a TrainJob's pods and services: the replica role, lower case (``master``, ``worker``...).
REPLICA_TYPE_LABEL = f"{GROUP}/replica-type"
#: On a TrainJob's pods and services: the replica's index within its role.
REPLICA_INDEX_LABEL = f"{GROUP}/replica-index"
#: On a TrainJob's pods: which start of the gang the pod belongs to (``status.restartCount``).
RESTART_LABEL = f"{GROUP}/restart-count"
#: On a trial's TrainJob and Secret: the sweep's name.
SWEEP_LABEL = f"{GROUP}/sweep"
#: On a trial's TrainJob and Secret: the trial number.
TRIAL_LABEL = f"{GROUP}/trial"
#: On a trial's TrainJob: the attempt of the trial it runs (retries after crashes count up).
ATTEMPT_ANNOTATION = f"{GROUP}/attempt"
#: On a trial's TrainJob once the trial ended early: ``pruned``, ``paused`` or ``failed``.
OUTCOME_ANNOTATION = f"{GROUP}/outcome"
#: On a trial's TrainJob, for ``kubectl get trainjobs``: the trial's state (running, paused,
#: pruned, completed, failed, stopped), its parameters (JSON), the latest or final value of the
#: sweep's metric, and why it failed.
TRIAL_STATE_ANNOTATION = f"{GROUP}/trial-state"
PARAMS_ANNOTATION = f"{GROUP}/params"
VALUE_ANNOTATION = f"{GROUP}/value"
FAILURE_ANNOTATION = f"{GROUP}/failure"
#: On a trial's TrainJob that gang admission put on a node pool: the pool, as plain data, so
#: that a restarted gang (a replica failed, a node was lost) is admitted again before it starts.
POOL_ANNOTATION = f"{GROUP}/pool"
#: On a Sweep: removed once the sweep's stored trials and checkpoints are deleted.
SWEEP_FINALIZER = f"{GROUP}/cleanup"

# --- the environment of a trial pod ---------------------------------------------------------

REPORT_URL_ENV = "HYPERSWEEP_REPORT_URL"
TOKEN_ENV = "HYPERSWEEP_TRIAL_TOKEN"
NAMESPACE_ENV = "HYPERSWEEP_NAMESPACE"
SWEEP_ENV = "HYPERSWEEP_SWEEP"
TRIAL_ENV = "HYPERSWEEP_TRIAL_NUMBER"
ATTEMPT_ENV = "HYPERSWEEP_ATTEMPT"
CONFIG_ENV = "HYPERSWEEP_CONFIG"
CONFIG_FILE_ENV = "HYPERSWEEP_CONFIG_FILE"
CHECKPOINT_DIR_ENV = "HYPERSWEEP_CHECKPOINT_DIR"
KEEP_CHECKPOINTS_ENV = "HYPERSWEEP_KEEP_CHECKPOINTS"
#: fsspec options of the checkpoint location (JSON; no credentials: those come from a Secret).
CHECKPOINT_OPTIONS_ENV = "HYPERSWEEP_CHECKPOINT_OPTIONS"
OBJECTIVE_ENV = "HYPERSWEEP_OBJECTIVE"
OBJECTIVE_PICKLE_ENV = "HYPERSWEEP_OBJECTIVE_PICKLE"
REPORT_TIMEOUT_ENV = "HYPERSWEEP_REPORT_TIMEOUT"

#: Where a trial's Secret (its config file) is mounted in each container.
TRIAL_CONFIG_DIR = "/etc/hypersweep/trial"
#: Keys of a trial's Secret.
TOKEN_KEY = "token"
CONFIG_KEY = "config.json"
OBJECTIVE_KEY = "objective.pkl"

#: The component name in Events and the default name of the operator's Lease.
COMPONENT = "hypersweep-operator"
#: On the leading operator's pod: the operator's Service selects it, so reports reach the leader.
LEADER_LABEL = f"{GROUP}/leader"
