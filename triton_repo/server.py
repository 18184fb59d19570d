"""Embedded Triton server: run the `tritonserver` binary that `nvidia-pytriton` ships.

`grouplat serve` and `EmbeddedServer` run the real Triton Inference Server (2.51, the
one in nvidia-pytriton 0.5.13/0.5.14) on a model repository, without Docker or a GPU.
We run the binary directly, not through pytriton's Python API, and prepare what
pytriton's own launcher would:

* a backend directory holding the Python backend plus the backend stub built for the
  running Python version (the wheel ships one stub per Python version beside, not in,
  the backend directory);
* LD_LIBRARY_PATH with the wheel's bundled libraries and this interpreter's libpython
  (the stub links `libpython3.X.so.1.0`; without this it may pick up the system one);
* PATH led by this interpreter's directory: the stub's embedded Python finds its
  prefix, and so its venv and site-packages (numpy < 2), through the first `python3`
  on PATH.

numpy/stdlib only: neither torch nor tritonclient is imported here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)
INSTALL_HINT = "install grouplat[serve] (nvidia-pytriton 0.5.14, tritonclient[grpc,http] 2.51.0)"
# Triton's admin protocols: registering shared memory lets any caller who can reach the port map
# and write the server's memory (one such request aborted tritonserver); the others change
# what is served or where logs go. Restricted by default to callers who send ADMIN_HEADER.
ADMIN_PROTOCOLS = ("shared-memory", "model-repository", "trace", "logging")
ADMIN_HEADER = "grouplat-admin-key"
EXIT_TIMEOUT_S = 10  # a stopping server waits this long for requests in flight
PR_SET_PDEATHSIG = 1  # prctl(2): a signal for the child when its parent dies


class RepositoryError(ValueError):
    """The model repository is missing or holds no models."""


def repository_models(repository: str | os.PathLike[str]) -> list[str]:
    """Return the model names in a Triton model repository, or raise RepositoryError.

    A model is a subdirectory with a config.pbtxt or a numeric version directory
    (Triton can auto-complete configs for some backends, so config.pbtxt is optional).
    """
    root = Path(repository)
    if not root.is_dir():
        raise RepositoryError(f"model repository {str(root)!r} does not exist or is not a directory")
    models = sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir()
        and not d.name.startswith(".")
        and ((d / "config.pbtxt").is_file() or any(v.is_dir() and v.name.isdigit() for v in d.iterdir()))
    )
    if not models:
        raise RepositoryError(f"model repository {str(root)!r} holds no models (no <model>/config.pbtxt)")
    return models


def _pytriton_root() -> Path:
    """Directory of the installed `pytriton` package, found without importing it (slow, heavy)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the embedded Triton server needs nvidia-pytriton: {INSTALL_HINT}")
    root = Path(next(iter(spec.submodule_search_locations)))
    if not (root / "tritonserver" / "bin" / "tritonserver").is_file():
        raise RuntimeError(f"{root} has no tritonserver binary; reinstall nvidia-pytriton: {INSTALL_HINT}")
    return root


def _free_ports(host: str, count: int) -> list[int]:
    # Keep all sockets open until every port is picked so the ports differ.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS on gRPC (Triton's HTTP endpoint has no TLS: it stays on loopback)."""

    cert: str  # the server's certificate
    key: str  # its private key
    ca: str | None = None  # with a CA: clients must present a certificate it signed (mutual TLS)

    def arguments(self) -> list[str]:
        for path in (self.cert, self.key, self.ca):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"TLS file {path!r} does not exist")
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.ca is not None:
            args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.ca}"]
        return args


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the parent dies (Linux), so that it shuts down
    its stubs and shared memory itself instead of living on as an orphan."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedServer:
    """The Triton binary from nvidia-pytriton, run as a subprocess on a model repository.

    Use as a context manager, or call start()/stop(). Ports left as None (or 0) are
    chosen free. The server's output goes to `log_path`: unless given, a file in a
    temporary directory that stop() removes (a failed start() keeps it; its error names it).
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        host: str = "127.0.0.1",
        grpc_port: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
        log_verbose: int = 0,
        startup_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        admin_key: str | None = None,
        open_admin: bool = False,
        tls: TlsFiles | None = None,
        http_host: str | None = None,
        die_with_parent: bool | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.models = repository_models(self.repository)
        self.host = host
        self.http_host = host if http_host is None else http_host  # with TLS: loopback (no TLS there)
        free = iter(_free_ports(host, 3))
        self.grpc_port = grpc_port or next(free)
        self.http_port = http_port or next(free)
        self.metrics_port = metrics_port or next(free)
        self.log_verbose = log_verbose
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self._workdir = Path(tempfile.mkdtemp(prefix="grouplat-triton-"))
        self._log_path = Path(log_path).resolve() if log_path else self._workdir / "tritonserver.log"
        # Python-backend shared memory regions get this prefix so stop() can find leftovers.
        self._shm_prefix = f"grouplat_{secrets.token_hex(4)}_"
        self._proc: subprocess.Popen[bytes] | None = None
        # Admin protocols answer only requests with this key (a random one: nobody's).
        self.admin_key = None if open_admin else (admin_key or secrets.token_hex(16))
        self.tls = tls
        # The server (and so its stubs) stops when this process dies, even by SIGKILL. prctl's
        # signal follows the *thread* that starts it: None asks for it only when start() runs on
        # the main thread (a pool thread's exit would otherwise stop the server).
        self.die_with_parent = die_with_parent

    # -- addresses -----------------------------------------------------------------
    @staticmethod
    def _connect(bound: str) -> str:
        # A wildcard bind is reached through loopback; IPv6 literals need brackets.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bound, bound)
        return f"[{host}]" if ":" in host else host

    @property
    def _connect_host(self) -> str:
        return self._connect(self.host)

    @property
    def grpc_url(self) -> str:
        return f"{self._connect_host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self._connect(self.http_host)}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"{self._connect_host}:{self.metrics_port}"

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- launch ----------------------------------------------------------------------
    def _prepare(self) -> tuple[list[str], dict[str, str]]:
        """Backend directory, command line and environment for the bundled binary."""
        root = _pytriton_root()
        dist = root / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise RuntimeError(f"nvidia-pytriton at {root} has no Python backend stub for Python {version}")

        # Triton looks for the stub next to libtriton_python.so, so build a backend
        # directory of symlinks: the wheel's python backend plus the stub for our Python.
        # Symlinks keep the binaries' $ORIGIN RPATHs pointing into the wheel.
        backend = self._workdir / "backends" / "python"
        backend.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            (backend / name).symlink_to(dist / "backends" / "python" / name)
        (backend / stub.name).symlink_to(stub)

        # The stub links libpython3.X.so.1.0: offer this interpreter's first, or the loader
        # takes the system one (here Debian's 3.11.2 under a pyenv 3.11.7 venv). Only that
        # file, not its whole LIBDIR (in conda that holds a libstdc++ tritonserver would load).
        lib = self._workdir / "lib"
        lib.mkdir(exist_ok=True)
        soname = sysconfig.get_config_var("INSTSONAME")
        libdir = sysconfig.get_config_var("LIBDIR")
        if soname and libdir and (Path(libdir) / soname).is_file():
            (lib / soname).symlink_to(Path(libdir) / soname)

        env = dict(os.environ)
        # The wheel's bundled libraries too, as pytriton does, in case an RPATH misses.
        libs = [str(lib), str(root.parent / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        # The stub's embedded Python takes its prefix (venv, site-packages) from the
        # first python3 on PATH, so that must be this interpreter.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])

        cmd = [
            str(dist / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._workdir / 'backends'}",
            f"--cache-directory={dist / 'caches'}",
            "--model-control-mode=none",
            f"--http-address={self.http_host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--log-verbose={self.log_verbose}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]
        if self.admin_key is not None:
            restricted = f"{','.join(ADMIN_PROTOCOLS)}:{ADMIN_HEADER}={self.admin_key}"
            cmd += [f"--grpc-restricted-protocol={restricted}", f"--http-restricted-api={restricted}"]
        if self.tls is not None:
            cmd += self.tls.arguments()
        return [*cmd, *self.extra_args], env

    def start(self) -> EmbeddedServer:
        """Launch the server and wait until /v2/health/ready answers 200.

        A server killed by a signal before it was ready is started again, up to twice: tritonserver's
        gRPC poller has aborted at startup on a loaded machine (SIGABRT after "epoll_wait error: Bad
        file descriptor" in its log), a crash of the moment that has come twice in a row (CI
        2026-12-04); a bad configuration exits with a code and is reported at once. Each earlier
        log is kept beside the new one (`*.first.log`, `*.second.log`).
        """
        if self._proc is not None:
            raise RuntimeError("server already started")
        cmd, env = self._prepare()
        for failed in ("first", "second", None):
            reason, code = self._launch(cmd, env)
            if reason is None:
                return self
            if failed is None or code is None or code >= 0:
                break
            kept = self._log_path.with_suffix(f".{failed}.log")
            self._log_path.replace(kept)
            log.warning("tritonserver died of signal %d before ready (log %s): starting again", -code, kept)
        raise RuntimeError(f"{reason}; server log {self._log_path}:\n{_tail(self._log_path)}")

    def _launch(self, cmd: list[str], env: dict[str, str]) -> tuple[str | None, int | None]:
        """Start the process and wait until it is ready: (None, None), or why not and the exit code
        it died with (None: it was still running and has been stopped)."""
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "wb") as output:
            # Own session: Ctrl-C in a terminal does not hit it directly, and stop() can
            # signal the whole group (server and its backend stubs).
            self._proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self._dies_with_parent() else None,
            )
        # Ignore proxies from the environment: this is a local health check.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        ready_url = f"http://{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._terminate(timeout=10.0)  # its stubs and shared memory
                return f"tritonserver exited with code {code} before it was ready", code
            try:
                with opener.open(ready_url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return None, None
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or listening but not ready (HTTP 400)
            if time.monotonic() > deadline:
                self._terminate(timeout=10.0)
                return f"tritonserver not ready after {self.startup_timeout:g} s", None
            time.sleep(0.1)

    def _dies_with_parent(self) -> bool:
        if self.die_with_parent is not None:
            return self.die_with_parent
        return threading.current_thread() is threading.main_thread()

    def _terminate(self, timeout: float) -> int | None:
        """SIGTERM the server, SIGKILL after `timeout`, then clear its process group and shm."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            # Only the server gets SIGTERM: it unloads models and stops its stubs itself.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # A stub whose server died or was stopped mid-load outlives it; it is still in
        # the server's process group (pgid == server pid).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for region in Path("/dev/shm").glob(self._shm_prefix + "*"):
            with contextlib.suppress(OSError):
                region.unlink()
        return proc.returncode

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server (graceful, then forced after `timeout` s); return its exit code.

        The temporary directory (with the default log) is removed.
        """
        code = self._terminate(timeout)
        shutil.rmtree(self._workdir, ignore_errors=True)
        return code

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the server process to exit; return its exit code (None if not started)."""
        return self._proc.wait(timeout) if self._proc is not None else None

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- command line -------------------------------------------------------------------------
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", required=True, help="Triton model repository directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port (default 8001)")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port (default 8000)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port (default 8002)")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton --log-verbose level")
    parser.add_argument("--log-file", default=None, help="keep the server log here (default: temporary)")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for ready")
    parser.add_argument(
        "--admin-key",
        help=f"Triton's admin protocols ({', '.join(ADMIN_PROTOCOLS)}) answer only requests with the "
        f"header {ADMIN_HEADER}: KEY (default: a random key, so nobody)",
    )
    parser.add_argument(
        "--open-admin", action="store_true", help="do not restrict the admin protocols (trusted networks)"
    )
    parser.add_argument("--tls-cert", help="PEM certificate: serve gRPC over TLS (with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-ca", help="PEM CA: require client certificates it signed (mutual TLS)")
    tracing = parser.add_argument_group("tracing (Triton's request traces; see the notes below)")
    tracing.add_argument(
        "--trace-config",
        action="append",
        default=[],
        metavar="[MODE,]KEY=VALUE",
        help="passed to tritonserver as --trace-config (repeatable): e.g. triton,file=PATH, rate=1, "
        "level=TIMESTAMPS or level=TENSORS, count=N, mode=triton|opentelemetry, "
        "opentelemetry,url=HOST:PORT/v1/traces, triton,log-frequency=N",
    )
    tracing.add_argument(
        "--trace-file",
        metavar="PATH",
        help="trace every request (level TIMESTAMPS, rate 1, unless --trace-config sets them) into PATH "
        "(JSON, written when the server stops)",
    )


TRACE_EPILOG = """\
tracing: --trace-file PATH is short for --trace-config triton,file=PATH --trace-config
level=TIMESTAMPS --trace-config rate=1; every --trace-config goes to tritonserver unchanged (its
--help lists them all). Triton writes the file when the server stops (with triton,log-frequency=N:
every N traces, into PATH.0, PATH.1, …). Each trace names its model and the caller's request id
(grouplat.client sends one with every request), then its timestamps (REQUEST_START, QUEUE_START,
COMPUTE_START, …, GRPC_SEND_END) in ns; level=TENSORS adds the tensors. Tracing costs time."""


def trace_arguments(trace_config: Sequence[str], trace_file: str | None) -> list[str]:
    """tritonserver arguments for `--trace-config` settings and the `--trace-file` shorthand.

    Raises:
        ValueError: a setting without `=`.
    """
    for setting in trace_config:
        if "=" not in setting:
            raise ValueError(f"--trace-config takes [MODE,]KEY=VALUE (e.g. rate=1), got {setting!r}")
    settings = list(trace_config)
    if trace_file is not None:
        keys = {s.split("=", 1)[0].strip() for s in settings}
        path = Path(trace_file).resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"--trace-file {trace_file}: {error.strerror or error}") from None
        settings.insert(0, f"triton,file={path}")
        defaults = (("level", "TIMESTAMPS"), ("rate", "1"))
        settings += [f"{key}={value}" for key, value in defaults if key not in keys]
    return [f"--trace-config={setting}" for setting in settings]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `grouplat serve` to the top-level CLI (grouplat.cli)."""
    parser = subparsers.add_parser(
        "serve",
        help="run the embedded Triton server on a model repository",
        epilog=TRACE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; 0 on a clean stop, 2 on a bad repository."""
    try:
        if bool(args.tls_cert) != bool(args.tls_key) or (args.tls_ca and not args.tls_cert):
            raise ValueError("--tls-cert and --tls-key go together (and --tls-ca needs them)")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
        if tls is not None:
            tls.arguments()  # the files exist
        tracing = trace_arguments(args.trace_config, args.trace_file)
        server = EmbeddedServer(
            args.repository,
            host=args.host,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            log_verbose=args.log_verbose,
            startup_timeout=args.startup_timeout,
            log_path=args.log_file,
            admin_key=args.admin_key,
            open_admin=args.open_admin,
            tls=tls,
            http_host="127.0.0.1" if tls is not None else None,
            die_with_parent=True,
            extra_args=tracing,
        )
    except (RepositoryError, ValueError) as e:
        print(f"grouplat serve: error: {e}", file=sys.stderr)
        return 2

    # Ctrl-C or SIGTERM only sets a flag; the main loop then stops the server, which runs
    # in its own session and so never sees the terminal's Ctrl-C itself.
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop_requested.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except RuntimeError as e:
            server.stop()
            print(f"grouplat serve: error: {e}", file=sys.stderr)
            return 1
        where = f"grpc {server.grpc_url}, http {server.http_url}"
        print(f"grouplat: serving {args.repository} on {where}", flush=True)
        while not stop_requested.wait(0.5):
            if not server.is_running():
                code, tail = server.wait(), _tail(server.log_path)
                print(
                    f"grouplat serve: error: tritonserver exited with code {code}:\n{tail}", file=sys.stderr
                )
                server.stop()
                return 1
        server.stop()
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m grouplat.serving.server --repository DIR ...`, same as `grouplat serve`."""
    parser = argparse.ArgumentParser(
        prog="grouplat serve",
        description="Run the embedded Triton server.",
        epilog=TRACE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
