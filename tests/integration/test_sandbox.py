"""Hostile uploaded networks meet the trial load in a child process: the child dies or is killed, the
deployment ends `error` naming the limit, and the consumer goes on serving."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tensorflow as tf

from consumers.sandbox import Sandbox, SandboxLimits, TrialFailure
from schemas.networks import Preprocessing
from tests.conftest import Stack, embedded_stack
from tests.images import png

MEMORY_MB = 1024  # TensorFlow and a tiny model need about 450 MB of it
PREPROCESSING = Preprocessing.model_validate(
    {"inputs": [{"tensor_name": "image", "image": {"target_size": "16x16"}}]}
)


class _Hog(tf.Module):  # type: ignore[misc]
    """Allocates 4 GB per image on every run: the warm-up alone goes far beyond the limit."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        huge = tf.fill([tf.shape(image)[0] * 2**30], 1.0)  # sized by the input: nothing to fold at load
        total = tf.reduce_sum(huge)
        return {"probabilities": tf.reshape(tf.reduce_mean(image, axis=[1, 2, 3]) + total, [-1, 1])}


class _Spinner(tf.Module):  # type: ignore[misc]
    """A loop that counts to 2**62 before answering."""

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        start = tf.cast(tf.reduce_sum(image), tf.int64)
        count = tf.while_loop(lambda i: i < 2**62, lambda i: i + 1, [start])
        return {
            "probabilities": tf.reshape(tf.reduce_mean(image, axis=[1, 2, 3]), [-1, 1])
            + tf.cast(count, tf.float32)
        }


class _Aborts(tf.Module):  # type: ignore[misc]
    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.control_dependencies([tf.raw_ops.Abort(error_msg="bye")]):
            return {"probabilities": tf.reshape(tf.reduce_mean(image, axis=[1, 2, 3]), [-1, 1])}


def _save(module: Any, path: Path) -> Path:
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    return {
        "hog": _save(_Hog(), root / "hog"),
        "spinner": _save(_Spinner(), root / "spinner"),
        "aborts": _save(_Aborts(), root / "aborts"),
    }


async def test_a_good_model_passes_its_trial_with_its_signature(tiny_models: dict[str, Path]) -> None:
    sandbox = Sandbox(SandboxLimits(memory_mb=MEMORY_MB, timeout_s=120))
    result = await sandbox.trial(tiny_models["brightness"], PREPROCESSING, [])
    assert result.ok, result.error
    assert result.signature is not None and result.signature.inputs["image"].shape == [None, 16, 16, 3]


async def test_a_folder_given_relative_to_the_working_directory_passes(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`percept serve` keeps its model cache under the relative `data/`."""
    folder = tiny_models["brightness"]
    monkeypatch.chdir(folder.parent)
    sandbox = Sandbox(SandboxLimits(memory_mb=MEMORY_MB, timeout_s=120))
    result = await sandbox.trial(Path(folder.name), PREPROCESSING, [])
    assert result.ok, result.error


async def test_a_model_beyond_the_memory_limit_fails_naming_it(hostile: dict[str, Path]) -> None:
    sandbox = Sandbox(SandboxLimits(memory_mb=MEMORY_MB, timeout_s=120))
    result = await sandbox.trial(hostile["hog"], PREPROCESSING, [])
    assert not result.ok and result.failure is TrialFailure.MEMORY, result
    assert f"memory limit of {MEMORY_MB} MB (PERCEPT_SANDBOX_MEMORY_MB)" in result.error


async def test_a_model_that_spins_is_killed_at_the_time_limit(hostile: dict[str, Path]) -> None:
    # Also true when a loaded machine needs longer than this to start TensorFlow: the limit still names it.
    sandbox = Sandbox(SandboxLimits(memory_mb=MEMORY_MB, timeout_s=10))
    result = await sandbox.trial(hostile["spinner"], PREPROCESSING, [])
    assert not result.ok and result.failure is TrialFailure.TIME, result
    assert "time limit of 10 s (PERCEPT_SANDBOX_TIMEOUT_S)" in result.error


async def test_a_model_with_abort_is_refused_by_the_scan_naming_the_op(hostile: dict[str, Path]) -> None:
    sandbox = Sandbox(SandboxLimits(memory_mb=MEMORY_MB, timeout_s=120))
    result = await sandbox.trial(hostile["aborts"], PREPROCESSING, [])
    assert not result.ok and result.failure is TrialFailure.MODEL, result
    assert "Abort (function" in result.error


async def test_a_limit_below_what_tensorflow_itself_holds_is_named(tiny_models: dict[str, Path]) -> None:
    # 100 MB cannot even hold TensorFlow: under it the first allocation fails, in whichever library (glibc
    # aborts a new thread, a C extension may segfault), so the child checks before it sets the limit.
    sandbox = Sandbox(SandboxLimits(memory_mb=100, timeout_s=120))
    result = await sandbox.trial(tiny_models["brightness"], PREPROCESSING, [])
    assert not result.ok and result.failure is TrialFailure.MEMORY, result
    assert "memory limit of 100 MB (PERCEPT_SANDBOX_MEMORY_MB)" in result.error
    assert "TensorFlow alone holds" in result.error


def test_a_child_that_dies_without_a_result_is_described() -> None:
    sandbox = Sandbox(SandboxLimits(memory_mb=MEMORY_MB, timeout_s=10))
    crashed = sandbox._interpret(-6, b"", b"start-up noise\nsomething went wrong in a kernel\n")
    assert crashed.failure is TrialFailure.CRASH
    assert (
        crashed.error
        == "the process loading the model was killed by SIGABRT: something went wrong in a kernel"
    )
    starved = sandbox._interpret(-6, b"", b"terminate called after throwing 'std::bad_alloc'\nmore\n")
    assert starved.failure is TrialFailure.MEMORY and "std::bad_alloc" in starved.error
    assert "PERCEPT_SANDBOX_MEMORY_MB" in starved.error
    rust = sandbox._interpret(-6, b"", b"memory allocation of 262144 bytes failed\nskipping backtrace\n")
    assert rust.failure is TrialFailure.MEMORY and "262144 bytes" in rust.error
    thread = sandbox._interpret(127, b"", b"cannot allocate memory for thread-local data: ABORT\n")
    assert thread.failure is TrialFailure.MEMORY and "thread-local data" in thread.error
    garbled = sandbox._interpret(0, b"not json", b"")
    assert garbled.failure is TrialFailure.CRASH and "exited with status 0" in garbled.error


@pytest.fixture
async def limited_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The embedded stack of tests/conftest.py with a small sandbox memory limit."""
    async with embedded_stack(tmp_path, sandbox_memory_mb=MEMORY_MB) as running:
        yield running


async def _version(stack: Stack, network_id: int) -> dict[str, Any]:
    labels = [{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}]
    spec_body = {"name": "brightness", "outputs": [{"labels": {"roi": "NONE", "labels": labels}}]}
    response = await stack.client.post("/v0.7/recognition/specs/", json=spec_body, headers=stack.headers())
    assert response.status == 201, await response.text()
    version_body = {
        "spec_id": (await response.json())["id"],
        "network_id": network_id,
        "post_processings": [
            {"classification": {"output_tensor": "probabilities", "thresholds": [0.5, 0.5]}}
        ],
    }
    response = await stack.client.post(
        "/v0.7/recognition/versions/", json=version_body, headers=stack.headers()
    )
    assert response.status == 201, await response.text()
    version: dict[str, Any] = await response.json()
    return version


async def _bright(stack: Stack, version_id: int) -> str:
    body = {"inputs": [{"image": {"source": base64.b64encode(png((255, 255, 255))).decode()}}]}
    path = f"/v0.7/recognition/versions/{version_id}/inference"
    response = await stack.client.post(path, json=body, headers=stack.headers())
    assert response.status == 200, await response.text()
    task = await stack.wait_task((await response.json())["task_id"])
    assert task["status"] == "success", task
    label: str = task["data"]["outputs"][0]["labels"]["predicted"][0]["label_name"]
    return label


async def test_hostile_deployments_fail_and_the_consumer_keeps_serving(
    limited_stack: Stack, tiny_models: dict[str, Path], hostile: dict[str, Path]
) -> None:
    stack = limited_stack
    good = await stack.upload_network(tiny_models["brightness"], target_size="16x16", name="good")
    assert (await stack.wait_task(good["task_id"]))["status"] == "success"
    version = await _version(stack, good["id"])
    assert await _bright(stack, version["id"]) == "bright"

    expected = {"hog": "PERCEPT_SANDBOX_MEMORY_MB", "aborts": "Abort (function"}
    for key, reason in expected.items():
        network = await stack.upload_network(hostile[key], target_size="16x16", name=key)
        task = await stack.wait_task(network["task_id"])
        assert task["status"] == "error" and reason in task["error"], task

    # The consumer that ran those deployments still answers with the model it had, and deploys new ones.
    assert await _bright(stack, version["id"]) == "bright"
    again = await stack.upload_network(tiny_models["brightness"], target_size="16x16", name="again")
    assert (await stack.wait_task(again["task_id"]))["status"] == "success"
    assert await _bright(stack, (await _version(stack, again["id"]))["id"]) == "bright"
