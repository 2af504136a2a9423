"""TLS for the trainer's port: credentials from PEM files, and a self-signed set for loopback.

In a cluster the certificates come from cert-manager (or any Secret); ``write_dev_pki`` makes a
CA, a server certificate for localhost/127.0.0.1 and a client certificate, for the demo and the
tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def server_credentials(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> grpc.ServerCredentials:
    """TLS server credentials; with ``client_ca``, clients must present a certificate it signed.

    The files are read again on each new connection, and a changed pair is used from then on:
    a certificate renewed in its Secret (the kubelet swaps the mounted files atomically) takes
    effect without a restart, and streams already open keep theirs."""
    paths = (Path(cert), Path(key), Path(client_ca) if client_ca else None)

    def load() -> tuple[bytes, bytes, bytes | None]:
        return (
            paths[0].read_bytes(),
            paths[1].read_bytes(),
            paths[2].read_bytes() if paths[2] else None,
        )

    def configuration(files: tuple[bytes, bytes, bytes | None]) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(files[1], files[0])], root_certificates=files[2]
        )

    current = [load()]

    def fetch() -> Any:
        try:
            files = load()
        except OSError:  # mid-swap or gone: keep serving with what we have
            return None
        if files == current[0]:
            return None
        current[0] = files
        return configuration(files)

    return grpc.dynamic_ssl_server_credentials(
        configuration(current[0]), fetch, require_client_authentication=client_ca is not None
    )


def channel_credentials(
    ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )


def write_dev_pki(
    directory: str | Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> PKI:
    """A fresh CA with a server and a client certificate (ECDSA P-256, one year), as PEM files."""
    from edgeadapt.pki import issue, new_ca

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = new_ca("edgeadapt-dev-ca", days=365)
    server = issue(ca, "edgeadapt-trainer", hosts, days=365)
    client = issue(ca, "edgeadapt-agent", server=False, days=365)
    pki = PKI(
        ca=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
    )
    pki.ca.write_bytes(ca.cert)
    pki.server_cert.write_bytes(server.cert)
    pki.client_cert.write_bytes(client.cert)
    for path, key in ((pki.server_key, server.key), (pki.client_key, client.key)):
        path.write_bytes(key)
        path.chmod(0o600)
    return pki
