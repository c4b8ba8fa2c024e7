#!/usr/bin/env python3
"""gRPC's own xDS client against `isobar serve`.

An independent peer: grpcio resolves `xds:///hello.example.com` through a
bootstrap that points at isobar's ADS port, and its RPCs must follow the
Ingress rules isobar serves (an Exact path and a Prefix), including a live
change of the manifests.

    grpc_xds_client.py --xds 127.0.0.1:18000 --manifests DIR

The script starts two gRPC backend servers (a generic handler: raw bytes,
no protobuf code generation; each replies with its own name), writes the
manifests into DIR (which `isobar serve` watches), and then:

1. /demo.Greeter/Hello (Exact) reaches A and /demo.Greeter/Other (Prefix
   /demo.Greeter) reaches B;
2. after the Exact rule is pointed at B, both reach B;
3. after the Prefix rule is pointed at A, Hello reaches B and Other A.

Every wait is bounded (--timeout). Exit status 0 on success.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent import futures

HOST = "hello.example.com"
SERVICE_PORT = 50051
HELLO = "/demo.Greeter/Hello"
OTHER = "/demo.Greeter/Other"


def log(*args):
    print("[interop]", *args, flush=True)


def write_json(directory, name, doc):
    """Atomically (write aside, rename over), as the watcher expects."""
    tmp = os.path.join(directory, "." + name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.rename(tmp, os.path.join(directory, name))


def backends(ports):
    items = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {
                "name": "isobar",
                "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"},
            },
            "spec": {"controller": "isobar.dev/ingress-controller"},
        }
    ]
    for name, port in ports.items():
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": "demo"},
                "spec": {
                    "selector": {"app": name},
                    "ports": [
                        {
                            "name": "grpc",
                            "port": SERVICE_PORT,
                            "targetPort": port,
                            "appProtocol": "grpc",
                        }
                    ],
                },
            }
        )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": name + "-1",
                    "namespace": "demo",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "grpc", "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items}


def ingress(exact_backend, prefix_backend):
    def path(p, kind, svc):
        return {
            "path": p,
            "pathType": kind,
            "backend": {"service": {"name": svc, "port": {"number": SERVICE_PORT}}},
        }

    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "hello", "namespace": "demo"},
        "spec": {
            "ingressClassName": "isobar",
            "rules": [
                {
                    "host": HOST,
                    "http": {
                        "paths": [
                            path(HELLO, "Exact", exact_backend),
                            path("/demo.Greeter", "Prefix", prefix_backend),
                        ]
                    },
                }
            ],
        },
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xds", required=True, help="host:port of isobar's ADS")
    ap.add_argument("--manifests", required=True, help="the directory isobar serve watches")
    ap.add_argument("--timeout", type=float, default=90.0, help="bound of each wait, in seconds")
    args = ap.parse_args()

    # The bootstrap must be in place before gRPC creates its xDS client.
    bootstrap = {
        "xds_servers": [
            {
                "server_uri": args.xds,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": "interop-grpc-python", "locality": {"zone": "local"}},
    }
    fd, bootstrap_path = tempfile.mkstemp(prefix="isobar-xds-bootstrap-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(bootstrap, f)
    os.environ["GRPC_XDS_BOOTSTRAP"] = bootstrap_path

    import grpc  # noqa: E402  (after the bootstrap is set)

    log("grpcio", grpc.__version__, "bootstrap", bootstrap_path)

    class Named(grpc.GenericRpcHandler):
        """Answers any method with `<name> <method>`, in raw bytes."""

        def __init__(self, name):
            self.name = name

        def service(self, call_details):
            method = call_details.method
            reply = ("%s %s" % (self.name, method)).encode()
            return grpc.unary_unary_rpc_method_handler(lambda request, context: reply)

    servers = {}
    ports = {}
    for name in ("a", "b"):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        server.add_generic_rpc_handlers((Named(name),))
        ports[name] = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers[name] = server
    log("backends", ports)

    write_json(args.manifests, "00-backends.json", backends(ports))
    write_json(args.manifests, "10-hello.json", ingress("a", "b"))

    channel = grpc.insecure_channel("xds:///" + HOST)
    calls = {m: channel.unary_unary(m) for m in (HELLO, OTHER)}

    def observe():
        seen = {}
        for method, call in calls.items():
            try:
                reply = call(b"", timeout=5, wait_for_ready=True).decode()
                seen[method] = reply.split(" ")[0]
            except grpc.RpcError as e:
                seen[method] = "error %s: %s" % (e.code(), e.details())
        return seen

    def wait_for(expected, what):
        deadline = time.monotonic() + args.timeout
        seen = None
        attempts = 0
        while time.monotonic() < deadline:
            attempts += 1
            seen = observe()
            if seen == expected:
                log("ok:", what, seen, "after", attempts, "rounds")
                return
            # Pacing between rounds of real RPCs, not synchronisation: the
            # loop ends on the observed routing.
            time.sleep(0.05)
        log("FAILED:", what, "expected", expected, "last seen", seen)
        sys.exit(1)

    started = time.monotonic()
    wait_for({HELLO: "a", OTHER: "b"}, "Exact -> a, Prefix -> b")
    log("first routing in %.2fs" % (time.monotonic() - started))

    changed = time.monotonic()
    write_json(args.manifests, "10-hello.json", ingress("b", "b"))
    wait_for({HELLO: "b", OTHER: "b"}, "after pointing the Exact rule at b")
    write_json(args.manifests, "10-hello.json", ingress("b", "a"))
    wait_for({HELLO: "b", OTHER: "a"}, "after pointing the Prefix rule at a")
    log("live changes followed in %.2fs" % (time.monotonic() - changed))

    channel.close()
    for server in servers.values():
        server.stop(None)
    os.unlink(bootstrap_path)
    log("PASS")


if __name__ == "__main__":
    main()
