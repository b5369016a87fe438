"""A user's own handler loaded by module:Class (the README's example), and the CLI's front door."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import image_bytes, result, run_mlserver

SAVE_A_TINY_MODEL = """
import sys, keras
model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
model.save(sys.argv[1])
"""


def test_a_custom_handler_is_loaded_by_module_and_class(broker, model, start_worker, tmp_path):
    weights = tmp_path / "digits.keras"
    subprocess.run([sys.executable, "-c", SAVE_A_TINY_MODEL, str(weights)], check=True, timeout=180,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    ok = broker.submit(model, image_bytes("L", (40, 40)), "image/png")
    bad = broker.submit(model, b"nope", "text/plain")
    start_worker(model, "--handler", "tests.mlserver.digits:Digits", "--weights", str(weights))

    body = result(broker, ok).json()
    assert set(body) == {"digit", "score"} and 0 <= body["digit"] <= 9 and 0 <= body["score"] <= 1
    assert result(broker, bad).json()["error"] == "payload is not an image (4 bytes of text/plain)"


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_mlserver(*args, env={"BROKER_URL": "http://127.0.0.1:9/api", "BROKER_WORKER_KEY": "k", **(env or {})},
                        timeout=60)


def test_help_explains_every_flag():
    done = run_cli("--help")
    assert done.returncode == 0
    for flag in ("--broker-url", "--model", "--handler", "--weights", "--batch", "--lease", "--wait", "--option",
                 "--status-interval", "--upload-threads", "BROKER_URL", "BROKER_WORKER_KEY", "exit status"):
        assert flag in done.stdout, flag


def test_configuration_errors_exit_2_with_one_line():
    cases = [
        (["--model", "x", "--handler", "nosuchmodule:Thing"], {}, "cannot import 'nosuchmodule'"),
        (["--model", "no-such-built-in"], {}, "neither a built-in"),
        (["--model", "echo", "--handler", "tests.mlserver.digits:Nothing"], {}, "no Handler subclass named 'Nothing'"),
        (["--model", "echo"], {"BROKER_WORKER_KEY": ""}, "BROKER_WORKER_KEY is not set"),
        (["--model", "Bad_Name"], {}, "--model must be lowercase"),
        (["--model", "echo", "--batch", "33"], {}, "--batch must be from 1 to 32"),
    ]
    for args, env, message in cases:
        done = run_cli(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr.strip().splitlines()[-1], (args, done.stderr)


def test_the_echo_worker_never_imports_tensorflow():
    code = ("import sys, mlserver.__main__, mlserver.worker, mlserver.handlers.echo; "
            "sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
