"""``python -m edgeadapt.devcluster.provisioner``: the real node's ``local-path`` storage class.

A claim of that class (the default class of a cluster with a real node) that waits for a volume
gets a hostPath PersistentVolume of its own: a directory under ``--dir``, bound to the claim. When
the claim is deleted the volume is Released, and the provisioner deletes it and its directory
(reclaim policy Delete). The directories are world-writable, as a hostPath volume ignores the
pod's ``fsGroup``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from edgeadapt.devcluster.node import PROVISIONER, STORAGE_CLASS

log = logging.getLogger("edgeadapt.devcluster.provisioner")
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def volume_for(claim: dict[str, Any], directory: Path) -> dict[str, Any]:
    meta, spec = claim["metadata"], claim["spec"]
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def _items(response: Any) -> list[dict[str, Any]]:
    return list(json.loads(response.data)["items"])


def sync(core: client.CoreV1Api, root: Path) -> None:
    claims = _items(core.list_persistent_volume_claim_for_all_namespaces(_preload_content=False))
    for claim in claims:
        meta, spec = claim["metadata"], claim["spec"]
        phase = (claim.get("status") or {}).get("phase", "Pending")
        if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName"):
            continue
        if phase != "Pending":
            continue
        directory = root / f"{meta['namespace']}-{meta['name']}-{meta['uid']}"
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o777)
        try:
            core.create_persistent_volume(volume_for(claim, directory))  # type: ignore[arg-type]
            log.info("provisioned %s/%s", meta["namespace"], meta["name"])
        except ApiException as exc:
            if exc.status != 409:
                raise
    for volume in _items(core.list_persistent_volume(_preload_content=False)):
        annotations = volume["metadata"].get("annotations") or {}
        if annotations.get(PROVISIONED_BY) != PROVISIONER:
            continue
        if (volume.get("status") or {}).get("phase") == "Released":
            path = Path(volume["spec"]["hostPath"]["path"])
            if path.is_relative_to(root):
                shutil.rmtree(path, ignore_errors=True)
            try:
                core.delete_persistent_volume(volume["metadata"]["name"])
                log.info("deleted %s", volume["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeadapt.devcluster.provisioner")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where the volumes' folders go")
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    api = config.new_client_from_config(args.kubeconfig)  # type: ignore[no-untyped-call]
    core = client.CoreV1Api(api)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        try:
            sync(core, args.dir.resolve())
        except Exception:  # the API server may restart; try again next round
            log.exception("sync failed")
        time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
