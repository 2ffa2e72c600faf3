"""The QuasarMiner and QuasarValidator models (the CRDs' source of truth)."""

from typing import Any

import pytest
from pydantic import ValidationError
from quasar_operator.models import TGI_IMAGE, QuasarMiner, QuasarValidator, error_summary

MINIMAL_MINER: dict[str, Any] = {
    "apiVersion": "quasar.ai/v1alpha1",
    "kind": "QuasarMiner",
    "metadata": {"name": "m", "namespace": "default"},
    "spec": {
        "model": {"id": "Qwen/Qwen2.5-7B-Instruct", "maxInputTokens": 131072, "maxTotalTokens": 131584},
        "wallet": {"secretName": "miner-wallet"},
        "subnet": {"netuid": 7},
    },
}


def test_minimal_miner_gets_defaults() -> None:
    miner = QuasarMiner.model_validate(MINIMAL_MINER)
    assert miner.spec.engine.kind == "tgi"
    assert miner.spec.engine.image == TGI_IMAGE
    assert miner.spec.replicas == 1
    assert miner.spec.exposure.service_type == "LoadBalancer"
    assert miner.spec.model.max_input_tokens == 131072


def test_bad_miner_reports_the_field_path() -> None:
    body = {
        **MINIMAL_MINER,
        "spec": {**MINIMAL_MINER["spec"], "model": {"id": "x", "maxInputTokens": 8, "maxTotalTokens": 8}},
    }
    del body["spec"]["wallet"]
    with pytest.raises(ValidationError) as caught:
        QuasarMiner.model_validate(body)
    summary = error_summary(caught.value)
    assert "spec.model: Value error, maxInputTokens must be less than maxTotalTokens" in summary
    assert "spec.wallet: Field required" in summary


def test_minimal_validator() -> None:
    validator = QuasarValidator.model_validate(
        {"spec": {"wallet": {"secretName": "validator-wallet"}, "subnet": {"netuid": 7}}}
    )
    assert validator.spec.wandb.mode == "disabled"
    assert validator.spec.state.size == "1Gi"
