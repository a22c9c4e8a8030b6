"""Start and stop real TorchServe processes.

`TorchServeProcess` runs one instance in the foreground under our control (tests, benchmarks): its own
working directory (key file, logs), its own TMPDIR (pid file) and, with `isolate_ports`, free ports for
every listener, so several instances can share a machine. `start_background`/`stop_background` drive the
`torchserve --start/--stop` daemon mode that `make serve`/`make stop` use.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tskit.client import TorchServeClient
from tskit.properties import resolved_properties, write_properties
from tskit.serving_config import loaded_archives

PORT_KEYS = {
    "inference_address": "http://127.0.0.1:{}",
    "management_address": "http://127.0.0.1:{}",
    "metrics_address": "http://127.0.0.1:{}",
    "grpc_inference_port": "{}",
    "grpc_management_port": "{}",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchserve_launcher() -> str:
    """The `torchserve` script installed beside this Python."""
    exe = Path(sys.executable).with_name("torchserve")
    return str(exe) if exe.exists() else "torchserve"


class TorchServeProcess:
    def __init__(self, workdir: str | Path, config_file: str | Path, model_store: str | Path,
                 python: str = sys.executable, isolate_ports: bool = True, overrides: dict | None = None,
                 env: dict | None = None):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.extra_env = env or {}
        self.model_store = Path(model_store).resolve()
        props = resolved_properties(config_file)
        props["model_store"] = str(self.model_store)
        if isolate_ports:
            props.update({key: fmt.format(free_port()) for key, fmt in PORT_KEYS.items()})
        props.update(overrides or {})
        self.props = props
        self.config_file = self.workdir / "config.properties"
        write_properties(self.config_file, props)
        self.client = TorchServeClient.from_config(self.config_file, self.workdir)
        self.proc: subprocess.Popen | None = None

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def start(self, wait: bool = True, timeout: float = 300) -> "TorchServeProcess":
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(tmp), "LOG_LOCATION": str(self.log_dir),
               "METRICS_LOCATION": str(self.log_dir), **self.extra_env}
        cmd = [self.python, torchserve_launcher(), "--start", "--foreground", "--ncs",
               "--ts-config", str(self.config_file), "--model-store", str(self.model_store)]
        self.stdout = open(self.workdir / "torchserve.out", "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self.stdout,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            try:
                for model in loaded_archives(self.props):  # the workers TorchServe registered, not a config's
                    self.client.wait_served(model, timeout=timeout, proc=self.proc)
            except Exception:
                self.stop()
                raise
        return self

    def stop(self, timeout: float = 30) -> None:
        """Stop the launcher, the Java frontend and every worker (one process group)."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._kill_stragglers()
        self.stdout.close()
        self.proc = None

    def _kill_stragglers(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def log(self, name: str = "model_log.log") -> str:
        path = self.log_dir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_log(self, *fragments: str, timeout: float = 120, name: str = "model_log.log") -> str:
        """The log once it holds every fragment, or as it is at the timeout.

        The frontend writes worker output to the log asynchronously, so a line about a request can land
        after its response has been sent."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log(name)
            if all(f in log for f in fragments) or time.monotonic() > deadline:
                return log
            time.sleep(0.2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def start_background(config_file: str | Path, workdir: str | Path = ".") -> int:
    """`torchserve --start` as a daemon (the launcher returns at once); its key file lands in `workdir`. It
    starts on a copy of the config in `workdir/.tskit/` whose relative paths (model store, metrics config) are
    resolved against the config's folder, so it works from any directory.

    Output goes to `workdir/logs/torchserve.out`, never to a pipe: the Java daemon inherits the launcher's
    descriptors and would hold a pipe open for as long as it runs.
    """
    log_dir = Path(workdir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    resolved = Path(workdir) / ".tskit" / "config.properties"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    write_properties(resolved, resolved_properties(config_file),
                     header=f"# {Path(config_file).resolve()}, its paths resolved by tskit serve\n")
    cmd = [sys.executable, torchserve_launcher(), "--start", "--ncs", "--ts-config", str(resolved.resolve())]
    with open(log_dir / "torchserve.out", "ab") as out:
        return subprocess.run(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode


def stop_background(workdir: str | Path = ".") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, torchserve_launcher(), "--stop"], cwd=workdir,
                          capture_output=True, text=True)
