"""Parallel clients on one machine: a round's clients trained by a pool of worker processes.

The in-process transport trains clients one after another, so a run uses one core's worth of work however many cores
the machine has. :class:`WorkerPoolTransport` hands each client's requests to one of ``run.workers`` processes, each
with one torch thread, the run's data and model loaded once per worker. On Linux, when the run's process uses one torch
thread, a worker is forked from it (:class:`_ForkedWorker`: torch and the other libraries are already imported, and
their pages are shared) and serves from its copy of the run's built data, model and protocol; the run's process then
trains a share of the clients itself beside ``run.workers - 1`` such workers (:attr:`WorkerPoolTransport.trains_here`).
Otherwise, or with ``SECURE_FFM_WORKER_START=spawn``, each of the ``run.workers`` workers is a fresh interpreter
(``python -m secure_ffm.transports.worker_pool``). Neither re-imports ``__main__``, so scripts need no
``if __name__ == "__main__"`` guard. A worker answers exactly as a deployed node does
(:class:`~secure_ffm.transports.remote.NodeSession`: the same client, transforms, privacy mechanism and protocol half);
requests and replies cross its stdin and stdout as length-prefixed frames: a JSON header and the arrays as safetensors
(the safe codec's packing; nothing is pickled); a forked worker puts its replies' arrays in memory it shares with the run
(:class:`_ReplySlots`) and sends only the header.

What belongs to a client stays with the run, not with a worker: each client's private state (its secret, its DP
ledger) lives in the main process's ``client_states`` (checkpointed as before) and travels with each request, the
updated state coming back with the reply; its protocol half of the round (masking keys) travels the same way and is
dropped when the round ends. Any worker can therefore serve any client.

Results are the sequential transport's for the same seed, bitwise when the sequential run also uses one torch thread
per client: replies are yielded in the order the clients were asked (a few are buffered), so the server sums in the
same order. A worker that dies (crash, OOM kill) is the dropout of the clients whose requests it held (one, or two
when the run's process trains too) - secure aggregation recovers as for any dropout - and is replaced;
:meth:`WorkerPoolTransport.close` (called at the end of every run, on failure and on Ctrl-C too) stops every worker.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import logging
import math
import mmap
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from secure_ffm.engine.aggregation import AggregationError, Stage, StageReplies
from secure_ffm.engine.codec import _ARRAY_KINDS, from_bytes, pack, to_bytes, unpack
from secure_ffm.engine.wire import ClientMessage, NamedArrays, arrays_from_bytes, arrays_to_bytes, num_parameters
from secure_ffm.transports.base import FitReply, FitRequest, Transport
from secure_ffm.transports.in_process import no_dropouts
from secure_ffm.transports.remote import EVALUATE, FIT, STAGE, Packed

log = logging.getLogger(__name__)

_READY = "ready"
_PARAMETERS = "parameters"
"""A frame that carries the round's global parameters to a worker, once per round."""


Frame = tuple[bytes, bytes]
"""One pipe message in two parts: the JSON header and the arrays as safetensors bytes."""


def _frame(meta: Mapping[str, Any], arrays: Mapping[str, Any]) -> Frame:
    """One pipe message: a JSON header, then the arrays as safetensors (no pickle crosses the pipe). Kept as two
    parts: :func:`_write` sends them one after the other, so a model-sized payload is never copied into a joined
    message (and :func:`_read` reads each part into a bytes object of its own, the payload without a slice copy)."""
    return json.dumps(meta, separators=(",", ":")).encode(), arrays_to_bytes(arrays)


def _unframe(frame: Frame) -> tuple[dict[str, Any], NamedArrays]:
    header, payload = frame
    return json.loads(header), arrays_from_bytes(payload)


def _write(stream: Any, frame: Frame) -> None:
    """One message, all of it: the two parts' lengths (8 bytes each), then the parts (an unbuffered stream's
    ``write`` may take only part of what it is given)."""
    header, payload = frame
    for part in (len(header).to_bytes(8, "little") + len(payload).to_bytes(8, "little") + header, payload):
        view = memoryview(part)
        while view:
            view = view[stream.write(view) :]
    stream.flush()


class StalledReply(TimeoutError):
    """A worker began a reply and did not finish it within its time (``run.worker_timeout``)."""


def _read_exactly(stream: Any, size: int, deadline: float | None = None) -> bytes | None:
    """``size`` bytes, or None if the stream ends first. One ``read`` usually returns them all (the writer's frame
    fits the pipe's buffer) and its bytes are used as they are; an unbuffered stream's ``read`` may return only part,
    and the parts are then joined. With a ``deadline`` (``time.monotonic``), each read first waits for bytes until
    then, and :class:`StalledReply` is raised when none come: a worker that stopped half-way through a reply would
    otherwise block the run in ``read`` for as long as it stalls (an audit of 2026-12-07)."""
    parts, got = [], 0
    while got < size:
        if deadline is not None and not multiprocessing.connection.wait([stream], timeout=max(0.0, deadline - time.monotonic())):
            raise StalledReply(f"{got} of {size} bytes arrived")
        part = stream.read(size - got)
        if not part:
            return None
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read(stream: Any, deadline: float | None = None) -> Frame | None:
    """One message (its header and payload), or None at the end of the stream (the other side is gone); with a
    ``deadline``, :class:`StalledReply` if it does not all arrive by then (:func:`_read_exactly`)."""
    sizes = _read_exactly(stream, 16, deadline)
    if sizes is None:
        return None
    header = _read_exactly(stream, int.from_bytes(sizes[:8], "little"), deadline)
    if header is None:
        return None
    payload = _read_exactly(stream, int.from_bytes(sizes[8:], "little"), deadline)
    return None if payload is None else (header, payload)


def _open_replies(fd: int) -> Any:
    """The run's end of a worker's reply pipe, unbuffered. The pool waits on the pipe itself (``select``) for the next
    reply; a buffered reader may take the next reply's bytes out of the pipe along with the one it was asked for, and
    ``select`` would then never report it: the run and the worker would each wait for the other forever (it happened
    when a worker held two requests and answered both before the run read the first)."""
    return os.fdopen(fd, "rb", buffering=0)


PIPE_BYTES = 1 << 20
"""Pipe buffer asked for (Linux ``F_SETPIPE_SZ``; the default is 64 KiB): a model-sized frame then crosses in one
write, without the writer waiting for the reader to drain each 64 KiB."""


def _widen(stream: Any) -> None:
    """Ask the kernel for a :data:`PIPE_BYTES` buffer on a pipe (capped by ``/proc/sys/fs/pipe-max-size``); a no-op elsewhere."""
    try:
        import fcntl

        set_size = getattr(fcntl, "F_SETPIPE_SZ", 1031)
        try:
            limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        except (OSError, ValueError):
            limit = PIPE_BYTES
        fcntl.fcntl(stream.fileno(), set_size, min(PIPE_BYTES, limit))
    except (ImportError, OSError, ValueError):
        pass


def _with_parameters(fit: FitRequest, parameters: Mapping[str, Any]) -> FitRequest:
    """``fit`` with its instructions' global parameters replaced (stripped before sending, restored in the worker)."""
    return dataclasses.replace(fit, instructions=dataclasses.replace(fit.instructions, parameters=parameters))


class _ReplySlots:
    """Shared memory that a forked worker writes its replies' arrays into, instead of sending them down its pipe.

    An anonymous shared mapping (``mmap(-1, ...)``: no file, nothing to clean up, gone with the last process that maps
    it), made before the fork, so only the run's process and that one worker share it: the same two parties as the pipe.
    It holds two slots: a worker holds at most two requests, and the run reads (and copies out) its reply to request j
    before it sends request j + 2, whose reply is the next to use j's slot. The pipe still carries each reply's
    header, now with the arrays' layout in the slot; a reply whose arrays do not fit a slot goes down the pipe whole.
    This saves a model-sized update two copies through the kernel and the safetensors packing on the worker's side:
    one copy in, one copy out (docs/speed.md)."""

    SLOTS = 2

    def __init__(self, slot_bytes: int) -> None:
        self.slot_bytes = slot_bytes
        self.memory = mmap.mmap(-1, self.SLOTS * slot_bytes)
        self.written = 0
        """Replies written (in the worker): the next goes to slot ``written % SLOTS``."""

    def write(self, arrays: Mapping[str, Any]) -> dict[str, Any] | None:
        """In the worker: copy ``arrays`` into the next slot; their layout for the reply's header, or None (and nothing
        written) when they do not fit."""
        values = {str(name): np.asarray(value) for name, value in arrays.items()}
        if sum(v.nbytes for v in values.values()) > self.slot_bytes or any(v.dtype.kind not in _ARRAY_KINDS for v in values.values()):
            return None
        slot = self.written % self.SLOTS
        offset, layout = slot * self.slot_bytes, []
        for name, value in values.items():
            target = np.frombuffer(self.memory, dtype=value.dtype, count=value.size, offset=offset)
            np.copyto(target.reshape(value.shape), value)
            layout.append([name, value.dtype.str, list(value.shape), offset])
            offset += value.nbytes
        self.written += 1
        return {"slot": slot, "arrays": layout}

    def read(self, shared: Mapping[str, Any]) -> NamedArrays:
        """In the run's process: copies of the arrays a reply's header says its worker wrote (checked against the slot)."""
        slot = shared["slot"]
        if type(slot) is not int or not 0 <= slot < self.SLOTS:
            raise AggregationError(f"a worker's reply names shared-memory slot {slot!r}")
        begin, end = slot * self.slot_bytes, (slot + 1) * self.slot_bytes
        arrays = {}
        for entry in shared["arrays"]:
            try:
                name, dtype_str, shape, offset = entry
                dtype = np.dtype(dtype_str)
            except (TypeError, ValueError):
                raise AggregationError(f"a worker's reply has the array entry {entry!r}") from None
            if (
                dtype.kind not in _ARRAY_KINDS
                or not isinstance(shape, list)
                or not all(type(n) is int and n >= 0 for n in shape)
                or type(offset) is not int
            ):
                raise AggregationError(f"a worker's reply has array {name!r} of {dtype_str} {shape} at {offset}")
            count = math.prod(shape)
            if not begin <= offset <= offset + count * dtype.itemsize <= end:
                raise AggregationError(f"a worker's reply has array {name!r} outside its shared-memory slot")
            arrays[str(name)] = np.frombuffer(self.memory, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
        return arrays


def _answer(
    simulation: Any, client_id: int, kind: str, packed: Packed, state: dict[str, Any], parameters: Callable[[], Mapping[str, Any]] | None
) -> tuple[Packed | None, str | None, dict[str, Any]]:
    """One request answered by client ``client_id`` of ``simulation`` over ``state`` (its own copy): ``(reply, error,
    state after)``; a refusal or failure is the error, its client's dropout. ``parameters`` gives a fit request's
    global parameters (the round's broadcast). Used by a worker (:func:`_serve`) and by the run's process when it
    trains too (:meth:`WorkerPoolTransport._answer_here`), so both answer alike, bitwise. The run's entry for the
    client in ``simulation.client_states``, which the session replaces while it answers, is put back."""
    from secure_ffm.run.deployment import client_session

    own = simulation.client_states.get(client_id)
    session = client_session(simulation, client_id, state)
    try:
        request = unpack(*packed)
        if parameters is not None:
            request["request"] = _with_parameters(request["request"], parameters())
        return pack(session.answer(kind, request)), None, session.state
    except Exception as error:  # noqa: BLE001 - the client refused or failed: the run sees its dropout
        log.debug("client %d failed %s: %s", client_id, kind, traceback.format_exc())
        return None, f"{type(error).__name__}: {error}", session.state
    finally:
        if own is None:
            simulation.client_states.pop(client_id, None)
        else:
            simulation.client_states[client_id] = own


def _serve(requests: Any, replies: Any, built: Any = None, slots: _ReplySlots | None = None) -> None:
    """A worker: build the run's client side once from the first message, then answer jobs until the stream ends.

    ``built``: the run's own :class:`~secure_ffm.run.simulation.Simulation`, which a forked worker inherited; it is used
    instead of building the run again when its config is the one in the first message. ``slots``: the shared memory a
    forked worker writes its replies' arrays into (:class:`_ReplySlots`)."""
    first = _read(requests)
    if first is None:
        return
    setup, _ = _unframe(first)
    try:
        import tomllib

        import torch

        torch.set_num_threads(1)  # the pool's parallelism is across processes: one thread each, no spinning barriers
        from secure_ffm.config import config_from_dict
        from secure_ffm.run.deployment import load_key_file
        from secure_ffm.run.simulation import Simulation, prepare_run

        inherited = built is not None and built.config.to_toml() == setup["config"]
        simulation = built if inherited else Simulation(prepare_run(config_from_dict(tomllib.loads(setup["config"]))))
        key_file = base64.b64decode(setup["key_file"]) if setup.get("key_file") else None
        load_key_file(simulation.protocol, key_file, role="clients")
    except Exception as error:  # noqa: BLE001 - reported to the main process, which raises it there
        _write(replies, _frame({"status": "failed", "detail": f"{type(error).__name__}: {error}"}, {}))
        return
    _write(replies, _frame({"status": _READY, "pid": os.getpid(), "run": "inherited" if inherited else "built"}, {}))
    broadcast: tuple[int, dict[str, Any]] | None = None
    """The round's global parameters, sent once per round rather than with every client's fit request."""
    while (data := _read(requests)) is not None:
        job, arrays = _unframe(data)
        if job.get("kind") == _PARAMETERS:  # no reply: the next fit requests of this round refer to it
            broadcast = (int(job["round"]), {str(k): v for k, v in unpack(str(job["text"]), arrays).items()})
            continue
        wanted = job.get("broadcast")

        def parameters(wanted: Any = wanted, held: tuple[int, dict[str, Any]] | None = broadcast) -> Mapping[str, Any]:
            if held is None or held[0] != int(wanted):
                raise RuntimeError(f"a fit request refers to the parameters of round {wanted}, which this worker lacks")
            return held[1]

        packed = (str(job["text"]), arrays)
        state = from_bytes(job["state"].encode())
        reply, error, after = _answer(
            simulation, int(job["client"]), str(job["kind"]), packed, state, parameters if wanted is not None else None
        )
        header = {"status": "ok" if error is None else "error", "detail": error or reply[0], "state": to_bytes(after).decode()}
        arrays = reply[1] if reply is not None else {}
        shared = slots.write(arrays) if slots is not None and arrays else None
        if shared is not None:
            header["shared"], arrays = shared, {}
        _write(replies, _frame(header, arrays))


def _forked_worker(
    requests_fd: int, replies_fd: int, inherited: Sequence[int], built: Any = None, slots: _ReplySlots | None = None
) -> None:
    """The body of a worker forked from the run's process (:class:`_ForkedWorker`); never returns.

    It closes the pipe ends it inherited that belong to the run or to the other workers (a worker holding a sibling's
    request pipe would keep that sibling from ever seeing the end of its stream), restores what a fresh interpreter
    has (default SIGINT, logging to stderr only, not into the run's log files), serves, and leaves with ``os._exit``:
    nothing of the run's state (buffered files, atexit handlers, a test runner) runs twice."""
    code = 0
    try:
        for fd in inherited:
            try:
                os.close(fd)
            except OSError:
                pass
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(logging.StreamHandler(sys.stderr))
        root.setLevel(logging.WARNING)
        with os.fdopen(requests_fd, "rb") as requests, os.fdopen(replies_fd, "wb") as replies:
            _serve(requests, replies, built, slots)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    except BaseException:  # noqa: BLE001 - reported on stderr; the run sees the end of its stream
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


class _ForkedWorker:
    """A worker process forked from the run's process, with :class:`subprocess.Popen`'s interface as the pool uses it.

    The run has already imported torch, secure-ffm and its model's libraries; the child starts with them loaded and
    shares their pages (copy on write) instead of importing them again (about 1.5 s and a few hundred MiB per worker
    on this project's machine, docs/speed.md). Given ``built`` (the run's own built run, :class:`WorkerPoolTransport`'s
    ``local_run``), it serves from its copy of it; otherwise it builds its client side from the config like a fresh
    worker. Either way its answers are the sequential run's, bitwise (tested)."""

    def __init__(self, inherited: Sequence[int], built: Any = None, slot_bytes: int = 0) -> None:
        self.slots = _ReplySlots(slot_bytes) if slot_bytes > 0 else None
        """The shared memory its replies' arrays come through (:class:`_ReplySlots`; None: all through the pipe)."""
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # what the run buffered must not be written again by the worker
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        pid = os.fork()
        if pid == 0:  # the worker
            _forked_worker(requests_r, replies_w, [requests_w, replies_r, *inherited], built, self.slots)
        os.close(requests_r)
        os.close(replies_w)
        self.pid = pid
        self.stdin = os.fdopen(requests_w, "wb")
        self.stdout = _open_replies(replies_r)
        self.returncode: int | None = None

    def fds(self) -> list[int]:
        """This process's ends of the worker's pipes (a later worker closes them)."""
        return [f.fileno() for f in (self.stdin, self.stdout) if not f.closed]

    def _reaped(self, status: int) -> int:
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reaped(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        if timeout is None:
            return self._reaped(os.waitpid(self.pid, 0)[1])
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _spawn_worker(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """A worker in a fresh interpreter, its pipes unbuffered: replies must be (:func:`_open_replies`), and each
    request is one message written whole (:func:`_write`).

    It builds the run again, DP-SGD's plans included, and calibrates them in one process
    (``SECURE_FFM_PLAN_PROCESSES=1``): the run's process has calibrated them over every core already, and ``k``
    workers each forking a calibration process per core would start ``k`` times the cores at once."""
    environment = {**os.environ, "SECURE_FFM_PLAN_PROCESSES": "1"}
    return subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=environment)


def can_fork_workers() -> bool:
    """Whether workers are forked from this process (else each starts a fresh interpreter): on Linux, when this
    process runs torch on one thread. An OpenMP runtime whose thread pool a parent has used is not safe to use in a
    forked child (GNU libgomp), so a run whose process uses several torch threads starts fresh interpreters."""
    if sys.platform != "linux" or os.environ.get("SECURE_FFM_WORKER_START") == "spawn":
        return False
    torch = sys.modules.get("torch")
    return torch is None or torch.get_num_threads() == 1


def main() -> None:
    """``python -m secure_ffm.transports.worker_pool``: a worker speaking length-prefixed frames on stdin and stdout."""
    replies = os.fdopen(os.dup(1), "wb")  # the protocol's own copy of stdout ...
    os.dup2(2, 1)  # ... and anything the code prints goes to stderr, never into a frame
    try:
        _serve(sys.stdin.buffer, replies)
    except (KeyboardInterrupt, BrokenPipeError):
        pass


@dataclass
class _Worker:
    process: subprocess.Popen[bytes] | _ForkedWorker
    jobs: collections.deque[int] = field(default_factory=collections.deque)
    """The clients whose requests it holds, oldest first (its replies come back in this order)."""
    broadcast: int | None = None
    """The round whose global parameters it holds."""
    working_since: float = 0.0
    """When it began on its oldest request (``time.monotonic``): when that request was sent to an idle worker, or when
    the reply before it was read."""


@dataclass(frozen=True)
class _Broadcast:
    """A round's global parameters, packed once and sent to each worker once (fit requests then carry none)."""

    round: int
    packed: Packed


@dataclass
class _Result:
    client_id: int
    packed: Packed | None = None
    error: str | None = None


@dataclass
class _Halves:
    """Each client's protocol half of the current round, as exported state (dropped when the round ends)."""

    round: int | None = None
    states: dict[int, Any] = field(default_factory=dict)


class WorkerPoolTransport(Transport):
    """Trains a round's clients in ``workers`` processes; see the module docstring.

    Parameters
    ----------
    config_toml
        The run's resolved config (``Config.to_toml()``): each worker builds the same run from it.
    workers
        Number of worker processes (started at the first request, replaced when one dies).
    client_states
        The run's per-client private state (the simulation's dict, checkpointed by the run): read and updated here.
    example_counts
        Each client's number of examples.
    dropouts
        ``(round, participants) -> clients`` that drop after training and encoding (simulated, as in-process).
    key_file
        The clients' key file of a protocol that needs one (CKKS), dealt by the run.
    on_client_done
        Called with ``(round, client_id)`` after each client's fit.
    local_run
        The run's own built run (the :class:`~secure_ffm.run.simulation.Simulation` that made this transport). A worker
        forked from this process serves from its copy of it instead of building data, model and protocol again from
        the config (0.2-0.4 s per worker at start-up; docs/speed.md). Not used with a ``key_file``: this process's
        protocol holds the server's (or the authority's) keys, so those workers build their own and load the clients'.
    request_timeout
        Seconds a worker may spend on one request (``run.worker_timeout``); past it the worker is killed and replaced,
        and the clients whose requests it held count as dropped. 0: no limit.
    """

    def __init__(
        self,
        config_toml: str,
        *,
        workers: int,
        client_states: dict[int, dict[str, Any]],
        example_counts: Sequence[int],
        dropouts: Callable[[int, Sequence[int]], set[int]] = no_dropouts,
        key_file: bytes | None = None,
        on_client_done: Callable[[int, int], None] | None = None,
        local_run: Any = None,
        request_timeout: float = 0.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if not request_timeout >= 0:
            raise ValueError(f"request_timeout must be 0 (no limit) or positive, got {request_timeout}")
        self.request_timeout = request_timeout
        self.timed_out = 0
        """Workers killed for taking longer than ``request_timeout`` over a request."""
        self.config_toml = config_toml
        self.num_workers = workers
        self.client_states = client_states
        self._example_counts = list(example_counts)
        self.dropouts = dropouts
        self.key_file = key_file
        self.on_client_done = on_client_done
        self.local_run = local_run if key_file is None else None
        self._workers: list[_Worker] = []
        self._halves = _Halves()
        self._gone: set[int] = set()
        self.replaced = 0
        """Workers replaced after dying."""
        self.parameter_frames = 0
        """Frames that carried a round's global parameters (one per worker and round, not one per client)."""
        self.fork: bool | None = None
        """Whether workers are forked from this process (:func:`can_fork_workers`, decided at the first start)."""
        self.started: list[int] = []
        """The process ids of every worker started, replacements included."""
        self.local_jobs = 0
        """Requests this process answered itself (:attr:`trains_here`)."""
        self.shared_replies = 0
        """Replies whose arrays came through a forked worker's shared memory (:class:`_ReplySlots`), not its pipe."""
        self._local_parameters: tuple[int, dict[str, Any]] | None = None
        self.worker_runs: list[str] = []
        """How each started worker got its run: ``"inherited"`` (served from its forked copy of ``local_run``) or
        ``"built"`` (from the config)."""

    # ------------------------------------------------------------------ workers

    def _start_worker(self, others: Sequence[_Worker]) -> _Worker:
        process: subprocess.Popen[bytes] | _ForkedWorker
        if self._forks():
            inherited = [fd for w in others if isinstance(w.process, _ForkedWorker) for fd in w.process.fds()]
            process = _ForkedWorker(inherited, self.local_run, self._slot_bytes())
        else:
            process = _spawn_worker([sys.executable, "-m", "secure_ffm.transports.worker_pool"])
        self.started.append(process.pid)
        key_file = base64.b64encode(self.key_file).decode() if self.key_file is not None else ""
        _widen(process.stdin)
        _widen(process.stdout)
        _write(process.stdin, _frame({"config": self.config_toml, "key_file": key_file}, {}))
        return _Worker(process)

    def _slot_bytes(self) -> int:
        """The size of each shared-memory reply slot of a forked worker (:class:`_ReplySlots`): room for an update of
        every trained parameter at 8 bytes a value, and 1 MiB for the rest; 0 (no slots) without the run's own
        built run to size it from."""
        if self.local_run is None:
            return 0
        return 8 * num_parameters(self.local_run.prepared.initial_parameters) + (1 << 20)

    @property
    def trains_here(self) -> bool:
        """Whether this process answers a share of the requests itself, beside ``workers - 1`` worker processes.

        So it does when its workers are forked and it holds the run's own built run (``local_run``, no key file): its
        idle time between replies then trains clients, bitwise as a worker would (docs/speed.md)."""
        return self._forks() and self.local_run is not None

    def _forks(self) -> bool:
        """Whether workers are forked, decided once (:func:`can_fork_workers`) and kept in :attr:`fork`."""
        if self.fork is None:
            self.fork = can_fork_workers()
        return self.fork

    def _ensure_workers(self) -> None:
        """Start the missing workers and wait until each has built the run (they build in parallel; building is a
        request too: a worker that takes longer than ``request_timeout`` over it is killed and the run fails)."""
        starting: list[_Worker] = []
        for _ in range(self.num_workers - (1 if self.trains_here else 0) - len(self._workers)):
            starting.append(self._start_worker([*self._workers, *starting]))
        began = time.monotonic()
        for worker in starting:
            limit = max(0.0, began + self.request_timeout - time.monotonic()) if self.request_timeout else None
            data, detail = None, f"it took more than {self.request_timeout:g} s (run.worker_timeout) and was killed"
            if limit is not None and not multiprocessing.connection.wait([worker.process.stdout], timeout=limit):
                worker.process.kill()
            else:
                try:
                    data = _read(worker.process.stdout, self._reply_deadline())
                except StalledReply:
                    worker.process.kill()
                else:
                    detail = "" if data is not None else f"exited with code {worker.process.wait()}"
            meta = _unframe(data)[0] if data is not None else {"status": "failed", "detail": detail}
            if meta["status"] != _READY:
                self._stop(starting + self._workers)
                self._workers = []
                raise RuntimeError(f"a worker could not build the run: {meta.get('detail', '')}")
            self.worker_runs.append(str(meta.get("run", "built")))
        self._workers.extend(starting)

    def _replace(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        self._stop([worker])
        self.replaced += 1
        self._ensure_workers()

    def _run(self, jobs: Sequence[tuple[int, str, Packed]], broadcast: _Broadcast | None = None) -> Iterator[_Result]:
        """Run ``(client_id, kind, packed)`` jobs on the pool; yield each result as it completes. With ``broadcast``,
        the jobs are fit requests without parameters: each worker gets the round's parameters once, first.

        When this process trains too (:attr:`trains_here`), each worker holds up to two requests, so it never waits
        while this process trains, and this process takes the next job in the queue whenever no reply is ready. Jobs
        finish about in the order asked, so :meth:`fit` hands each update to the server soon after it is trained,
        rather than holding this process's updates until the workers' earlier ones arrive and summing them all at the
        round's end while the workers wait (docs/speed.md). The last job is never queued as a worker's second: this
        process takes it."""
        self._ensure_workers()
        here = self.trains_here
        depth = 2 if here else 1
        pending = collections.deque(jobs)
        while pending or any(w.jobs for w in self._workers):
            for worker in self._workers:
                while len(worker.jobs) < depth and pending:
                    if worker.jobs and len(pending) == 1:  # the round's last job: this process takes it rather than
                        break  # queue it behind a busy worker's, then wait for both (docs/speed.md)
                    if not worker.jobs:
                        worker.working_since = time.monotonic()
                    self._send(worker, *pending.popleft(), broadcast)
            busy = [w for w in self._workers if w.jobs]
            streams = [w.process.stdout for w in busy]
            ready = multiprocessing.connection.wait(streams, timeout=0 if here and pending else self._wait_limit(busy)) if streams else []
            for worker in self._hung(busy, ready):
                self.timed_out += 1
                worker.process.kill()  # it would not stop at the end of its request stream
                limit = f"{self.request_timeout:g} s (run.worker_timeout)"
                yield from self._drop(worker, list(worker.jobs), f"took more than {limit} and was killed")
            if not ready:
                if here and pending:
                    yield self._answer_here(*pending.popleft(), broadcast)
                continue
            for worker in busy:
                if worker.process.stdout not in ready:  # (a hung worker just replaced never is)
                    continue
                client_id = worker.jobs.popleft()
                try:
                    data = _read(worker.process.stdout, self._reply_deadline())
                except StalledReply as stalled:
                    self.timed_out += 1
                    worker.process.kill()
                    limit = f"{self.request_timeout:g} s (run.worker_timeout)"
                    yield from self._drop(
                        worker, [client_id, *worker.jobs], f"stalled mid-reply ({stalled}) for more than {limit} and was killed"
                    )
                    continue
                if data is None:  # the worker died mid-job
                    code = worker.process.wait()
                    yield from self._drop(worker, [client_id, *worker.jobs], f"died (exit code {code})")
                    continue
                worker.working_since = time.monotonic()
                meta, arrays = _unframe(data)
                if "shared" in meta:
                    slots = getattr(worker.process, "slots", None)
                    if slots is None:
                        raise AggregationError(f"the worker for client {client_id} replied through shared memory it does not have")
                    arrays = slots.read(meta["shared"])
                    self.shared_replies += 1
                self._keep_state(client_id, from_bytes(meta["state"].encode()))
                yield _Result(client_id, (meta["detail"], arrays)) if meta["status"] == "ok" else _Result(client_id, error=meta["detail"])

    def _drop(self, worker: _Worker, lost: Sequence[int], what: str) -> list[_Result]:
        """Replace ``worker``, which ``what`` (died, took too long); each request it held (``lost``) counts as that
        client's dropout."""
        worker.jobs.clear()
        log.warning("a worker %s while serving clients %s: they count as dropped", what, list(lost))
        self._replace(worker)
        return [_Result(client_id, error=f"its worker {what}") for client_id in lost]

    def _reply_deadline(self) -> float | None:
        """Until when a reply that has begun to arrive may take to arrive whole: ``request_timeout`` from its first
        bytes (None: no limit). A worker that stops half-way is handled as one that hangs before replying."""
        return time.monotonic() + self.request_timeout if self.request_timeout else None

    def _wait_limit(self, busy: Sequence[_Worker]) -> float | None:
        """How long to wait for a reply: until the first busy worker's request time runs out (None: no limit)."""
        if not self.request_timeout or not busy:
            return None
        return max(0.0, min(w.working_since for w in busy) + self.request_timeout - time.monotonic())

    def _hung(self, busy: Sequence[_Worker], ready: Sequence[Any]) -> list[_Worker]:
        """The busy workers with no reply ready whose current request has run past ``request_timeout``."""
        if not self.request_timeout:
            return []
        now = time.monotonic()
        return [w for w in busy if w.process.stdout not in ready and now - w.working_since > self.request_timeout]

    def _job_state(self, client_id: int) -> dict[str, Any]:
        """What travels with a client's request: its private state and its protocol half of the round."""
        state = {"client": self.client_states.setdefault(client_id, {})}
        half = self._halves.states.get(client_id)
        if half is not None:
            state["half"] = half
        return state

    def _send(self, worker: _Worker, client_id: int, kind: str, packed: Packed, broadcast: _Broadcast | None) -> None:
        text, arrays = packed
        job = {"client": client_id, "kind": kind, "text": text, "state": to_bytes(self._job_state(client_id)).decode()}
        worker.jobs.append(client_id)
        try:
            if broadcast is not None:
                if worker.broadcast != broadcast.round:
                    message = {"kind": _PARAMETERS, "round": broadcast.round, "text": broadcast.packed[0]}
                    _write(worker.process.stdin, _frame(message, broadcast.packed[1]))
                    worker.broadcast = broadcast.round
                    self.parameter_frames += 1
                job["broadcast"] = broadcast.round
            _write(worker.process.stdin, _frame(job, arrays))
        except (BrokenPipeError, OSError):
            pass  # it died: its reply stream ends, handled in _run

    def _answer_here(self, client_id: int, kind: str, packed: Packed, broadcast: _Broadcast | None) -> _Result:
        """Answer one request in this process as a worker would (:func:`_answer`, over a copy of the client's state and
        with the same packed request and reply), so the result is the worker's, bitwise."""

        def parameters() -> Mapping[str, Any]:
            assert broadcast is not None
            if self._local_parameters is None or self._local_parameters[0] != broadcast.round:
                self._local_parameters = (broadcast.round, {str(k): v for k, v in unpack(*broadcast.packed).items()})
            return self._local_parameters[1]

        state = from_bytes(to_bytes(self._job_state(client_id)))  # a copy, as a worker receives it
        self.local_jobs += 1
        reply, error, after = _answer(self.local_run, client_id, kind, packed, state, parameters if broadcast is not None else None)
        # kept as it is, not through the codec as a worker's reply comes: every later job copies it through the codec
        # first (above, or to_bytes for a worker), which gives the same value either way; 0.47 ms less a local job
        self._keep_state(client_id, after)
        return _Result(client_id, reply, error)

    def _keep_state(self, client_id: int, state: Mapping[str, Any]) -> None:
        client = self.client_states.setdefault(client_id, {})
        client.clear()
        client.update(state.get("client", {}))
        if "half" in state:
            self._halves.states[client_id] = state["half"]

    def _begin(self, round: int) -> None:
        if self._halves.round != round:
            self._halves = _Halves(round)
            self._gone.clear()

    # ------------------------------------------------------------------ Transport

    def example_counts(self, clients: Sequence[int]) -> dict[int, int]:
        return {int(c): self._example_counts[c] for c in clients}

    def set_example_counts(self, example_counts: Sequence[int]) -> None:
        self._example_counts = list(example_counts)

    def exchange(self, round: int, stage: Stage) -> StageReplies:
        self._begin(round)
        jobs = [
            (c, STAGE, pack({"round": round, "stage": stage.name, "request": r})) for c, r in stage.requests.items() if c not in self._gone
        ]
        replies: dict[int, Any] = {}
        for result in self._run(jobs):
            if result.error is not None:
                log.warning("round %d: client %d refused the %s stage: %s", round, result.client_id, stage.name, result.error)
                self._gone.add(result.client_id)
            else:
                assert result.packed is not None
                replies[result.client_id] = unpack(*result.packed)
        return StageReplies(replies, frozenset(set(stage.requests) - set(replies)))

    def fit(self, round: int, requests: Mapping[int, FitRequest]) -> Iterator[FitReply]:
        self._begin(round)
        order = list(requests)
        dropping = self.dropouts(round, sorted(requests))
        shared = requests[order[0]].instructions.parameters if order else None
        broadcast = None
        if shared is not None and all(requests[c].instructions.parameters is shared for c in order):
            broadcast = _Broadcast(round, pack(dict(shared)))  # the global model crosses to each worker once, not per client

        def body(fit: FitRequest) -> FitRequest:
            return fit if broadcast is None else _with_parameters(fit, {})

        jobs = [(c, FIT, pack({"round": round, "request": body(requests[c])})) for c in order if c not in self._gone]
        done: dict[int, FitReply] = {c: FitReply(c) for c in order if c in self._gone}
        position = 0
        for result in self._run(jobs, broadcast):
            done[result.client_id] = self._fit_reply(round, result, dropping)
            while position < len(order) and order[position] in done:  # in the order asked: the server sums as in-process
                client_id = order[position]
                yield done.pop(client_id)
                position += 1
                if self.on_client_done is not None:
                    self.on_client_done(round, client_id)
        while position < len(order):
            client_id = order[position]
            yield done.pop(client_id, FitReply(client_id))
            position += 1

    def _fit_reply(self, round: int, result: _Result, dropping: set[int]) -> FitReply:
        client_id = result.client_id
        if result.error is not None:
            log.warning("round %d: client %d sent no update: %s", round, client_id, result.error)
            self._gone.add(client_id)
            return FitReply(client_id)
        assert result.packed is not None
        answer = unpack(*result.packed)
        if "declined" in answer:
            return FitReply(client_id, declined=str(answer["declined"]))
        message = answer["message"]
        if not isinstance(message, ClientMessage):
            raise AggregationError(f"round {round}: the worker for client {client_id} sent a {type(message).__name__}")
        if client_id in dropping:  # trained and encoded, but its message never arrives (simulated, as in-process)
            self._gone.add(client_id)
            return FitReply(client_id)
        return FitReply(client_id, message)

    def evaluate(self, parameters: NamedArrays, *, round: int, batch_size: int) -> dict[int, dict[str, float]]:
        body = pack({"round": round, "parameters": dict(parameters), "batch_size": batch_size})
        results = {}
        for result in self._run([(c, EVALUATE, body) for c in range(len(self._example_counts))]):
            if result.error is not None:
                log.warning("client %d did not evaluate: %s", result.client_id, result.error)
                continue
            assert result.packed is not None
            answer = unpack(*result.packed)
            results[result.client_id] = {
                **{k: float(v) for k, v in answer.items() if k != "num_examples"},
                "num_examples": int(answer["num_examples"]),
            }
        return dict(sorted(results.items()))

    def end_round(self, round: int) -> None:
        self._halves = _Halves()
        self._gone.clear()

    def close(self) -> None:
        self._stop(self._workers)
        self._workers = []

    @staticmethod
    def _stop(workers: Sequence[_Worker]) -> None:
        for worker in workers:
            try:
                worker.process.stdin.close()  # the end of its request stream: it exits
            except OSError:
                pass
        for worker in workers:
            try:
                worker.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.process.stdout.close()

    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [w.process.pid for w in self._workers if w.process.poll() is None]


if __name__ == "__main__":
    main()
