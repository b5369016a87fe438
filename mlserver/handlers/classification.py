"""Classification results, shared by `resnet50` and `saved`: `params.top_k` checked when the task is
decoded (before the model runs), and the JSON answer built the same way by both."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from .base import InputError

DEFAULT_TOP_K = 5
MAX_TOP_K = 20


def top_k(params: dict) -> int:
    """params.top_k, an integer from 1 to MAX_TOP_K (DEFAULT_TOP_K when absent)."""
    value = params.get("top_k", DEFAULT_TOP_K)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOP_K:
        raise InputError(f"params.top_k must be an integer from 1 to {MAX_TOP_K}")
    return value


def answer(model: str, weights: str, scores: np.ndarray, k: int, label: Callable[[int], str]) -> tuple[bytes, str]:
    """{"model", "weights", "predictions": [{"label", "index", "score"}, ...]}: the k best, best first."""
    best = np.argsort(-scores, kind="stable")[:k]
    body = {"model": model, "weights": weights,
            "predictions": [{"label": label(int(i)), "index": int(i), "score": float(scores[i])} for i in best]}
    return json.dumps(body).encode(), "application/json"
