"""Inference job messages rendered without re-serializing the model reference each time.

A job carries its whole ModelRef (pre-processing, every label of every output, every threshold): for a
1,000-class classifier that is about 34 KB of JSON, which took most of the CPU of rendering a job. The
gateway hands out the same ModelRef object for a few seconds (gateway.resolved), so its JSON is rendered
once per object and spliced into each job's. The message is the same JSON object as
`job.model_dump_json()` gives (keys in another order), so consumers read it unchanged.
"""

from __future__ import annotations

import weakref

from schemas.messages import InferenceJob, ModelRef

# By object identity, dropped with the object (a pydantic model is not hashable): a ModelRef is never changed
# once resolved (the routes that change specs, versions and networks resolve a new one).
_RENDERED: dict[int, tuple[weakref.ref[ModelRef], bytes]] = {}


def _forget(key: int, ref: weakref.ref[ModelRef]) -> None:
    # Only the entry of the object that died: its id may already name a newer object's entry.
    entry = _RENDERED.get(key)
    if entry is not None and entry[0] is ref:
        del _RENDERED[key]


def model_json(model: ModelRef) -> bytes:
    key = id(model)
    entry = _RENDERED.get(key)
    if entry is not None and entry[0]() is model:
        return entry[1]
    rendered = model.model_dump_json().encode()
    _RENDERED[key] = (weakref.ref(model, lambda ref: _forget(key, ref)), rendered)
    return rendered


def job_body(job: InferenceJob) -> bytes:
    """The message body of `job`: the same JSON object as `job.model_dump_json()`."""
    rest = job.model_dump_json(exclude={"model"}).encode()
    # `rest` is a non-empty object ('{"schema_version":1,...}'): the model goes in as its first member.
    return b'{"model":' + model_json(job.model) + b"," + rest[1:]
