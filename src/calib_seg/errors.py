"""Bad input versus bugs: one exception type the entry points turn into a short message and exit 2.

Readers raise plain ``ValueError`` / ``FileNotFoundError`` naming the file (docs/CONVENTIONS.md). Inside
:func:`input_errors` -- the stages of an entry point that read what the user pointed at (data folders,
checkpoints, output paths) -- those become :class:`InputError`, which ``lifecycle.clean_exit`` prints as one
message (exit 2, no traceback). Anything else, or the same types raised while building or training a model,
stays a traceback: that is a bug. ``HYDRA_FULL_ERROR=1`` shows the traceback of an input error too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

#: what readers raise for bad input (FileExistsError and FileNotFoundError are OSErrors)
INPUT_ERROR_TYPES = (ValueError, OSError)


class InputError(Exception):
    """Marks a bad input named by the user (data, checkpoint, output path); ``kind`` is the original type's name.

    :func:`input_errors` raises it mixed into the original type (an ``InputError`` that is also the reader's
    ``FileExistsError``, ``ValueError``, ...), so callers that catch the original type still do.
    """

    kind = "ValueError"


_MARKED: dict[type, type] = {}


def mark_input_error(exc: BaseException) -> InputError:
    """``exc`` as an :class:`InputError` of its own type (same message, ``kind`` = its type's name)."""
    base = type(exc)
    if base not in _MARKED:
        try:
            _MARKED[base] = type(f"Input{base.__name__}", (InputError, base), {"kind": base.__name__})
            _MARKED[base](str(exc))
        except TypeError:  # a layout or constructor the mix-in cannot take: fall back to the builtin type
            plain = next(t for t in base.__mro__ if t in INPUT_ERROR_TYPES)
            _MARKED[base] = type(f"Input{plain.__name__}", (InputError, plain), {"kind": base.__name__})
    return _MARKED[base](str(exc))


def _innermost(exc: BaseException) -> BaseException:
    """The reader's own error under Hydra's ``InstantiationException`` wrapping ("Error in call to target ...")."""
    from hydra.errors import InstantiationException

    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Re-raise reader errors (``ValueError``, ``OSError``, also wrapped by ``instantiate``) as :class:`InputError`."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:
        inner = _innermost(exc)
        if not isinstance(inner, INPUT_ERROR_TYPES):
            raise
        raise mark_input_error(inner) from inner
