"""The response-headers policy as an Isobar plugin: glue between the WIT
contract (../../wit/plugin-0.2.wit, isobar:plugin@0.2.0, world `policy`) and
the logic in headers.py. componentize-py builds both into one component
(build.sh):

    componentize-py -d ../../wit/plugin-0.2.wit -w policy componentize app -o OUT.wasm

WIT maps to Python as componentize-py does it: records -> dataclasses with
snake_case fields, enums -> Enum classes, option<T> -> T or None, result ->
return the value or raise Err(error), imports -> modules of functions.
"""

import json
from dataclasses import replace

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.transformation import PolicyInfo, PolicyOutput
from wit_world.imports import store
from wit_world.imports.types import (
    Diagnostic,
    Error,
    HeaderChanges,
    HeaderValue,
    KindRef,
    ObjectRef,
    Severity,
)

import headers

VERSION = "0.1.0"


class Transformation(exports.Transformation):
    def describe(self):
        return PolicyInfo(
            name="headers-py",
            version=VERSION,
            reads=[KindRef(headers.INGRESS_API_VERSION, headers.INGRESS_KIND)],
            listeners=[],
            domains=[],
        )

    def configure(self, config):
        # No settings; anything but {} is refused so that a typo is seen.
        try:
            parsed = json.loads(config)
        except ValueError as e:
            raise Err(Error("InvalidConfig", f"configuration is not JSON: {e}"))
        if parsed != {}:
            raise Err(Error("InvalidConfig", "headers-py takes no configuration ({} expected)"))

    def apply(self, host):
        try:
            return _apply(host)
        except Err:
            raise
        except Exception as e:  # a bug: an error the host shows, not a trap
            raise Err(Error("PluginError", f"virtual host {host.listener}/{host.domain}: {type(e).__name__}: {e}"))


def _get_ingress(namespace, name):
    obj = store.get(headers.INGRESS_API_VERSION, headers.INGRESS_KIND, namespace, name)
    return json.loads(obj.json) if obj is not None else None


def _apply(host):
    plan = headers.Plan(_get_ingress)
    routes = []
    for route in host.routes:
        add = plan.headers_for(route.source)
        if add:
            changes = route.response_headers or HeaderChanges(set=[], add=[], remove=[])
            merged = headers.merge_set([(h.name, h.value) for h in changes.set], add)
            changes = replace(changes, set=[HeaderValue(n, v) for n, v in merged])
            route = replace(route, response_headers=changes)
        routes.append(route)
    diagnostics = [
        Diagnostic(
            object=ObjectRef(headers.INGRESS_API_VERSION, headers.INGRESS_KIND, ns, name),
            severity=Severity.WARNING,
            reason="InvalidResponseHeader",
            message=message,
        )
        for ns, name, message in plan.problems
    ]
    return PolicyOutput(host=replace(host, routes=routes), diagnostics=diagnostics)
