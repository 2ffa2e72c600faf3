"""Hotkey-signed queries: a thin layer over bittensor's btauth/1 (see docs/neurons.md, "Authentication").

The validator signs the exact compressed body it sends, bound to the receiving miner's hotkey; the miner
verifies the signature, freshness and receiver before it decompresses or parses anything. Only the headers
differ per miner, so one encoded body serves a whole round.

One identity per request: `read_claim` is the only reader of a request's authentication headers. It refuses
a request that sends any of them more than once (in any letter case), so the hotkey the miner checks for a
validator permit before reading the body is the very one whose signature `RequestVerifier.verify_claim`
checks afterwards: the headers it verifies are the claim's, not the request's.
"""

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import bittensor
from bittensor import http_auth

from neurons.protocol import QUERY_PATH

_METHOD = "POST"
# Every header bittensor's http_auth.verify reads; each may appear at most once in a request.
AUTH_HEADERS = (
    http_auth.HEADER_VERSION,
    http_auth.HEADER_HOTKEY,
    http_auth.HEADER_RECEIVER,
    http_auth.HEADER_NONCE,
    http_auth.HEADER_CRYPTO,
    http_auth.HEADER_SIGNATURE,
)
_AUTH_HEADER_BY_LOWER = {name.lower(): name for name in AUTH_HEADERS}
# Why a request was refused, as a short stable code (metrics labels, logs); str(error) is for humans.
_CODES: tuple[tuple[type[http_auth.AuthError], str], ...] = (
    (http_auth.MalformedAuth, "malformed"),
    (http_auth.WrongReceiver, "wrong_receiver"),
    (http_auth.StaleRequest, "stale"),
    (http_auth.ReplayedRequest, "replayed"),
    (http_auth.BadSignature, "bad_signature"),
)


class AuthError(Exception):
    """A request that failed authentication. str() is the reason, safe to return to the caller."""

    def __init__(self, reason: str, code: str = "malformed") -> None:
        super().__init__(reason)
        self.code = code


def signed_headers(wallet: bittensor.Wallet, body: bytes, receiver_hotkey: str) -> dict[str, str]:
    """Auth headers for POSTing `body` to QUERY_PATH of the miner whose hotkey is `receiver_hotkey`.

    Each call signs a fresh nonce, so every retry must call it again.
    """
    return http_auth.sign(wallet, method=_METHOD, path=QUERY_PATH, body=body, receiver_ss58=receiver_hotkey)


@dataclass(frozen=True)
class Claim:
    """Who a request says it is, unverified: enough to refuse non-validators before reading the body.

    `headers` holds the request's authentication headers, each exactly once, under lower-case names;
    verification reads these and nothing else.
    """

    hotkey: str
    headers: Mapping[str, str]


def read_claim(headers: Mapping[str, str]) -> Claim:
    """The request's claim from its headers (a multidict: `.items()` yields every occurrence).

    Raises AuthError (code `repeated_header`) naming a header sent twice, or (`malformed`) when the hotkey
    is missing or empty.
    """
    seen: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for key, value in headers.items():
        lower = key.lower()
        if lower in _AUTH_HEADER_BY_LOWER:
            counts[lower] += 1
            seen[lower] = value
    repeated = [_AUTH_HEADER_BY_LOWER[lower] for lower, count in counts.items() if count > 1]
    if repeated:
        raise AuthError(
            f"header {repeated[0]} sent {counts[repeated[0].lower()]} times: each authentication header "
            "must appear once",
            "repeated_header",
        )
    hotkey = seen.get(http_auth.HEADER_HOTKEY.lower())
    if not hotkey:
        raise AuthError(f"missing header {http_auth.HEADER_HOTKEY}")
    return Claim(hotkey, seen)


class RequestVerifier:
    """Verifies signed queries addressed to `self_hotkey`; remembers nonces so a replay is refused."""

    def __init__(
        self,
        self_hotkey: str,
        max_age_s: float = 60.0,
        allowed_skew_s: float = http_auth.DEFAULT_ALLOWED_SKEW,
    ) -> None:
        if max_age_s <= 0 or allowed_skew_s < 0:
            raise ValueError("max_age_s must be positive and allowed_skew_s not negative")
        self.self_hotkey = self_hotkey
        self.max_age_s = max_age_s
        self.allowed_skew_s = allowed_skew_s
        # A nonce must be remembered for as long as it could still pass the freshness check.
        self._nonces = http_auth.InMemoryNonceStore(retention=max_age_s + allowed_skew_s)

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """Returns the authenticated sender hotkey; raises AuthError on any failure."""
        return self.verify_claim(read_claim(headers), body)

    def verify_claim(self, claim: Claim, body: bytes) -> str:
        """The claim's hotkey once its signature over `body` verifies; raises AuthError on any failure."""
        try:
            caller = http_auth.verify(
                claim.headers,
                body,
                method=_METHOD,
                path=QUERY_PATH,
                self_hotkey_ss58=self.self_hotkey,
                max_age=self.max_age_s,
                allowed_skew=self.allowed_skew_s,
                nonce_store=self._nonces,
            )
        except http_auth.AuthError as exc:
            raise AuthError(str(exc), _code(exc)) from None
        return caller.hotkey_ss58


def _code(error: http_auth.AuthError) -> str:
    return next((code for kind, code in _CODES if isinstance(error, kind)), "malformed")


def create_wallet(name: str, hotkey: str, path: str) -> bittensor.Wallet:
    """A password-less wallet under `path` for tests and mock mode; existing keys are reused, never replaced.

    Real neurons load an existing wallet with neurons.chain.load_wallet instead.
    """
    wallet = bittensor.Wallet(name=name, hotkey=hotkey, path=path)
    if not Path(wallet.coldkeypub_file.path).exists():
        wallet.create_new_coldkey(use_password=False, suppress=True)
    if not Path(wallet.hotkey_file.path).exists():
        wallet.create_new_hotkey(use_password=False, suppress=True)
    return wallet
