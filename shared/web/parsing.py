"""Strict input: one JSON document exactly, no unknown fields, no repeated query keys, only the
headers a route names, and errors that never repeat a submitted value.

`StrictParser` is the webargs parser flask-smorest's `Blueprint.arguments` uses (see
shared/web/openapi.py): it loads each location through the functions below instead of webargs'
lenient defaults, so a route's declared schema is both what is enforced and what is documented.
"""

import enum
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
    """Rejects unknown fields, and never repeats an input that might be a secret in its errors.

    A schema that sets `PURE_QUERY = True` declares that loading a query string gives the same
    result every time (no callable default, no hook that reads anything else): `StrictParser`
    then remembers what each query string loaded to, and a route polled with the same query
    (the dashboard's list, a script's) is not validated afresh on every request.
    """

    PURE_QUERY = False

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


# Distinct query strings whose loads StrictParser keeps, per parser.
QUERY_LOADS_KEPT = 512
_IMMUTABLE = (str, int, float, bool, enum.Enum, type(None))


def _pure_query(argmap: object, location: str | None, validate: object) -> bool:
    schema = argmap if isinstance(argmap, type) else type(argmap)
    return (
        location in ("query", "querystring")
        and validate is None
        and isinstance(schema, type)
        and issubclass(schema, StrictSchema)
        and schema.PURE_QUERY
    )


def _all_immutable(loaded: object) -> bool:
    return isinstance(loaded, dict) and all(isinstance(v, _IMMUTABLE) for v in loaded.values())


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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (schema, unknown, raw query string) -> what it loaded to: only successful loads whose
        # values are all immutable, so each caller gets a copy of the dict and nothing it can
        # change in the cache. Bounded by emptying it when full (one dict operation at a time:
        # safe across the gateway's threads).
        self._query_loads: dict[tuple[object, object, bytes], dict[str, object]] = {}

    def parse(
        self,
        argmap: Any,
        req: Request | None = None,
        *,
        location: str | None = None,
        validate: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not _pure_query(argmap, location, validate):
            return super().parse(argmap, req, location=location, validate=validate, **kwargs)
        current = req if req is not None else request
        key = (argmap, kwargs.get("unknown"), current.query_string)
        loaded = self._query_loads.get(key)
        if loaded is None:
            loaded = super().parse(argmap, current, location=location, **kwargs)
            if not _all_immutable(loaded):
                return loaded
            if len(self._query_loads) >= QUERY_LOADS_KEPT:
                self._query_loads.clear()
            self._query_loads[key] = loaded
        return dict(loaded)

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
