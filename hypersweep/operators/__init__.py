"""Kubernetes operator: the TrainJob and Sweep custom resources and their controllers."""
