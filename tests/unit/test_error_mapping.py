"""service_common.interceptor's registration-time wrapping (one function each, no server)."""

from __future__ import annotations

import grpc

from service_common.interceptor import _WrappedGeneric


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _echo(request, context):  # type: ignore[no-untyped-def]
    return request


def test_a_generic_handler_wraps_each_known_method_once_and_remembers_no_unknown_name():
    inner = grpc.method_handlers_generic_handler("pkg.Svc", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)})
    wrapped = _WrappedGeneric(inner)
    first = wrapped.service(_Details("/pkg.Svc/Echo"))
    assert first is not None and first.unary_unary is not _echo  # mapped and counted, not the bare behaviour
    assert wrapped.service(_Details("/pkg.Svc/Echo")) is first
    for i in range(100):  # names a client made up: answered UNIMPLEMENTED by gRPC, and not kept here
        assert wrapped.service(_Details(f"/pkg.Svc/Nope{i}")) is None
    assert list(wrapped._wrapped) == ["/pkg.Svc/Echo"]
