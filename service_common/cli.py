"""The one command-line layer of the three services: every flag is also an environment variable.

Naming: a flag ``--some-thing`` of service S reads ``CODEDSERVE_<S>_SOME_THING`` (``S`` = FRONTEND,
ENCODER, DECODER), with an ``S`` appended for a repeatable flag (``--route`` -> ``..._ROUTES``, a
comma- or ``;``-separated list). The one exception is a setting the three services must agree on,
which has one name without a service: ``--scheme-module`` -> ``CODEDSERVE_SCHEME_MODULES``. A flag on
the command line wins over its variable, a variable over a configuration file's key of the same name
(:mod:`service_common.config_file`; the frontend's ``--config``); an empty variable counts as unset.
``--help`` shows each flag's variable and its built-in default.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coding.errors import CodingError
from coding.schemes import load_scheme_modules
from service_common.config_file import ConfigFile, ConfigFileError, file_value, unknown_key
from service_common.event_loop import DEFAULT_LOOP, LOOPS
from service_common.logs import LOG_FORMATS
from service_common.tls import (
    SERVER_FLAGS,
    ClientTLS,
    ServerTLS,
    TLSConfigError,
    cert_and_key,
    client_tls,
    server_tls,
)

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
PREFIX = "CODEDSERVE"
SHARED_SCHEME_MODULES = f"{PREFIX}_SCHEME_MODULES"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_name(service: str, flag: str, repeatable: bool = False) -> str:
    """``("frontend", "--triton-url", True)`` -> ``CODEDSERVE_FRONTEND_TRITON_URLS``."""
    return f"{PREFIX}_{service.upper()}_{_upper(flag, repeatable)}"


def _upper(flag: str, repeatable: bool) -> str:
    return flag.lstrip("-").upper().replace("-", "_") + ("S" if repeatable else "")


def parse_bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"expected one of {_TRUE + _FALSE}, got {text!r}")


class _Switch(argparse.Action):
    """``--x`` sets True, ``--no-x`` sets False (so a variable that turned it on can be overridden)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        names = [*option_strings, *(f"--no-{o[2:]}" for o in option_strings if o.startswith("--"))]
        super().__init__(names, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))


class _Repeat(argparse.Action):
    """Append, but the first use on the command line replaces the variable's list instead of extending it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest)
        items = [] if current is self.default else list(current)
        setattr(namespace, self.dest, [*items, values])


@dataclass(frozen=True)
class Setting:
    """One declared flag: its variable, its built-in default, and its kind of value (what a configuration
    file's value for it is checked against: :func:`service_common.config_file.file_value`)."""

    dest: str
    env: str
    default: Any
    type: Callable[[str], Any] = str
    switch: bool = False
    repeat: bool = False
    choices: Sequence[Any] | None = None
    flag: str = ""  # its name, e.g. --triton-url; a configuration file's key is this without the dashes
    in_file: bool = True  # whether a configuration file may set it

    def from_file(self, value: Any) -> Any:
        """The flag's value from a configuration file's TOML value (ValueError naming what was expected)."""
        return file_value(value, self.type, switch=self.switch, repeat=self.repeat, choices=self.choices)


class Flags:
    """Declares flags on ``parser`` whose defaults come from ``CODEDSERVE_<SERVICE>_*`` variables, else from
    ``file`` (a configuration file: each key a flag's name without its dashes), else the built-in default.

    ``settings`` (dest -> :class:`Setting`) is what tests and docs read to know every flag's variable.
    A variable that does not parse fails at once with its name and value (SystemExit); a file's value of the
    wrong type raises :class:`ConfigFileError` naming the file and the key (so does a key no flag has:
    :meth:`check_file`, once every flag is declared).
    """

    def __init__(
        self,
        parser: argparse.ArgumentParser,
        service: str,
        environ: Mapping[str, str] | None = None,
        file: ConfigFile | None = None,
    ) -> None:
        self.parser = parser
        self.service = service
        self.environ = os.environ if environ is None else environ
        self.file = file
        self.settings: dict[str, Setting] = {}

    def add(
        self,
        *names: str,
        default: Any = None,
        type: Callable[[str], Any] = str,
        help: str,
        choices: Sequence[Any] | None = None,
        switch: bool = False,
        repeat: bool = False,
        sep: str = ",",
        env: str | None = None,
        group: Any = None,
        metavar: str | None = None,
        in_file: bool = True,
    ) -> None:
        """One flag. ``switch``: a boolean (``--x``/``--no-x``); ``repeat``: repeatable, a list, in the
        variable ``sep``-separated (``;`` is always accepted: values with commas, such as routes, need it).
        ``in_file``: a configuration file's key of the flag's name sets it (below its variable)."""
        var = env or env_name(self.service, names[0], repeat)
        dest = names[0].lstrip("-").replace("-", "_")
        setting = Setting(dest, var, default, type, switch, repeat, choices, names[0], in_file)
        value = self._from_env(var, type, switch, sep if repeat else "", choices)
        if value is None and in_file:
            value = self._from_file(setting)
        shown = "unset" if default in (None, "", [], ()) else default
        text = f"{help} [env {var}; default: {shown}"
        text += f"; set now: {value!r}]" if value is not None else "]"
        target = group if group is not None else self.parser
        kwargs: dict[str, Any] = {"dest": dest, "help": text.replace("%", "%%")}
        if switch:
            kwargs["action"] = _Switch
        else:
            kwargs.update(type=type, choices=choices, metavar=metavar)
            if repeat:
                kwargs["action"] = _Repeat
        fallback = [] if repeat and default is None else default
        target.add_argument(*names, default=fallback if value is None else value, **kwargs)
        self.settings[dest] = setting

    def _from_file(self, setting: Setting) -> Any:
        key = setting.flag.lstrip("-")
        if self.file is None or key not in self.file.values:
            return None
        try:
            return setting.from_file(self.file.values[key])
        except ValueError as exc:
            raise ConfigFileError(self.file.path, key, str(exc)) from None

    def check_file(self, elsewhere: Sequence[str] = ()) -> None:
        """Every key of the file is a flag's name (or one of ``elsewhere``, keys the caller reads itself);
        raises :class:`ConfigFileError` naming the first that is not."""
        if self.file is None:
            return
        known = {s.flag.lstrip("-") for s in self.settings.values() if s.in_file} | set(elsewhere)
        for key in self.file.values:
            if key not in known:
                raise unknown_key(self.file.path, key, known)

    def _from_env(
        self,
        var: str,
        convert: Callable[[str], Any],
        switch: bool,
        sep: str,
        choices: Sequence[Any] | None,
    ) -> Any:
        name, raw = var, self.environ.get(var, "")
        if not raw:
            return None
        try:
            if switch:
                return parse_bool(raw)
            if sep:
                sep = ";" if ";" in raw else sep
                return [_checked(convert(v.strip()), choices) for v in raw.split(sep) if v.strip()]
            return _checked(convert(raw), choices)
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"{name}={raw!r}: {exc}") from exc


def _checked(value: Any, choices: Sequence[Any] | None) -> Any:
    if choices is not None and value not in choices:
        raise ValueError(f"expected one of {list(choices)}, got {value!r}")
    return value


def new_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)


@dataclass(frozen=True)
class ServiceConfig:
    address: str
    metrics_port: int | None
    max_message_bytes: int
    log_level: str
    scheme_modules: tuple[str, ...] = ()  # plug-in modules that register more coding schemes
    metrics_address: str = "127.0.0.1"
    tls: ServerTLS | None = None  # the server's own TLS (None: plaintext)
    health_address: str | None = None  # also serve grpc.health.v1 alone here, in plaintext (None: off)
    event_loop: str = DEFAULT_LOOP  # the asyncio loop it runs on (service_common.event_loop)
    log_format: str = "text"  # "text" or "json": one JSON object per line (service_common.logs)


def add_common_flags(flags: Flags, default_port: int) -> None:
    """The flags every service has: listen address, health port, metrics, message limit, log level, scheme
    modules, TLS."""
    flags.add(
        "--address",
        default=f"127.0.0.1:{default_port}",
        help="host:port to listen on (0.0.0.0:PORT in a pod); port 0 picks a free one",
    )
    flags.add(
        "--health-address",
        metavar="HOST:PORT",
        help="also serve grpc.health.v1 (the same statuses), and nothing else, here in plaintext: for kubelet's "
        "grpc probe, which speaks no TLS, when --tls-cert is set",
    )
    flags.add("--metrics-port", type=int, help="serve Prometheus /metrics on this port (off when unset)")
    flags.add("--metrics-address", default="127.0.0.1", help="the host /metrics binds (0.0.0.0 in a pod)")
    flags.add(
        "--max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="largest gRPC message accepted or sent; bigger ones get RESOURCE_EXHAUSTED",
    )
    flags.add("--log-level", default="INFO", help="logging level")
    flags.add(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text: one line 'TIME LEVEL LOGGER: MESSAGE'; json: one JSON object per line (time, level, logger, "
        "message, and group_id where a line concerns one coding group)",
    )
    flags.add(
        "--scheme-module",
        repeat=True,
        env=SHARED_SCHEME_MODULES,
        help="import this module at start-up so it registers more coding schemes; repeatable; the three "
        "services need the same ones",
    )
    flags.add(
        "--event-loop",
        choices=LOOPS,
        default=DEFAULT_LOOP,
        help="the asyncio event loop to run on: uvloop (libuv, in C) or the standard library's",
    )
    add_server_flags(flags)


def common_config(args: argparse.Namespace) -> ServiceConfig:
    """Validate the common flags and import the scheme modules; fails fast naming the flag."""
    if args.max_message_bytes <= 0:
        raise SystemExit(f"--max-message-bytes must be positive, got {args.max_message_bytes}")
    modules = tuple(args.scheme_module)
    try:
        load_scheme_modules(list(modules))
    except CodingError as exc:
        raise SystemExit(str(exc)) from exc
    try:
        tls = server_tls_from_args(args)
    except TLSConfigError as exc:
        raise SystemExit(f"bad TLS setting: {exc}") from None
    return ServiceConfig(
        args.address,
        args.metrics_port,
        args.max_message_bytes,
        args.log_level,
        modules,
        args.metrics_address,
        tls,
        args.health_address or None,
        args.event_loop,
        args.log_format,
    )


def add_server_flags(flags: Flags) -> None:
    """``--tls-cert``, ``--tls-key``, ``--tls-client-ca``: every server's own TLS (off when unset)."""
    cert, key, ca = SERVER_FLAGS
    flags.add(cert, metavar="FILE", help=f"PEM certificate (chain) this server presents; with {key}: TLS")
    flags.add(key, metavar="FILE", help=f"PEM private key of {cert}")
    flags.add(ca, metavar="FILE", help="PEM CA bundle: clients must present a certificate it signed (mTLS)")
    flags.parser.set_defaults(tls_labels=labels(flags, SERVER_FLAGS))


def labels(flags: Flags, names: Sequence[str]) -> tuple[str, ...]:
    """Each flag with its variable, ``--tls-key (CODEDSERVE_ENCODER_TLS_KEY)``: what an error names, since
    either may have set it."""
    return tuple(f"{name} ({flags.settings[name.lstrip('-').replace('-', '_')].env})" for name in names)


def server_tls_from_args(args: argparse.Namespace) -> ServerTLS | None:
    return server_tls(args.tls_cert, args.tls_key, args.tls_client_ca, getattr(args, "tls_labels", SERVER_FLAGS))


CLIENT_TLS_FLAGS = (
    "--triton-tls-ca",
    "--triton-tls-server-name",
    "--coding-tls-ca",
    "--tls-client-cert",
    "--tls-client-key",
)


def add_client_tls_flags(flags: Flags) -> None:
    """The TLS of a service's own calls, to Triton and to the coding services (the frontend's: its ports take
    --tls-cert/--tls-key/--tls-client-ca, as every server)."""
    group = flags.parser.add_argument_group("TLS of the frontend's calls to Triton and the coding services")
    add = functools.partial(flags.add, group=group, metavar="FILE")
    add("--triton-tls-ca", help="PEM CA bundle that signed Triton's gRPC certificate: call Triton over TLS")
    add(
        "--triton-tls-server-name",
        metavar="NAME",
        help="check Triton's certificate for this name instead of the dialed host (with --triton-dns, pods are "
        "dialed by IP)",
    )
    add("--coding-tls-ca", help="PEM CA bundle that signed the encoder's and decoder's certs: call both over TLS")
    add(
        "--tls-client-cert",
        help="PEM certificate the frontend presents on its TLS calls, to servers that require one (mTLS)",
    )
    add("--tls-client-key", help="PEM private key of --tls-client-cert")
    flags.parser.set_defaults(
        client_tls_labels=dict(zip(CLIENT_TLS_FLAGS, labels(flags, CLIENT_TLS_FLAGS), strict=True))
    )


def client_tls_from_args(args: argparse.Namespace) -> tuple[ClientTLS | None, ClientTLS | None]:
    """(Triton's, the coding services') channel TLS; raises TLSConfigError naming the flag at fault."""
    names = {f: getattr(args, "client_tls_labels", {}).get(f, f) for f in CLIENT_TLS_FLAGS}
    triton_ca, name, coding_ca, cert, key = (names[f] for f in CLIENT_TLS_FLAGS)
    why = "a client certificate needs its private key"
    pair = cert_and_key(args.tls_client_cert, args.tls_client_key, cert, key, why)
    if pair is not None and not (args.triton_tls_ca or args.coding_tls_ca):
        raise TLSConfigError(f"{cert} is set but no call uses TLS: give {triton_ca} or {coding_ca}")
    if args.triton_tls_server_name and not args.triton_tls_ca:
        raise TLSConfigError(f"{name} is set but {triton_ca} is not: Triton is called in plaintext")
    return (
        client_tls(args.triton_tls_ca, triton_ca, pair, args.triton_tls_server_name or ""),
        client_tls(args.coding_tls_ca, coding_ca, pair),
    )


def coding_service_parser(
    service: str, description: str | None, default_port: int, environ: Mapping[str, str] | None = None
) -> tuple[argparse.ArgumentParser, Flags]:
    """The whole command line of the encoder or the decoder service (``service`` = "encoder"/"decoder")."""
    parser = new_parser(f"python -m {service}_service", description)
    flags = Flags(parser, service, environ)
    add_common_flags(flags, default_port)
    return parser, flags
