"""Inference job messages, written and read with the model reference handled once per distinct reference.

A job carries its whole ModelRef (pre-processing, every label of every output, every threshold): for a
1,000-class classifier that is about 34 KB of JSON. Rendering it took most of the CPU of writing a job, and
validating it (a pydantic object per label) about 1.2 ms of the consumer's CPU per job. So a ModelRef's JSON
is rendered once per object and leads the message behind its digest:

    {"model_digest":"<32 hex digits>","model":<the reference>,<the job's other fields>}

A reader that has read this reference before finds it by the digest, checks that the message holds the very
same bytes (a memory compare, so a digest is never trusted), and validates only the other fields. The
message is still one JSON object that `InferenceJob.model_validate_json` reads, and a job written any other
way is read that way.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from schemas.messages import InferenceJob, InferenceJobFields, ModelRef

_DIGEST_BYTES = 16
_HEAD = b'{"model_digest":"'
_MODEL_AT = len(_HEAD) + 2 * _DIGEST_BYTES + len(b'","model":')


@dataclass(frozen=True)
class _Rendered:
    owner: weakref.ref[ModelRef]
    text: bytes
    digest: bytes  # hex, ASCII


# By object identity, dropped with the object (a pydantic model is not hashable): a ModelRef is never changed
# once resolved (the routes that change specs, versions and networks resolve a new one).
_RENDERED: dict[int, _Rendered] = {}


def _forget(key: int, ref: weakref.ref[ModelRef]) -> None:
    # Only the entry of the object that died: its id may already name a newer object's entry.
    entry = _RENDERED.get(key)
    if entry is not None and entry.owner is ref:
        del _RENDERED[key]


def _digest(text: bytes) -> bytes:
    return hashlib.blake2b(text, digest_size=_DIGEST_BYTES).hexdigest().encode("ascii")


def _rendered(model: ModelRef) -> _Rendered:
    key = id(model)
    entry = _RENDERED.get(key)
    if entry is not None and entry.owner() is model:
        return entry
    text = model.model_dump_json().encode()
    entry = _RENDERED[key] = _Rendered(weakref.ref(model, lambda ref: _forget(key, ref)), text, _digest(text))
    return entry


def model_json(model: ModelRef) -> bytes:
    """`model.model_dump_json()`, rendered once per object."""
    return _rendered(model).text


def job_body(job: InferenceJob) -> bytes:
    """The message body of `job`: the same JSON object as `job.model_dump_json()`, digest included."""
    model = _rendered(job.model)
    rest = job.model_dump_json(exclude={"model", "model_digest"}).encode()
    # `rest` is a non-empty object ('{"schema_version":1,...}'): it follows the model.
    return _HEAD + model.digest + b'","model":' + model.text + b"," + rest[1:]


class JobReader:
    """Reads job messages; keeps the last `capacity` distinct model references it has read, by digest."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._known: OrderedDict[bytes, tuple[bytes, ModelRef]] = OrderedDict()

    def __call__(self, body: bytes) -> InferenceJob:
        """The job in `body`; raises pydantic's ValidationError for a malformed message, like
        `InferenceJob.model_validate_json`."""
        digest = body[len(_HEAD) : len(_HEAD) + 2 * _DIGEST_BYTES] if body.startswith(_HEAD) else None
        known = self._known.get(digest) if digest is not None else None
        if digest is not None and known is not None:
            text, model = known
            end = _MODEL_AT + len(text)
            if body[_MODEL_AT:end] == text and body[end : end + 1] == b",":
                self._known.move_to_end(digest)
                fields = InferenceJobFields.model_validate_json(b"{" + body[end + 1 :])
                return InferenceJob.model_construct(
                    fields.model_fields_set | {"model", "model_digest"},
                    **dict(fields),
                    model=model,
                    model_digest=digest.decode("ascii"),
                )
        job = InferenceJob.model_validate_json(body)
        if digest is not None:
            self._remember(digest, body, job.model)
        return job

    def _remember(self, digest: bytes, body: bytes, model: ModelRef) -> None:
        # The digest names the bytes that follow it only if they hash to it; a message written another way
        # (keys reordered, spaces) is read in full every time. Rendered through the per-object cache, which
        # the engine's batches then find filled (model_json).
        rendered = _rendered(model)
        end = _MODEL_AT + len(rendered.text)
        if body[_MODEL_AT:end] != rendered.text or body[end : end + 1] != b"," or rendered.digest != digest:
            return
        self._known[digest] = (rendered.text, model)
        if len(self._known) > self._capacity:
            self._known.popitem(last=False)
