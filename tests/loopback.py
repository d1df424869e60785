"""Servers, clients and hand-driven streams on 127.0.0.1 for the deployment tests.

Every server and client a test starts is stopped by the context manager that started it.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
import torch

from fedloom.app.client import ConfigClient
from fedloom.app.server import Deployment
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, Downlink
from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
from fedloom.runtime.client_loop import Backoff, ClientLoop
from fedloom.runtime.clients import Client, FitFn
from fedloom.runtime.loop import History
from fedloom.transport.channel import METHOD, grpc_options
from fedloom.transport.codec import PROTOCOL, Assembler, Package, encode
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import Event, Handlers, MessageType
from fedloom.transport.security import CLIENT_ID_KEY, TOKEN_KEY
from fedloom.transport.service import FederationServer

SYNTH = ["data.name=synthetic", "data.num_clients=6", "model.name=logreg", "cohort.size=3",
         "rounds=3", "client.lr=0.01", "fleet.threads=1"]
FAST = Backoff(initial=0.05, maximum=0.5, give_up_after=60)
ROOT = Path(__file__).resolve().parents[1]


def tiny_layout() -> ParamLayout:
    return ParamLayout.from_module(torch.nn.Linear(3, 2))  # 8 float32 values


def plus_one(params: list[torch.Tensor], config: dict[str, object]
             ) -> tuple[list[torch.Tensor], int, dict[str, float]]:
    return [p + 1 for p in params], 4, {"train_loss": 0.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def downlinks(round: int, ids: Sequence[int], layout: ParamLayout,
              value: float = 0.0) -> list[Downlink]:
    params = torch.full((layout.size,), float(value))
    return [Downlink(round=round, client_id=c, params=params, config=ClientConfig())
            for c in ids]


class Recorder:
    """Collects events of the given kinds from a Handlers object."""

    def __init__(self, handlers: Handlers, *kinds: MessageType) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        for kind in kinds:
            handlers.register(kind, self._add)

    def _add(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: MessageType) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]


@contextmanager
def tiny_server(*, policy: RoundPolicy | None = None, layout: ParamLayout | None = None,
                **kwargs: object) -> Iterator[tuple[FederationServer, GrpcFleet]]:
    """An insecure server on a free port with a GrpcFleet, for a small layout."""
    kwargs.setdefault("insecure", True)
    server = FederationServer("127.0.0.1:0", layout=layout or tiny_layout(),
                              **kwargs).start()  # type: ignore[arg-type]
    fleet = GrpcFleet(server, policy or RoundPolicy(round_timeout=30, absent_timeout=20))
    try:
        yield server, fleet
    finally:
        fleet.close()
        server.stop(grace=0.5)


@contextmanager
def thread_clients(port: int, ids: Sequence[int], client: Client | FitFn = plus_one,
                   **kwargs: object) -> Iterator[list[ClientLoop]]:
    """Client runners on threads of this process, stopped at the end."""
    kwargs.setdefault("insecure", True)
    kwargs.setdefault("backoff", FAST)
    runners = [ClientLoop(f"127.0.0.1:{port}", client_id=c, client=client,
                            **kwargs) for c in ids]  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def serve(runner: ClientLoop) -> None:
        try:
            runner.run()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=serve, args=(r,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    try:
        yield runners
    finally:
        for r in runners:
            r.stop()
        for t in threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in threads), "a client thread did not stop"


class RawStream:
    """A stream driven frame by frame (for sending what a real client never would)."""

    def __init__(self, port: int, client_id: int, token: str | None = None,
                 hello: bool = True) -> None:
        self.out: queue.Queue[bytes | None] = queue.Queue()
        self.frames: queue.Queue[pb.ServerFrame] = queue.Queue()
        self.status: grpc.StatusCode | None = None
        self.details = ""
        self.done = threading.Event()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}",
                                             options=grpc_options(64 << 20))
        meta = [(CLIENT_ID_KEY, str(client_id))]
        if token:
            meta.append((TOKEN_KEY, f"Bearer {token}"))
        if hello:
            self.send(pb.ClientFrame(hello=pb.Hello(protocol=PROTOCOL)).SerializeToString())
        self.call = self.channel.stream_stream(METHOD)(self._requests(), metadata=tuple(meta))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _requests(self) -> Iterator[bytes]:
        while (item := self.out.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for raw in self.call:
                self.frames.put(pb.ServerFrame.FromString(raw))
            self.status = grpc.StatusCode.OK
        except grpc.RpcError as err:
            self.status, self.details = err.code(), err.details() or ""
        finally:
            self.done.set()

    def send(self, raw: bytes) -> None:
        self.out.put(raw)

    def next(self, timeout: float = 20.0) -> pb.ServerFrame:
        return self.frames.get(timeout=timeout)

    def next_header(self, timeout: float = 20.0) -> pb.Header:
        """The next header frame, skipping chunks."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next(max(deadline - time.monotonic(), 0.01))
            if frame.WhichOneof("frame") == "header":
                return frame.header

    def reply(self, header: pb.Header, tensors: dict[str, torch.Tensor]) -> None:
        for raw in encode(header, tensors,
                          wrap_header=lambda h: pb.ClientFrame(header=h).SerializeToString()):
            self.send(raw)

    def close(self) -> None:
        self.out.put(None)
        self.done.wait(10)
        self.call.cancel()
        self.channel.close()


def fit_reply(task: pb.Header, params: torch.Tensor, **fields: object
              ) -> tuple[pb.Header, dict[str, torch.Tensor]]:
    header = pb.Header(task_id=task.task_id, kind=pb.FIT_REPLY, round=task.round,
                       client_id=task.client_id, num_examples=3)
    for key, value in fields.items():
        setattr(header, key, value)
    return header, {"params": params}


def through_the_wire(header: pb.Header, tensors: dict[str, torch.Tensor], *,
                     assembler: Assembler | None = None, chunk_bytes: int = 16) -> Package:
    """A package encoded into frames, parsed and reassembled as a receiver does."""
    frames = encode(header, tensors, chunk_bytes=chunk_bytes,
                    wrap_header=lambda h: pb.ServerFrame(header=h).SerializeToString())
    assembler = assembler or Assembler(max_payload_bytes=None, max_chunk_bytes=chunk_bytes)
    out = None
    for raw in frames:
        frame = pb.ServerFrame.FromString(raw)
        out = (assembler.header(frame.header) if frame.WhichOneof("frame") == "header"
               else assembler.chunk(frame.chunk))
    assert out is not None
    return out


def fedloom_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedloom", *args]


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started by the test; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)


def spawn(started: list[subprocess.Popen[str]], args: list[str],
          **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "PYTHONPATH": str(ROOT / "src")}
    env.update(kwargs.pop("env", {}))  # type: ignore[arg-type]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, text=True,  # type: ignore[call-overload]
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    started.append(proc)
    return proc  # type: ignore[no-any-return]


def serve_to_the_end(dep: Deployment, clients: int = 6) -> History:
    """Run a built deployment to its end, ``clients`` of fedloom's own clients (from the
    server's config) connected on threads; the server is stopped however it ends."""
    try:
        with thread_clients(dep.server.port, range(clients), client=ConfigClient()):
            dep.fleet.wait_for_clients(clients, 30)
            return dep.loop.run()
    finally:
        dep.server.stop(grace=0.5)
