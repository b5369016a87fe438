"""`python -m devstack` (what `scripts/run` runs): the whole thing, locally, until Ctrl-C.

Azurite (data kept in .azurite/), the broker dev host on :7071 and one worker. MODEL picks the
worker's model (resnet50 by default; deeplabv3plus, echo), WEIGHTS its weights (the handler's
default, e.g. imagenet; `none` for random weights; or a local path), PORT the dev host's port.
DATA_DIR moves .azurite/ and the logs in .devstack/ elsewhere (default: the project). A worker key
is generated for the session unless BROKER_WORKER_KEYS is set (environment or local.settings.json), and
so are the BROKER_LEASE_SECRET that signs lease tokens and the BROKER_WEBHOOK_SECRET that signs
webhooks; webhooks may go to localhost and 127.0.0.1 unless BROKER_WEBHOOK_ALLOW says otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

from .services import ROOT, Azurite, DevHost, ServiceError, Worker

DATA = Path(os.environ.get("DATA_DIR") or ROOT)
STATE = DATA / ".devstack"
EXIT_WEIGHTS = 3


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def local_setting(name: str) -> str:
    if os.environ.get(name, "").strip():
        return os.environ[name].strip()
    path = ROOT / "local.settings.json"
    if path.is_file():
        return str(json.loads(path.read_text()).get("Values", {}).get(name) or "").strip()
    return ""


def start_azurite() -> Azurite:
    try:
        return Azurite(location=DATA / ".azurite", blob_port=10000, queue_port=10001, log_dir=STATE).start()
    except ServiceError as exc:
        if "EADDRINUSE" not in str(exc):  # another failure would only repeat on other ports: show it
            raise
        say("ports 10000/10001 are taken (another Azurite?); starting Azurite on free ports instead")
        return Azurite(location=DATA / ".azurite", log_dir=STATE).start()


class Relay:
    """Copies new lines of a service's log to the terminal, prefixed with its name."""

    def __init__(self, service, prefix: str) -> None:
        self.service, self.prefix = service, prefix
        self.offset = service.log_path.stat().st_size if service.log_path.exists() else 0  # not earlier runs

    def pump(self) -> None:
        try:
            data = self.service.log_path.read_bytes()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        for line in data[self.offset:end].decode(errors="replace").splitlines():
            print(f"{self.prefix} | {line}", flush=True)
        self.offset = max(self.offset, end)


def main() -> int:
    model = os.environ.get("MODEL", "resnet50").strip() or "resnet50"
    weights = os.environ.get("WEIGHTS", "").strip()
    port = int(os.environ.get("PORT", "7071"))
    STATE.mkdir(parents=True, exist_ok=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    worker_keys = local_setting("BROKER_WORKER_KEYS")
    settings = {}
    if not worker_keys:
        worker_keys = secrets.token_urlsafe(24)
        settings["BROKER_WORKER_KEYS"] = worker_keys
        say(f"generated a worker key for this session: {worker_keys}")
    worker_key = worker_keys.split(",")[0].strip()
    if local_setting("BROKER_LEASE_SECRET"):  # else the dev host gets one of its own for this run
        settings["BROKER_LEASE_SECRET"] = local_setting("BROKER_LEASE_SECRET")
    if not local_setting("BROKER_WEBHOOK_SECRET"):
        settings["BROKER_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        say(f"generated a webhook signing secret for this session: {settings['BROKER_WEBHOOK_SECRET']}")
    if not local_setting("BROKER_WEBHOOK_ALLOW"):  # a receiver on this machine, for development
        settings["BROKER_WEBHOOK_ALLOW"] = "localhost,127.0.0.1"

    services = []
    try:
        say("starting Azurite (data in .azurite/)")
        azurite = start_azurite()
        services.append(azurite)
        say(f"starting the broker dev host on 127.0.0.1:{port}")
        broker = DevHost(azurite.connection_string, settings, port=port, log_dir=STATE,
                         settings_file=str(ROOT / "local.settings.json")).start()
        services.append(broker)
        args = ["--model", model] + (["--weights", weights] if weights else [])
        say(f"starting the {model} worker{' (weights: ' + weights + ')' if weights else ''}; "
            "loading TensorFlow and the model takes a while")
        worker = Worker(broker.url, worker_key, args, env={"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")},
                        log_dir=STATE)
        services.append(worker)
        relay = Relay(worker, "worker")
        try:
            worker.start(timeout=900)
        except ServiceError:
            relay.pump()
            if worker.proc is not None and worker.proc.returncode == EXIT_WEIGHTS:
                say(f"the {model} worker could not get its pretrained weights (no internet, or no such file); "
                    f"run `MODEL={model} WEIGHTS=none scripts/run` for random weights, "
                    f"or `WEIGHTS=/path/to/weights scripts/run` with a local file")
            else:
                say(f"the worker did not start; its log is {worker.log_path}")
            say("the broker keeps running without a worker; Ctrl-C stops it")
        relay.pump()
        print(flush=True)
        say(f"demo page:  {broker.url}/demo")
        say(f"try:        .venv/bin/python -m clients predict path/to/image.jpg --model {model}"
            f"{'' if port == 7071 else f' (with BROKER_URL={broker.url})'}")
        say(f"worker key: {worker_key} (for the demo page's queue panel)")
        say("Ctrl-C stops everything")
        while not stopping:
            time.sleep(0.5)
            relay.pump()
            for service in (azurite, broker):
                if not service.alive():
                    say(f"{service.name} stopped unexpectedly; its log is {service.log_path}")
                    return 1
    except KeyboardInterrupt:
        pass
    except ServiceError as exc:
        say(f"could not start: {exc}")
        return 1
    finally:
        if services:
            say("stopping")
        for service in reversed(services):
            service.stop(timeout=20)  # a worker finishes or gives back what it holds first
    return 0


if __name__ == "__main__":
    sys.exit(main())
