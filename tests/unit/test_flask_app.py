"""shared/web/flask_app.py: Flask with `ensure_sync` answered once per function definition."""

import asyncio
from types import CodeType

import flask.app
import pytest

from shared.web import App


def test_ensure_sync_is_asked_of_inspect_once_per_function(monkeypatch):
    app = App(__name__)
    calls = []
    real = flask.app.iscoroutinefunction
    monkeypatch.setattr(
        flask.app, "iscoroutinefunction", lambda func: calls.append(func) or real(func)
    )

    def view():
        return "ok"

    app.add_url_rule("/", "view", view)
    client = app.test_client()
    for _ in range(5):
        assert client.get("/").data == b"ok"
    assert calls.count(view) == 1


def test_an_async_function_is_still_recognised_and_an_unhashable_callable_still_answered():
    app = App(__name__)

    async def slow():
        await asyncio.sleep(0)

    # Without asgiref installed Flask refuses to run an async function: so does the cache, each
    # time (it never hands the coroutine function back as if it were a plain one).
    for _ in range(2):
        with pytest.raises(RuntimeError, match="async"):
            app.ensure_sync(slow)

    class Unhashable:
        __hash__ = None

        def __call__(self):
            return "called"

    assert app.ensure_sync(Unhashable())() == "called"


def test_only_plain_functions_are_kept():
    app = App(__name__)

    class Handler:
        def handle(self):
            return "handled"

    handler = Handler()
    assert app.ensure_sync(handler.handle)() == "handled"

    def plain():
        return "plain"

    assert app.ensure_sync(plain)() == "plain"
    # A bound method (or a per-request view object) would be kept alive, with what it holds:
    # only code objects are kept.
    assert plain.__code__ in app._is_async
    assert all(isinstance(code, CodeType) for code in app._is_async)


def test_closures_made_per_request_share_one_entry_and_are_not_kept():
    app = App(__name__)

    def hook_for(value):
        def hook():
            return value

        return hook

    hooks = [hook_for(n) for n in range(100)]
    assert [app.ensure_sync(hook)() for hook in hooks] == list(range(100))
    assert len(app._is_async) == 1
