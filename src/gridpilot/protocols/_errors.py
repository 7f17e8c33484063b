"""Pickling for the protocol errors, whose constructors take keyword-only, structured values.

An exception unpickles as ``cls(*args)`` with ``args`` the message, which those constructors
refuse; multiprocessing users (a decoder in a worker process) then lose the error. These
errors rebuild from the message and their attributes instead.
"""

from __future__ import annotations

from typing import Any


def _restore(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class PicklableError(BaseException):
    """Mixin: pickles the message and every attribute, not the constructor's arguments."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _restore, (type(self), self.args, self.__dict__.copy())
