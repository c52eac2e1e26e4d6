"""Drift detection for the model-serving node: training-data statistics from Kafka.

Modules (each documents its environment variables at the top):

- ``stats``: RunningStats, psi, z_score (pure Python); the buckets are ``modelserve.buckets``.
- ``consumer``: ``python -m modelserve.drift.consumer``, training statistics for Prometheus.
- ``producer``: ``python -m modelserve.drift.producer``, a training-data simulator.
"""

__all__ = ["consumer", "envconfig", "producer", "stats"]
