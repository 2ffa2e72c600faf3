"""The only door to the chain (see docs/neurons.md, "Chain").

Neurons see the chain through the narrow `Chain` protocol: a metagraph snapshot (uids, hotkeys, stakes,
validator permits, served endpoints), serving this hotkey's endpoint, setting weights, and the subnet's
weight limits. `BittensorChain` implements it over bittensor 11; `FakeChain` is an in-process ledger
that tests and mock mode share, strict in the ways the real chain is strict.
"""

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import bittensor
from bittensor.intents.serving import ServeAxon
from bittensor.intents.weights import SetWeights
from bittensor.keyfiles import KeyfileError
from bittensor.metagraph import Metagraph, MetagraphNeuron
from bittensor.settings import DEFAULT_NETWORK, U16_MAX, resolve_endpoint


class ChainError(Exception):
    """The chain refused a call or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str
    stake: float
    validator_permit: bool
    endpoint: tuple[str, int] | None  # (ip, port) served on chain, None when nothing is served


@dataclass(frozen=True)
class MetagraphSnapshot:
    netuid: int
    block: int
    neurons: tuple[Neuron, ...]
    # Lookups run per request on the miner, so they are indexed once rather than scanned.
    _by_hotkey: dict[str, Neuron] = field(init=False, repr=False, compare=False)
    _by_uid: dict[int, Neuron] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_hotkey", {neuron.hotkey: neuron for neuron in self.neurons})
        object.__setattr__(self, "_by_uid", {neuron.uid: neuron for neuron in self.neurons})

    def by_hotkey(self, hotkey: str) -> Neuron | None:
        return self._by_hotkey.get(hotkey)

    def by_uid(self, uid: int) -> Neuron | None:
        return self._by_uid.get(uid)


@dataclass(frozen=True)
class WeightLimits:
    max_weight: float  # the largest share one uid may get, as a fraction of the total (1.0: no limit)
    min_allowed_weights: int  # the least number of non-zero weights a submission must carry
    rate_limit_blocks: int  # blocks that must pass between two submissions by the same validator


class Chain(Protocol):
    """The chain as one neuron sees it: bound to that neuron's hotkey and one subnet."""

    hotkey: str

    async def snapshot(self) -> MetagraphSnapshot: ...

    async def serve(self, ip: str, port: int) -> None: ...

    async def set_weights(self, uids: Sequence[int], weights: Sequence[float]) -> None: ...

    async def weight_limits(self) -> WeightLimits: ...


# FakeChain's defaults: no share cap and no rate limit, so mock mode can set weights every epoch.
DEFAULT_FAKE_LIMITS = WeightLimits(max_weight=1.0, min_allowed_weights=1, rate_limit_blocks=0)
# What loading a hotkey file can raise: missing or unreadable file, undecodable content.
_HOTKEY_LOAD_ERRORS = (OSError, KeyfileError, bittensor.BittensorError, ValueError)
# Slack for float rounding when checking a normalised share against max_weight.
_SHARE_TOLERANCE = 1e-6


@dataclass
class _Slot:
    hotkey: str
    stake: float
    validator_permit: bool
    last_weights_block: int | None = None


class FakeChain:
    """An in-process subnet: the shared ledger behind every `view(hotkey)` in tests and mock mode.

    Faithful where neurons depend on it: uids are stable and only change hands through `replace`,
    endpoints belong to the hotkey that served them, and `set_weights` refuses what the chain refuses.
    The block advances on each snapshot and set_weights call, so time passes as neurons work.
    """

    def __init__(self, netuid: int = 1, limits: WeightLimits = DEFAULT_FAKE_LIMITS) -> None:
        self.netuid = netuid
        self.block = 0
        self.limits = limits
        self.weights: dict[str, list[tuple[list[int], list[float]]]] = {}
        self.fail_next_set_weights = 0
        self._slots: list[_Slot] = []
        self._endpoints: dict[str, tuple[str, int]] = {}

    def register(self, hotkey: str, stake: float = 0.0, validator_permit: bool = False) -> int:
        self._require_unregistered(hotkey)
        self._slots.append(_Slot(hotkey, _check_stake(stake), validator_permit))
        return len(self._slots) - 1

    def replace(self, uid: int, hotkey: str, stake: float = 0.0, validator_permit: bool = False) -> None:
        """A new hotkey takes over `uid` (deregistration + registration): it inherits nothing."""
        slot = self._slot(uid)
        self._require_unregistered(hotkey)
        self._endpoints.pop(slot.hotkey, None)
        self._slots[uid] = _Slot(hotkey, _check_stake(stake), validator_permit)

    def set_stake(self, uid: int, stake: float) -> None:
        self._slot(uid).stake = _check_stake(stake)

    def set_validator_permit(self, uid: int, validator_permit: bool) -> None:
        self._slot(uid).validator_permit = validator_permit

    def view(self, hotkey: str) -> "FakeChainView":
        return FakeChainView(self, hotkey)

    def uid_of(self, hotkey: str) -> int | None:
        return next((uid for uid, slot in enumerate(self._slots) if slot.hotkey == hotkey), None)

    def current_snapshot(self) -> MetagraphSnapshot:
        """The ledger as it stands, without advancing the block."""
        neurons = tuple(
            Neuron(uid, slot.hotkey, slot.stake, slot.validator_permit, self._endpoints.get(slot.hotkey))
            for uid, slot in enumerate(self._slots)
        )
        return MetagraphSnapshot(self.netuid, self.block, neurons)

    def serve(self, hotkey: str, ip: str, port: int) -> None:
        self._registered_slot(hotkey)
        if not ip or not 0 < port < 65536:
            raise ChainError(f"invalid endpoint {ip}:{port}")
        self._endpoints[hotkey] = (ip, port)

    def set_weights(self, hotkey: str, uids: Sequence[int], weights: Sequence[float]) -> None:
        self.block += 1
        if self.fail_next_set_weights > 0:
            self.fail_next_set_weights -= 1
            raise ChainError("injected failure: the chain did not accept the extrinsic")
        setter_uid, setter = self._registered_slot(hotkey)
        if not setter.validator_permit:
            raise ChainError(f"hotkey {hotkey} has no validator permit on netuid {self.netuid}")
        uid_list, weight_list = [int(uid) for uid in uids], [float(w) for w in weights]
        _check_weights(uid_list, weight_list, len(self._slots))
        self._check_limits(setter_uid, setter, uid_list, weight_list)
        setter.last_weights_block = self.block
        self.weights.setdefault(hotkey, []).append((uid_list, weight_list))

    def _check_limits(self, setter_uid: int, setter: _Slot, uids: list[int], weights: list[float]) -> None:
        limits = self.limits
        if setter.last_weights_block is not None:
            since = self.block - setter.last_weights_block
            if since < limits.rate_limit_blocks:
                raise ChainError(
                    f"weights were set {since} blocks ago; the rate limit is {limits.rate_limit_blocks}"
                )
        # The chain exempts a validator weighting only itself from the count and share rules.
        if uids == [setter_uid]:
            return
        nonzero = sum(1 for weight in weights if weight > 0)
        if nonzero < limits.min_allowed_weights:
            raise ChainError(f"{nonzero} non-zero weights; the subnet requires {limits.min_allowed_weights}")
        share = max(weights) / sum(weights)
        if share > limits.max_weight + _SHARE_TOLERANCE:
            raise ChainError(f"largest weight is {share:.4f} of the total; the limit is {limits.max_weight}")

    def _slot(self, uid: int) -> _Slot:
        if not 0 <= uid < len(self._slots):
            raise ChainError(f"uid {uid} does not exist on netuid {self.netuid}")
        return self._slots[uid]

    def _registered_slot(self, hotkey: str) -> tuple[int, _Slot]:
        uid = self.uid_of(hotkey)
        if uid is None:
            raise ChainError(f"hotkey {hotkey} is not registered on netuid {self.netuid}")
        return uid, self._slots[uid]

    def _require_unregistered(self, hotkey: str) -> None:
        if not hotkey:
            raise ChainError("a hotkey is required")
        if self.uid_of(hotkey) is not None:
            raise ChainError(f"hotkey {hotkey} is already registered on netuid {self.netuid}")


class FakeChainView:
    """One neuron's `Chain` onto a FakeChain."""

    def __init__(self, ledger: FakeChain, hotkey: str) -> None:
        self.ledger = ledger
        self.hotkey = hotkey

    async def snapshot(self) -> MetagraphSnapshot:
        self.ledger.block += 1
        return self.ledger.current_snapshot()

    async def serve(self, ip: str, port: int) -> None:
        self.ledger.serve(self.hotkey, ip, port)

    async def set_weights(self, uids: Sequence[int], weights: Sequence[float]) -> None:
        self.ledger.set_weights(self.hotkey, uids, weights)

    async def weight_limits(self) -> WeightLimits:
        return self.ledger.limits


class BittensorChain:
    """The real chain through bittensor 11's async Client, bound to `wallet`'s hotkey and `netuid`.

    Construction only checks the settings; the connection opens on the first call and is kept. Every
    failure, including a call that takes longer than `timeout_s`, surfaces as ChainError so that the
    neurons can retry and keep working while the chain is unreachable.
    """

    def __init__(
        self,
        wallet: bittensor.Wallet,
        network: str | None,
        chain_endpoint: str | None,
        netuid: int,
        timeout_s: float = 120.0,
    ) -> None:
        self.wallet = wallet
        self.netuid = netuid
        self.timeout_s = timeout_s
        # An explicit endpoint wins over the network name, as with the seed's --subtensor.* flags.
        self.network, self.endpoint = _resolve(chain_endpoint or network or DEFAULT_NETWORK)
        try:
            self.hotkey: str = wallet.hotkey.ss58_address
        except _HOTKEY_LOAD_ERRORS as exc:
            raise ChainError(f"cannot load the hotkey of {wallet}: {exc}") from exc
        self._client: bittensor.Client | None = None
        self._connecting = asyncio.Lock()

    async def snapshot(self) -> MetagraphSnapshot:
        async with self._failures("read the metagraph"):
            client = await self._connected()
            metagraph = await client.subnets.metagraph(self.netuid, commitments=False)
        if metagraph is None:
            raise ChainError(f"subnet {self.netuid} does not exist on {self.network}")
        return snapshot_from_metagraph(metagraph)

    async def serve(self, ip: str, port: int) -> None:
        async with self._failures(f"serve {ip}:{port}"):
            client = await self._connected()
            result = await client.execute(ServeAxon(netuid=self.netuid, ip=ip, port=port), self.wallet)
            result.raise_for_failure()

    async def set_weights(self, uids: Sequence[int], weights: Sequence[float]) -> None:
        async with self._failures("set weights"):
            client = await self._connected()
            # SetWeights clips to max_weight, quantises to u16 and preflights registration and the rate limit.
            intent = SetWeights(netuid=self.netuid, uids=list(uids), weights=list(weights))
            result = await client.execute(intent, self.wallet)
            result.raise_for_failure()

    async def weight_limits(self) -> WeightLimits:
        async with self._failures("read the weight limits"):
            client = await self._connected()
            hyper = client.hyperparameters
            max_weight, min_weights, rate_limit = await asyncio.gather(
                hyper.max_weight_limit(self.netuid),
                hyper.min_allowed_weights(self.netuid),
                hyper.weights_rate_limit(self.netuid),
            )
        return WeightLimits(
            max_weight=int(max_weight) / U16_MAX,
            min_allowed_weights=int(min_weights),
            rate_limit_blocks=int(rate_limit),
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            async with self._failures("close the connection"):
                await client.close()

    async def _connected(self) -> bittensor.Client:
        async with self._connecting:
            if self._client is None:
                # Only a connected client is kept, so the next call retries a failed connection.
                self._client = await bittensor.Client(self.endpoint).connect()
            return self._client

    @contextlib.asynccontextmanager
    async def _failures(self, action: str) -> AsyncIterator[None]:
        """Bounds the call by timeout_s and turns whatever goes wrong into ChainError."""
        try:
            async with asyncio.timeout(self.timeout_s):
                yield
        except TimeoutError:
            raise ChainError(f"{action}: no answer from {self.endpoint} within {self.timeout_s:g}s") from None
        except ChainError:
            raise
        # The SDK's transport stack raises errors of many kinds (websocket, SCALE decoding, the SDK's
        # own); to the neurons each is the same event, a chain call that failed and may be retried.
        except Exception as exc:
            raise ChainError(f"{action} on netuid {self.netuid}: {type(exc).__name__}: {exc}") from exc


def _resolve(target: str) -> tuple[str, str]:
    try:
        return resolve_endpoint(target)
    except ValueError as exc:
        raise ChainError(str(exc)) from None


def snapshot_from_metagraph(metagraph: Metagraph) -> MetagraphSnapshot:
    return MetagraphSnapshot(
        netuid=metagraph.netuid,
        block=metagraph.block,
        neurons=tuple(neuron_from_metagraph(neuron) for neuron in metagraph.neurons),
    )


def neuron_from_metagraph(neuron: MetagraphNeuron) -> Neuron:
    return Neuron(
        uid=neuron.uid,
        hotkey=neuron.hotkey,
        # Total stake in the subnet's alpha units (what the chain ranks validator permits by); `.tao`
        # would refuse an alpha balance, `.amount` is the plain number in the balance's own unit.
        stake=float(neuron.total_stake.amount),
        validator_permit=neuron.validator_permit,
        endpoint=parse_endpoint(neuron.axon),
    )


def parse_endpoint(axon: str | None) -> tuple[str, int] | None:
    """(ip, port) from the SDK's "ip:port" / "[ipv6]:port"; None when nothing usable is served."""
    if not axon:
        return None
    host, _, port_text = axon.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _check_stake(stake: float) -> float:
    if not math.isfinite(stake) or stake < 0:
        raise ChainError(f"stake must be a finite non-negative number, got {stake}")
    return float(stake)


def _check_weights(uids: list[int], weights: list[float], n_uids: int) -> None:
    """What the chain (and bittensor's SetWeights) refuse regardless of the subnet's limits."""
    if len(uids) != len(weights):
        raise ChainError(f"uids and weights differ in length: {len(uids)} vs {len(weights)}")
    if not uids:
        raise ChainError("no weights given")
    if len(set(uids)) != len(uids):
        raise ChainError("duplicate uids in weights")
    missing = [uid for uid in uids if not 0 <= uid < n_uids]
    if missing:
        raise ChainError(f"uids {missing} do not exist")
    if any(not math.isfinite(weight) or weight < 0 for weight in weights):
        raise ChainError("weights must be finite and non-negative")
    if sum(weights) <= 0:
        raise ChainError("all weights are zero; nothing to set")


def load_wallet(name: str, hotkey: str, path: str) -> bittensor.Wallet:
    """The neuron's wallet with its hotkey loaded; the coldkey's private key is never read.

    Fails fast (ChainError) when the hotkey file is missing or unreadable, rather than at the first
    signature in the middle of a round.
    """
    wallet = bittensor.Wallet(name=name, hotkey=hotkey, path=path)
    try:
        wallet.hotkey  # noqa: B018 - loads and caches the keypair
    except _HOTKEY_LOAD_ERRORS as exc:
        raise ChainError(f"cannot load hotkey {hotkey!r} of wallet {name!r} under {path}: {exc}") from exc
    return wallet
