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


def bucket_tokens(name: str) -> int:
    """Token budget of a bucket, with an error naming the valid buckets."""
    try:
        return BUCKETS[name]
    except KeyError:
        raise InputError(f"bucket {name!r}", f"unknown bucket; choose from {', '.join(BUCKETS)}") from None
