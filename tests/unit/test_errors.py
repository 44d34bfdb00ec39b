"""One spelling of a status in every metric label: the gRPC name."""

import grpc

from coding.errors import CodingError
from service_common.errors import DeadlineExceeded, InvalidArgument, Unavailable, code_name


def test_code_name_is_the_grpc_name_of_the_status_an_error_maps_to():
    assert code_name(DeadlineExceeded("late")) == grpc.StatusCode.DEADLINE_EXCEEDED.name == "DEADLINE_EXCEEDED"
    assert code_name(Unavailable("down")) == "UNAVAILABLE"
    assert code_name(InvalidArgument("bad")) == code_name(CodingError("bad k")) == "INVALID_ARGUMENT"
    assert code_name(ValueError("a bug")) == "INTERNAL"
