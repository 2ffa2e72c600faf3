"""QUASAR evaluation: tasks, long-context construction, LongBench-faithful metrics and rewards.

This package knows nothing of neurons or Kubernetes; everything else builds on it.
"""

import os

# Before huggingface_hub is imported (it reads this once; this package imports it only lazily): its telemetry
# fetches an agent registry from huggingface.co on an engine client's first request, an outside connection a
# miner never asked for. The environment may still turn it on.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
