"""A route's Triton calls name the model version it loaded: the highest Triton had ready (numerically)."""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import service_pb2 as kpb

from frontend.transport.catalog import ModelInfo
from frontend.transport.triton import infer_request


def _info(versions: list[str]) -> ModelInfo:
    metadata = kpb.ModelMetadataResponse(name="m", versions=versions)
    metadata.inputs.add(name="input", datatype="FP32", shape=[-1, 4])
    metadata.outputs.add(name="logits", datatype="FP32", shape=[-1, 3])
    config = kpb.ModelConfigResponse()
    config.config.max_batch_size = 8
    return ModelInfo(metadata, config)


def test_the_signature_names_the_highest_ready_version_and_every_call_names_it():
    signature = _info(["2", "10", "9"]).signature
    assert signature.version == "10"
    request = infer_request("m", np.zeros((2, 4), np.float32), signature)
    assert (request.model_name, request.model_version) == ("m", "10")


def test_a_model_without_versions_leaves_the_choice_to_triton():
    assert infer_request("m", np.zeros((1, 4), np.float32), _info([]).signature).model_version == ""
