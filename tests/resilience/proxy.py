"""A TCP proxy the test controls, between the service and a real server (broker or database).

``cut()`` resets every open connection and refuses new ones (a server restart or a network
reset, seen from the client); ``blackhole()`` keeps connections open but forwards nothing and
accepts new ones without answering (a dropped route: only timeouts notice it); ``restore()``
lets traffic through again. Everything runs on threads of the test process, on loopback only.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from types import TracebackType
from typing import Self


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._mode = "pass"
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._held: list[socket.socket] = []
        self._closed = False
        self.accepted = 0  # connections taken, in any mode
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                mode = self._mode
            if mode == "cut":
                _reset(client)
                continue
            if mode == "blackhole":
                with self._lock:
                    self._held.append(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        peers = {client: upstream, upstream: client}
        try:
            while not self._closed:
                readable, _, _ = select.select(list(peers), [], [], 0.2)
                with self._lock:
                    mode = self._mode
                if mode == "blackhole":
                    # Hold the bytes in the kernel buffers: nothing gets through. Waiting here,
                    # not in select(), which would return at once for the unread bytes and spin.
                    self._flowing.wait(0.2)
                    continue
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # ValueError: cut() closed a socket select() was given
            return
        finally:
            _reset(client)
            _reset(upstream)
            with self._lock:
                if (client, upstream) in self._pairs:
                    self._pairs.remove((client, upstream))

    def cut(self) -> None:
        """Reset every connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self._mode = "cut"
            self._flowing.clear()
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)

    def blackhole(self) -> None:
        """Forward nothing, in either direction, on old and new connections."""
        with self._lock:
            self._mode = "blackhole"
            self._flowing.clear()

    def restore(self) -> None:
        with self._lock:
            self._mode = "pass"
            self._flowing.set()
            held, self._held = self._held, []
        for sock in held:
            _reset(sock)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
        self.restore()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST, as a crashed peer or a reset route does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
