"""Flags both neurons share, spelled as the seed subnet spelled them (`--wallet.name`, ...)."""

import argparse


def add_wallet_and_chain_arguments(parser: argparse.ArgumentParser, *, netuid_required: bool) -> None:
    wallet = parser.add_argument_group("wallet")
    wallet.add_argument(
        "--wallet.name", dest="wallet_name", default="default", help="coldkey wallet name (default: default)"
    )
    wallet.add_argument(
        "--wallet.hotkey", dest="wallet_hotkey", default="default", help="hotkey name (default: default)"
    )
    wallet.add_argument(
        "--wallet.path",
        dest="wallet_path",
        default="~/.bittensor/wallets",
        help="wallets folder (default: ~/.bittensor/wallets)",
    )
    chain = parser.add_argument_group("chain")
    chain.add_argument(
        "--subtensor.network", dest="network", default="finney", help="finney, test, local (default: finney)"
    )
    chain.add_argument(
        "--subtensor.chain_endpoint", dest="chain_endpoint", help="ws(s):// endpoint; overrides the network"
    )
    netuid_help = "the subnet's netuid" + ("" if netuid_required else " (required unless --mock)")
    chain.add_argument("--netuid", type=int, required=netuid_required, help=netuid_help)
