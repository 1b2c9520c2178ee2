"""Kubernetes manifests and the rollout verifier (`python -m k8s.verify`) that CI runs after helm."""
