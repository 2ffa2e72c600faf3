"""What the operator may know of a wallet Secret: the names of its keys, never their values.

The wallet check reads the Secret as metadata only (`PartialObjectMetadata`: the API server sends no `data`)
and finds the key names in `metadata.managedFields`, where the API server records every field each client
wrote (`f:data` lists the keys, values left out). So a coldkey put there by mistake is seen by name, refused,
and never read into the operator's memory.
"""

from collections.abc import Mapping
from typing import Any

from quasar_operator.models import WALLET_COLDKEYPUB_KEY, WALLET_HOTKEY_KEY

# The keys the pods mount (as Secret items, nothing else): the hotkey signs, coldkeypub.txt names the owner.
NEEDED_KEYS = (WALLET_HOTKEY_KEY, WALLET_COLDKEYPUB_KEY)


def data_keys(metadata: Mapping[str, Any]) -> set[str] | None:
    """The Secret's data key names from its managedFields; None when they record no data at all (fields
    cleared by hand, or an object written before field tracking): then the keys are unknown."""
    keys: set[str] = set()
    recorded = False
    entries = metadata.get("managedFields")
    for entry in entries if isinstance(entries, list) else []:
        fields = entry.get("fieldsV1") if isinstance(entry, Mapping) else None
        for section in ("f:data", "f:stringData"):  # stringData is written into data
            names = fields.get(section) if isinstance(fields, Mapping) else None
            if isinstance(names, Mapping):
                recorded = True
                keys |= {name.removeprefix("f:") for name in names if name.startswith("f:")}
    return keys if recorded else None


def coldkeys(keys: set[str]) -> list[str]:
    """Keys that look like a coldkey private key: bittensor's `coldkey` file, or any name with "coldkey"
    that is not the public key's."""
    return sorted(k for k in keys if "coldkey" in k.lower() and "coldkeypub" not in k.lower())
