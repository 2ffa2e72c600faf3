import asyncio
import math
import socket
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import bittensor
import pytest
from bittensor import Balance
from bittensor.intents.serving import ServeAxon
from bittensor.intents.weights import SetWeights
from bittensor.metagraph import Metagraph, MetagraphNeuron

from neurons.auth import create_wallet
from neurons.chain import (
    BittensorChain,
    Chain,
    ChainError,
    FakeChain,
    MetagraphSnapshot,
    Neuron,
    WeightLimits,
    load_wallet,
    parse_endpoint,
    snapshot_from_metagraph,
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


# --- BittensorChain: everything that can be checked without a chain -------------------------------


def metagraph_neuron(
    uid: int, hotkey: str, stake_rao: int, permit: bool, axon: str | None
) -> MetagraphNeuron:
    zero = Balance.from_rao(0, 3)
    return MetagraphNeuron(
        uid=uid,
        hotkey=hotkey,
        coldkey="5Cold",
        active=True,
        validator_permit=permit,
        last_update=0,
        block_at_registration=0,
        rank=0.0,
        trust=0.0,
        consensus=0.0,
        incentive=0.0,
        dividends=0.0,
        pruning_score=0.0,
        emission=zero,
        alpha_stake=Balance.from_rao(stake_rao, 3),
        tao_stake=Balance.from_rao(0),
        total_stake=Balance.from_rao(stake_rao, 3),
        axon=axon,
        identity=None,
        commitment=None,
    )


def metagraph(neurons: list[MetagraphNeuron]) -> Metagraph:
    return Metagraph(
        netuid=3,
        mechid=0,
        name="quasar",
        symbol="q",
        block=4242,
        tempo=360,
        last_step=4000,
        blocks_since_last_step=242,
        owner_hotkey="5Owner",
        owner_coldkey="5Cold",
        network_registered_at=1,
        num_uids=len(neurons),
        max_uids=256,
        price=None,
        moving_price=None,
        identity=None,
        neurons=neurons,
        commitments={},
        unregistered_commitments={},
        raw={},
    )


def test_snapshot_from_a_bittensor_metagraph() -> None:
    graph = metagraph(
        [
            metagraph_neuron(0, "5Val", 2_500 * 10**9, True, "203.0.113.5:8091"),
            metagraph_neuron(1, "5Min", 0, False, None),
            metagraph_neuron(2, "5Six", 10**9, False, "[2001:db8::1]:9000"),
        ]
    )
    assert snapshot_from_metagraph(graph) == MetagraphSnapshot(
        netuid=3,
        block=4242,
        neurons=(
            Neuron(0, "5Val", 2500.0, True, ("203.0.113.5", 8091)),
            Neuron(1, "5Min", 0.0, False, None),
            Neuron(2, "5Six", 1.0, False, ("2001:db8::1", 9000)),
        ),
    )


@pytest.mark.parametrize(
    ("axon", "endpoint"),
    [
        ("1.2.3.4:80", ("1.2.3.4", 80)),
        ("[::1]:8091", ("::1", 8091)),
        (None, None),
        ("", None),
        ("1.2.3.4:0", None),
        ("1.2.3.4:99999", None),
        ("1.2.3.4", None),
        (":80", None),
    ],
)
def test_parse_endpoint(axon: str | None, endpoint: tuple[str, int] | None) -> None:
    assert parse_endpoint(axon) == endpoint


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> bittensor.Wallet:
    return create_wallet("cold", "validator", str(tmp_path_factory.mktemp("wallet")))


@pytest.mark.parametrize(
    ("network", "endpoint", "expected"),
    [
        (None, None, "wss://entrypoint-finney.opentensor.ai:443"),
        ("test", None, "wss://test.finney.opentensor.ai:443"),
        ("finney", "ws://127.0.0.1:9944", "ws://127.0.0.1:9944"),
        ("ws://10.0.0.1:9944", None, "ws://10.0.0.1:9944"),
    ],
)
def test_bittensor_chain_resolves_its_endpoint_without_connecting(
    wallet: bittensor.Wallet, network: str | None, endpoint: str | None, expected: str
) -> None:
    chain = BittensorChain(wallet, network, endpoint, netuid=3)
    assert chain.endpoint == expected
    assert chain.hotkey == wallet.hotkey.ss58_address


def test_bittensor_chain_refuses_bad_settings(wallet: bittensor.Wallet, tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="Unknown network 'mainnet'"):
        BittensorChain(wallet, "mainnet", None, netuid=3)
    with pytest.raises(ChainError, match="cannot load the hotkey"):
        BittensorChain(bittensor.Wallet("none", "none", str(tmp_path)), "local", None, netuid=3)


def test_unreachable_chain_is_a_chain_error(wallet: bittensor.Wallet) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    chain = BittensorChain(wallet, None, f"ws://127.0.0.1:{port}", netuid=3, timeout_s=10)
    with pytest.raises(ChainError, match="read the metagraph on netuid 3: RpcConnectionError"):
        run(chain.snapshot())
    with pytest.raises(ChainError, match="set weights"):
        run(chain.set_weights([1], [1.0]))


class StubClient:
    """Stands in for a connected bittensor.Client: records intents, answers reads, fails on demand."""

    def __init__(self, graph: Metagraph | None = None, error: Exception | None = None, delay_s: float = 0.0):
        self.graph, self.error, self.delay_s = graph, error, delay_s
        self.executed: list[object] = []
        self.subnets = self
        self.hyperparameters = self

    async def _answer(self, value: T) -> T:
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return value

    async def metagraph(self, netuid: int, *, commitments: bool) -> Metagraph | None:
        assert not commitments  # neurons never need them, and they cost a second query
        return await self._answer(self.graph)

    async def execute(self, intent: object, wallet: bittensor.Wallet) -> bittensor.ExtrinsicResult:
        self.executed.append(intent)
        return await self._answer(bittensor.ExtrinsicResult(success=True, message="ok"))

    async def max_weight_limit(self, netuid: int) -> int:
        return await self._answer(32767)

    async def min_allowed_weights(self, netuid: int) -> int:
        return await self._answer(8)

    async def weights_rate_limit(self, netuid: int) -> int:
        return await self._answer(100)


def stubbed(wallet: bittensor.Wallet, client: StubClient, timeout_s: float = 5.0) -> BittensorChain:
    chain = BittensorChain(wallet, "local", None, netuid=3, timeout_s=timeout_s)
    chain._client = cast(bittensor.Client, client)
    return chain


def test_bittensor_chain_reads_through_the_client(wallet: bittensor.Wallet) -> None:
    graph = metagraph([metagraph_neuron(0, "5Val", 10**9, True, "1.2.3.4:5")])
    chain = stubbed(wallet, StubClient(graph))
    assert run(chain.snapshot()) == snapshot_from_metagraph(graph)
    assert run(chain.weight_limits()) == WeightLimits(
        max_weight=32767 / 65535, min_allowed_weights=8, rate_limit_blocks=100
    )


def test_bittensor_chain_submits_intents(wallet: bittensor.Wallet) -> None:
    client = StubClient()
    chain = stubbed(wallet, client)
    run(chain.serve("203.0.113.5", 8091))
    run(chain.set_weights((1, 2), (0.25, 0.75)))
    serve, weights = client.executed
    assert isinstance(serve, ServeAxon)
    assert (serve.netuid, serve.ip, serve.port) == (3, "203.0.113.5", 8091)
    assert isinstance(weights, SetWeights)
    assert (weights.netuid, weights.uids, weights.weights) == (3, [1, 2], [0.25, 0.75])


def test_missing_subnet_is_a_chain_error(wallet: bittensor.Wallet) -> None:
    with pytest.raises(ChainError, match="subnet 3 does not exist"):
        run(stubbed(wallet, StubClient(graph=None)).snapshot())


@pytest.mark.parametrize(
    "error",
    [
        bittensor.ChainError("Hotkey is not registered on netuid 3."),
        bittensor.RpcConnectionError("connection dropped"),
        OSError("network is unreachable"),
    ],
)
def test_sdk_failures_become_chain_errors(wallet: bittensor.Wallet, error: Exception) -> None:
    chain = stubbed(wallet, StubClient(error=error))
    for call in (
        chain.snapshot(),
        chain.serve("1.2.3.4", 5),
        chain.set_weights([1], [1.0]),
        chain.weight_limits(),
    ):
        with pytest.raises(ChainError, match=type(error).__name__):
            run(call)


def test_rejected_extrinsic_is_a_chain_error(wallet: bittensor.Wallet) -> None:
    class Rejecting(StubClient):
        async def execute(self, intent: object, wallet: bittensor.Wallet) -> bittensor.ExtrinsicResult:
            return bittensor.ExtrinsicResult(success=False, message="SettingWeightsTooFast")

    with pytest.raises(ChainError, match="SettingWeightsTooFast"):
        run(stubbed(wallet, Rejecting()).set_weights([1], [1.0]))


def test_invalid_weights_are_refused_before_submission(wallet: bittensor.Wallet) -> None:
    client = StubClient()
    with pytest.raises(ChainError, match="Duplicate UIDs"):
        run(stubbed(wallet, client).set_weights([1, 1], [0.5, 0.5]))
    assert client.executed == []


def test_slow_chain_call_times_out_as_chain_error(wallet: bittensor.Wallet) -> None:
    chain = stubbed(wallet, StubClient(delay_s=5.0), timeout_s=0.05)
    with pytest.raises(ChainError, match=r"no answer from ws://127\.0\.0\.1:9944 within 0\.05s"):
        run(chain.snapshot())
