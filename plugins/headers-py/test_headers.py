"""Unit tests of the response-headers logic (headers.py). Plain CPython, no
component needed:

    python3 -m unittest        # from this directory
"""

import unittest
from types import SimpleNamespace

import headers
from headers import Plan, merge_set, parse


def ref(name, kind="Ingress", api_version="networking.k8s.io/v1", namespace="shop"):
    return SimpleNamespace(api_version=api_version, kind=kind, namespace=namespace, name=name)


def ingress(annotation=None):
    annotations = {} if annotation is None else {headers.ANNOTATION: annotation}
    return {"metadata": {"annotations": annotations}}


class FakeStore:
    """Plan's `get` over a dict of Ingresses, recording every read."""

    def __init__(self, **ingresses):
        self.ingresses, self.reads = ingresses, []

    def __call__(self, namespace, name):
        self.reads.append((namespace, name))
        return self.ingresses.get(name)


class ParseTest(unittest.TestCase):
    def test_pairs_in_order_whitespace_trimmed(self):
        self.assertEqual(
            parse(" X-Frame-Options: DENY ,Cache-Control:no-store, max-age=0 "),
            # A comma separates entries, so "max-age=0" is an entry of its own.
            ([("X-Frame-Options", "DENY"), ("Cache-Control", "no-store")], ['"max-age=0" is not "Name: value"']),
        )

    def test_token_characters_and_inner_spaces(self):
        self.assertEqual(parse("x-a_b.c~!#$%&'*+^`|: a  b\tc"), ([("x-a_b.c~!#$%&'*+^`|", "a  b\tc")], []))

    def test_empty_value_and_colon_in_value(self):
        self.assertEqual(parse("X-Empty:, Link: <https://a/b>; rel=x"), ([("X-Empty", ""), ("Link", "<https://a/b>; rel=x")], []))

    def test_bad_names(self):
        for bad in ["Bad Name: x", ": x", "X(y): z", "Caf\u00e9: x", "X\"q: y"]:
            with self.subTest(bad=bad):
                got, problems = parse(bad)
                self.assertEqual(got, [])
                self.assertEqual(len(problems), 1)
                self.assertIn("not a valid header name", problems[0])

    def test_bad_values_others_kept(self):
        got, problems = parse("X-Ok: 1, X-Ctl: a\x01b, X-Utf: caf\u00e9, X-Nl: a\nb")
        self.assertEqual(got, [("X-Ok", "1")])
        self.assertEqual(len(problems), 3)
        self.assertTrue(all("not a valid header value" in p for p in problems))

    def test_empty_annotation(self):
        self.assertEqual(parse(" , "), ([], []))


class PlanTest(unittest.TestCase):
    def test_headers_from_the_source_ingress_read_once(self):
        store = FakeStore(web=ingress("X-A: 1, bad name: 2"))
        plan = Plan(store)
        self.assertEqual(plan.headers_for(ref("web")), [("X-A", "1")])
        self.assertEqual(plan.headers_for(ref("web")), [("X-A", "1")])
        self.assertEqual(store.reads, [("shop", "web")])
        self.assertEqual(len(plan.problems), 1)
        ns, name, message = plan.problems[0]
        self.assertEqual((ns, name), ("shop", "web"))
        self.assertIn('"bad name"', message)

    def test_no_source_other_kinds_missing_or_unannotated(self):
        store = FakeStore(plain=ingress())
        plan = Plan(store)
        self.assertEqual(plan.headers_for(None), [])
        self.assertEqual(plan.headers_for(ref("r", kind="HTTPRoute", api_version="gateway.networking.k8s.io/v1")), [])
        self.assertEqual(plan.headers_for(ref("x", api_version="example.com/v1")), [])
        self.assertEqual(plan.headers_for(ref("plain")), [])
        self.assertEqual(plan.headers_for(ref("gone")), [])
        self.assertEqual(store.reads, [("shop", "plain"), ("shop", "gone")])
        self.assertEqual(plan.problems, [])

    def test_other_api_version_of_the_group(self):
        plan = Plan(FakeStore(web=ingress("X-A: 1")))
        self.assertEqual(plan.headers_for(ref("web", api_version="networking.k8s.io/v1beta1")), [("X-A", "1")])


class MergeTest(unittest.TestCase):
    def test_annotation_replaces_same_name_case_insensitively(self):
        self.assertEqual(
            merge_set([("x-a", "old"), ("X-B", "b")], [("X-A", "new")]),
            [("X-B", "b"), ("X-A", "new")],
        )


if __name__ == "__main__":
    unittest.main()
