"""The Flask class the services build their apps from."""

from collections.abc import Callable
from types import CodeType, FunctionType
from typing import Any

from flask import Flask


class App(Flask):
    """Flask, with `ensure_sync`'s check answered once per function definition. Flask asks it of
    every hook and view on every request, and each answer is an `inspect.iscoroutinefunction`
    check (a tenth of a short request's Python was these checks). For a plain function the answer
    is its code's coroutine flag, which cannot change; it is kept by code object, so that a
    closure made per request (an `after_this_request` hook) is neither kept alive nor asked
    again, and the cache holds one entry per `def` at most."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._is_async: dict[CodeType, bool] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if type(func) is not FunctionType:  # a method, a partial, a view object: Flask's way
            return super().ensure_sync(func)
        code = func.__code__
        is_async = self._is_async.get(code)
        if is_async is None:
            # Flask's own answer (an async function it cannot run raises, and is asked again).
            made = super().ensure_sync(func)
            self._is_async[code] = made is not func
            return made
        return super().ensure_sync(func) if is_async else func
