"""The trainer's command line reads the operator's rendering of an AdaptationPolicy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeadapt.trainer.__main__ import _check_args, parse_args, policy_defaults


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
                "recl": {"windowSeconds": 45, "sceneDropPoints": 15, "switchMarginPoints": 3},
                "scheduler": {"policy": "micro-window", "microWindowSeconds": 0.5},
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
    assert args.strategy == "ams+recl"
    assert args.window_seconds == 45
    assert args.scene_drop_points == 15
    assert parse_args([]).scene_drop_points == 0, "off by default: selection at window ends"
    assert args.switch_margin_points == 3
    assert parse_args([]).switch_margin_points == 2
    assert args.scheduler == "micro-window"
    assert args.micro_window_seconds == 0.5


def test_an_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="implements ams, recl, ams\\+recl"):
        policy_defaults({"strategy": "ekya"})


def test_an_unknown_scheduler_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="implements round-robin, micro-window, urgency"):
        policy_defaults({"scheduler": {"policy": "fifo"}})


def test_recl_needs_a_gating_service_and_its_ca(tmp_path: Path) -> None:
    base = ["--tls-cert", "c", "--tls-key", "k", "--token-secret-file", "t"]
    args = parse_args([*base, "--strategy", "recl"])
    assert _check_args(args) == "strategy recl needs --gating (the ModelZoo's gating service)"
    args = parse_args([*base, "--strategy", "recl", "--gating", "zoo:50052"])
    assert _check_args(args) == "--gating needs --gating-ca (or --insecure)"
    args = parse_args([*base, "--strategy", "recl", "--gating", "z:1", "--gating-ca", "ca"])
    assert _check_args(args) is None
    args = parse_args([*base, "--window-seconds", "0"])
    assert _check_args(args) == "--window-seconds must be positive"
    for margin in ("-1", "100"):
        args = parse_args([*base, "--switch-margin-points", margin])
        assert _check_args(args) == "--switch-margin-points must be at least 0 and below 100"


@pytest.mark.parametrize(
    ("strategy", "scheduler", "fraction"),
    [("ams", "round-robin", 1.0), ("edgesync", "urgency", 0.7), ("ams+edgesync", "urgency", 0.7)],
)
def test_edgesync_strategies_default_to_its_filter_and_urgency(
    strategy: str, scheduler: str, fraction: float
) -> None:
    args = parse_args(["--strategy", strategy])
    assert (args.scheduler, args.upload_fraction) == (scheduler, fraction)
    args = parse_args(["--strategy", strategy, "--scheduler", "micro-window"])
    assert args.scheduler == "micro-window", "a policy's own choice wins"
    assert _check_args(parse_args(["--upload-fraction", "0", "--insecure"])) == (
        "--upload-fraction must be in (0, 1]"
    )
