"""Unit tests of the Memcached operator's logic (memcached.py), one group per
numbered rule of ../README.md. Plain CPython, no component needed:

    python3 -m unittest        # from this directory
"""

import json
import unittest

import memcached
from memcached import (
    AddFinalizer,
    Apply,
    Delete,
    Event,
    InvalidObject,
    PatchStatus,
    RemoveFinalizer,
)

NS = "shop"
NAME = "cache"
FINALIZER = "cache.example.com/finalizer"
SELECTOR = {"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": NAME}


class FakeStore:
    """memcached.Store over a list of objects, recording every read."""

    def __init__(self, *objects):
        self.objects = list(objects)
        self.reads = []

    def get(self, api_version, kind, namespace, name):
        self.reads.append(("get", api_version, kind, namespace, name))
        for obj in self.objects:
            meta = obj["metadata"]
            if (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]) == (
                api_version,
                kind,
                namespace,
                name,
            ):
                return obj
        return None

    def list(self, api_version, kind, namespace):
        self.reads.append(("list", api_version, kind, namespace))
        return [
            obj
            for obj in self.objects
            if (obj["apiVersion"], obj["kind"]) == (api_version, kind)
            and (namespace is None or obj["metadata"].get("namespace", "") == namespace)
        ]


def memcached_json(size=3, finalizers=(FINALIZER,), deleting=False, spec=None):
    metadata = {"name": NAME, "namespace": NS, "uid": "u-1", "generation": 2}
    if finalizers is not None:
        metadata["finalizers"] = list(finalizers)
    if deleting:
        metadata["deletionTimestamp"] = "2024-05-01T10:00:00Z"
    if spec is None:
        spec = {"size": size}
    return json.dumps(
        {"apiVersion": "cache.example.com/v1alpha1", "kind": "Memcached", "metadata": metadata, "spec": spec}
    )


def existing_deployment(replicas=3, available=None, namespace=NS, name=NAME):
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas},
    }
    if replicas is None:
        del obj["spec"]["replicas"]
    if available is not None:
        obj["status"] = {"availableReplicas": available}
    return obj


def pod(name, labels=SELECTOR, namespace=NS):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)}}


def available(status, reason, message, nodes=()):
    return PatchStatus(
        {
            "nodes": list(nodes),
            "conditions": [{"type": "Available", "status": status, "reason": reason, "message": message}],
        }
    )


def invalid_size(got):
    message = f"spec.size must be an integer from 0 to 100, got {got}"
    return [
        PatchStatus(
            {
                "nodes": [],
                "conditions": [{"type": "Available", "status": "False", "reason": "InvalidSize", "message": message}],
            }
        ),
        Event("Warning", "InvalidSize", message),
    ]


def expected_deployment(size, name=NAME, namespace=NS):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "memcached",
                "app.kubernetes.io/instance": name,
                "app.kubernetes.io/managed-by": "isobar",
            },
        },
        "spec": {
            "replicas": size,
            "selector": {
                "matchLabels": {"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": name}
            },
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": name}},
                "spec": {
                    "containers": [
                        {
                            "name": "memcached",
                            "image": "memcached:1.6.26-alpine3.19",
                            "command": ["memcached", "--memory-limit=64", "-o", "modern", "-v"],
                            "ports": [{"containerPort": 11211, "name": "memcached"}],
                        }
                    ]
                },
            },
        },
    }


class Describe(unittest.TestCase):
    def test_names_the_kinds(self):
        self.assertEqual(memcached.NAME, "memcached")
        self.assertEqual(memcached.VERSION, "0.1.0")
        self.assertEqual(memcached.MEMCACHED, ("cache.example.com/v1alpha1", "Memcached"))
        self.assertEqual(memcached.DEPLOYMENT, ("apps/v1", "Deployment"))
        self.assertEqual(memcached.POD, ("v1", "Pod"))


class Rule1Deletion(unittest.TestCase):
    def test_with_finalizer_deletes_the_deployment_then_removes_the_finalizer(self):
        store = FakeStore(existing_deployment())
        actions = memcached.reconcile(memcached_json(deleting=True), store)
        self.assertEqual(
            actions,
            [
                Event("Normal", "Deleting", "Deleting Deployment cache"),
                Delete("apps/v1", "Deployment", NS, NAME),
                RemoveFinalizer(FINALIZER),
            ],
        )
        self.assertEqual(store.reads, [])

    def test_among_other_finalizers(self):
        actions = memcached.reconcile(
            memcached_json(deleting=True, finalizers=["other.io/keep", FINALIZER]), FakeStore()
        )
        self.assertEqual(actions[-1], RemoveFinalizer(FINALIZER))
        self.assertEqual(len(actions), 3)

    def test_without_our_finalizer_does_nothing(self):
        for finalizers in (None, [], ["other.io/keep"]):
            with self.subTest(finalizers=finalizers):
                store = FakeStore(existing_deployment())
                self.assertEqual(memcached.reconcile(memcached_json(deleting=True, finalizers=finalizers), store), [])
                self.assertEqual(store.reads, [])

    def test_comes_before_size_validation(self):
        actions = memcached.reconcile(memcached_json(size="big", deleting=True), FakeStore())
        self.assertEqual([type(a) for a in actions], [Event, Delete, RemoveFinalizer])
        self.assertEqual(memcached.reconcile(memcached_json(size="big", deleting=True, finalizers=[]), FakeStore()), [])

    def test_null_deletion_timestamp_is_not_set(self):
        obj = json.loads(memcached_json())
        obj["metadata"]["deletionTimestamp"] = None
        actions = memcached.reconcile(json.dumps(obj), FakeStore())
        self.assertIsInstance(actions[0], Apply)


class Rule2Finalizer(unittest.TestCase):
    def test_added_first_when_missing(self):
        for finalizers in (None, [], ["other.io/keep"]):
            with self.subTest(finalizers=finalizers):
                actions = memcached.reconcile(memcached_json(finalizers=finalizers), FakeStore())
                self.assertEqual(actions[0], AddFinalizer(FINALIZER))
                self.assertIsInstance(actions[1], Apply)

    def test_not_added_when_present(self):
        actions = memcached.reconcile(memcached_json(), FakeStore())
        self.assertNotIn(AddFinalizer(FINALIZER), actions)
        self.assertIsInstance(actions[0], Apply)

    def test_added_before_an_invalid_size_is_reported(self):
        actions = memcached.reconcile(memcached_json(size=-1, finalizers=[]), FakeStore())
        self.assertEqual(actions, [AddFinalizer(FINALIZER), *invalid_size("-1")])


class Rule3InvalidSize(unittest.TestCase):
    def test_values_that_are_not_an_integer_from_0_to_100(self):
        cases = [
            (-1, "-1"),
            (101, "101"),
            (1000, "1000"),
            ("3", '"3"'),
            (3.5, "3.5"),
            (3.0, "3.0"),
            (True, "true"),
            (None, "null"),
            ([1], "[1]"),
            ({"b": 1, "a": "é"}, '{"a":"é","b":1}'),
        ]
        for size, got in cases:
            with self.subTest(size=size):
                store = FakeStore(existing_deployment())
                self.assertEqual(memcached.reconcile(memcached_json(size=size), store), invalid_size(got))

    def test_numbers_are_read_and_written_as_serde_json_does(self):
        # The Rust implementation's messages, for the same JSON text.
        cases = [
            ("-0", "-0.0"),
            ("100000000000000000000", "1e+20"),
            ("1e300", "1e+300"),
            ("1e2", "100.0"),
            ("0.00001", "0.00001"),
            ("0.000012", "0.000012"),
            ("1e-7", "1e-7"),
            ("-2.5e-6", "-2.5e-6"),
            ("1e15", "1000000000000000.0"),
            ("1e16", "1e+16"),
        ]
        for text, got in cases:
            with self.subTest(size=text):
                memcached_text = memcached_json(size="SIZE").replace('"SIZE"', text)
                self.assertEqual(memcached.reconcile(memcached_text, FakeStore()), invalid_size(got))

    def test_missing_size_or_spec_is_null(self):
        for spec in ({}, {"replicas": 3}, "nonsense"):
            with self.subTest(spec=spec):
                self.assertEqual(memcached.reconcile(memcached_json(spec=spec), FakeStore()), invalid_size("null"))
        obj = json.loads(memcached_json())
        del obj["spec"]
        self.assertEqual(memcached.reconcile(json.dumps(obj), FakeStore()), invalid_size("null"))

    def test_the_bounds_are_valid(self):
        for size in (0, 100):
            with self.subTest(size=size):
                actions = memcached.reconcile(memcached_json(size=size), FakeStore())
                self.assertEqual(actions[0], Apply(expected_deployment(size)))


class Rule4Deployment(unittest.TestCase):
    def test_applies_the_deployment(self):
        actions = memcached.reconcile(memcached_json(size=3), FakeStore())
        self.assertEqual(actions[0], Apply(expected_deployment(3)))

    def test_named_after_the_memcached(self):
        obj = json.loads(memcached_json(size=7))
        obj["metadata"].update(name="other", namespace="elsewhere")
        actions = memcached.reconcile(json.dumps(obj), FakeStore())
        self.assertEqual(actions[0], Apply(expected_deployment(7, name="other", namespace="elsewhere")))


class Rule5Status(unittest.TestCase):
    def status(self, store, size=3):
        actions = memcached.reconcile(memcached_json(size=size), store)
        self.assertIsInstance(actions[1], PatchStatus)
        return actions[1]

    def test_nodes_are_the_sorted_names_of_our_pods(self):
        store = FakeStore(
            pod("cache-b"),
            pod("cache-a"),
            pod("cache-c", labels={**SELECTOR, "pod-template-hash": "abc"}),
            pod("other-instance", labels={**SELECTOR, "app.kubernetes.io/instance": "other"}),
            pod("name-only", labels={"app.kubernetes.io/name": "memcached"}),
            pod("instance-only", labels={"app.kubernetes.io/instance": NAME}),
            pod("unlabelled", labels={}),
            pod("other-namespace", namespace="elsewhere"),
            existing_deployment(available=3),
        )
        self.assertEqual(
            self.status(store),
            available("True", "MinimumReplicasAvailable", "3/3 replicas available", ["cache-a", "cache-b", "cache-c"]),
        )
        self.assertIn(("list", "v1", "Pod", NS), store.reads)
        self.assertIn(("get", "apps/v1", "Deployment", NS, NAME), store.reads)

    def test_no_deployment_means_none_available(self):
        self.assertEqual(
            self.status(FakeStore()), available("False", "ReplicasUnavailable", "0/3 replicas available")
        )

    def test_deployment_without_status_means_none_available(self):
        self.assertEqual(
            self.status(FakeStore(existing_deployment())),
            available("False", "ReplicasUnavailable", "0/3 replicas available"),
        )

    def test_some_available(self):
        self.assertEqual(
            self.status(FakeStore(existing_deployment(available=2))),
            available("False", "ReplicasUnavailable", "2/3 replicas available"),
        )

    def test_more_available_than_wanted_is_not_available(self):
        self.assertEqual(
            self.status(FakeStore(existing_deployment(available=5)), size=3),
            available("False", "ReplicasUnavailable", "5/3 replicas available"),
        )

    def test_size_zero_with_nothing_available(self):
        self.assertEqual(
            self.status(FakeStore(), size=0), available("True", "MinimumReplicasAvailable", "0/0 replicas available")
        )

    def test_another_memcacheds_deployment_is_not_read_as_ours(self):
        store = FakeStore(existing_deployment(available=3, name="other"), existing_deployment(available=3, namespace="x"))
        self.assertEqual(self.status(store), available("False", "ReplicasUnavailable", "0/3 replicas available"))


class Rule6Events(unittest.TestCase):
    def events(self, store, size=3):
        return [a for a in memcached.reconcile(memcached_json(size=size), store) if isinstance(a, Event)]

    def test_created_when_there_is_no_deployment(self):
        self.assertEqual(self.events(FakeStore()), [Event("Normal", "Created", "Created Deployment cache with 3 replicas")])

    def test_scaled_when_replicas_differ(self):
        self.assertEqual(
            self.events(FakeStore(existing_deployment(replicas=1, available=1)), size=4),
            [Event("Normal", "Scaled", "Scaled Deployment cache from 1 to 4 replicas")],
        )
        self.assertEqual(
            self.events(FakeStore(existing_deployment(replicas=5)), size=0),
            [Event("Normal", "Scaled", "Scaled Deployment cache from 5 to 0 replicas")],
        )

    def test_nothing_when_nothing_changes(self):
        self.assertEqual(self.events(FakeStore(existing_deployment(replicas=3, available=3))), [])
        self.assertEqual(self.events(FakeStore(existing_deployment(replicas=3))), [])

    def test_missing_replicas_is_the_api_default_of_one(self):
        self.assertEqual(self.events(FakeStore(existing_deployment(replicas=None)), size=1), [])
        self.assertEqual(
            self.events(FakeStore(existing_deployment(replicas=None)), size=2),
            [Event("Normal", "Scaled", "Scaled Deployment cache from 1 to 2 replicas")],
        )


class WholeCalls(unittest.TestCase):
    """The complete action lists, in order, for the usual life of a Memcached."""

    def test_first_reconcile(self):
        actions = memcached.reconcile(memcached_json(size=3, finalizers=None), FakeStore())
        self.assertEqual(
            actions,
            [
                AddFinalizer(FINALIZER),
                Apply(expected_deployment(3)),
                available("False", "ReplicasUnavailable", "0/3 replicas available"),
                Event("Normal", "Created", "Created Deployment cache with 3 replicas"),
            ],
        )

    def test_steady_state(self):
        store = FakeStore(existing_deployment(replicas=2, available=2), pod("cache-2"), pod("cache-1"))
        self.assertEqual(
            memcached.reconcile(memcached_json(size=2), store),
            [
                Apply(expected_deployment(2)),
                available("True", "MinimumReplicasAvailable", "2/2 replicas available", ["cache-1", "cache-2"]),
            ],
        )

    def test_never_requeues(self):
        # There is no requeue action at all: every action is one of the spec's.
        for store in (FakeStore(), FakeStore(existing_deployment(replicas=1))):
            for action in memcached.reconcile(memcached_json(size=3), store):
                self.assertIsInstance(action, (AddFinalizer, Apply, PatchStatus, Event))


class MalformedObject(unittest.TestCase):
    def test_json_that_does_not_parse(self):
        for text in ("", "{", "not json", '{"metadata": }'):
            with self.subTest(text=text):
                with self.assertRaises(InvalidObject):
                    memcached.reconcile(text, FakeStore())

    def test_json_that_python_alone_would_accept(self):
        for text in ('{"spec": {"size": NaN}}', '{"spec": {"size": Infinity}}', '{"spec": {"size": 1e999}}'):
            with self.subTest(text=text):
                with self.assertRaises(InvalidObject):
                    memcached.reconcile(text, FakeStore())

    def test_json_that_is_not_an_object(self):
        for text in ("[]", "3", '"Memcached"', "null"):
            with self.subTest(text=text):
                with self.assertRaises(InvalidObject):
                    memcached.reconcile(text, FakeStore())

    def test_odd_shapes_inside_are_tolerated(self):
        obj = json.loads(memcached_json(finalizers=None))
        obj["metadata"]["finalizers"] = "cache.example.com/finalizer"  # not a list: no finalizer
        actions = memcached.reconcile(json.dumps(obj), FakeStore(pod("p", labels={}), existing_deployment(available="3")))
        self.assertEqual(actions[0], AddFinalizer(FINALIZER))
        self.assertEqual(actions[2], available("False", "ReplicasUnavailable", "0/3 replicas available"))


if __name__ == "__main__":
    unittest.main()
