import asyncio
import math
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from neurons.auth import create_wallet
from neurons.chain import (
    Chain,
    ChainError,
    FakeChain,
    MetagraphSnapshot,
    Neuron,
    WeightLimits,
    load_wallet,
)

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture
def ledger() -> FakeChain:
    chain = FakeChain(netuid=7)
    chain.register("validator", stake=5000.0, validator_permit=True)
    chain.register("miner-a")
    chain.register("miner-b", stake=10.0)
    return chain


def test_snapshot_lists_neurons_by_stable_uid(ledger: FakeChain) -> None:
    snapshot = run(ledger.view("miner-a").snapshot())
    assert snapshot.netuid == 7
    assert [(n.uid, n.hotkey) for n in snapshot.neurons] == [(0, "validator"), (1, "miner-a"), (2, "miner-b")]
    assert snapshot.by_uid(0) == Neuron(0, "validator", 5000.0, True, None)
    assert snapshot.by_hotkey("miner-b") == Neuron(2, "miner-b", 10.0, False, None)
    assert snapshot.by_hotkey("nobody") is None
    assert snapshot.by_uid(3) is None


def test_block_advances_with_snapshots_and_weights(ledger: FakeChain) -> None:
    view = ledger.view("validator")
    first = run(view.snapshot()).block
    second = run(view.snapshot()).block
    run(view.set_weights([1, 2], [0.5, 0.5]))
    assert first < second < ledger.block


def test_a_view_is_a_chain(ledger: FakeChain) -> None:
    chain: Chain = ledger.view("miner-a")
    assert chain.hotkey == "miner-a"


def test_served_endpoint_is_visible_in_snapshots(ledger: FakeChain) -> None:
    run(ledger.view("miner-a").serve("127.0.0.1", 8091))
    snapshot = run(ledger.view("validator").snapshot())
    assert snapshot.by_hotkey("miner-a") == Neuron(1, "miner-a", 0.0, False, ("127.0.0.1", 8091))
    assert snapshot.by_hotkey("miner-b") == Neuron(2, "miner-b", 10.0, False, None)
    run(ledger.view("miner-a").serve("10.0.0.2", 9000))
    assert ledger.current_snapshot().by_uid(1) == Neuron(1, "miner-a", 0.0, False, ("10.0.0.2", 9000))


@pytest.mark.parametrize(
    ("hotkey", "ip", "port"), [("stranger", "127.0.0.1", 1), ("miner-a", "", 80), ("miner-a", "h", 0)]
)
def test_serve_requires_registration_and_a_real_endpoint(
    ledger: FakeChain, hotkey: str, ip: str, port: int
) -> None:
    with pytest.raises(ChainError):
        run(ledger.view(hotkey).serve(ip, port))


def test_replace_gives_the_uid_to_a_new_hotkey_that_inherits_nothing(ledger: FakeChain) -> None:
    run(ledger.view("miner-a").serve("127.0.0.1", 8091))
    ledger.replace(1, "miner-c")
    snapshot = ledger.current_snapshot()
    assert snapshot.by_uid(1) == Neuron(1, "miner-c", 0.0, False, None)
    assert snapshot.by_hotkey("miner-a") is None
    # Other uids are untouched.
    assert snapshot.by_uid(2) == Neuron(2, "miner-b", 10.0, False, None)
    with pytest.raises(ChainError, match="not registered"):
        run(ledger.view("miner-a").serve("127.0.0.1", 8091))


def test_replace_and_register_refuse_bad_input(ledger: FakeChain) -> None:
    with pytest.raises(ChainError, match="does not exist"):
        ledger.replace(9, "new")
    with pytest.raises(ChainError, match="already registered"):
        ledger.replace(1, "miner-b")
    with pytest.raises(ChainError, match="already registered"):
        ledger.register("miner-a")
    with pytest.raises(ChainError, match="stake"):
        ledger.register("rich", stake=math.nan)


def test_stake_and_permit_can_change(ledger: FakeChain) -> None:
    ledger.set_stake(1, 42.0)
    ledger.set_validator_permit(1, True)
    assert ledger.current_snapshot().by_uid(1) == Neuron(1, "miner-a", 42.0, True, None)


def test_set_weights_is_recorded_per_setter(ledger: FakeChain) -> None:
    run(ledger.view("validator").set_weights([1, 2], [0.25, 0.75]))
    run(ledger.view("validator").set_weights((2,), (1.0,)))
    assert ledger.weights == {"validator": [([1, 2], [0.25, 0.75]), ([2], [1.0])]}


@pytest.mark.parametrize(
    ("uids", "weights", "reason"),
    [
        ([1, 2], [1.0], "length"),
        ([], [], "no weights"),
        ([1, 1], [0.5, 0.5], "duplicate"),
        ([1, 3], [0.5, 0.5], "do not exist"),
        ([1, -1], [0.5, 0.5], "do not exist"),
        ([1, 2], [1.5, -0.5], "non-negative"),
        ([1, 2], [math.nan, 0.5], "finite"),
        ([1, 2], [math.inf, 0.5], "finite"),
        ([1, 2], [0.0, 0.0], "all weights are zero"),
    ],
)
def test_set_weights_refuses_what_the_chain_refuses(
    ledger: FakeChain, uids: Sequence[int], weights: Sequence[float], reason: str
) -> None:
    with pytest.raises(ChainError, match=reason):
        run(ledger.view("validator").set_weights(uids, weights))
    assert ledger.weights == {}


def test_only_registered_permit_holders_set_weights(ledger: FakeChain) -> None:
    with pytest.raises(ChainError, match="not registered"):
        run(ledger.view("stranger").set_weights([1], [1.0]))
    with pytest.raises(ChainError, match="validator permit"):
        run(ledger.view("miner-b").set_weights([1], [1.0]))
    assert ledger.weights == {}


def test_injected_failures_then_success(ledger: FakeChain) -> None:
    ledger.fail_next_set_weights = 2
    view = ledger.view("validator")
    for _ in range(2):
        with pytest.raises(ChainError, match="injected"):
            run(view.set_weights([1], [1.0]))
    run(view.set_weights([1], [1.0]))
    assert ledger.fail_next_set_weights == 0
    assert ledger.weights == {"validator": [([1], [1.0])]}


def test_weight_limits_are_configurable_and_enforced() -> None:
    limits = WeightLimits(max_weight=0.5, min_allowed_weights=2, rate_limit_blocks=3)
    ledger = FakeChain(limits=limits)
    for hotkey in ("validator", "a", "b", "c"):
        ledger.register(hotkey, validator_permit=hotkey == "validator")
    view = ledger.view("validator")
    assert run(view.weight_limits()) == limits
    with pytest.raises(ChainError, match="requires 2"):
        run(view.set_weights([1, 2], [1.0, 0.0]))
    with pytest.raises(ChainError, match=r"limit is 0\.5"):
        run(view.set_weights([1, 2, 3], [0.6, 0.2, 0.2]))
    run(view.set_weights([1, 2, 3], [0.5, 0.25, 0.25]))
    with pytest.raises(ChainError, match="rate limit"):
        run(view.set_weights([1, 2, 3], [0.4, 0.3, 0.3]))
    ledger.block += 3
    run(view.set_weights([1, 2, 3], [0.4, 0.3, 0.3]))
    # A validator weighting only itself is exempt from the count and share rules.
    ledger.block += 3
    run(view.set_weights([0], [1.0]))


def test_default_limits_let_mock_mode_set_weights_every_call(ledger: FakeChain) -> None:
    view = ledger.view("validator")
    assert run(view.weight_limits()).rate_limit_blocks == 0
    for _ in range(3):
        run(view.set_weights([1, 2], [0.9, 0.1]))


def test_snapshot_equality_ignores_the_indexes() -> None:
    neurons = (Neuron(0, "a", 1.0, True, ("1.2.3.4", 5)),)
    assert MetagraphSnapshot(1, 2, neurons) == MetagraphSnapshot(1, 2, neurons)


def test_load_wallet_reads_the_hotkey(tmp_path: Path) -> None:
    created = create_wallet("cold", "hot", str(tmp_path))
    loaded = load_wallet("cold", "hot", str(tmp_path))
    assert loaded.hotkey.ss58_address == created.hotkey.ss58_address


def test_load_wallet_fails_fast_on_a_missing_or_broken_hotkey(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="cannot load hotkey 'hot'"):
        load_wallet("cold", "hot", str(tmp_path))
    (tmp_path / "cold" / "hotkeys").mkdir(parents=True)
    (tmp_path / "cold" / "hotkeys" / "hot").write_text("garbage")
    with pytest.raises(ChainError, match="cannot load hotkey"):
        load_wallet("cold", "hot", str(tmp_path))
