"""`--handler saved`: tiny models built and saved here (.keras, .h5, SavedModel), served for real."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .conftest import image_bytes, result

LABELS = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RGB = image_bytes("RGB", (48, 40))
GREY = image_bytes("L", (20, 30))


def keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(7)
    return keras


def classifier(channels: int = 3, softmax: bool = False):
    k = keras()
    inputs = k.Input((32, 32, channels))
    x = k.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = k.layers.GlobalAveragePooling2D()(x)
    outputs = k.layers.Dense(10, activation="softmax" if softmax else None)(x)
    return k.Model(inputs, outputs)


def pixels(payload: bytes, channels: int = 3) -> np.ndarray:
    """What the handler feeds the model for this payload with --scale unit."""
    image = Image.open(io.BytesIO(payload)).convert("RGB" if channels == 3 else "L")
    array = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), np.float32) / 255.0
    return array.reshape(1, 32, 32, channels)


def save_fixed_batch_savedmodel(path):
    """A SavedModel whose serving signature takes exactly one image: a batch of four is an error."""
    import tensorflow as tf

    class Fixed(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights_ = tf.Variable(tf.random.stateless_normal([3, 10], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
        def serve(self, images):
            return {"scores": tf.reduce_mean(images, axis=[1, 2]) @ self.weights_}

    module = Fixed()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    k = keras()
    logits = classifier()
    logits.save(folder / "cifar.keras")
    logits.save(folder / "cifar.h5")
    logits.export(str(folder / "cifar_savedmodel"), format="tf_saved_model")
    probabilities = classifier(softmax=True)
    probabilities.save(folder / "probs.keras")
    grey = classifier(channels=1)
    grey.save(folder / "grey.keras")

    inputs = k.Input((16, 16, 3))
    segmenter = k.Model(inputs, k.layers.Conv2D(4, 1)(inputs))
    segmenter.save(folder / "segmenter.keras")

    inputs = k.Input((8, 8, 3))
    flat = k.layers.Flatten()(inputs)
    two = k.Model(inputs, [k.layers.Dense(2)(flat), k.layers.Dense(3)(flat)])
    two.save(folder / "two_outputs.keras")

    save_fixed_batch_savedmodel(folder / "single_savedmodel")

    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    (folder / "corrupt.keras").write_bytes(b"not a zip file at all")
    return folder, {"logits": logits, "probabilities": probabilities, "grey": grey}


def serve(start_worker, model, path, *extra):
    return start_worker(model, "--handler", "saved", "--weights", str(path), "--batch", "4", *extra)


def submit_all(broker, model, payloads, params=None):
    query = f"&params={params}" if params else ""
    ids = []
    for payload in payloads:
        response = broker.post(f"/predict?model={model}{query}", data=payload, headers={"Content-Type": "image/png"})
        assert response.status_code == 202
        ids.append(response.json()["task_id"])
    return ids


def softmax(values: np.ndarray) -> np.ndarray:
    exp = np.exp(values - values.max())
    return exp / exp.sum()


@pytest.mark.parametrize("file", ["cifar.keras", "cifar.h5", "cifar_savedmodel"])
def test_classifier_in_each_format(broker, start_worker, models, model, file):
    folder, built = models
    serve(start_worker, model, folder / file, "--labels", str(folder / "labels.txt"))
    ids = submit_all(broker, model, [RGB, GREY, RGB], params="%7B%22top_k%22%3A10%7D")
    bodies = [result(broker, task_id).json() for task_id in ids]
    expected = softmax(np.asarray(built["logits"](pixels(RGB)))[0])  # logits: the handler applies softmax
    for body in bodies:
        assert body["model"] == model and body["weights"] == file
        scores = [p["score"] for p in body["predictions"]]
        assert len(scores) == 10 and scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-4)
        assert all(p["label"] == LABELS[p["index"]] for p in body["predictions"])
    by_index = {p["index"]: p["score"] for p in bodies[0]["predictions"]}
    assert [by_index[i] for i in range(10)] == pytest.approx(expected.tolist(), abs=1e-4)


def test_probabilities_are_not_softmaxed_again_and_top_k_applies(broker, start_worker, models, model):
    folder, built = models
    serve(start_worker, model, folder / "probs.keras")
    [task_id] = submit_all(broker, model, [RGB], params="%7B%22top_k%22%3A3%7D")
    body = result(broker, task_id).json()
    expected = np.asarray(built["probabilities"](pixels(RGB)))[0]
    assert len(body["predictions"]) == 3
    best = np.argsort(-expected)[:3]
    assert [p["index"] for p in body["predictions"]] == best.tolist()
    assert [p["score"] for p in body["predictions"]] == pytest.approx(expected[best].tolist(), abs=1e-5)
    assert [p["label"] for p in body["predictions"]] == [str(i) for i in best]  # no --labels: the index


def test_rgb_input_to_a_one_channel_model(broker, start_worker, models, model):
    folder, built = models
    serve(start_worker, model, folder / "grey.keras")
    [task_id] = submit_all(broker, model, [RGB], params="%7B%22top_k%22%3A10%7D")
    body = result(broker, task_id).json()
    expected = softmax(np.asarray(built["grey"](pixels(RGB, channels=1)))[0])
    by_index = {p["index"]: p["score"] for p in body["predictions"]}
    assert [by_index[i] for i in range(10)] == pytest.approx(expected.tolist(), abs=1e-4)


def test_dense_output_becomes_a_mask_at_the_input_size(broker, start_worker, models, model):
    folder, _ = models
    serve(start_worker, model, folder / "segmenter.keras", "--labels", str(folder / "labels.txt"))
    mask_id, summary_id = submit_all(broker, model, [RGB]) + submit_all(broker, model, [RGB], "%7B%22output%22%3A%22json%22%7D")
    mask = result(broker, mask_id)
    assert mask.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(mask.content))
    assert image.mode == "P" and image.size == (48, 40)
    assert set(np.unique(np.asarray(image))) <= {0, 1, 2, 3}
    summary = result(broker, summary_id).json()
    assert (summary["width"], summary["height"]) == (48, 40)
    assert sum(c["pixel_fraction"] for c in summary["classes"]) == pytest.approx(1.0, abs=1e-3)
    assert all(c["label"] == LABELS[c["index"]] for c in summary["classes"])


def test_a_model_fixed_to_batches_of_one_runs_one_image_at_a_time(broker, start_worker, models, model):
    folder, _ = models
    worker = serve(start_worker, model, folder / "single_savedmodel")
    ids = submit_all(broker, model, [RGB, GREY, RGB, RGB, GREY])
    assert all(result(broker, task_id).status_code == 200 for task_id in ids)
    assert worker.log_text().count("one image at a time") == 1


def test_multi_output_model_returns_raw_json(broker, start_worker, models, model):
    folder, _ = models
    serve(start_worker, model, folder / "two_outputs.keras")
    [task_id] = submit_all(broker, model, [GREY])
    body = result(broker, task_id).json()
    assert [len(output) for output in body["outputs"]] == [2, 3]


@pytest.mark.parametrize("file, message", [
    ("missing.keras", "no saved model at"),
    ("corrupt.keras", "cannot load the model at"),
    ("labels.txt", "is not a .keras or .h5 file or a TensorFlow SavedModel directory"),
])
def test_bad_model_paths_fail_at_start_with_one_line(broker, models, file, message):
    folder, _ = models
    env = {**os.environ, "BROKER_WORKER_KEY": broker.worker_key, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-m", "mlserver", "--broker-url", broker.url, "--model", "m",
                          "--handler", "saved", "--weights", str(folder / file)],
                         capture_output=True, text=True, env=env, timeout=180)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("mlserver:")]
    assert len(errors) == 1 and message in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
