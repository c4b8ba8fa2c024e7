// Isobar translator plugin in JavaScript: Ingress objects to routing IR, with
// canary traffic splitting. See ../README.md for what it does and how to build
// it. The contract is ../../../wit/plugin.wit (isobar:plugin@0.1.0, world
// `translator`); WIT names map to JS as componentize-js does it:
//   records  -> objects with camelCase fields    (api-version -> apiVersion)
//   enums    -> strings                          ('error', 'round-robin')
//   variants -> { tag, val }                     ({ tag: 'prefix', val: '/' })
//   option   -> the value, or undefined
//   result   -> return the ok value; throw to return err

import { get, list } from 'isobar:plugin/store@0.1.0';
import { log } from 'isobar:plugin/log@0.1.0';

const VERSION = '0.1.0';
const CONTROLLER = 'isobar.dev/ingress-controller';
const LEGACY_CLASS = 'kubernetes.io/ingress.class';
const DEFAULT_CLASS = 'ingressclass.kubernetes.io/is-default-class';
const CANARY = 'isobar.dev/canary';
const HTTP_LISTENER = { name: 'ingress_http', port: 8080, protocol: 'http' };

const INGRESS = { apiVersion: 'networking.k8s.io/v1', kind: 'Ingress' };
const INGRESS_CLASS = { apiVersion: 'networking.k8s.io/v1', kind: 'IngressClass' };
const SERVICE = { apiVersion: 'v1', kind: 'Service' };

export const translation = {
  describe() {
    return {
      name: 'canary-js',
      version: VERSION,
      watches: [INGRESS, INGRESS_CLASS, SERVICE],
      roots: [INGRESS],
    };
  },

  translate(root) {
    // A thrown plain object { reason, message } becomes the `err` of
    // result<fragment, error>; a thrown Error would trap the instance, and
    // this component has no stderr to say why, so bugs are turned into errors.
    try {
      const ingress = JSON.parse(root.json);
      if (!isOurs(ingress)) {
        // Another controller's Ingress: contribute nothing, say nothing.
        return fragment([], [], []);
      }
      return new Translation(root, ingress).run();
    } catch (e) {
      const reason = e instanceof SyntaxError ? 'InvalidObject' : 'PluginError';
      const where = e?.stack?.split('\n')[0];
      throw { reason, message: `Ingress ${root.namespace}/${root.name}: ${e}${where ? ` (at ${where})` : ''}` };
    }
  },
};

// --- Which Ingresses are ours -------------------------------------------

function isOurs(ingress) {
  const name = ingress.spec?.ingressClassName || annotations(ingress)[LEGACY_CLASS];
  if (name) {
    return isOurClass(read(INGRESS_CLASS, '', name));
  }
  // No class at all: ours if one of our classes is the default.
  return list(INGRESS_CLASS.apiVersion, INGRESS_CLASS.kind, undefined)
    .map((object) => JSON.parse(object.json))
    .some((cls) => isOurClass(cls) && annotations(cls)[DEFAULT_CLASS] === 'true');
}

function isOurClass(cls) {
  return cls?.spec?.controller === CONTROLLER;
}

// --- One Ingress to a fragment ------------------------------------------

class Translation {
  constructor(root, ingress) {
    this.namespace = root.namespace || ingress.metadata?.namespace || 'default';
    this.object = { kind: 'Ingress', namespace: this.namespace, name: ingress.metadata?.name || root.name };
    this.ingress = ingress;
    this.services = new Map(); // name -> parsed Service or null, read once
    this.diagnostics = [];
    this.canary = this.parseCanary(annotations(ingress)[CANARY]);
  }

  run() {
    const spec = this.ingress.spec ?? {};
    const hosts = new Map(); // domain -> routes, in spec order
    const routesOf = (domain) => {
      if (!hosts.has(domain)) hosts.set(domain, []);
      return hosts.get(domain);
    };

    for (const rule of spec.rules ?? []) {
      const domain = this.domain(rule.host);
      if (domain === null) continue;
      const routes = routesOf(domain);
      for (const path of rule.http?.paths ?? []) {
        const matches = this.routeMatch(path);
        if (matches === null) continue;
        if (routes.some((r) => sameMatch(r.matches, matches))) {
          this.warn('DuplicatePath', `host "${domain}": path "${path.path ?? ''}" (${path.pathType ?? ''}) is listed more than once; the first one is used`);
          continue;
        }
        routes.push(this.route(matches, path.backend));
      }
    }
    if (spec.defaultBackend) {
      // A host-less rule's own "/" path is more specific, so it wins.
      const routes = routesOf('*');
      const matches = routeMatch({ tag: 'prefix', val: '/' });
      if (!routes.some((r) => sameMatch(r.matches, matches))) {
        routes.push(this.route(matches, spec.defaultBackend));
      }
    }
    if ((spec.tls ?? []).length > 0) {
      this.warn('TLSUnsupported', 'spec.tls is not supported by the canary-js plugin; hosts are served over http only');
    }

    const virtualHosts = [...hosts]
      .filter(([, routes]) => routes.length > 0)
      .map(([domain, routes]) => ({ listener: HTTP_LISTENER.name, domain, tls: undefined, routes }));
    const listeners = virtualHosts.length > 0 ? [HTTP_LISTENER] : [];
    log('debug', `Ingress ${this.namespace}/${this.object.name}: ${virtualHosts.length} virtual hosts`);
    return fragment(listeners, virtualHosts, this.diagnostics);
  }

  // "*" for no host, else the lower-cased host if it is a DNS name or a
  // one-label wildcard. (The host itself makes "*.example.com" match
  // exactly one label.)
  domain(host) {
    host = (host ?? '').trim().toLowerCase();
    if (host === '') return '*';
    const label = '[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?';
    if (host.length <= 253 && new RegExp(`^(\\*\\.)?${label}(\\.${label})*$`).test(host)) {
      return host;
    }
    this.warn('InvalidHost', `rule host "${host}" is not a DNS name or a wildcard like "*.example.com"; ignored`);
    return null;
  }

  // Exact -> exact; Prefix and ImplementationSpecific (or none) -> prefix,
  // which the IR defines with path-segment semantics ("/foo" matches
  // "/foo" and "/foo/bar", never "/foobar").
  routeMatch(path) {
    const value = path.path ?? '';
    const type = path.pathType ?? '';
    let tag;
    if (type === 'Exact') tag = 'exact';
    else if (type === 'Prefix') tag = 'prefix';
    else if (type === 'ImplementationSpecific' || type === '') {
      if (value === '') return routeMatch({ tag: 'prefix', val: '/' });
      tag = 'prefix';
    } else {
      this.warn('InvalidPathType', `path "${value}": unknown pathType "${type}"; ignored`);
      return null;
    }
    let why = null;
    if (!value.startsWith('/')) why = 'must start with "/"';
    else if (/[?#\s\x00-\x1f\x7f-\x9f]/.test(value)) why = 'must not contain "?", "#", whitespace or control characters';
    if (why) {
      this.warn('InvalidPath', `${type || 'ImplementationSpecific'} path "${value}" ${why}; ignored`);
      return null;
    }
    return routeMatch({ tag, val: value });
  }

  // A route to the backend (split with the canary if there is one), or a 503
  // with a warning when the backend cannot be used.
  route(matches, ingressBackend) {
    const resolved = this.backend(ingressBackend);
    if (resolved.error) {
      this.warn(resolved.error.reason, resolved.error.message);
      return route(matches, { tag: 'direct-response', val: { status: 503, body: undefined } });
    }
    const canary = this.canaryBackend(resolved.port);
    const backends = canary
      ? [{ backend: resolved.backend, weight: 100 - this.canary.weight }, { backend: canary, weight: this.canary.weight }]
      : [{ backend: resolved.backend, weight: 1 }];
    return route(matches, { tag: 'forward', val: backends });
  }

  // Resolves an Ingress backend against its Service. Returns { backend, port }
  // (port: what the Ingress asked for, { number } or { name }) or { error }.
  backend(ingressBackend) {
    const fail = (reason, message) => ({ error: { reason, message } });
    if (ingressBackend?.resource) {
      const { kind, name } = ingressBackend.resource;
      return fail('ResourceBackendUnsupported', `backend resource ${kind}/${name} is not supported, only Service backends are`);
    }
    const svc = ingressBackend?.service;
    if (!svc) return fail('InvalidBackend', 'backend names neither a service nor a resource');
    const port = svc.port?.number ? { number: svc.port.number } : svc.port?.name ? { name: svc.port.name } : null;
    if (!port) return fail('InvalidBackend', `backend service "${svc.name}" names no port`);

    const qualified = `${this.namespace}/${svc.name}`;
    const service = this.service(svc.name);
    if (!service) return fail('ServiceNotFound', `Service ${qualified} not found`);
    const resolved = servicePort(service, port);
    if (resolved.error) return fail(resolved.error, `Service ${qualified} ${resolved.message}`);
    return { backend: this.serviceBackend(svc.name, resolved.port), port };
  }

  serviceBackend(name, servicePort) {
    const protocol = { 'kubernetes.io/h2c': 'http2', grpc: 'grpc' }[servicePort.appProtocol] ?? 'http1';
    return { namespace: this.namespace, name, port: servicePort.port, protocol, lbPolicy: 'round-robin' };
  }

  service(name) {
    if (!this.services.has(name)) {
      this.services.set(name, read(SERVICE, this.namespace, name));
    }
    return this.services.get(name);
  }

  // --- Canary -----------------------------------------------------------

  // `isobar.dev/canary: <service>:<weight>`, weight a percentage 0-100.
  // Returns { service, weight } or null (no or an invalid annotation).
  parseCanary(value) {
    if (value === undefined) return null;
    const match = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?):([0-9]{1,3})$/.exec(value.trim());
    const weight = match ? Number(match[3]) : NaN;
    let why = null;
    if (!match) why = 'expected "<service>:<weight>", e.g. "web-canary:20"';
    else if (weight > 100) why = `weight ${weight} is not a percentage (0-100)`;
    else if (!this.service(match[1])) why = `Service ${this.namespace}/${match[1]} not found`;
    if (why) {
      this.invalidCanary(`annotation ${CANARY}="${value}" ignored, traffic is not split: ${why}`);
      return null;
    }
    return { service: match[1], weight };
  }

  // The canary Service's backend on the primary's port (same number, or
  // same name when the primary named its port), or null with a diagnostic.
  canaryBackend(port) {
    if (!this.canary) return null;
    const { service: name } = this.canary;
    const resolved = servicePort(this.service(name), port);
    if (resolved.error) {
      this.invalidCanary(`canary Service ${this.namespace}/${name} ${resolved.message}; those routes are not split`);
      return null;
    }
    return this.serviceBackend(name, resolved.port);
  }

  invalidCanary(message) {
    this.diagnose('error', 'InvalidCanary', message);
  }

  // --- Diagnostics ------------------------------------------------------

  warn(reason, message) {
    this.diagnose('warning', reason, message);
  }

  diagnose(severity, reason, message) {
    // One cause referenced by many paths is reported once.
    if (!this.diagnostics.some((d) => d.reason === reason && d.message === message)) {
      this.diagnostics.push({ object: this.object, severity, reason, message });
    }
  }
}

// --- Helpers ------------------------------------------------------------

// One object from the store, parsed; null when absent or not JSON.
function read(kind, namespace, name) {
  const object = get(kind.apiVersion, kind.kind, namespace, name);
  if (!object) return null;
  try {
    return JSON.parse(object.json);
  } catch {
    return null;
  }
}

function annotations(object) {
  return object?.metadata?.annotations ?? {};
}

// The Service port for { number } or { name }: { port } or { error, message }.
function servicePort(service, wanted) {
  if (service.spec?.type === 'ExternalName') {
    return { error: 'ExternalNameServiceUnsupported', message: 'is of type ExternalName, which is not supported' };
  }
  const ports = service.spec?.ports ?? [];
  const port = wanted.number !== undefined
    ? ports.find((p) => p.port === wanted.number)
    : ports.find((p) => p.name === wanted.name);
  if (!port) {
    const what = wanted.number !== undefined ? wanted.number : `"${wanted.name}"`;
    return { error: 'ServicePortNotFound', message: `has no port ${what}` };
  }
  return { port };
}

function routeMatch(path) {
  return { path, headers: [], query: [], method: undefined };
}

function sameMatch(a, b) {
  return a.path.tag === b.path.tag && a.path.val === b.path.val;
}

function route(matches, action) {
  return {
    matches,
    action,
    prefixRewrite: undefined,
    hostRewrite: undefined,
    timeoutMs: undefined,
    retry: undefined,
    requestHeaders: undefined,
    responseHeaders: undefined,
  };
}

function fragment(listeners, virtualHosts, diagnostics) {
  return { listeners, virtualHosts, raw: [], diagnostics };
}
