"""DRF-style multipart keys to nested objects: `inputs[0]image.bbox.xmin` → {"inputs": [{"image": {...}}]}.

The official Deepomatic client flattens nested arguments this way: a dict child is `parent.key`, a list item
`parent[i]` with no dot before the next key.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import InvalidInput

_TOKEN = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")
_MAX_INDEX = 1024


def _tokens(key: str) -> list[str | int]:
    tokens: list[str | int] = []
    position = 0
    for match in _TOKEN.finditer(key):
        if match.start() != position:
            raise InvalidInput("malformed multipart field name", field=key)
        position = match.end()
        index, name = match.groups()
        if index is not None:
            if int(index) > _MAX_INDEX:
                raise InvalidInput(f"list index above {_MAX_INDEX}", field=key)
            tokens.append(int(index))
        else:
            tokens.append(name)
    if position != len(key) or not tokens or isinstance(tokens[0], int):
        raise InvalidInput("malformed multipart field name", field=key)
    return tokens


def _listify(node: Any) -> Any:
    """Dicts keyed only by ints become lists, in index order, with no holes allowed."""
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value) for key, value in node.items()}
    if converted and all(isinstance(key, int) for key in converted):
        indices = sorted(converted)
        if indices != list(range(len(indices))):
            raise InvalidInput("list indices must start at 0 without gaps", field=str(indices))
        return [converted[index] for index in indices]
    if any(isinstance(key, int) for key in converted):
        raise InvalidInput("a field is used both as a list and as an object", field=str(list(converted)))
    return converted


def unflatten(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    root: dict[Any, Any] = {}
    for key, value in pairs:
        tokens = _tokens(key)
        node = root
        for token in tokens[:-1]:
            node = node.setdefault(token, {})
            if not isinstance(node, dict):
                raise InvalidInput("a field is given both as a value and as an object", field=key)
        last = tokens[-1]
        if last in node:
            raise InvalidInput("field given twice", field=key)
        node[last] = value
    result = _listify(root)
    assert isinstance(result, dict)
    return result
