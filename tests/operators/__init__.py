"""Tests of the Kubernetes operator: CRDs, controllers, deploy manifests."""
