import time
from collections.abc import Sequence
from pathlib import Path

import bittensor
import pytest
from bittensor import http_auth
from hypothesis import event, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from neurons.auth import AUTH_HEADERS, AuthError, RequestVerifier, create_wallet, read_claim, signed_headers
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
    assert read_claim(headers).hotkey == wallets["validator"].hotkey.ss58_address
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


def test_read_claim_reads_the_claim_without_the_body(wallets: dict[str, bittensor.Wallet]) -> None:
    headers = headers_for(wallets["validator"], wallets["miner"].hotkey.ss58_address)
    assert read_claim(headers).hotkey == wallets["validator"].hotkey.ss58_address
    with pytest.raises(AuthError, match=f"missing header {http_auth.HEADER_HOTKEY}"):
        read_claim({})
    with pytest.raises(AuthError, match="missing header"):
        read_claim({http_auth.HEADER_HOTKEY: ""})


def test_auth_headers_are_every_header_bittensor_reads() -> None:
    # A header http_auth.verify reads but read_claim does not police could be sent twice unnoticed.
    assert set(AUTH_HEADERS) == {
        getattr(http_auth, name) for name in dir(http_auth) if name.startswith("HEADER_")
    }


@pytest.mark.parametrize("header", AUTH_HEADERS)
def test_any_repeated_auth_header_is_refused_by_name(
    wallets: dict[str, bittensor.Wallet], miner: RequestVerifier, header: str
) -> None:
    headers = CIMultiDict(headers_for(wallets["validator"], miner.self_hotkey))
    value = headers.popone(header, "sr25519")  # X-Bittensor-Crypto is absent for sr25519: add it twice
    headers.add(header, value)
    headers.add(header.upper(), value)  # even the same value, in another case
    with pytest.raises(AuthError, match=header) as info:
        read_claim(headers)
    assert info.value.code == "repeated_header"
    with pytest.raises(AuthError, match=header):
        miner.verify(headers, BODY)


# Header multisets: each signed header of two senders, possibly dropped, repeated, re-cased, reordered.
def _recased(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper()])


@st.composite
def mixed_headers(draw: st.DrawFn, sources: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
    # Skewed so a fair share of examples verify: the first sender's headers mostly once, the other's rarely.
    repeats = [st.sampled_from((1, 1, 1, 0, 2)), st.sampled_from((0, 0, 0, 1, 2))]
    pairs = [
        (draw(_recased(name)), value)
        for headers, times in zip(sources, repeats, strict=True)
        for name, value in headers.items()
        for _ in range(draw(times))
    ]
    return draw(st.permutations(pairs))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_the_claimed_hotkey_is_the_verified_one_whatever_the_headers(
    wallets: dict[str, bittensor.Wallet], data: st.DataObject
) -> None:
    """The permit check reads read_claim's hotkey; whenever verification passes it proves that same key."""
    receiver = wallets["miner"].hotkey.ss58_address
    signers = data.draw(st.permutations([wallets["validator"], wallets["other"]]))
    sources = [headers_for(signer, receiver) for signer in signers]
    pairs = data.draw(mixed_headers(sources))
    try:
        claim = read_claim(CIMultiDict(pairs))
        verified = RequestVerifier(receiver).verify_claim(claim, BODY)
    except AuthError:
        event("refused")
        return
    event("verified")
    assert verified == claim.hotkey


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
