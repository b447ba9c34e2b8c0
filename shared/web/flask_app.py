"""The Flask class the services build their apps from."""

import inspect
from collections.abc import Callable
from typing import Any

from flask import Flask

# Hooks, views and error handlers are registered once: far fewer than this.
_MAX_CACHED = 1024


class App(Flask):
    """Flask, with `ensure_sync`'s answer kept per function. Flask asks it of every hook and view on
    every request, and each answer is an `inspect.iscoroutinefunction` check (a tenth of a short
    request's Python was these checks); a function's answer cannot change."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync_functions[func]
        except KeyError:
            made = super().ensure_sync(func)
            # Only plain functions: a bound method or a view object made per request (Flask's
            # View.as_view, an after_this_request closure is a function too but is called once)
            # would be kept alive by the cache, with whatever it holds.
            if inspect.isfunction(func) and len(self._sync_functions) < _MAX_CACHED:
                self._sync_functions[func] = made
            return made
        except TypeError:  # an unhashable callable
            return super().ensure_sync(func)
