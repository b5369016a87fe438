"""A custom handler, exactly as the README's "Your own model" shows it: a digit classifier saved as a .keras file.

Run it with: python -m mlserver --model digits --handler digits:Digits --weights digits.keras
"""

import io
import json

import numpy as np
from PIL import Image, UnidentifiedImageError

from mlserver.handlers.base import Handler, InputError, WeightsUnavailable


class Digits(Handler):
    name = "digits"

    def load(self):
        import keras  # imported here, so `--help` and argument errors stay fast

        try:
            self.model = keras.saving.load_model(self.weights)
        except (OSError, ValueError) as exc:
            raise WeightsUnavailable(f"cannot load {self.weights} ({exc})") from None

    def decode(self, payload, content_type, params):
        try:
            image = Image.open(io.BytesIO(payload)).convert("L").resize((28, 28))
        except (UnidentifiedImageError, OSError):
            raise InputError(f"payload is not an image ({len(payload)} bytes of {content_type})") from None
        return np.asarray(image, np.float32) / 255

    def predict(self, inputs):
        return list(self.model.predict_on_batch(np.stack(inputs)))

    def encode(self, output, item):
        digit = int(np.argmax(output))
        return json.dumps({"digit": digit, "score": float(output[digit])}).encode(), "application/json"
