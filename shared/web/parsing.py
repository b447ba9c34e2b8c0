"""Strict input: one JSON document exactly, no unknown fields, no repeated query keys, only the
headers a route names, and errors that never repeat a submitted value.

`StrictParser` is the webargs parser flask-smorest's `Blueprint.arguments` uses (see
shared/web/openapi.py): it loads each location through the functions below instead of webargs'
lenient defaults, so a route's declared schema is both what is enforced and what is documented.
"""

import json
import re
from collections.abc import Mapping
from typing import Any, NoReturn, cast

from flask import Request, request
from marshmallow import RAISE, Schema, ValidationError
from webargs.flaskparser import FlaskParser

from shared.web.errors import ApiError

# Unknown field names shown back in an error: short identifiers only. A long or odd "name" may be
# a token pasted into the wrong place, and error bodies never repeat a submitted secret.
_SHOWN_UNKNOWN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}\Z")


class StrictSchema(Schema):
    """Rejects unknown fields, and never repeats an input that might be a secret in its errors."""

    class Meta:
        unknown = RAISE

    def handle_error(
        self, error: ValidationError, data: object, *, many: bool, **kwargs: object
    ) -> None:
        # A fresh error: marshmallow's own keeps the whole input (`.data`), secrets included.
        messages = error.messages
        if isinstance(messages, dict) and not many:
            messages = _hide_odd_unknown_names(messages, self)
        raise ValidationError(messages)


def _hide_odd_unknown_names(messages: dict[str, Any], schema: Schema) -> dict[str, Any]:
    known = {field.data_key or name for name, field in schema.load_fields.items()}
    shown: dict[str, Any] = {}
    hidden = 0
    for key, value in messages.items():
        if key in known or key == "_schema" or _SHOWN_UNKNOWN.match(str(key)):
            shown[key] = value
        else:
            hidden += 1
    if hidden:
        shown.setdefault("_schema", []).append(f"{hidden} unknown field(s), names not shown")
    return shown


def json_body() -> object:
    """The request's JSON document, parsed strictly.

    415 unless declared application/json; 413 past the app's MAX_CONTENT_LENGTH (werkzeug raises
    it while reading); 400 for anything that is not exactly one JSON document in UTF-8, including
    duplicate keys (which a lenient parser resolves silently, last one wins), NaN and Infinity
    (not JSON), and nesting deep enough to exhaust the decoder. No error repeats the body.
    """
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "the body must be application/json")
    raw = request.get_data(cache=False)
    try:
        return json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_not_json
        )
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "malformed_json", "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "malformed_json", "the request body nests too deeply") from None


def query_args() -> dict[str, str]:
    """The query string as a dict for a schema to load; a key given twice is a 422, not a guess."""
    repeated = [key for key in request.args if len(request.args.getlist(key)) > 1]
    if repeated:
        raise ValidationError({key: ["given more than once"] for key in repeated})
    return request.args.to_dict()


def present_headers(*names: str) -> dict[str, str]:
    """Only the named headers, for a schema to load: never the Authorization header by accident."""
    return {name: request.headers[name] for name in names if name in request.headers}


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate key")
    return document


def _not_json(_constant: str) -> None:
    raise ValueError("NaN and Infinity are not JSON")


class StrictParser(FlaskParser):
    """webargs' Flask parser with this module's rules at every location.

    - `json`: `json_body()` (415, 413, 400 as it says); `json_or_empty`: the same, except that an
      empty body reads as `{}` (for a POST whose body is optional).
    - `query`: `query_args()` (a repeated key is a 422).
    - `headers`: only the headers the schema names (`present_headers`).
    - Unknown fields: the schema's own setting (StrictSchema: RAISE) at every location, where
      webargs would otherwise drop unknown query and header fields silently.
    - A validation failure leaves as a plain marshmallow ValidationError with the schema's
      messages, for the service's error handler to answer as today's 422 (webargs would abort
      with its own body, keyed by location).
    """

    DEFAULT_UNKNOWN_BY_LOCATION: dict[str, str | None] = {}
    __location_map__ = {**FlaskParser.__location_map__, "json_or_empty": "load_json_or_empty"}

    def load_json(self, req: Request, schema: Schema) -> object:
        return json_body()

    def load_json_or_empty(self, req: Request, schema: Schema) -> object:
        return json_body() if req.get_data() else {}

    def load_querystring(self, req: Request, schema: Schema) -> Mapping[str, str]:
        return query_args()

    def load_headers(self, req: Request, schema: Schema) -> Mapping[str, str]:
        return present_headers(*(f.data_key or name for name, f in schema.load_fields.items()))

    def handle_error(
        self,
        error: ValidationError,
        req: Request,
        schema: Schema,
        *,
        error_status_code: int | None,
        error_headers: Mapping[str, str] | None,
    ) -> NoReturn:
        # webargs keyed the messages by location ({"json": {...}}); the error shape does not.
        (messages,) = cast(dict[str, Any], error.messages).values()
        raise ValidationError(messages)
