"""``edgeadapt token``: make a trainer's token secret, and mint a device's token from it.

edgeadapt token --secret-file F --new-secret      # write a fresh secret (mode 0600)
edgeadapt token --secret-file F --device cam-7    # print cam-7's token
edgeadapt token --secret-file F --status          # print the bearer token of the trainer's /status
"""

from __future__ import annotations

import argparse
import os
import sys

from edgeadapt.stream.auth import (
    load_secret,
    mint_token,
    new_secret,
    status_token,
    valid_device_id,
)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--secret-file", required=True, help="the trainer's token secret")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--device", help="print this device's token")
    group.add_argument("--new-secret", action="store_true", help="write a new secret")
    group.add_argument(
        "--status", action="store_true", help="print the bearer token the trainer's /status asks"
    )


def run(args: argparse.Namespace) -> int:
    if args.new_secret:
        if os.path.exists(args.secret_file):
            print(f"{args.secret_file} exists; refusing to overwrite it", file=sys.stderr)
            return 1
        fd = os.open(args.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(new_secret().hex().encode())
        return 0
    if args.status:
        print(status_token(load_secret(args.secret_file)))
        return 0
    if not valid_device_id(args.device):
        print(f"invalid device id {args.device!r} (a DNS-1123 name)", file=sys.stderr)
        return 2
    print(mint_token(load_secret(args.secret_file), args.device))
    return 0
