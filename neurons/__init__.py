"""QUASAR neurons: the miner, the validator and the protocol between them."""
