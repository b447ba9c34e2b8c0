"""shared/web/parsing.py: StrictParser remembers what a query string loaded to, for the schemas that
declare their query load pure, and for nothing else."""

import logging

import pytest
from flask import jsonify
from marshmallow import fields, validate

from shared.web import (
    ApiBlueprint,
    App,
    StrictParser,
    StrictSchema,
    install_error_handler,
    new_api,
    parsing,
)


class PageQuery(StrictSchema):
    PURE_QUERY = True
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 200))
    tenant = fields.String()


class ImpureQuery(StrictSchema):
    limit = fields.Integer(load_default=50)


class ListValuedQuery(StrictSchema):
    PURE_QUERY = True
    tags = fields.List(fields.String(), load_default=lambda: ["a"])


@pytest.fixture
def loads(monkeypatch):
    """Every query string a schema actually loaded (not answered from memory)."""
    seen: list[str] = []
    real = StrictParser.load_querystring

    def counting(self, req, schema):
        seen.append(req.query_string.decode())
        return real(self, req, schema)

    monkeypatch.setattr(StrictParser, "load_querystring", counting)
    return seen


@pytest.fixture
def client():
    app = App(__name__)
    install_error_handler(app, (), logging.getLogger("test"))
    api = new_api(app, title="t", description="t", errors={})
    bp = ApiBlueprint("t", __name__)
    bp.ARGUMENTS_PARSER = StrictParser()  # a parser of this test's own: nothing remembered yet

    @bp.route("/pure")
    @bp.arguments(PageQuery(), location="query")
    def pure(query):
        answer = dict(query)
        query["limit"] = -1  # a view that changes its arguments changes only its own copy
        return jsonify(answer)

    @bp.route("/impure")
    @bp.arguments(ImpureQuery(), location="query")
    def impure(query):
        return jsonify(query)

    @bp.route("/lists")
    @bp.arguments(ListValuedQuery(), location="query")
    def lists(query):
        query["tags"].append("changed")
        return jsonify(query)

    api.register_blueprint(bp)
    client = app.test_client()
    client.parser = bp.ARGUMENTS_PARSER
    return client


def test_a_pure_query_string_is_loaded_once_and_each_request_gets_its_own_copy(client, loads):
    for _ in range(3):
        response = client.get("/pure?limit=7&tenant=acme")
        assert response.status_code == 200
        assert response.get_json() == {"limit": 7, "tenant": "acme"}
    assert loads == ["limit=7&tenant=acme"]
    # Another query string is another load; the defaults are part of what is remembered.
    assert client.get("/pure").get_json() == {"limit": 50}
    assert client.get("/pure").get_json() == {"limit": 50}
    assert loads == ["limit=7&tenant=acme", ""]


def test_a_query_string_that_fails_is_refused_every_time_and_never_remembered(client, loads):
    for _ in range(2):
        assert client.get("/pure?limit=0").status_code == 422
        assert client.get("/pure?limit=1&limit=2").status_code == 422
        assert client.get("/pure?other=1").status_code == 422
    assert len(loads) == 6


def test_a_schema_that_does_not_declare_its_load_pure_is_loaded_every_time(client, loads):
    for _ in range(3):
        assert client.get("/impure?limit=3").get_json() == {"limit": 3}
    assert len(loads) == 3


def test_a_load_with_a_mutable_value_is_not_remembered(client, loads):
    for _ in range(2):
        assert client.get("/lists").get_json() == {"tags": ["a", "changed"]}
    assert len(loads) == 2


def test_what_is_remembered_stays_bounded(client, loads, monkeypatch):
    monkeypatch.setattr(parsing, "QUERY_LOADS_KEPT", 4)
    for limit in range(1, 11):
        assert client.get(f"/pure?limit={limit}").get_json() == {"limit": limit}
    assert len(client.parser._query_loads) <= 4
    # Forgotten loads are simply loaded again.
    assert client.get("/pure?limit=1").get_json() == {"limit": 1}
    assert len(loads) == 11
