"""The Memcached operator as an Isobar reconciler plugin, in Python.

This module is the glue between the WIT contract (../../../wit/plugin.wit,
package isobar:plugin@0.1.0, world `reconciler`) and the operator itself,
which lives in memcached.py as plain Python. componentize-py builds the two
into one Wasm component (see build.sh):

    componentize-py -d ../../../wit -w reconciler componentize app -o memcached.wasm

and generates the `wit_world` bindings imported below. WIT maps to Python as
componentize-py does it:

    export interface `reconciliation` -> class Reconciliation, named so, in this module
    records              -> dataclasses with snake_case fields (api-version -> api_version)
    enums                -> Enum classes                     (EventType.WARNING)
    variants             -> one dataclass per case           (Action_Apply(value=...))
    option<T>            -> T or None
    result<T, E>         -> return the T; raise Err(E) for the error
    imported interfaces  -> modules of functions             (store.get, store.list)
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.reconciliation import (
    Action,
    Action_AddFinalizer,
    Action_Apply,
    Action_Delete,
    Action_Event,
    Action_PatchStatus,
    Action_RemoveFinalizer,
    Event,
    EventType,
    ObjectId,
    ReconcilerInfo,
)
from wit_world.imports import store
from wit_world.imports.types import Error, KindRef, Object

import memcached


class Reconciliation(exports.Reconciliation):
    def describe(self) -> ReconcilerInfo:
        return ReconcilerInfo(
            name=memcached.NAME,
            version=memcached.VERSION,
            reconciles=KindRef(*memcached.MEMCACHED),
            owns=[KindRef(*memcached.DEPLOYMENT)],
            watches=[KindRef(*memcached.POD)],
        )

    def reconcile(self, object: Object) -> list[Action]:
        try:
            actions = memcached.reconcile(object.json, HostStore())
        except memcached.InvalidObject as error:
            where = f"{object.namespace}/{object.name}" if object.namespace else object.name
            raise Err(Error(reason="InvalidObject", message=f"Memcached {where}: {error}")) from None
        return [to_wit(action) for action in actions]


class HostStore:
    """memcached.Store over the host's `store` import. Every read is recorded
    by the host: a change to what was read reconciles the Memcached again."""

    def get(self, api_version, kind, namespace, name):
        found = store.get(api_version, kind, namespace, name)
        return None if found is None else memcached.parse_json(found.json)

    def list(self, api_version, kind, namespace):
        return [memcached.parse_json(found.json) for found in store.list(api_version, kind, namespace)]


EVENT_TYPES = {"Normal": EventType.NORMAL, "Warning": EventType.WARNING}


def to_wit(action: memcached.Action) -> Action:
    match action:
        case memcached.Apply(object=child):
            return Action_Apply(to_json(child))
        case memcached.PatchStatus(status=status):
            return Action_PatchStatus(to_json(status))
        case memcached.Event(type=event_type, reason=reason, message=message):
            return Action_Event(Event(EVENT_TYPES[event_type], reason, message))
        case memcached.AddFinalizer(finalizer=finalizer):
            return Action_AddFinalizer(finalizer)
        case memcached.RemoveFinalizer(finalizer=finalizer):
            return Action_RemoveFinalizer(finalizer)
        case memcached.Delete(api_version=api_version, kind=kind, namespace=namespace, name=name):
            return Action_Delete(ObjectId(api_version, kind, namespace, name))
    raise TypeError(f"not an action: {action!r}")


def to_json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
