"""Context-length buckets, in tokens of the miner model's tokenizer (k = 1024, m = 1024 * 1024)."""

from evaluation.errors import InputError

K = 1024
M = 1024 * 1024

BUCKETS: dict[str, int] = {
    "32k": 32 * K,
    "124k": 124 * K,
    "512k": 512 * K,
    "1.5m": 3 * M // 2,
    "2m": 2 * M,
}

# No bucket may take more than this share of a validator's rounds: one that asks mostly short contexts
# rewards models that cannot read long ones (the original subnet put 90% of its tasks in one bucket).
MAX_BUCKET_SHARE = 0.9


def bucket_tokens(name: str) -> int:
    """Token budget of a bucket, with an error naming the valid buckets."""
    try:
        return BUCKETS[name]
    except KeyError:
        raise InputError(f"bucket {name!r}", f"unknown bucket; choose from {', '.join(BUCKETS)}") from None
