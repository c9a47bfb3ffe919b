"""BentoML serving the bench SavedModels with adaptive batching: a JPEG upload in, the top classes out.

Runs in bench/.venvs/bentoml (bench/competitors/venvs.sh), started by bench.compare as
`bentoml serve bench.competitors.bento_service:Bench --host 127.0.0.1 --port P` with its settings in
BENCH_BENTO_* variables, read at import: BENCH_BENTO_MODELS (KEY:SAVEDMODEL_DIR:SIDE:PIXEL_SCALING, comma
separated), BENCH_BENTO_MAX_BATCH_SIZE, BENCH_BENTO_MAX_LATENCY_MS, BENCH_BENTO_WORKERS,
BENCH_BENTO_DECODE_THREADS, BENCH_BENTO_TF_INTRA_OP_THREADS and BENCH_BENTO_TF_INTER_OP_THREADS (each
worker's TensorFlow thread pools, set before its models load; 0: TensorFlow's default, or the environment's
TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS). One batchable API per model, at POST /KEY: multipart
field `images`, one file per request (BentoML's own image type: opened by Pillow, decoded by our function,
so the draft-mode decode is the same as Percept's).
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
from PIL import Image

from bench.competitors.work import ModelShape, Predictor, parse_model, set_tf_threads

SHAPES: list[ModelShape] = [parse_model(text) for text in os.environ["BENCH_BENTO_MODELS"].split(",")]
MAX_BATCH_SIZE = int(os.environ.get("BENCH_BENTO_MAX_BATCH_SIZE", "16"))
MAX_LATENCY_MS = int(os.environ.get("BENCH_BENTO_MAX_LATENCY_MS", "10000"))
WORKERS = int(os.environ.get("BENCH_BENTO_WORKERS", "1"))
DECODE_THREADS = int(os.environ.get("BENCH_BENTO_DECODE_THREADS", "2"))
TF_INTRA_OP_THREADS = int(os.environ.get("BENCH_BENTO_TF_INTRA_OP_THREADS", "0"))
TF_INTER_OP_THREADS = int(os.environ.get("BENCH_BENTO_TF_INTER_OP_THREADS", "0"))


def _api(key: str) -> Any:
    def predict(self: Any, images: list[Image.Image]) -> list[dict[str, list[Any]]]:
        classes, scores = self.predictors[key].predict_images(images)
        return [
            {"classes": row_classes.tolist(), "scores": row_scores.tolist()}
            for row_classes, row_scores in zip(classes, scores, strict=True)
        ]

    predict.__name__ = key
    return bentoml.api(
        route=f"/{key}", batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS
    )(predict)


class _Base:
    def __init__(self) -> None:
        # One instance per worker process, made in that process before any of its TensorFlow ops.
        set_tf_threads(TF_INTRA_OP_THREADS, TF_INTER_OP_THREADS)
        self.predictors = {shape.key: Predictor(shape, DECODE_THREADS) for shape in SHAPES}


# The API methods are made per model at import, so the class is built from them.
# No access log: a line per request costs CPU that Percept does not spend (its gateway logs no request
# lines) and PyTriton does not either.
Bench = bentoml.service(workers=WORKERS, traffic={"timeout": 120}, logging={"access": {"enabled": False}})(
    type("Bench", (_Base,), {shape.key: _api(shape.key) for shape in SHAPES})
)
