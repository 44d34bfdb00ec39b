"""Triton workers: every Triton instance the frontend calls, on the raw KServe v2 gRPC stub.

The pool only sends calls, batched per instance and model (:mod:`frontend.dataplane.batching`); *which*
instance a call goes to is decided before (a coding group places its slots, :mod:`frontend.core.placement`).
By default calls are never cancelled: a late answer is awaited to completion and discarded, because
cancelling in-flight ModelInfer calls crashes tritonserver 2.51 (fixed in Triton 24.12). With
``cancel_losers`` (``--cancel-losers``, for a Triton with the fix) :meth:`TritonPool.send` returns what gives a
call up once no query waits for it: still queued in its batcher, it is never sent; already sent, its
ModelInfer is cancelled once every call it carries was given up (unary transport only: on the stream
transport a sent call is left to finish). Each call carries a generous safety deadline only.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from frontend.core.calls import CallInfo, Cancel, Cancelled, ModelSignature, WorkerError
from frontend.core.completion import Done, awaited, deliver
from frontend.dataplane import metrics
from frontend.dataplane.batching import DEFAULT_ESTIMATE_MAX_AGE_S, Batcher, row_batcher
from frontend.transport.catalog import ModelInfo
from frontend.transport.streams import StreamCalls
from service_common.channels import DEFAULT_RECONNECT_BACKOFF_MS, client_options
from service_common.tls import ClientTLS, aio_channel

TRANSPORTS = ("unary", "stream")  # how calls reach Triton (see TritonPool)

# After this many ModelInfer calls in a row fail on an instance, its health probe stops trusting
# ModelReady for that model and sends one real inference instead (TritonPool.model_ready).
FAILING_CALLS = 3


class TritonPool:
    """One channel per Triton instance (numbered by position in ``urls``), and one :class:`Batcher` per
    instance and model: calls that queue while ``batch_inflight`` calls are out leave as one ModelInfer.

    Instances can come and go (:mod:`frontend.transport.discovery`): :meth:`add` opens one more, numbered after
    every earlier one (numbers are never reused), and :meth:`drain` closes one once every call already
    given to it has finished on its own: a drained instance's calls are never cancelled.

    Requests are built on the raw ``GRPCInferenceService`` stub (``raw_input_contents`` in, raw bytes out):
    ``python -m bench.client_cost`` measured that cheaper per call than tritonclient's wrappers. With
    ``transport="stream"`` each instance's calls are messages on one long-lived ModelStreamInfer stream
    (:mod:`frontend.transport.streams`; answers matched by the request ``id``, Triton's errors arrive in
    ``error_message``), with ``"unary"`` one ModelInfer call each. ``stub`` makes what each channel is called
    through (default: the KServe v2 stub); an in-process stand-in of Triton's wire gives its own.
    """

    def __init__(
        self,
        urls: tuple[str, ...],
        timeout_s: float,
        max_message_bytes: int,
        batch_inflight: int = 1,
        tls: ClientTLS | None = None,
        reconnect_backoff_ms: int = DEFAULT_RECONNECT_BACKOFF_MS,
        transport: str = "unary",
        wait_estimate_max_age_s: float = DEFAULT_ESTIMATE_MAX_AGE_S,
        stub: Callable[[grpc.aio.Channel], Any] | None = None,
        cancel_losers: bool = False,
    ) -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self.transport = transport
        # What each batcher may give up (frontend.dataplane.batching): a stream's message cannot be cancelled.
        self._cancel = "never" if not cancel_losers else "sent" if transport == "unary" else "queued"
        self._stub = stub or kpb_grpc.GRPCInferenceServiceStub  # what a channel is called through
        self.urls = urls
        self._tls = tls  # every instance's channel: TLS when given, plaintext otherwise
        self.timeout_s = timeout_s
        self.batch_inflight = batch_inflight
        self._wait_estimate_max_age_s = wait_estimate_max_age_s  # each batcher's (Batcher.recent_call_s)
        self._options = client_options(max_message_bytes, reconnect_backoff_ms)
        self._channels: list[grpc.aio.Channel | None] = []
        self._stubs: list[kpb_grpc.GRPCInferenceServiceStub] = []
        self._streams: list[StreamCalls[kpb.ModelInferRequest, kpb.ModelStreamInferResponse] | None] = []
        self._batchers: dict[tuple[int, str], Batcher[np.ndarray, np.ndarray]] = {}
        self._inflight: Counter[int] = Counter()
        self._idle: dict[int, asyncio.Event] = {}  # instances being drained -> set once none of their calls is out
        self._removed: set[int] = set()  # drained instances: no new call is accepted for them
        # (instance, model) -> its ModelInfers failed since its last success (model_ready)
        self._failed_in_a_row: Counter[tuple[int, str]] = Counter()

    async def start(self) -> None:
        """Open the channels inside the running loop (grpc.aio channels bind to it)."""
        for url in self.urls[len(self._channels) :]:
            self._open(url)

    def _open(self, url: str) -> None:
        channel = aio_channel(url, self._options, self._tls)
        stub = self._stub(channel)
        self._channels.append(channel)
        self._stubs.append(stub)
        stream = (
            StreamCalls(stub.ModelStreamInfer, f"Triton at {url}", _tag, _answer_id)
            if self.transport == "stream"
            else None
        )
        self._streams.append(stream)  # opened on its first call

    def add(self, url: str) -> int:
        """Open one more instance (inside the running loop); returns its number."""
        self.urls = (*self.urls, url)
        self._open(url)
        return len(self.urls) - 1

    async def ready(self, instance: int, timeout_s: float = 2.0) -> bool:
        """Whether the instance answers ServerReady (every model loaded, with Triton's strict readiness)."""
        try:
            return bool((await self._stubs[instance].ServerReady(kpb.ServerReadyRequest(), timeout=timeout_s)).ready)
        except grpc.aio.AioRpcError:
            return False

    async def repository(self, instance: int, timeout_s: float = 2.0) -> dict[str, tuple[str, str]]:
        """Every model in the instance's repository -> (state, reason) as its RepositoryIndex says
        (state ``READY``, ``LOADING``, ``UNAVAILABLE``, or ``""`` for a model it has not been asked to
        load). Raises WorkerError while the instance does not answer."""
        try:
            index = await self._stubs[instance].RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise WorkerError(f"Triton at {self.urls[instance]}: {exc.code().name}: {exc.details()}") from exc
        return {m.name: (m.state, m.reason) for m in index.models}

    async def model_ready(
        self, instance: int, model: str, timeout_s: float, signature: ModelSignature | None = None
    ) -> bool:
        """Whether the instance answers ModelReady true for ``model`` within ``timeout_s`` (the health probe).

        A Triton can say ready and still fail every inference. Once :data:`FAILING_CALLS` ModelInfers of
        ``model`` in a row have failed there, ready means one real inference (a row of zeros, given the
        ``signature``) answered within ``timeout_s``; its success resets the count."""
        if self._channels[instance] is None:  # drained
            return False
        try:
            request = kpb.ModelReadyRequest(name=model)
            if not (await self._stubs[instance].ModelReady(request, timeout=timeout_s)).ready:
                return False
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            return False
        if signature is None or self._failed_in_a_row[instance, model] < FAILING_CALLS:
            return True
        zeros = np.zeros((1, *signature.shape), signature.dtype)
        try:
            await self._model_infer(instance, model, zeros, signature, timeout_s)
        except (WorkerError, grpc.aio.UsageError):
            return False
        return True

    async def drain(self, instance: int) -> int:
        """Close the instance once every call it has been given has finished (each within its own safety
        deadline); the caller has stopped placing calls on it. Returns how many calls were still out."""
        waited = self._inflight[instance]
        idle = self._idle.setdefault(instance, asyncio.Event())
        if not waited:
            idle.set()
        await idle.wait()
        self._removed.add(instance)
        stream, self._streams[instance] = self._streams[instance], None
        if stream is not None:
            await stream.close()
        channel, self._channels[instance] = self._channels[instance], None
        for key in [k for k in self._batchers if k[0] == instance]:
            del self._batchers[key]
        if channel is not None:
            await channel.close()
        return waited

    def closed(self, instance: int) -> bool:
        return instance in self._removed

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._streams if s is not None), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._channels if c is not None), return_exceptions=True)

    async def signature(self, model: str, instance: int) -> ModelSignature:
        """Read the model's input/output and batch limit from Triton (raises WorkerError if not ready)."""
        stub, url = self._stubs[instance], self.urls[instance]
        try:
            ready = await stub.ModelReady(kpb.ModelReadyRequest(name=model), timeout=2.0)
            if not ready.ready:
                raise WorkerError(f"model {model!r} is not ready on Triton at {url}")
            return (await self.describe(model, instance, 2.0)).signature
        except grpc.aio.AioRpcError as exc:
            raise WorkerError(f"Triton at {url}: {exc.code().name}: {exc.details()}") from exc

    async def describe(self, model: str, instance: int, timeout_s: float) -> ModelInfo:
        """What Triton at ``instance`` says ``model`` is: its ModelMetadata and ModelConfig answers, the one
        place they are read (:mod:`frontend.transport.catalog` keeps them). Raises grpc.aio.AioRpcError."""
        stub = self._stubs[instance]
        metadata, config = await asyncio.gather(
            stub.ModelMetadata(kpb.ModelMetadataRequest(name=model), timeout=timeout_s),
            stub.ModelConfig(kpb.ModelConfigRequest(name=model), timeout=timeout_s),
        )
        return ModelInfo(metadata, config)

    def control(self, instance: int) -> kpb_grpc.GRPCInferenceServiceStub:
        """The instance's stub, for Triton's control calls (the catalog forwards them)."""
        return self._stubs[instance]

    def wait_s(self, model: str, instances: Sequence[int], rows: int = 1) -> float:
        """The shortest estimated wait for ``rows`` more of ``model`` on one of ``instances`` (the queue
        ahead of them in that instance's batcher: :meth:`Batcher.wait_s`); 0 where nothing was sent yet."""
        waits = [b.wait_s(rows) if (b := self._batchers.get((i, model))) else 0.0 for i in instances]
        return min(waits, default=0.0)

    async def infer(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray:
        """The output rows of ``batch`` on ``call.model`` at ``call.instance``. Raises WorkerError."""
        output: np.ndarray = await awaited(lambda done: self.send(call, batch, signature, done))
        return output

    def send(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done) -> Cancel | None:
        """:meth:`infer` without a task: the rows join their instance's batcher at once and ``done``
        gets the output rows or a WorkerError (:mod:`frontend.core.completion`). Returns what gives the
        call up (``done`` then gets :class:`Cancelled` unless the call finishes anyway), or None unless
        ``cancel_losers``."""
        key = (call.instance, call.model)
        batcher = self._batchers.get(key)
        if batcher is None:
            url = self.urls[call.instance]
            if call.instance in self._removed:
                asyncio.get_running_loop().call_soon(
                    deliver, done, None, WorkerError(f"{call.model}: Triton at {url} was removed", transport=True)
                )
                return None
            batcher = self._batchers[key] = row_batcher(
                lambda rows: self._model_infer(call.instance, call.model, rows, signature),
                self.batch_inflight,
                signature.max_batch,
                metrics.TRITON_BATCH_ROWS.labels(call.model).observe,
                lambda why: WorkerError(f"{call.model}: not sent to Triton at {url}: {why}"),
                self._wait_estimate_max_age_s,
                self._cancel,
            )
        instance = call.instance
        self._inflight[instance] += 1

        def left_instance(result: np.ndarray | None, error: BaseException | None) -> None:  # answer path, 2nd step
            self._inflight[instance] -= 1
            if not self._inflight[instance] and instance in self._idle:
                self._idle[instance].set()
            if isinstance(error, Cancelled):
                metrics.CANCELLED_CALLS.labels(call.model).inc()
            done(result, error)

        return batcher.send(batch, left_instance, call.deadline)

    async def _model_infer(
        self, instance: int, model: str, rows: np.ndarray, signature: ModelSignature, timeout_s: float | None = None
    ) -> np.ndarray:
        """One ModelInfer; every failure counts towards :data:`FAILING_CALLS`, a success resets it."""
        key = (instance, model)
        request, timeout = infer_request(model, rows, signature), timeout_s or self.timeout_s
        stream = self._streams[instance]
        try:
            if stream is None:
                response = await self._stubs[instance].ModelInfer(request, timeout=timeout)
            else:
                reply = await stream.call(request, timeout)
                if reply.error_message:  # what a unary call's status would have said
                    self._failed_in_a_row[key] += 1
                    raise WorkerError(f"{model} at {self.urls[instance]}: {reply.error_message}")
                response = reply.infer_response
        except grpc.aio.AioRpcError as exc:
            self._failed_in_a_row[key] += 1
            raise WorkerError(
                f"{model} at {self.urls[instance]}: {exc.code().name}: {exc.details()}",
                transport=exc.code() == grpc.StatusCode.UNAVAILABLE,
            ) from exc
        if not response.raw_output_contents:
            self._failed_in_a_row[key] += 1
            raise WorkerError(f"{model}: Triton returned no {signature.output_name!r} output")
        del self._failed_in_a_row[key]  # a Counter: no KeyError when it was 0
        return output_rows(response, signature)


def _tag(request: kpb.ModelInferRequest, number: int) -> None:
    request.id = str(number)


def _answer_id(reply: kpb.ModelStreamInferResponse) -> int | None:
    tag = reply.infer_response.id
    return int(tag) if tag.isdigit() else None


def infer_request(model: str, rows: np.ndarray, signature: ModelSignature) -> kpb.ModelInferRequest:
    """A ModelInfer of ``rows`` as raw little-endian bytes, asking for the signature's one output of the
    signature's model version."""
    return kpb.ModelInferRequest(
        model_name=model,
        model_version=signature.version,
        inputs=[
            kpb.ModelInferRequest.InferInputTensor(
                name=signature.input_name, datatype=signature.input_datatype, shape=rows.shape
            )
        ],
        outputs=[kpb.ModelInferRequest.InferRequestedOutputTensor(name=signature.output_name)],
        raw_input_contents=[np.ascontiguousarray(rows, dtype=signature.dtype).tobytes()],
    )


def output_rows(response: kpb.ModelInferResponse, signature: ModelSignature) -> np.ndarray:
    output = np.frombuffer(response.raw_output_contents[0], dtype=signature.output_dtype)
    return output.reshape(tuple(response.outputs[0].shape))
