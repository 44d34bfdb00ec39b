"""TLS settings fail at start-up, naming the flag at fault: a half-given pair, a missing file, a file that
is not PEM, a certificate with another's key, a client CA without TLS. Off by default; tritonserver gets
its own TLS flags."""

from __future__ import annotations

from pathlib import Path

import pytest

import encoder_service.__main__ as encoder_main
import frontend.__main__ as frontend_main
from service_common.cli import common_config, env_name
from service_common.tls import SERVER_FLAGS, ClientTLS, ServerTLS
from tests.tls_certs import Pki, make_pki
from triton_local.server import TritonConfig, TritonInstall, TritonServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _encoder(argv: list[str], environ: dict[str, str] | None = None):
    return common_config(encoder_main.parser(environ or {}).parse_args(argv))


def _frontend(argv: list[str]):
    return frontend_main.config_from_args(
        frontend_main.parser({}).parse_args(["--coding", "local", "--route", "m=none", *argv])
    )


def test_tls_is_off_by_default_everywhere():
    assert _encoder([]).tls is None
    config = _frontend([])
    assert (config.tls, config.triton_tls, config.coding_tls) == (None, None, None)


def test_a_server_with_its_files_gets_tls_and_with_a_client_ca_mtls(pki):
    files = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    assert _encoder(files).tls == ServerTLS(pki.server_cert, pki.server_key)
    mutual = _encoder([*files, "--tls-client-ca", str(pki.ca)]).tls
    assert mutual is not None and mutual.mutual and mutual.client_ca == pki.ca


def test_the_variables_alone_turn_it_on(pki):
    env = {"CODEDSERVE_ENCODER_TLS_CERT": str(pki.server_cert), "CODEDSERVE_ENCODER_TLS_KEY": str(pki.server_key)}
    assert _encoder([], env).tls == ServerTLS(pki.server_cert, pki.server_key)


def _names(pki: Pki, service: str) -> dict[str, object]:
    """What a message template names: pki files by name, ``{dir}``, and ``{L[--flag]}``, a flag with its variable."""
    files = {n: str(getattr(pki, n)) for n in ("ca", "server_cert", "server_key", "client_cert", "client_key")}
    flags = (*SERVER_FLAGS, *frontend_main.CLIENT_TLS_FLAGS)
    return files | {"dir": str(pki.ca.parent), "L": {f: f"{f} ({env_name(service, f)})" for f in flags}}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tls-cert", "{server_cert}"], "{L[--tls-cert]} is set but {L[--tls-key]} is not"),
        (["--tls-key", "{server_key}"], "{L[--tls-key]} is set but {L[--tls-cert]} is not"),
        (
            ["--tls-cert", "{server_cert}", "--tls-key", "{dir}/nope.pem"],
            "{L[--tls-key]}: {dir}/nope.pem: no such file",
        ),
        (["--tls-cert", "{server_key}", "--tls-key", "{server_key}"], "{L[--tls-cert]}: {server_key}: not a PEM cert"),
        (
            ["--tls-cert", "{server_cert}", "--tls-key", "{server_cert}"],
            "{L[--tls-key]}: {server_cert}: not a PEM priv",
        ),
        (["--tls-cert", "{server_cert}", "--tls-key", "{client_key}"], "are not a certificate and its unencrypted"),
        (["--tls-client-ca", "{ca}"], "{L[--tls-client-ca]} is set but {L[--tls-cert]} and {L[--tls-key]} are not"),
        (["--tls-cert", "{server_cert}", "--tls-key", "{server_key}", "--tls-client-ca", "{dir}"], ": cannot read it"),
    ],
    ids=["cert-only", "key-only", "missing-key", "cert-not-pem", "key-not-pem", "not-a-pair", "ca-alone", "ca-dir"],
)
def test_a_bad_server_setting_fails_at_start_up_naming_the_flag_and_its_variable(pki, argv, message):
    names = _names(pki, "encoder")
    with pytest.raises(SystemExit) as exit_:
        _encoder([a.format(**names) for a in argv])
    assert str(exit_.value).startswith("bad TLS setting: ")
    assert message.format(**names) in str(exit_.value)


def test_the_frontend_calls_triton_and_the_coding_services_with_their_cas_and_its_client_certificate(pki):
    pair = ["--tls-client-cert", str(pki.client_cert), "--tls-client-key", str(pki.client_key)]
    config = _frontend(["--triton-tls-ca", str(pki.ca), "--triton-tls-server-name", "triton", *pair])
    assert config.triton_tls == ClientTLS(pki.ca, pki.client_cert, pki.client_key, "triton")
    assert config.triton_tls.options() == [("grpc.ssl_target_name_override", "triton")]
    assert config.coding_tls is None  # its own CA turns it on
    config = _frontend(["--coding-tls-ca", str(pki.ca)])
    assert (config.triton_tls, config.coding_tls) == (None, ClientTLS(pki.ca))


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--tls-client-cert", "{client_cert}", "--triton-tls-ca", "{ca}"],
            "{L[--tls-client-cert]} is set but {L[--tls-client-key]} is not",
        ),
        (
            ["--tls-client-cert", "{client_cert}", "--tls-client-key", "{client_key}"],
            "{L[--tls-client-cert]} is set but no call uses TLS: give {L[--triton-tls-ca]} or {L[--coding-tls-ca]}",
        ),
        (
            ["--triton-tls-server-name", "triton"],
            "{L[--triton-tls-server-name]} is set but {L[--triton-tls-ca]} is not",
        ),
        (["--coding-tls-ca", "{dir}/nope.pem"], "{L[--coding-tls-ca]}: {dir}/nope.pem: no such file"),
        (["--triton-tls-ca", "{client_key}"], "{L[--triton-tls-ca]}: {client_key}: not a PEM certificate"),
    ],
    ids=["half-pair", "pair-without-tls", "name-without-tls", "missing-ca", "ca-not-pem"],
)
def test_a_bad_frontend_client_setting_fails_at_start_up_naming_the_flag_and_its_variable(pki, argv, message):
    names = _names(pki, "frontend")
    with pytest.raises(SystemExit) as exit_:
        _frontend([a.format(**names) for a in argv])
    assert str(exit_.value).startswith("frontend: bad configuration: ")
    assert message.format(**names) in str(exit_.value)


def test_help_names_every_tls_flag_and_its_variable():
    text = frontend_main.parser({}).format_help()
    for flag in ("--tls-cert", "--tls-key", "--tls-client-ca", "--triton-tls-ca", "--coding-tls-ca"):
        assert flag in text
    for var in (
        "CODEDSERVE_FRONTEND_TLS_CERT",
        "CODEDSERVE_FRONTEND_TLS_CLIENT_KEY",
        "CODEDSERVE_FRONTEND_TRITON_TLS_CA",
    ):
        assert var in text
    assert "CODEDSERVE_ENCODER_TLS_CLIENT_CA" in encoder_main.parser({}).format_help()


def test_tritonserver_gets_its_grpc_tls_flags_and_mutual_with_a_client_ca(pki, tmp_path):
    install = TritonInstall(Path("/opt/tritonserver"), Path("/opt/libs"), Path("/opt/python"), Path("/opt/stub"))

    def argv(tls: ServerTLS | None) -> list[str]:
        return TritonServer(TritonConfig(tmp_path, grpc_tls=tls)).command(install, tmp_path / "backends")

    assert not [a for a in argv(None) if "ssl" in a or "cert" in a]
    tls = argv(ServerTLS(pki.server_cert, pki.server_key))
    assert {
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={pki.server_cert}",
        f"--grpc-server-key={pki.server_key}",
    } <= set(tls)
    assert "--grpc-use-ssl-mutual=true" not in tls
    mutual = argv(ServerTLS(pki.server_cert, pki.server_key, pki.ca))
    assert {"--grpc-use-ssl-mutual=true", f"--grpc-root-cert={pki.ca}"} <= set(mutual)
