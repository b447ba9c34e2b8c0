"""shared/web/openapi.py's error_responses: the statuses documented, the view not wrapped."""

from flask import jsonify

from shared.web import ApiBlueprint, App, error_responses, new_api


def test_error_statuses_are_documented_without_wrapping_the_view():
    app = App(__name__)
    api = new_api(app, title="t", description="t", errors={"401": "no token", "503": "down"})
    bp = ApiBlueprint("t", __name__)

    def view():
        """A route"""
        return jsonify({})

    documented = error_responses(bp, 401, 503)(view)
    # The route runs the view itself: no wrapper per status to call through on every request.
    assert documented is view
    bp.route("/thing")(bp.response(200, description="ok")(documented))
    api.register_blueprint(bp)

    assert app.test_client().get("/thing").status_code == 200
    responses = api.spec.to_dict()["paths"]["/thing"]["get"]["responses"]
    assert responses["401"] == {"$ref": "#/components/responses/Error401"}
    assert responses["503"] == {"$ref": "#/components/responses/Error503"}
    assert "200" in responses
