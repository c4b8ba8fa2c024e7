"""The Memcached operator's control loop body, as plain Python.

This module is the whole policy of the plugin (see ../README.md for the
behaviour, rule by rule) and knows nothing about WebAssembly: `reconcile`
takes the Memcached object's JSON and a store to read other objects from, and
returns the actions the host should carry out. `app.py` is the thin layer that
connects it to the WIT contract; the unit tests (test_app.py) call this module
directly with a fake store.

Only the standard library is used, so the same code runs under CPython on a
laptop and inside the component that componentize-py builds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol, Union

NAME = "memcached"
VERSION = "0.1.0"  # the workspace version (../../../Cargo.toml), as the Rust build reports

MEMCACHED = ("cache.example.com/v1alpha1", "Memcached")
DEPLOYMENT = ("apps/v1", "Deployment")
POD = ("v1", "Pod")

FINALIZER = "cache.example.com/finalizer"
IMAGE = "memcached:1.6.26-alpine3.19"
MAX_SIZE = 100


# --- What the plugin asks the host to do ------------------------------------
#
# One class per case of the WIT `action` variant that this operator uses.
# Objects are kept as dicts here; app.py serialises them to JSON.


@dataclass(frozen=True)
class Apply:
    """Server-side apply of a child object."""

    object: dict[str, Any]


@dataclass(frozen=True)
class PatchStatus:
    """Server-side apply of the Memcached object's status."""

    status: dict[str, Any]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event on the Memcached object; type is "Normal" or "Warning"."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class AddFinalizer:
    finalizer: str


@dataclass(frozen=True)
class RemoveFinalizer:
    finalizer: str


@dataclass(frozen=True)
class Delete:
    """Delete an object this plugin owns."""

    api_version: str
    kind: str
    namespace: str
    name: str


Action = Union[Apply, PatchStatus, Event, AddFinalizer, RemoveFinalizer, Delete]


class InvalidObject(Exception):
    """The object handed to reconcile is not a JSON object."""


class Store(Protocol):
    """Read-only view of the host's cache (the WIT `store` import), with each
    object already parsed from its JSON."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def list(self, api_version: str, kind: str, namespace: str | None) -> list[dict[str, Any]]: ...


# --- The control loop body ---------------------------------------------------


def reconcile(object_json: str, store: Store) -> list[Action]:
    """Returns the actions that make the world match one Memcached object.

    Raises InvalidObject when object_json is not a JSON object.
    """
    memcached = parse_object(object_json)
    metadata = as_dict(memcached.get("metadata"))
    namespace = as_str(metadata.get("namespace"))
    name = as_str(metadata.get("name"))
    finalizers = metadata.get("finalizers")
    has_finalizer = isinstance(finalizers, list) and FINALIZER in finalizers

    # 1. Being deleted: clean up the Deployment, then let the object go.
    if metadata.get("deletionTimestamp") is not None:
        if not has_finalizer:
            return []
        return [
            Event("Normal", "Deleting", f"Deleting Deployment {name}"),
            Delete(*DEPLOYMENT, namespace, name),
            RemoveFinalizer(FINALIZER),
        ]

    actions: list[Action] = []

    # 2. Hold the object until its Deployment has been deleted.
    if not has_finalizer:
        actions.append(AddFinalizer(FINALIZER))

    # 3. A size the operator cannot act on: say so and change nothing.
    size = as_dict(memcached.get("spec")).get("size")
    if not is_valid_size(size):
        message = f"spec.size must be an integer from 0 to {MAX_SIZE}, got {to_json(size)}"
        actions.append(PatchStatus(memcached_status([], condition("False", "InvalidSize", message))))
        actions.append(Event("Warning", "InvalidSize", message))
        return actions

    # 4. The Deployment, as this operator wants it.
    actions.append(Apply(deployment(namespace, name, size)))

    # 5. Status: the pods that serve this Memcached, and whether enough
    #    replicas are available.
    existing = store.get(*DEPLOYMENT, namespace, name)
    available = 0
    if existing is not None:
        available = as_int(as_dict(existing.get("status")).get("availableReplicas"), default=0)
    if available == size:
        state, reason = "True", "MinimumReplicasAvailable"
    else:
        state, reason = "False", "ReplicasUnavailable"
    message = f"{available}/{size} replicas available"
    nodes = pod_names(store, namespace, name)
    actions.append(PatchStatus(memcached_status(nodes, condition(state, reason, message))))

    # 6. An event only when something changes.
    if existing is None:
        actions.append(Event("Normal", "Created", f"Created Deployment {name} with {size} replicas"))
    else:
        # The API server defaults spec.replicas to 1.
        replicas = as_int(as_dict(existing.get("spec")).get("replicas"), default=1)
        if replicas != size:
            actions.append(Event("Normal", "Scaled", f"Scaled Deployment {name} from {replicas} to {size} replicas"))

    return actions


# --- The objects it writes ---------------------------------------------------


def selector_labels(name: str) -> dict[str, str]:
    """The labels that tie a Memcached's pods to it."""
    return {
        "app.kubernetes.io/name": "memcached",
        "app.kubernetes.io/instance": name,
    }


def deployment(namespace: str, name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": DEPLOYMENT[0],
        "kind": DEPLOYMENT[1],
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**selector_labels(name), "app.kubernetes.io/managed-by": "isobar"},
        },
        "spec": {
            "replicas": size,
            "selector": {"matchLabels": selector_labels(name)},
            "template": {
                "metadata": {"labels": selector_labels(name)},
                "spec": {
                    "containers": [
                        {
                            "name": "memcached",
                            "image": IMAGE,
                            "command": ["memcached", "--memory-limit=64", "-o", "modern", "-v"],
                            "ports": [{"containerPort": 11211, "name": "memcached"}],
                        }
                    ]
                },
            },
        },
    }


def memcached_status(nodes: list[str], available: dict[str, str]) -> dict[str, Any]:
    # No lastTransitionTime or observedGeneration: the host stamps those.
    return {"nodes": nodes, "conditions": [available]}


def condition(state: str, reason: str, message: str) -> dict[str, str]:
    """The one condition this operator reports, Available; state is "True" or "False"."""
    return {"type": "Available", "status": state, "reason": reason, "message": message}


def pod_names(store: Store, namespace: str, name: str) -> list[str]:
    """The sorted names of the pods in namespace that carry both selector labels."""
    wanted = selector_labels(name)
    names = []
    for pod in store.list(*POD, namespace):
        metadata = as_dict(pod.get("metadata"))
        labels = as_dict(metadata.get("labels"))
        if all(labels.get(key) == value for key, value in wanted.items()):
            names.append(as_str(metadata.get("name")))
    return sorted(names)


# --- JSON, read and written as the Rust implementation does -----------------
#
# Both implementations of this plugin must produce the same messages for the
# same input, including "got <json of the value>". These helpers make
# Python's json module agree with serde_json where the two differ: which
# numbers are integers, and how floats are written.


def parse_json(text: str) -> Any:
    return json.loads(text, parse_int=json_int, parse_float=json_float, parse_constant=reject_constant)


def parse_object(text: str) -> dict[str, Any]:
    try:
        value = parse_json(text)
    except ValueError as error:
        raise InvalidObject(f"invalid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidObject("the JSON is not an object")
    return value


def json_int(text: str) -> int | float:
    # serde_json reads -0, and integers that do not fit 64 bits, as floats.
    value = int(text)
    if text == "-0" or not -(2**63) <= value < 2**64:
        return json_float(text)
    return value


def json_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number out of range: {text}")
    return value


def reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not.
    raise ValueError(f"{name} is not JSON")


def to_json(value: Any) -> str:
    """Compact JSON with object keys sorted, as the Rust implementation writes
    the values in its messages."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(key)}:{to_json(value[key])}" for key in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(item) for item in value) + "]"
    if isinstance(value, float):
        return float_to_json(value)
    return json.dumps(value, ensure_ascii=False)


def float_to_json(value: float) -> str:
    """A float as serde_json writes it. Python's repr has the same shortest
    digits and mostly the same notation, but pads exponents (1e-07 for 1e-7)
    and switches to an exponent one decade earlier (1e-05 for 0.00001)."""
    text = repr(value)
    mantissa, _, exponent = text.partition("e")
    if not exponent:
        return text
    power = int(exponent)
    if power == -5:
        return ("-" if value < 0 else "") + "0.0000" + mantissa.lstrip("-").replace(".", "")
    return f"{mantissa}e{power:+d}"


def is_valid_size(value: Any) -> bool:
    # bool is a subclass of int in Python, but JSON true is not a number.
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SIZE


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
