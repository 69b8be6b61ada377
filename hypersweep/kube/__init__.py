"""Kubernetes plumbing shared by the Kubernetes launcher and the operator's controllers.

Below both ``hypersweep.launchers`` and ``hypersweep.operators``, which each depend on this
package and never on each other:

* ``_client``: a small JSON client for the API server (``Kube``, resources, ``ApiError``).
* ``_informer``: watch-backed caches and the controllers' work queue.
* ``_names``: the API group, labels, annotations and finalizers.
* ``_expectations``: what a controller waits to see in its caches after its own writes.
* ``_recorder``: Kubernetes Events, written in the background.
* ``_server``: the HTTP endpoint trials report to.
* ``_pools``: node pools and gang admission.
* ``_jobspec``: the TrainJob spec model and status-condition helpers.
* ``_trial_jobs``: what a driver of trial TrainJobs and the Sweep controller share.
"""
