"""The OpenAPI spec documents exactly the routes the fedhub API serves, with their scopes."""

import re

import yaml
from openapi_spec_validator import validate

from fedhub.hub.service.app import OPENAPI_PATH, ROUTES, make_app
from fedhub.hub.hubconfig import FEDHUB_SCOPES

SPEC = yaml.safe_load(OPENAPI_PATH.read_text())
VERBS = {"get", "post", "put", "patch", "delete"}


def route_template(path: str) -> str:
    return "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path)


def test_spec_is_valid_openapi():
    validate(SPEC)


def test_every_route_is_in_the_spec_and_every_spec_path_is_served():
    served = {}
    for path, handler in ROUTES:
        verbs = {v for v in VERBS if getattr(handler, v) is not getattr(handler.__mro__[-2], v, None)
                 and v in handler.__dict__}
        served[route_template(path)] = verbs
    documented = {p: {v for v in ops if v in VERBS} for p, ops in SPEC["paths"].items()}
    assert served == documented


def test_spec_scopes_match_handlers_and_are_declared_custom_scopes():
    for path, handler in ROUTES:
        for verb, op in SPEC["paths"][route_template(path)].items():
            if verb not in VERBS:
                continue
            scope = handler.scope_for(verb)
            assert op.get("x-fedhub-scope", "") == scope, (path, verb)
            if scope:
                assert scope in FEDHUB_SCOPES, (path, verb)
                assert "403" in op["responses"], (path, verb)


def test_app_registers_every_route_under_the_service_prefix():
    app = make_app("/nonexistent", prefix="/services/fedhub/")
    patterns = [r.matcher.regex.pattern for r in app.wildcard_router.rules]
    for path, _ in ROUTES:
        assert any(p.startswith("/services/fedhub/" + path.split("(")[0]) for p in patterns), path
