"""QUASAR evaluation: tasks, long-context construction, LongBench-faithful metrics and rewards.

This package knows nothing of neurons or Kubernetes; everything else builds on it.
"""
