"""Drift detection for the model-serving node: training-data statistics from Kafka.

Modules (each documents its environment variables at the top):

- ``drift.stats``: RunningStats, BucketCounts, DEFAULT_EDGES, psi, z_score (pure Python).
- ``drift.consumer``: ``python -m drift.consumer``, training statistics for Prometheus.
- ``drift.producer``: ``python -m drift.producer``, a training-data simulator.
"""

__all__ = ["consumer", "envconfig", "producer", "stats"]
