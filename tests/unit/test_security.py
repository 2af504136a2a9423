"""The operator's security material and the data plane's figures, as pure functions."""

from __future__ import annotations

import base64
import datetime
from typing import Any

from edgeadapt.api.v1alpha1 import EDGE_DEVICE
from edgeadapt.controllers import observe, security
from edgeadapt.controllers.common import Owner
from edgeadapt.pki import dns_names, issue, new_ca, not_after, signed_by
from edgeadapt.stream.auth import mint_token, status_token, verify_token

KEY = b"a1" * 32
CA = new_ca("ca")
HOSTS = security.trainer_hosts("pol", "ns", "cluster.local")


def owner(name: str = "cam") -> Owner:
    return Owner(EDGE_DEVICE, "ns", name, "u", 1)


def test_a_device_token_is_the_hmac_the_trainer_accepts() -> None:
    secret = security.device_token_secret(owner(), KEY)
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert verify_token(KEY, "cam", token)
    assert not verify_token(KEY, "other", token)
    # The trainer strips the key file it reads; so does the minting.
    again = security.device_token_secret(owner(), KEY + b"\n")
    assert again["data"] == secret["data"]
    assert status_token(KEY) != mint_token(KEY, "cam")


def test_an_observed_key_must_be_usable() -> None:
    assert security.token_key_of(None) is None
    assert security.token_key_of({"data": {"key": base64.b64encode(b"short").decode()}}) is None
    assert security.token_key_of({"data": {"key": "%%%"}}) is None
    good = {"data": {"key": base64.b64encode(KEY).decode()}}
    assert security.token_key_of(good) == KEY


def secret_of(pair: Any, ca: Any = CA) -> dict[str, Any]:
    return security.tls_secret(Owner(EDGE_DEVICE, "ns", "pol", "u", 1), pair, ca)


def test_the_trainers_certificate_covers_every_pod_name_and_is_kept_while_good() -> None:
    pair = security.tls_pair(None, CA, HOSTS)
    assert signed_by(pair.cert, CA.cert)
    assert set(HOSTS) <= set(dns_names(pair.cert))
    assert "*.pol-trainer.ns.svc.cluster.local" in dns_names(pair.cert)
    assert security.tls_pair(secret_of(pair), CA, HOSTS) == pair


def test_the_trainers_certificate_is_renewed_before_expiry_or_when_wrong() -> None:
    pair = security.tls_pair(None, CA, HOSTS)
    later = not_after(pair.cert) - security.RENEW_BEFORE + datetime.timedelta(hours=1)
    assert security.tls_pair(secret_of(pair), CA, HOSTS, now=later) != pair
    other_ca = new_ca("other")
    assert security.tls_pair(secret_of(pair), other_ca, HOSTS) != pair  # the CA changed
    narrow = issue(CA, "x", HOSTS[:1])
    renewed = security.tls_pair(secret_of(narrow), CA, HOSTS)  # a name is missing
    assert renewed != narrow
    assert set(HOSTS) <= set(dns_names(renewed.cert))
    edited = secret_of(pair) | {"data": secret_of(pair)["data"] | {"tls.crt": "bm90IGEgY2VydA=="}}
    assert security.tls_pair(edited, CA, HOSTS) != pair


def view(**fields: Any) -> dict[str, Any]:
    return {
        "id": "cam",
        "connected": True,
        "adapt": True,
        "agent_in_step": True,
        "model_version": 7,
        "agent_model_version": 7,
        "miou_teacher_last_60s": 80.0,
        "uplink_kbps": 100.0,
        "downlink_kbps": 100.0,
        "sampling_rate_fps": 0.5,
        "last_update_time": 1000.0,
    } | fields


def test_figures_are_written_only_beyond_the_tolerance() -> None:
    first = observe.device_figures(view(), 1000.0)
    assert first["accuracy"] == {"miouVsTeacher": 0.8}
    assert observe.figures_due({}, first, 1000.0)
    # A new version 10 s later: not yet; a minute later: yes.
    newer = observe.device_figures(view(agent_model_version=8, last_update_time=1010), 1010)
    assert not observe.figures_due(first, newer, 1010.0)
    assert observe.figures_due(first, newer, 1061.0)
    # Accuracy moving 2 points, or a rate 25 %, is written at once.
    drop = observe.device_figures(view(miou_teacher_last_60s=77.0), 1010)
    assert observe.figures_due(first, drop, 1010.0)
    small = observe.device_figures(view(miou_teacher_last_60s=79.0, uplink_kbps=110.0), 1010)
    assert not observe.figures_due(first, small, 1010.0)
    burst = observe.device_figures(view(downlink_kbps=130.0), 1010)
    assert observe.figures_due(first, burst, 1010.0)


def test_policy_figures_count_connected_and_adapting_devices() -> None:
    trainer = observe.TrainerObservation(
        1.0,
        True,
        phase="serving",
        devices={
            "a": view(id="a"),
            "b": view(id="b", agent_in_step=False, miou_teacher_last_60s=60.0),
            "c": view(id="c", connected=False),
        },
    )
    down = observe.TrainerObservation(1.0, False, error="timeout")
    figures = observe.policy_figures([trainer, down])
    assert (figures.connected, figures.adapting) == (2, 1)
    assert figures.mean_miou == 0.7
