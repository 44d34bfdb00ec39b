"""A smaller run of the public-API fuzz test (tests/grpc/test_fuzz.py) against the real stack: the
real tritonserver with the linear test models, the encoder and decoder services, and a frontend that
serves the deployed model with ParM on both its codedserve.v1 and KServe ports. Near-valid queries run
through real coding groups, and the KServe metadata calls are forwarded to the real Triton. A client's
mistake never gets INTERNAL or UNKNOWN, and the stack answers a good query afterwards."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from bench.stack import FrontendSpec, Stack
from export import spec
from service_common.tensors import from_numpy
from tests.fuzz_strategies import FAULT_NUMBERS, VERSIONS, Target, classify_requests, infer_requests, names, status
from tests.integration import linear_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TARGET = Target(linear_models.DEPLOYED, spec.INPUT_NAME, spec.OUTPUT_NAME, tuple(spec.IMAGE_SHAPE))
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUTE = f"{TARGET.model}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    models = linear_models.write_repository(repo)
    frontend = FrontendSpec(flags=["--route", ROUTE, "--fill-timeout-ms", "5"], kserve=True)
    with Stack(models, {"coded": frontend}, model_repository=repo, log_dir=tmp_path_factory.mktemp("logs")) as stack:
        with (
            grpc.insecure_channel(stack.address("coded")) as channel,
            grpc.insecure_channel(stack.kserve_address("coded")) as kserve,
        ):
            yield pb_grpc.FrontendStub(channel), kpb_grpc.GRPCInferenceServiceStub(kserve), channel


@FUZZ
@given(request=classify_requests(TARGET))
def test_classify_on_the_real_stack_never_answers_a_server_fault(stubs, request):
    status(stubs[0].Classify, request)


@FUZZ
@given(request=infer_requests(TARGET))
def test_model_infer_on_the_real_stack_never_answers_a_server_fault(stubs, request):
    status(stubs[1].ModelInfer, request)


@FUZZ
@given(name=names(TARGET), version=VERSIONS)
def test_forwarded_metadata_calls_never_answer_a_server_fault(stubs, name, version):
    kserve = stubs[1]
    status(kserve.ModelReady, kpb.ModelReadyRequest(name=name, version=version))
    status(kserve.ModelMetadata, kpb.ModelMetadataRequest(name=name, version=version))
    status(kserve.ModelConfig, kpb.ModelConfigRequest(name=name, version=version))
    status(kserve.ModelStatistics, kpb.ModelStatisticsRequest(name=name, version=version))


@FUZZ
@given(request=classify_requests(TARGET))
def test_a_stream_on_the_real_stack_answers_every_message_without_a_server_fault(stubs, request):
    """The message twice in one stream (distinct ids), so a coded route can fill a group with them."""
    pair = [pb.ClassifyRequest(), pb.ClassifyRequest()]
    for query, query_id in zip(pair, "ab", strict=True):
        query.CopyFrom(request)
        query.id = query_id
    replies = list(stubs[0].ClassifyStream(iter(pair), timeout=10))
    assert sorted(r.id for r in replies) == ["a", "b"]
    assert not [r.error for r in replies if r.status_code in FAULT_NUMBERS]


def test_the_stack_is_serving_and_answers_a_good_query_after_the_fuzzing(stubs):
    """Last in the module."""
    frontend, _, channel = stubs
    x = np.full(spec.IMAGE_SHAPE, 0.5, np.float32)
    reply = frontend.Classify(pb.ClassifyRequest(model=TARGET.model, input=from_numpy(x)), timeout=10)
    assert len(reply.logits) == spec.NUM_CLASSES and np.isfinite(reply.logits).all()
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
