"""Response headers from the `isobar.dev/response-headers` Ingress annotation:
the policy's logic as plain Python (no bindings), so that it is unit-tested
with CPython (test_headers.py) and wrapped by app.py for the component.

    isobar.dev/response-headers: "X-Frame-Options: DENY, Cache-Control: no-store"
"""

import re

ANNOTATION = "isobar.dev/response-headers"
INGRESS_API_VERSION = "networking.k8s.io/v1"
INGRESS_KIND = "Ingress"

# RFC 7230 section 3.2.6: token = 1*tchar.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 7230 section 3.2: field-value = *field-content, field-content =
# field-vchar [ 1*( SP / HTAB ) field-vchar ]. obs-text (bytes 0x80-0xFF) is
# refused: an annotation is Unicode text, and its bytes on the wire would be
# whatever encoding Envoy picks. Surrounding whitespace is trimmed before.
_FIELD_VALUE = re.compile(r"([\x21-\x7e]([ \t]*[\x21-\x7e])*)?")


def parse(value):
    """The annotation's `Name: value` pairs, in order, and one message per
    entry that is refused. Entries are separated by commas, so a value
    cannot hold one."""
    headers, problems = [], []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        name, colon, field = entry.partition(":")
        name, field = name.strip(), field.strip(" \t")
        if not colon:
            problems.append(f'"{entry}" is not "Name: value"')
        elif not _TOKEN.fullmatch(name):
            problems.append(f'"{name}" is not a valid header name (RFC 7230 token)')
        elif not _FIELD_VALUE.fullmatch(field):
            problems.append(f'the value of "{name}" is not a valid header value (RFC 7230 field-value)')
        else:
            headers.append((name, field))
    return headers, problems


def is_ingress(api_version, kind):
    # The group of apiVersion tells kinds apart; its version does not matter.
    return kind == INGRESS_KIND and api_version.split("/")[0] == "networking.k8s.io"


class Plan:
    """What to add to a virtual host's routes, computed from each route's
    source. `get(namespace, name)` returns an Ingress's parsed JSON or None;
    each Ingress is read and judged once per call."""

    def __init__(self, get):
        self._get = get
        self._headers = {}  # (namespace, name) -> [(name, value)]
        # (namespace, name, message) of each Ingress's refused entries.
        self.problems = []

    def headers_for(self, source):
        """The headers for a route whose source is `source` (an object-ref
        like object with api_version, kind, namespace, name, or None)."""
        if source is None or not is_ingress(source.api_version, source.kind):
            return []
        key = (source.namespace, source.name)
        if key not in self._headers:
            ingress = self._get(source.namespace, source.name) or {}
            value = ((ingress.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
            headers, problems = parse(value) if isinstance(value, str) else ([], [])
            for problem in problems:
                self.problems.append((source.namespace, source.name, f"{ANNOTATION}: {problem}; the entry is ignored"))
            self._headers[key] = headers
        return self._headers[key]


def merge_set(existing, headers):
    """The `set` list of a route's response header-changes with `headers`
    applied, as (name, value) pairs: an annotation's header replaces a
    same-named one set before (header names are case-insensitive)."""
    names = {name.lower() for name, _ in headers}
    kept = [(n, v) for n, v in existing if n.lower() not in names]
    return kept + list(headers)
