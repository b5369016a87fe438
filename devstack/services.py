"""Local services for development, tests and benchmarks: Azurite, the broker dev host, workers.

Each runs as a child process whose output goes to a log file; `start()` waits for the line that
says it is ready (and learns a port picked by the OS from it), `stop()` ends that PID and nothing
else. A child runs in a session of its own (a Ctrl-C meant for the tests does not reach it), so a
parent killed without a chance to stop it would leave it running: on Linux (with util-linux's
`setpriv`) a child started from the main thread is leashed to it, and gets a signal from the
kernel when its parent dies, however it dies (a cancelled CI job, a SIGKILL): SIGTERM, or SIGKILL
for a worker, whose SIGTERM means finishing its batch and reporting it to a dev host that is
ending too (it would retry for ever).
Nothing here is deployed.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AZURITE_JS = ROOT / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class ServiceError(RuntimeError):
    pass


@functools.cache
def _setpriv() -> str | None:
    """util-linux's setpriv, if it takes --pdeathsig (2.33 on; an older one, or BusyBox's, does not)."""
    found = shutil.which("setpriv") if sys.platform.startswith("linux") else None
    try:
        works = found is not None and subprocess.run([found, "--pdeathsig", "TERM", "--", "true"], timeout=30,
                                                     capture_output=True).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        works = False
    return found if works else None


def leash(sig: int = signal.SIGTERM) -> list[str]:
    """A command prefix that has the kernel send the child `sig` when this parent dies: util-linux's
    `setpriv --pdeathsig`, which sets it and execs the command (same pid). Empty where it cannot (not
    Linux, no setpriv) or where it would be wrong: the kernel's signal follows the *thread* that
    started the child, so a child started from another thread (a test's helper thread) would die
    with that thread. A prefix, not a `preexec_fn`: Python code between fork and exec can deadlock
    in a process with threads. (A parent that dies before setpriv has run leaves the child unleashed.)"""
    if threading.current_thread() is not threading.main_thread() or (setpriv := _setpriv()) is None:
        return []
    return [setpriv, "--pdeathsig", signal.Signals(sig).name.removeprefix("SIG"), "--"]


class Service:
    """A child process, its log file, and the wait for its ready line."""

    name = "service"
    ready = re.compile(r"$^")
    orphaned = signal.SIGTERM  # what the child gets when the process that started it dies (leash)

    def __init__(self, log_dir: str | Path | None = None) -> None:
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.matches: list[re.Match] = []

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self):
        """`with Azurite(...) as azurite:` starts it, and stops it at the end."""
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def environment(self) -> dict:
        return dict(os.environ)

    def start(self, timeout: float = 60, count: int = 1) -> Service:
        """Start and wait until the ready pattern has appeared `count` times in the log."""
        log = open(self.log_path, "ab")
        offset = log.tell()
        self.proc = subprocess.Popen(leash(self.orphaned) + self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=self.environment(), stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            self.matches = list(self.ready.finditer(text))
            if len(self.matches) >= count:
                return self
            if self.proc.poll() is not None:
                raise ServiceError(f"{self.name} exited with code {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"{self.name} was not ready within {timeout:.0f} s; log: {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(sig=signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Azurite(Service):
    """Azurite on 127.0.0.1: in memory, or on disk in `location` (kept across restarts).

    With `oauth=True` it serves HTTPS with a certificate of its own (`certificate`, for clients to
    trust) and accepts bearer tokens as well as keys: what an identity-based connection needs."""

    name = "azurite"
    ready = re.compile(r"Azurite (Blob|Queue) service is successfully listening at https?://[\d.]+:(\d+)")

    def __init__(self, location: str | Path | None = None, blob_port: int = 0, queue_port: int = 0,
                 log_dir: str | Path | None = None, node_args: list[str] | None = None, oauth: bool = False) -> None:
        super().__init__(log_dir)
        self.location = Path(location) if location else None
        self.blob_port, self.queue_port = blob_port, queue_port
        self.node_args = list(node_args or [])  # e.g. --cpu-prof, for a benchmark
        self.oauth = oauth
        self.certificate: Path | None = None

    def command(self) -> list[str]:
        if not AZURITE_JS.exists():
            raise ServiceError(f"Azurite is not installed ({AZURITE_JS} is missing): run `npm ci` first")
        storage = ["--location", str(self.location)] if self.location else ["--inMemoryPersistence"]
        secure = []
        if self.oauth:
            from .identity import self_signed

            self.certificate, key = self_signed(self.log_dir / "tls")
            secure = ["--oauth", "basic", "--cert", str(self.certificate), "--key", str(key)]
        return ["node", *self.node_args, str(AZURITE_JS), "--skipApiVersionCheck", "--disableTelemetry", "--loose",
                "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
                "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
                "--tableHost", "127.0.0.1", "--tablePort", "0", *secure, *storage]

    @property
    def scheme(self) -> str:
        return "https" if self.oauth else "http"

    @property
    def blob_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.blob_port}/{ACCOUNT}"

    @property
    def queue_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.queue_port}/{ACCOUNT}"

    def start(self, timeout: float = 60, count: int = 2) -> Azurite:
        super().start(timeout, count)
        for match in self.matches:
            if match.group(1) == "Blob":
                self.blob_port = int(match.group(2))
            else:
                self.queue_port = int(match.group(2))
        self.allow_browsers()
        return self

    def allow_browsers(self) -> None:
        """CORS rules on the Blob service, so that a page (the demo) can PUT a large file to an upload URL
        and GET a result from a download URL, as a deployment sets them in Azure (README). Any origin:
        this is a local emulator, and the URLs carry their own authorisation."""
        from azure.storage.blob import BlobServiceClient, CorsRule

        rule = CorsRule(["*"], ["GET", "HEAD", "PUT", "OPTIONS"], allowed_headers=["*"], exposed_headers=["*"],
                        max_age_in_seconds=3600)
        verify = str(self.certificate) if self.certificate else True
        with BlobServiceClient.from_connection_string(self.connection_string, connection_verify=verify) as service:
            service.set_service_properties(cors=[rule])

    def restart(self, down_seconds: float = 0) -> None:
        """Stop, stay down a while, and start again on the same ports (and data, if on disk)."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol={self.scheme};AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.blob_url};QueueEndpoint={self.queue_url};")


class DevHost(Service):
    """The broker dev host (`python -m devstack.devhost`) with the given settings.

    Unless the settings give one, it gets a BROKER_LEASE_SECRET of its own, new for each DevHost
    (hosts that must accept each other's lease tokens, like the instances of one app, are given the
    same one)."""

    name = "devhost"
    ready = re.compile(r"listening on (http://[\d.]+:(\d+)/api)")

    def __init__(self, connection_string: str | None, settings: dict | None = None, port: int = 0,
                 log_dir: str | Path | None = None, extra_args: list[str] | None = None,
                 settings_file: str = os.devnull) -> None:
        super().__init__(log_dir)
        self.connection_string = connection_string
        self.settings_file = settings_file
        self.settings = dict(settings or {})
        self.port = port
        self.extra_args = extra_args or []
        self.url = ""
        self.settings.setdefault("BROKER_LEASE_SECRET", secrets.token_urlsafe(32))

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "AzureWebJobsStorage"))}
        env["PYTHONUNBUFFERED"] = "1"
        if self.connection_string:  # else the settings name an identity-based connection (AzureWebJobsStorage__*)
            env["BROKER_STORAGE_CONNECTION"] = self.connection_string
            env["AzureWebJobsStorage"] = self.connection_string  # where the queue triggers listen
        env.update({k: str(v) for k, v in self.settings.items()})
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "devstack.devhost", "--host", "127.0.0.1", "--port", str(self.port),
                "--settings", self.settings_file, *self.extra_args]

    def start(self, timeout: float = 60, count: int = 1) -> DevHost:
        super().start(timeout, count)
        self.url = self.matches[-1].group(1)
        self.port = int(self.matches[-1].group(2))
        return self


class Worker(Service):
    """`python -m mlserver ARGS` (or another `program`) with BROKER_URL and BROKER_WORKER_KEY set; ready once it
    logs "worker ready"."""

    name = "worker"
    orphaned = signal.SIGKILL  # its broker dies with the same parent: nothing to finish, nobody to report to
    ready = re.compile(r"worker ready")

    def __init__(self, broker_url: str, worker_key: str | None, args: list[str],
                 env: dict | None = None, log_dir: str | Path | None = None, program: list[str] | None = None) -> None:
        super().__init__(log_dir)
        self.broker_url, self.worker_key = broker_url, worker_key
        self.args = list(args)
        self.env = dict(env or {})
        self.program = list(program or [sys.executable, "-m", "mlserver"])  # or the installed `mlbroker-worker`

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update({"BROKER_URL": self.broker_url, "PYTHONUNBUFFERED": "1"})
        if self.worker_key:
            env["BROKER_WORKER_KEY"] = self.worker_key
        env.update({k: str(v) for k, v in self.env.items()})
        return env

    def command(self) -> list[str]:
        return [*self.program, *self.args]

    def start(self, timeout: float = 180, count: int = 1) -> Worker:
        return super().start(timeout, count)  # TensorFlow and a model build take a while on a busy CPU
