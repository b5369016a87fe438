"""deeplabv3plus end to end with random weights at a small input size: mask, overlay and JSON outputs."""

from __future__ import annotations

import io
import json
import uuid

import pytest
from PIL import Image

from mlserver.handlers import voc
from tests.support.polling import wait_for

from .conftest import image_bytes, mlserver_lines, result, run_mlserver


def submit(broker, model, payload, kind, output=None):
    params = {"params": json.dumps({"output": output})} if output else {}
    return broker.submit(model, payload, kind, params=params)


@pytest.fixture(scope="module")
def deeplab(broker, tmp_path_factory):
    """A queue with one batch waiting, then a deeplabv3plus worker on it (random weights, 64 x 64 input)."""
    from devstack.services import Worker

    model = "t-" + uuid.uuid4().hex[:12]
    ids = {
        "mask": submit(broker, model, image_bytes("RGB", (97, 61), "JPEG"), "image/jpeg"),
        "cmyk": submit(broker, model, image_bytes("CMYK", (40, 90), "JPEG"), "image/jpeg", "mask"),
        "overlay": submit(broker, model, image_bytes("L", (120, 45)), "image/png", "overlay"),
        "json": submit(broker, model, image_bytes("RGBA", (50, 70)), "image/png", "json"),
        "text": submit(broker, model, b"not a picture at all", "text/plain"),
    }
    worker = Worker(broker.url, broker.worker_key,
                    ["--model", model, "--handler", "deeplabv3plus", "--weights", "none", "--option", "input_size=64",
                     "--batch", "8", "--wait", "2", "--status-interval", "1"],
                    log_dir=tmp_path_factory.mktemp("deeplab-worker")).start()
    yield model, ids, worker
    worker.stop(timeout=30)


def test_masks_overlays_and_summaries_come_back_at_the_original_size(broker, deeplab):
    _, ids, worker = deeplab
    mask_id, cmyk_id, overlay_id, json_id, text_id = (ids[k] for k in ("mask", "cmyk", "overlay", "json", "text"))

    for task_id, size in ((mask_id, (97, 61)), (cmyk_id, (40, 90))):
        response = result(broker, task_id)
        assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
        mask = Image.open(io.BytesIO(response.content))
        assert mask.mode == "P" and mask.size == size
        assert mask.getpalette()[: 3 * 21] == voc.palette()[: 3 * 21]
        assert max(mask.getdata()) < len(voc.LABELS)

    overlay = Image.open(io.BytesIO(result(broker, overlay_id).content))
    assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == (120, 45)

    summary = result(broker, json_id).json()
    assert (summary["width"], summary["height"]) == (50, 70)
    assert summary["classes"] and abs(sum(c["pixel_fraction"] for c in summary["classes"]) - 1) < 1e-3
    for entry in summary["classes"]:
        assert entry["label"] == voc.LABELS[entry["index"]] and 0 < entry["pixel_fraction"] <= 1

    failed = result(broker, text_id)
    assert failed.status_code == 422
    assert failed.json()["error"] == "payload is not an image Pillow can read (got 20 bytes of text/plain)"
    wait_for(lambda: "batch fill 4.0/8" in worker.log_text(), timeout=10, what="the four images as one batch")


def test_an_unknown_output_fails_that_task(broker, deeplab):
    task_id = submit(broker, deeplab[0], image_bytes("RGB", (20, 20)), "image/png", "heatmap")
    assert result(broker, task_id).json()["error"] == "params.output must be one of mask, overlay, json"


def test_voc_palette_is_the_standard_one():
    flat = voc.palette()
    colours = [tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)]
    assert colours[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert colours[15] == (192, 128, 128) and colours[20] == (0, 64, 128) and colours[255] == (224, 224, 192)


def test_a_preset_that_cannot_be_downloaded_exits_3_with_one_line(broker, tmp_path):
    done = run_mlserver("--model", "deeplabv3plus", env={
        "BROKER_URL": broker.url, "BROKER_WORKER_KEY": broker.worker_key, "KERAS_HOME": str(tmp_path),
        "KAGGLEHUB_CACHE": str(tmp_path / "kagglehub")})
    assert done.returncode == 3, done.stdout + done.stderr
    lines = mlserver_lines(done)
    assert len(lines) == 1
    assert lines[0].startswith("mlserver: weights unavailable: cannot load the keras-hub preset "
                               "deeplab_v3_plus_resnet50_pascalvoc (")
