"""The triton backend: each batch the runtime assembles goes to an NVIDIA Triton Inference
Server as one gRPC request (tritonclient.grpc, imported only when the backend opens).

    Runtime("s4d.onnx", RuntimeOptions(backend="triton", server="gpu-box:8001"))   # spec from the file
    Runtime("triton://gpu-box:8001/s4d")                                          # spec from the server
    python -m runtime s4d.onnx --backend triton --server gpu-box:8001 [--triton-model s4d] --stream ...

Where the spec comes from: a local bundle or ONNX when one is given; the model name defaults to
the one ``python -m export.triton`` gives it (``served_name``), and the spec that export put in
the server's config parameters must equal the local one, so a different model under that name
fails at start. With ``triton://HOST:PORT/NAME`` as the model there is no local file: the spec,
family and untrained flag come from those parameters (``served_model_source``).

In flight: up to ``in_flight`` requests per Runtime (RuntimeOptions.in_flight, default
DEFAULT_IN_FLIGHT), each from its own dispatcher pool thread on its own gRPC client (the Python
clients are not documented as safe to share between threads), so the dispatcher keeps batching
while earlier batches cross the network and wait in the server's queue; results still come
back in clip order (runtime.dispatch). Several runtimes (camera boxes) share one server, whose
dynamic batcher merges their requests. Each request has a deadline (timeout_s, 30 s).

The server going away: a request refused as UNAVAILABLE (server down or restarting) or
NOT_FOUND (its model unloading as it stops) is tried again after pauses of RETRY_PAUSES_S
(5 tries over about 4 s), then run() raises and the dispatcher reports the batch once per
stream it held (INFERENCE_FAILED). gRPC reconnects by itself, its backoff capped at 1 s here,
so the first batch after the server is back goes through. Any other error (a deadline, a wrong
shape) fails the batch at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from runtime.backends import Backend, BackendClosed, BackendUnavailable, refuse_landmarks
from runtime.model import ModelSource
from runtime.spec import ModelSpec

SCHEME = "triton://"
# The config parameters export.triton writes and this backend reads: the model's contract.
SPEC_PARAMETER, FAMILY_PARAMETER, UNTRAINED_PARAMETER = "dfer_spec", "dfer_family", "dfer_untrained"
# Triton config type → (numpy dtype, the wire name a request uses).
DATA_TYPES = {"TYPE_FP32": (np.dtype(np.float32), "FP32"), "TYPE_FP16": (np.dtype(np.float16), "FP16"),
              "TYPE_UINT8": (np.dtype(np.uint8), "UINT8")}
RETRY_PAUSES_S = (0.25, 0.5, 1.0, 2.0)
# Refusals that pass: the server is down or restarting (UNAVAILABLE), or unloading the model
# while it stops (NOT_FOUND: "has no available versions"; a name unknown at start fails in connect).
_TRANSIENT = ("StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND")
CONNECT_TIMEOUT_S = 5.0
DEFAULT_IN_FLIGHT = 2
# tritonclient's own defaults (messages up to 2 GiB) plus a reconnect backoff capped at 1 s:
# gRPC's default grows to 120 s, which would keep a restarted server idle for minutes.
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def is_triton_url(model: str | Path) -> bool:
    return str(model).startswith(SCHEME)


def parse_triton_url(url: str) -> tuple[str, str]:
    """triton://HOST:PORT/NAME → ("HOST:PORT", "NAME"), or ValueError saying the form."""
    match = re.fullmatch(r"triton://([^/\s]+:\d+)/([^/\s]+)", url)
    if match is None:
        raise ValueError(f"a served model is named triton://HOST:PORT/NAME (the gRPC port), got {url!r}")
    return match.group(1), match.group(2)


def served_name(path: str | Path) -> str:
    """The Triton model name for an exported file: its stem (a bundle's folder without .dfer),
    reduced to letters, digits, '_' and '-', so it is a safe directory and URL part."""
    path = Path(path)
    stem = path.name if path.is_dir() and path.suffix != ".dfer" else path.stem
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "model"


def import_tritonclient():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as err:
        raise BackendUnavailable(f"tritonclient is not installed ({err}): pip install 'tritonclient[grpc]'") from err
    return grpcclient


@dataclass(frozen=True)
class ServedModel:
    """What the server's config says about one model, as far as the runtime needs it."""

    name: str
    input_name: str
    input_dtype: np.dtype
    input_dims: tuple[int, ...]
    output_name: str
    output_dims: tuple[int, ...]
    max_batch: int
    parameters: dict[str, str]

    @classmethod
    def from_config(cls, config: dict, where: str) -> "ServedModel":
        inputs, outputs = config.get("input", []), config.get("output", [])
        if len(inputs) != 1 or not outputs:
            raise BackendUnavailable(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; a dfer model has one clip input and logits out")
        clip, logits = inputs[0], outputs[0]
        if clip.get("data_type") not in DATA_TYPES:
            raise BackendUnavailable(f"{where} takes {clip.get('data_type')}; the runtime sends {' or '.join(DATA_TYPES)}")
        if int(config.get("max_batch_size", 0)) < 1:
            raise BackendUnavailable(f"{where} has max_batch_size 0: the runtime sends batches (export it with python -m export.triton)")
        return cls(
            name=config["name"], input_name=clip["name"], input_dtype=DATA_TYPES[clip["data_type"]][0],
            input_dims=tuple(int(d) for d in clip.get("dims", [])), output_name=logits["name"],
            output_dims=tuple(int(d) for d in logits.get("dims", [])), max_batch=int(config["max_batch_size"]),
            parameters={k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()},
        )

    def spec(self, where: str) -> ModelSpec | None:
        text = self.parameters.get(SPEC_PARAMETER)
        if text is None:
            return None
        try:
            return ModelSpec.from_dict(json.loads(text))
        except (ValueError, TypeError) as err:
            raise BackendUnavailable(f"{where}: its {SPEC_PARAMETER} parameter is not a model spec ({err})") from err


def connect(server: str, model: str, timeout_s: float = CONNECT_TIMEOUT_S):
    """(client, the model's ServedModel), or BackendUnavailable in one line: nothing answers at
    server, the server lacks the model, or the model is not ready."""
    grpcclient = import_tritonclient()
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url=server, channel_args=_CHANNEL_ARGS)
    try:
        client.is_server_live(client_timeout=timeout_s)
    except InferenceServerException as err:
        client.close()
        raise BackendUnavailable(f"no Triton server answers at {server} (gRPC): {_first_line(err)}") from err
    try:
        names = [m["name"] for m in client.get_model_repository_index(as_json=True, client_timeout=timeout_s).get("models", [])]
        if model not in names:
            raise BackendUnavailable(f"the Triton server at {server} has no model {model!r}; it serves {', '.join(names) or 'none'}")
        if not client.is_model_ready(model, client_timeout=timeout_s):
            raise BackendUnavailable(f"model {model!r} on the Triton server at {server} is not ready (its load failed: see the server's log)")
        config = client.get_model_config(model, as_json=True, client_timeout=timeout_s)["config"]
        return client, ServedModel.from_config(config, f"model {model!r} at {server}")
    except (BackendUnavailable, InferenceServerException) as err:
        client.close()
        if isinstance(err, BackendUnavailable):
            raise
        raise BackendUnavailable(f"the Triton server at {server} did not describe model {model!r}: {_first_line(err)}") from err


def served_model_source(url: str, options):
    """(ModelSource, options) for a triton:// model: the spec from the server's config, and the
    options turned to the triton backend at that server. There is no local file: path and
    onnx_path hold the model's name, and only the triton backend opens such a source."""
    server, model = parse_triton_url(url)
    if options.backend not in ("auto", "triton") or options.server not in (None, server) or options.triton_model not in (None, model):
        raise ValueError(f"{url} names its server and model; leave backend, server and triton_model unset "
                         f"(got {options.backend!r}, {options.server!r}, {options.triton_model!r})")
    client, served = connect(server, model)
    client.close()
    where = f"model {served.name!r} at {server}"
    spec = served.spec(where)
    if spec is None:
        raise BackendUnavailable(f"{where} has no {SPEC_PARAMETER} parameter: export it with python -m export.triton, or give the local bundle/ONNX")
    source = ModelSource(path=Path(served.name), onnx_path=Path(served.name), spec=spec,
                         family=served.parameters.get(FAMILY_PARAMETER, spec.family),
                         untrained=served.parameters.get(UNTRAINED_PARAMETER, "false") == "true")
    return source, replace(options, backend="triton", server=server, triton_model=served.name)


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, source: ModelSource, *, server: str, model: str | None = None, timeout_s: float = 30.0,
                 retry_pauses_s: tuple[float, ...] = RETRY_PAUSES_S, in_flight: int = DEFAULT_IN_FLIGHT):
        if type(in_flight) is not int or in_flight < 1:
            raise ValueError(f"in_flight must be an integer ≥ 1, got {in_flight!r}")
        refuse_landmarks(source, "triton")  # before connecting: no server could take the renderings
        model = model or served_name(source.path)
        client, self.served = connect(server, model)
        self.server, self.timeout_s, self.retry_pauses_s, self.in_flight = server, timeout_s, retry_pauses_s, in_flight
        self._lock = threading.Lock()
        self._clients = [client]  # every thread's client, closed together
        self._spare = [client]  # made but not yet taken by a thread
        self._local = threading.local()
        self._closed = False
        try:
            self._check(source.spec, f"model {model!r} at {server}")
        except BackendUnavailable:
            self.close()
            raise
        self.max_batch = self.served.max_batch
        self.input_dtype = self.served.input_dtype
        self.retries = 0  # requests tried again, for reports and tests
        self.peak_in_flight = 0  # most requests seen waiting at once, for reports and tests
        self._waiting = 0
        self._grpc = import_tritonclient()

    def _check(self, spec: ModelSpec, where: str) -> None:
        served_spec = self.served.spec(where)
        if served_spec is not None and served_spec != spec:
            raise BackendUnavailable(f"{where} is another model: its spec ({served_spec.family}, {served_spec.labels}) differs from the local one ({spec.family}, {spec.labels})")
        expected = spec.input_shape(1)[1:]
        if self.served.input_dims != expected or self.served.output_dims != (spec.num_classes,):
            raise BackendUnavailable(f"{where} takes {self.served.input_dims} → {self.served.output_dims}; "
                                     f"the model's spec says {expected} → ({spec.num_classes},)")

    def run(self, batch: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        """Thread-safe: each calling thread sends on its own client."""
        if landmarks is not None:
            raise ValueError("the triton backend sends one input, the clips; it takes no landmark renderings")
        client = self._thread_client()
        clip = self._grpc.InferInput(self.served.input_name, list(batch.shape), DATA_TYPES[_type_of(batch)][1])
        clip.set_data_from_numpy(np.ascontiguousarray(batch))
        wanted = [self._grpc.InferRequestedOutput(self.served.output_name)]
        with self._lock:
            self._waiting += 1
            self.peak_in_flight = max(self.peak_in_flight, self._waiting)
        try:
            return self._infer_with_retries(client, clip, wanted).as_numpy(self.served.output_name)
        finally:
            with self._lock:
                self._waiting -= 1

    def _thread_client(self):
        client = getattr(self._local, "client", None)
        with self._lock:
            if self._closed:
                raise BackendClosed("the triton backend is closed")
            if client is None:
                client = self._spare.pop() if self._spare else self._new_client()
                self._local.client = client
        return client

    def _new_client(self):
        client = self._grpc.InferenceServerClient(url=self.server, channel_args=_CHANNEL_ARGS)
        self._clients.append(client)
        return client

    def _infer_with_retries(self, client, clip, wanted):
        from tritonclient.utils import InferenceServerException

        for attempt, pause in enumerate((*self.retry_pauses_s, None)):
            try:
                return client.infer(self.served.name, [clip], outputs=wanted, client_timeout=self.timeout_s)
            except InferenceServerException as err:
                if pause is None or err.status() not in _TRANSIENT:
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    raise ConnectionError(f"Triton server {self.server}{tries}: {_first_line(err)}") from err
            with self._lock:
                self.retries += 1
            time.sleep(pause)

    def details(self) -> str:
        return (f"triton ({self.served.name} at {self.server}, max batch {self.max_batch}, {self.input_dtype.name}, "
                f"{self.in_flight} in flight)")

    def close(self) -> None:
        with self._lock:
            clients, self._clients, self._spare, self._closed = self._clients, [], [], True
        for client in clients:
            client.close()


def _type_of(batch: np.ndarray) -> str:
    for name, (dtype, _) in DATA_TYPES.items():
        if batch.dtype == dtype:
            return name
    raise ValueError(f"the triton backend sends float32, float16 or uint8 clips, got {batch.dtype}")


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
