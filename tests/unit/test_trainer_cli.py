"""The trainer's command line reads the operator's rendering of an AdaptationPolicy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeadapt.trainer.__main__ import parse_args, policy_defaults


def test_policy_parameters_become_defaults_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "policy.json"
    config.write_text(
        json.dumps(
            {
                "strategy": "ams+recl",
                "ams": {
                    "tUpdateSeconds": 8,
                    "tHorizonSeconds": 120,
                    "iterations": 12,
                    "gammaFraction": 0.02,
                    "learningRate": 0.0005,
                    "adaptiveInterval": "Disabled",
                },
                "sampling": {"rMinFps": 0.2, "rMaxFps": 2.0, "phiTarget": 0.25},
            }
        )
    )
    args = parse_args(["--config", str(config), "--iterations", "30"])
    assert args.t_update == 8
    assert args.t_horizon == 120
    assert args.iterations == 30, "an explicit flag overrides the policy"
    assert args.gamma == 0.02
    assert args.lr == 0.0005
    assert args.adaptive_interval == "Disabled"
    assert (args.r_min, args.r_max, args.phi_target) == (0.2, 2.0, 0.25)


def test_a_policy_without_ams_is_refused() -> None:
    with pytest.raises(ValueError, match="implements ams only"):
        policy_defaults({"strategy": "recl"})
