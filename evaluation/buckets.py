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

# Development sizes: contexts a CPU answers in seconds (mock mode, `quasar eval run` on a laptop), where the
# seed's smallest bucket takes minutes. Not the seed's buckets: no validator default asks them, the operator
# refuses them, and they are paid as 32k.
DEVELOPMENT_BUCKETS: dict[str, int] = {"1k": K, "2k": 2 * K, "4k": 4 * K, "8k": 8 * K}

# No bucket may take more than this share of a validator's rounds: one that asks mostly short contexts
# rewards models that cannot read long ones (the original subnet put 90% of its tasks in one bucket).
MAX_BUCKET_SHARE = 0.9


def bucket_tokens(name: str) -> int:
    """Token budget of a bucket, with an error naming the valid buckets."""
    try:
        return BUCKETS[name] if name in BUCKETS else DEVELOPMENT_BUCKETS[name]
    except KeyError:
        raise InputError(
            f"bucket {name!r}",
            f"unknown bucket; choose from {', '.join(BUCKETS)} "
            f"(development sizes: {', '.join(DEVELOPMENT_BUCKETS)})",
        ) from None
