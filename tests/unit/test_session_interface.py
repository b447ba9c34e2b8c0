"""services/api/auth.py's session interface: Flask's signed-cookie sessions, the cookie parsed only
when the request carries one."""

from flask import Flask, session
from werkzeug.wrappers import Request

from services.api.auth import CachedSerializerSessionInterface


def make_app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "k" * 32
    app.session_interface = CachedSerializerSessionInterface()

    @app.post("/in")
    def sign_in():
        session["sid"] = "s1"
        return "in"

    @app.get("/who")
    def who():
        return session.get("sid", "nobody")

    return app


def test_a_request_without_cookies_gets_a_new_empty_session_and_no_cookie_is_parsed(monkeypatch):
    app = make_app()
    parsed = []
    real = Request.cookies.fget
    monkeypatch.setattr(
        Request, "cookies", property(lambda request: parsed.append(1) or real(request))
    )
    response = app.test_client(use_cookies=False).get("/who")
    assert response.data == b"nobody"
    assert "Set-Cookie" not in response.headers
    assert parsed == []


def test_a_session_cookie_is_still_read_and_a_forged_one_refused():
    app = make_app()
    client = app.test_client()
    client.post("/in")
    assert client.get("/who").data == b"s1"
    forged = app.test_client(use_cookies=False)
    assert forged.get("/who", headers={"Cookie": "session=forged.value"}).data == b"nobody"


def test_without_a_secret_key_there_is_no_session_as_in_flask():
    app = make_app()
    app.secret_key = None
    assert app.session_interface.open_session(app, app.test_request_context().request) is None
