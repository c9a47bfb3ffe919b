"""PyTriton serving the bench SavedModels: JPEG bytes in (KServe v2 BYTES), the top classes out.

Runs in bench/.venvs/triton (bench/competitors/venvs.sh), started by bench.compare:
`python -m bench.competitors.triton_server --http-port P --grpc-port G --metrics-port M --model SPEC...`
(SPEC: KEY:SAVEDMODEL_DIR:SIDE:PIXEL_SCALING).
Each model's infer function decodes + pre-processes the batch (a thread pool, as Percept's consumer has
decode threads), predicts and ranks the scores, under Triton's dynamic batcher. Stops on SIGTERM/SIGINT.
PyTriton runs a model's instances as threads of this one process, so they share its TensorFlow thread
pools: `--tf-intra-op-threads` and `--tf-inter-op-threads` (0: TensorFlow's default, or the environment's
TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS). A function call runs on an inter-op thread: with one
inter-op thread, two instances predict one after the other.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.competitors.work import TOP_K, Predictor, parse_model, set_tf_threads


def _infer_function(predictor: Predictor) -> Callable[..., dict[str, np.ndarray]]:
    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        # [N, 1] of bytes objects: one JPEG per request.
        classes, scores = predictor.predict_jpegs([bytes(row[0]) for row in image])
        return {"classes": classes, "scores": scores}

    return infer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--model", action="append", required=True, help="KEY:DIR:SIDE:PIXEL_SCALING")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=1, help="infer functions per model, run in parallel")
    parser.add_argument("--decode-threads", type=int, default=2, help="per instance")
    parser.add_argument("--tf-intra-op-threads", type=int, default=0, help="for the process; 0: default")
    parser.add_argument("--tf-inter-op-threads", type=int, default=0, help="for the process; 0: default")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    set_tf_threads(args.tf_intra_op_threads, args.tf_inter_op_threads)  # before any model is loaded
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        exit_timeout_secs=5,
    )
    with Triton(config=config) as triton:
        for text in args.model:
            shape = parse_model(text)
            functions: list[Any] = [
                _infer_function(Predictor(shape, args.decode_threads)) for _ in range(args.instances)
            ]
            triton.bind(
                model_name=shape.key,
                infer_func=functions,
                inputs=[Tensor(name="image", dtype=bytes, shape=(1,))],
                outputs=[
                    Tensor(name="classes", dtype=np.int32, shape=(TOP_K,)),
                    Tensor(name="scores", dtype=np.float32, shape=(TOP_K,)),
                ],
                config=ModelConfig(
                    max_batch_size=args.max_batch_size,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=args.max_queue_delay_us),
                ),
                strict=True,
            )
        triton.serve()  # blocks until SIGINT/SIGTERM, then stops the server and its stubs


if __name__ == "__main__":
    main()
