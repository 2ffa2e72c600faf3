"""Suite-wide settings: nothing here may reach the network, and caches stay inside the test run."""

import os

# Set before any Hugging Face import so the libraries never try the Hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
