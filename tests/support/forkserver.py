"""A fork server for the command-line tests (not a test module).

Most command-line tests need real processes: an exit status, stdout and stderr of their own, two runs
at once on one folder, a run killed with SIGKILL. Starting ``python -m fouriscale`` afresh costs ~5 s of
CPU in imports (torch, diffusers, transformers) before the command does anything, which made these
processes most of the suite's time. So, as Android's zygote does, one server process imports the
command line once and forks a child per command: each child is a new process (its own pid, exit status,
file descriptors and signals) that starts from a clean interpreter which has imported but never run
anything, runs ``python -m fouriscale ARGS`` with the caller's environment and working folder, and exits.

``Started`` is a small ``subprocess.Popen`` look-alike for such a child. The server is started on first
use and stopped (and waited for, so the children's CPU time is counted by ``time``) when the tests end.
One smoke test still runs the command in a fresh interpreter (``fresh=True`` in ``support.frontend``).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

_MAX_REQUEST = 1 << 20


# ---------------------------------------------------------------- server side


def _child(request: dict, fds: list[int]) -> None:
    """In the forked child: become ``python -m fouriscale ARGS`` and exit with its status."""
    import runpy

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = [sys.executable, *request["args"]]
    code = 1
    try:
        runpy.run_module("fouriscale", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:  # what the interpreter would print for an uncaught exception
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    os._exit(code)


def serve(path: str) -> None:
    """Import the command line, then fork a child per request on the Unix socket at ``path``."""
    # What every command of the tests imports (the command line; the tiny models' classes), paid once.
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    import fouriscale.frontend.cli.dispatch  # noqa: F401
    import fouriscale.testing  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([listener], [], [], 0.02)
        if readable:
            conn, _ = listener.accept()
            data, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 3)
            request = json.loads(data)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                for sock in (listener, conn, *children.values()):
                    sock.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            conn.sendall(f"{pid}\n".encode())
            children[pid] = conn
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                except OSError:
                    pass
                conn.close()


# ---------------------------------------------------------------- client side

_server: dict = {}
_lock = threading.Lock()


def socket_path() -> str:
    """The socket of the running fork server: ``FORKSERVER_SOCKET`` if set (a relay), else this process's own,
    started now if need be."""
    if os.environ.get("FORKSERVER_SOCKET"):
        return os.environ["FORKSERVER_SOCKET"]
    with _lock:
        proc = _server.get("proc")
        if proc is not None and proc.poll() is None:
            return _server["path"]
        folder = tempfile.mkdtemp(prefix="fouriscale-forkserver-")
        path = os.path.join(folder, "socket")
        from support.frontend import env

        proc = subprocess.Popen(
            [sys.executable, "-u", __file__, path], env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            proc.kill()
            raise RuntimeError(f"the fork server did not start (said {line!r}, status {proc.wait()})")
        _server.update(proc=proc, path=path)
        atexit.register(_stop, proc)
        return path


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait()  # so that its children's CPU time is counted with the tests'
    proc.stdout.close()


class Started:
    """A forked ``python -m fouriscale ARGS``, with the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, args, env: dict, stdout=None, stderr=None):
        """``stdout``/``stderr``: ``None`` (this process's), ``subprocess.PIPE`` (read as text) or an open file."""
        self.args = [str(a) for a in args]
        self.returncode: int | None = None
        self.stdout = self.stderr = None
        devnull = os.open(os.devnull, os.O_RDONLY)
        send, close_here = [devnull], [devnull]  # stdin, stdout, stderr of the child; ours to close once sent
        for name, target in (("stdout", stdout), ("stderr", stderr)):
            if target == subprocess.PIPE:
                read, write = os.pipe()
                setattr(self, name, open(read, encoding="utf-8"))
                send.append(write)
                close_here.append(write)
            elif target is None:
                send.append(sys.__stdout__.fileno() if name == "stdout" else sys.__stderr__.fileno())
            else:
                send.append(target.fileno())
        request = json.dumps({"args": self.args, "env": env, "cwd": os.getcwd()}).encode()
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(socket_path())
        socket.send_fds(self._conn, [request], send)
        for fd in close_here:
            os.close(fd)
        self._said = b""
        self.pid = int(self._line(None))

    def _line(self, timeout: float | None) -> bytes | None:
        """The server's next line (pid, then exit status); ``None`` if none came within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._said:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return None
            chunk = self._conn.recv(4096)
            if not chunk:  # the server is gone (and its child with it)
                self._said += f"{-signal.SIGKILL}\n".encode()
            self._said += chunk
        line, self._said = self._said.split(b"\n", 1)
        return line

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            line = self._line(timeout)
            if line is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = int(line)
            self._conn.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple:
        """Read stdout and stderr to their end (both at once, so neither pipe fills up), then wait."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        streams = (self.stdout, self.stderr)
        texts: list[str | None] = [None, None]

        def drain(i: int) -> None:
            texts[i] = streams[i].read()

        readers = [threading.Thread(target=drain, args=(i,), daemon=True) for i, s in enumerate(streams) if s]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(left())
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(left())
        for stream in streams:
            if stream is not None:
                stream.close()
        return tuple(texts)


def run(args, env: dict, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Like ``subprocess.run([python, -m, fouriscale, *args], capture_output=True, text=True)``, forked."""
    proc = Started(args, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def relay(args) -> None:
    """Stand in for ``python -m fouriscale ARGS`` (for a launcher such as ``accelerate launch --no_python``): the
    command is forked from the fork server with this process's stdout and stderr, its signals passed on, and this
    process exits with its status."""
    proc = Started(args, dict(os.environ))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, frame: proc.send_signal(number))
    code = proc.wait()
    sys.exit(code if code >= 0 else 128 - code)


def relay_script(folder) -> str:
    """An executable at ``folder/fouriscale`` that runs :func:`relay` with its arguments; returns its path."""
    path = os.path.join(folder, "fouriscale")
    with open(path, "w") as fh:
        fh.write(f'#!/bin/sh\nexec "{sys.executable}" "{os.path.abspath(__file__)}" --relay "$@"\n')
    os.chmod(path, 0o755)
    return path


if __name__ == "__main__":
    if sys.argv[1] == "--relay":
        relay(sys.argv[2:])
    else:
        serve(sys.argv[1])
