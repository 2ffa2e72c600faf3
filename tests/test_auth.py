import time
from pathlib import Path

import bittensor
import pytest
from bittensor import http_auth

from neurons.auth import AuthError, RequestVerifier, caller_hotkey, create_wallet, signed_headers
from neurons.protocol import QUERY_PATH

BODY = b"\x1f\x8b compressed query body"


@pytest.fixture(scope="module")
def wallets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bittensor.Wallet]:
    path = str(tmp_path_factory.mktemp("wallets"))
    return {role: create_wallet("quasar", role, path) for role in ("validator", "miner", "other")}


@pytest.fixture
def miner(wallets: dict[str, bittensor.Wallet]) -> RequestVerifier:
    return RequestVerifier(wallets["miner"].hotkey.ss58_address)


def headers_for(wallet: bittensor.Wallet, receiver: str, body: bytes = BODY) -> dict[str, str]:
    return signed_headers(wallet, body, receiver)


def assert_refused(
    verifier: RequestVerifier, headers: dict[str, str], body: bytes, code: str, reason: str
) -> None:
    with pytest.raises(AuthError, match=reason) as info:
        verifier.verify(headers, body)
    assert info.value.code == code


def test_good_request_verifies_to_the_sender(
    wallets: dict[str, bittensor.Wallet], miner: RequestVerifier
) -> None:
    headers = headers_for(wallets["validator"], miner.self_hotkey)
    assert miner.verify(headers, BODY) == wallets["validator"].hotkey.ss58_address


def test_header_names_are_case_insensitive(
    wallets: dict[str, bittensor.Wallet], miner: RequestVerifier
) -> None:
    # HTTP servers may hand headers over lower-cased.
    headers = {
        key.lower(): value for key, value in headers_for(wallets["validator"], miner.self_hotkey).items()
    }
    assert caller_hotkey(headers) == wallets["validator"].hotkey.ss58_address
    assert miner.verify(headers, BODY) == wallets["validator"].hotkey.ss58_address


def test_tampered_body_is_refused(wallets: dict[str, bittensor.Wallet], miner: RequestVerifier) -> None:
    headers = headers_for(wallets["validator"], miner.self_hotkey)
    assert_refused(miner, headers, BODY + b"x", "bad_signature", "signature")


def test_forged_sender_is_refused(wallets: dict[str, bittensor.Wallet], miner: RequestVerifier) -> None:
    headers = headers_for(wallets["other"], miner.self_hotkey)
    headers[http_auth.HEADER_HOTKEY] = wallets["validator"].hotkey.ss58_address
    assert_refused(miner, headers, BODY, "bad_signature", "signature")


def test_request_for_another_miner_is_refused(
    wallets: dict[str, bittensor.Wallet], miner: RequestVerifier
) -> None:
    headers = headers_for(wallets["validator"], wallets["other"].hotkey.ss58_address)
    assert_refused(miner, headers, BODY, "wrong_receiver", "receiving hotkey")


def test_replay_is_refused(wallets: dict[str, bittensor.Wallet], miner: RequestVerifier) -> None:
    headers = headers_for(wallets["validator"], miner.self_hotkey)
    miner.verify(headers, BODY)
    assert_refused(miner, headers, BODY, "replayed", "already accepted")
    # A fresh signature of the same body is a new request, not a replay.
    miner.verify(headers_for(wallets["validator"], miner.self_hotkey), BODY)


def test_each_verifier_has_its_own_nonce_memory(wallets: dict[str, bittensor.Wallet]) -> None:
    receiver = wallets["miner"].hotkey.ss58_address
    headers = headers_for(wallets["validator"], receiver)
    RequestVerifier(receiver).verify(headers, BODY)
    RequestVerifier(receiver).verify(headers, BODY)


@pytest.mark.parametrize(("age_s", "reason"), [(61.0, "older than"), (-10.0, "in the future")])
def test_stale_or_future_request_is_refused(
    wallets: dict[str, bittensor.Wallet], miner: RequestVerifier, age_s: float, reason: str
) -> None:
    nonce = time.time_ns() - int(age_s * 1e9)
    headers = http_auth.sign(
        wallets["validator"],
        method="POST",
        path=QUERY_PATH,
        body=BODY,
        receiver_ss58=miner.self_hotkey,
        nonce_ns=nonce,
    )
    assert_refused(miner, headers, BODY, "stale", reason)


def test_max_age_is_configurable(wallets: dict[str, bittensor.Wallet]) -> None:
    receiver = wallets["miner"].hotkey.ss58_address
    nonce = time.time_ns() - int(5e9)
    headers = http_auth.sign(
        wallets["validator"],
        method="POST",
        path=QUERY_PATH,
        body=BODY,
        receiver_ss58=receiver,
        nonce_ns=nonce,
    )
    assert_refused(RequestVerifier(receiver, max_age_s=1.0), headers, BODY, "stale", "older than")
    RequestVerifier(receiver, max_age_s=10.0).verify(headers, BODY)


def test_request_signed_for_another_path_is_refused(
    wallets: dict[str, bittensor.Wallet], miner: RequestVerifier
) -> None:
    headers = http_auth.sign(
        wallets["validator"], method="POST", path="/other", body=BODY, receiver_ss58=miner.self_hotkey
    )
    assert_refused(miner, headers, BODY, "bad_signature", "signature")


@pytest.mark.parametrize(
    "header",
    [
        http_auth.HEADER_VERSION,
        http_auth.HEADER_HOTKEY,
        http_auth.HEADER_NONCE,
        http_auth.HEADER_SIGNATURE,
        http_auth.HEADER_RECEIVER,
    ],
)
def test_missing_header_is_refused_with_its_name(
    wallets: dict[str, bittensor.Wallet], miner: RequestVerifier, header: str
) -> None:
    headers = headers_for(wallets["validator"], miner.self_hotkey)
    del headers[header]
    code = "wrong_receiver" if header == http_auth.HEADER_RECEIVER else "malformed"
    assert_refused(miner, headers, BODY, code, header)


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        (http_auth.HEADER_NONCE, "yesterday", "not a decimal integer"),
        (http_auth.HEADER_SIGNATURE, "0xzz", "not hex"),
        (http_auth.HEADER_SIGNATURE, "0x00", "signature encoding"),
        (http_auth.HEADER_HOTKEY, "not-an-ss58-address", "invalid hotkey address"),
    ],
)
def test_garbled_header_is_refused(
    wallets: dict[str, bittensor.Wallet], miner: RequestVerifier, header: str, value: str, reason: str
) -> None:
    headers = headers_for(wallets["validator"], miner.self_hotkey)
    headers[header] = value
    assert_refused(miner, headers, BODY, "malformed", reason)


def test_caller_hotkey_reads_the_claim_without_the_body(wallets: dict[str, bittensor.Wallet]) -> None:
    headers = headers_for(wallets["validator"], wallets["miner"].hotkey.ss58_address)
    assert caller_hotkey(headers) == wallets["validator"].hotkey.ss58_address
    with pytest.raises(AuthError, match=f"missing header {http_auth.HEADER_HOTKEY}"):
        caller_hotkey({})
    with pytest.raises(AuthError, match="missing header"):
        caller_hotkey({http_auth.HEADER_HOTKEY: ""})


def test_verifier_rejects_nonsense_windows() -> None:
    with pytest.raises(ValueError, match="max_age_s"):
        RequestVerifier("5F", max_age_s=0)


def test_create_wallet_is_password_less_and_reuses_existing_keys(tmp_path: Path) -> None:
    first = create_wallet("cold", "hot", str(tmp_path))
    again = create_wallet("cold", "hot", str(tmp_path))
    sibling = create_wallet("cold", "hot2", str(tmp_path))
    assert again.hotkey.ss58_address == first.hotkey.ss58_address
    assert sibling.coldkeypub.ss58_address == first.coldkeypub.ss58_address
    assert sibling.hotkey.ss58_address != first.hotkey.ss58_address
    # Readable by a fresh Wallet object without any prompt.
    reloaded = bittensor.Wallet(name="cold", hotkey="hot", path=str(tmp_path))
    assert reloaded.hotkey.ss58_address == first.hotkey.ss58_address
