"""resnet50 end to end with random weights: any image mode in, top-k JSON out, bad payloads fail alone."""

from __future__ import annotations

import json
import re
import uuid

import pytest

from mlserver.handlers.resnet50 import imagenet_labels
from tests.support.polling import wait_for

from .conftest import image_bytes, mlserver_lines, result, run_mlserver

LABELS = imagenet_labels()
INPUTS = {  # name: (payload, content type)
    "rgb jpeg": (image_bytes("RGB", (300, 200), "JPEG"), "image/jpeg"),
    "greyscale png": (image_bytes("L", (64, 96)), "image/png"),
    "rgba png": (image_bytes("RGBA", (50, 50)), "image/png"),
    "cmyk jpeg": (image_bytes("CMYK", (80, 40), "JPEG"), "image/jpeg"),
    "palette gif": (image_bytes("P", (33, 77), "GIF"), "image/gif"),
    "16-bit png": (image_bytes("I;16", (40, 40)), "image/png"),
}
NOT_AN_IMAGE = b"this is not an image"


@pytest.fixture(scope="module")
def resnet(broker, tmp_path_factory):
    """A queue with one batch already waiting, then a resnet50 worker on it (random weights, batch 8,
    decoding three tasks at once: the bad payload fails alone among tasks decoded beside it)."""
    from devstack.services import Worker

    model = "t-" + uuid.uuid4().hex[:12]
    ids = {name: broker.submit(model, payload, kind) for name, (payload, kind) in INPUTS.items()}
    ids["text"] = broker.submit(model, NOT_AN_IMAGE, "text/plain")
    worker = Worker(broker.url, broker.worker_key, ["--model", model, "--handler", "resnet50", "--weights", "none",
                                                    "--batch", "8", "--wait", "2", "--status-interval", "1",
                                                    "--decode-threads", "3"],  # the batch decoded 3 at a time
                    log_dir=tmp_path_factory.mktemp("resnet-worker")).start()
    yield model, ids, worker
    worker.stop(timeout=30)


def check_predictions(body: dict, top_k: int) -> None:
    assert body["model"] == "resnet50" and body["weights"] == "none"
    predictions = body["predictions"]
    assert len(predictions) == top_k
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    for p in predictions:
        assert 0 <= p["index"] < 1000 and p["label"] == LABELS[p["index"]] and 0 <= p["score"] <= 1
    assert len({p["index"] for p in predictions}) == top_k


def test_any_image_mode_is_classified_and_a_non_image_fails_alone_in_its_batch(broker, resnet):
    model, ids, worker = resnet
    for name in INPUTS:
        response = result(broker, ids[name])
        assert response.status_code == 200, (name, response.text)
        assert response.headers["Content-Type"] == "application/json"
        check_predictions(response.json(), 5)
    failed = result(broker, ids["text"])
    assert failed.status_code == 422
    assert failed.json()["error"] == "payload is not an image Pillow can read (got 20 bytes of text/plain)"
    assert re.search(r"INFO device: (CPU|GPU:0) .*; decoding 3 task\(s\) of a batch at once", worker.log_text())
    # The six images ran as one batch (the status line comes within a second).
    wait_for(lambda: "batch fill 6.0/8" in worker.log_text(), timeout=10, what="the status line")


def test_top_k_is_honoured_and_checked(broker, resnet):
    model = resnet[0]
    payload, kind = INPUTS["rgb jpeg"]
    three = broker.submit(model, payload, kind, params={"params": json.dumps({"top_k": 3})})
    bad = broker.submit(model, payload, kind, params={"params": json.dumps({"top_k": 50})})
    check_predictions(result(broker, three).json(), 3)
    assert result(broker, bad).json()["error"] == "params.top_k must be an integer from 1 to 20"


def test_shipped_class_names_are_the_imagenet_ones():
    assert len(LABELS) == 1000 and len(set(LABELS)) == 998  # "crane" and "maillot" name two classes each
    assert (LABELS[0], LABELS[1], LABELS[207], LABELS[999]) == ("tench", "goldfish", "golden_retriever", "toilet_tissue")


@pytest.mark.parametrize("weights, reason", [
    ("imagenet", "cannot download the ImageNet weights for resnet50"),
    ("/no/such/resnet.weights.h5", "no weights file at /no/such/resnet.weights.h5"),
])
def test_weights_that_cannot_be_had_exit_3_with_one_line(broker, tmp_path, weights, reason):
    # An empty Keras cache: the ImageNet file must come from the network, which these machines lack.
    done = run_mlserver("--model", "resnet50", "--weights", weights,
                        env={"BROKER_URL": broker.url, "BROKER_WORKER_KEY": broker.worker_key, "KERAS_HOME": str(tmp_path)})
    assert done.returncode == 3, done.stdout + done.stderr
    lines = mlserver_lines(done)
    assert len(lines) == 1 and lines[0].startswith(f"mlserver: weights unavailable: {reason}")
    assert lines[0].endswith("use --weights none for random weights, or --weights PATH for a local file")
