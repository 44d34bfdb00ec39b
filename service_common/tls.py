"""Optional TLS and mutual TLS on every gRPC hop, with certificates read from PEM files.

Off unless configured: a server given no certificate listens in plaintext and a channel given no CA dials
in plaintext, as before. A server given a client CA requires every client to present a certificate that CA
signed (mTLS); a channel given a client certificate presents it. The files are checked when the
configuration is built, so a missing file or a half-given pair fails at start-up naming its flag, not at
the first handshake. The files are read again whenever credentials are made (a restart picks up new ones).
The flags that set them are the command-line layer's (:mod:`service_common.cli`); this module knows files only.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

SERVER_FLAGS = ("--tls-cert", "--tls-key", "--tls-client-ca")
_CERT, _KEY = "CERTIFICATE", "PRIVATE KEY"


class TLSConfigError(ValueError):
    """A TLS setting that cannot work: a half-given pair, a missing or unreadable file, not PEM."""


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key; with ``client_ca``, clients must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.mutual,
        )


@dataclass(frozen=True)
class ClientTLS:
    """The CA a channel checks the server's certificate against, and the client certificate it presents
    (for a server that requires one). ``server_name``: the name checked instead of the dialed host (an
    instance dialed by IP, e.g. a pod found through DNS, whose certificate names its Service)."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def aio_channel(target: str, options: Sequence[tuple[str, object]], tls: ClientTLS | None) -> grpc.aio.Channel:
    """A grpc.aio channel: TLS when ``tls`` is given, plaintext otherwise (open it inside the running loop)."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.credentials(), options=[*options, *tls.options()])


def describe(tls: ServerTLS | None) -> str:
    """How a server's port is reached, for its start-up log line."""
    return "plaintext" if tls is None else "mTLS" if tls.mutual else "TLS"


def server_tls(
    cert: str | None, key: str | None, client_ca: str | None, names: Sequence[str] = SERVER_FLAGS
) -> ServerTLS | None:
    """The server's TLS from its three settings (``names``: their flags, for messages); None = plaintext.
    Raises TLSConfigError naming the flag at fault."""
    cert_flag, key_flag, ca_flag = names
    pair = cert_and_key(cert, key, cert_flag, key_flag, "a server certificate needs its private key")
    if pair is None:
        if client_ca:
            raise TLSConfigError(f"{ca_flag} is set but {cert_flag} and {key_flag} are not: mTLS needs TLS")
        return None
    return ServerTLS(*pair, ca_file(client_ca, ca_flag) if client_ca else None)


def client_tls(ca: str | None, ca_flag: str, pair: tuple[Path, Path] | None, server_name: str = "") -> ClientTLS | None:
    """A channel's TLS: on when a CA is given (None = plaintext); ``pair`` is the client cert and key."""
    if not ca:
        return None
    cert, key = pair or (None, None)
    return ClientTLS(ca_file(ca, ca_flag), cert, key, server_name)


def cert_and_key(
    cert: str | None, key: str | None, cert_flag: str, key_flag: str, why: str
) -> tuple[Path, Path] | None:
    """Both files checked to be a certificate and its key, or None when neither is given; one without the
    other is an error naming both."""
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = (cert_flag, key_flag) if cert else (key_flag, cert_flag)
        raise TLSConfigError(f"{given} is set but {missing} is not: {why} (give both, or neither)")
    pair = pem_file(cert, cert_flag, _CERT), pem_file(key, key_flag, _KEY)
    try:  # else gRPC fails the bind (or the first call) with no word about the files
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(*pair, password=_unencrypted)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"{cert_flag} = {cert} and {key_flag} = {key} are not a certificate and its unencrypted private key "
            f"({exc.reason or exc})"
        ) from None
    return pair


def ca_file(path: str, flag: str) -> Path:
    """The path, once it holds at least one PEM CA certificate that loads."""
    file = pem_file(path, flag, _CERT)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=file)
    except ssl.SSLError as exc:
        raise TLSConfigError(f"{flag}: {path}: not a PEM CA bundle ({exc.reason or exc})") from None
    return file


def _unencrypted() -> bytes:
    return b""  # never prompt on the terminal for a passphrase: gRPC reads only unencrypted keys


def pem_file(path: str, flag: str, kind: str) -> Path:
    """The path, once it is a readable file holding a PEM block of ``kind`` (CERTIFICATE or PRIVATE KEY)."""
    file = Path(path)
    try:
        text = file.read_text(errors="replace")
    except FileNotFoundError:
        raise TLSConfigError(f"{flag}: {path}: no such file") from None
    except OSError as exc:
        raise TLSConfigError(f"{flag}: {path}: cannot read it ({exc.strerror})") from None
    if not re.search(rf"-----BEGIN (?:[A-Z]+ )?{kind}-----", text):
        raise TLSConfigError(f"{flag}: {path}: not a PEM {kind.lower()} (no '-----BEGIN {kind}' line)")
    return file
