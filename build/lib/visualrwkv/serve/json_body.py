"""A request body decoded as JSON within bounds, so that no body can make the server fail with a 500.

Python's `json` would otherwise hand the request handler a RecursionError for deeply nested
arrays, a ValueError for an integer of more than 4300 digits, and integers of thousands of digits
that later code cannot turn into floats. Every such body is a 400 naming what is wrong.
"""

from __future__ import annotations

import json

from visualrwkv.serve.errors import APIError

MAX_DEPTH = 32  # an OpenAI chat body nests 5 levels (body → messages → message → parts → part)
MAX_INT_DIGITS = 32  # the largest meaningful integer (a 64-bit seed) has 19 digits


def decode_json_body(raw: bytes):
    """The JSON value of `raw`; raises APIError(400) for invalid JSON, deep nesting or huge integers."""
    if not raw:
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        value = json.loads(raw, parse_int=_parse_int)
    except APIError:
        raise
    except RecursionError:
        raise APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    except ValueError as e:  # anything else the decoder refuses
        raise APIError(400, f"the request body cannot be decoded: {e}") from None
    _check_depth(value)
    return value


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise APIError(400, f"the request body holds an integer of {digits} digits; at most {MAX_INT_DIGITS} "
                            "are accepted")
    return int(text)


def _check_depth(value) -> None:
    """Refuse more than MAX_DEPTH levels of arrays and objects (iteratively: no recursion to exhaust)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise APIError(400, f"the request body nests deeper than {MAX_DEPTH} levels")
        pending.extend((child, depth + 1) for child in children)
