// Isobar routing policy in JavaScript: canary traffic splitting driven by the
// `isobar.dev/canary` annotation of the Ingress behind each route. See
// ../README.md for what it does and how to build it. The contract is
// ../../../wit/plugin-0.2.wit (isobar:plugin@0.2.0, world `policy`); WIT
// names map to JS as componentize-js does it:
//   records  -> objects with camelCase fields    (api-version -> apiVersion)
//   enums    -> strings                          ('error', 'round-robin')
//   variants -> { tag, val }                     ({ tag: 'forward', val: [...] })
//   option   -> the value, or undefined
//   result   -> return the ok value; throw to return err

import { get } from 'isobar:plugin/store@0.2.0';

const VERSION = '0.2.0';
const CANARY = 'isobar.dev/canary';

const INGRESS = { apiVersion: 'networking.k8s.io/v1', kind: 'Ingress' };
const SERVICE = { apiVersion: 'v1', kind: 'Service' };

export const transformation = {
  describe() {
    return {
      name: 'canary-js',
      version: VERSION,
      // Services: the canary must exist and have the route's port.
      reads: [INGRESS, SERVICE],
      listeners: [],
      domains: [],
    };
  },

  configure(config) {
    // No settings; refuse anything but an empty object so typos are seen.
    let parsed;
    try {
      parsed = JSON.parse(config);
    } catch (e) {
      throw { reason: 'InvalidConfig', message: `configuration is not JSON: ${e}` };
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed) || Object.keys(parsed).length > 0) {
      throw { reason: 'InvalidConfig', message: 'canary-js takes no configuration ({} expected)' };
    }
  },

  apply(host) {
    // A thrown plain object { reason, message } becomes the `err` of the
    // result; a thrown Error would trap the instance, and this component has
    // no stderr to say why, so bugs are turned into errors.
    try {
      return new Application(host).run();
    } catch (e) {
      if (e && typeof e === 'object' && 'reason' in e && 'message' in e) throw e;
      const where = e?.stack?.split('\n')[0];
      throw { reason: 'PluginError', message: `virtual host ${host.listener}/${host.domain}: ${e}${where ? ` (at ${where})` : ''}` };
    }
  },
};

// One call of `apply`: objects are read at most once per call.
class Application {
  constructor(host) {
    this.host = host;
    this.objects = new Map(); // "kind/ns/name" -> parsed JSON or null
    this.canaries = new Map(); // "ns/name" of an Ingress -> { service, weight } or null
    this.diagnostics = [];
  }

  run() {
    const routes = this.host.routes.map((route) => this.route(route));
    return { host: { ...this.host, routes }, diagnostics: this.diagnostics };
  }

  route(route) {
    const source = route.source;
    if (!isIngress(source) || route.action.tag !== 'forward') return route;
    const canary = this.canary(source);
    if (!canary) return route;

    const backends = route.action.val;
    const split = [];
    const total = backends.reduce((sum, b) => sum + b.weight, 0);
    for (const wb of backends) {
      if (wb.backend.name === canary.service && wb.backend.namespace === source.namespace) {
        // Already split to the canary (e.g. by another policy): leave it.
        return route;
      }
      const port = this.canaryPort(source, canary.service, wb.backend);
      if (port === null) return route;
      split.push({ backend: wb.backend, weight: wb.weight, port });
    }
    if (total === 0) return route;
    // The existing weights keep their proportions within 100 - weight; each
    // backend's canary twin shares `weight` in the same proportions.
    const weighted = [];
    for (const { backend, weight: w } of split) {
      weighted.push({ backend, weight: w * (100 - canary.weight) });
    }
    for (const { backend, weight: w, port } of split) {
      weighted.push({ backend: { ...backend, name: canary.service, port }, weight: w * canary.weight });
    }
    return { ...route, action: { tag: 'forward', val: merge(weighted) } };
  }

  // The parsed annotation of the Ingress, or null (none, or invalid with a
  // diagnostic). Reported once per Ingress per call.
  canary(ref) {
    const key = `${ref.namespace}/${ref.name}`;
    if (this.canaries.has(key)) return this.canaries.get(key);
    const ingress = this.read(INGRESS, ref.namespace, ref.name);
    let canary = null;
    const value = ingress?.metadata?.annotations?.[CANARY];
    if (value !== undefined) {
      const parsed = parseCanary(value);
      if (parsed.error) {
        this.invalid(ref, `annotation ${CANARY}="${value}" ignored, traffic is not split: ${parsed.error}`);
      } else if (!this.read(SERVICE, ref.namespace, parsed.service)) {
        this.invalid(ref, `annotation ${CANARY}="${value}" ignored, traffic is not split: Service ${ref.namespace}/${parsed.service} not found`);
      } else {
        canary = parsed;
      }
    }
    this.canaries.set(key, canary);
    return canary;
  }

  // The canary Service's port for a primary backend: the port of the same
  // name when the primary Service names it, else the same number; null with
  // a diagnostic when the canary has neither.
  canaryPort(ref, canaryName, backend) {
    const canary = this.read(SERVICE, ref.namespace, canaryName);
    const ports = canary?.spec?.ports ?? [];
    if (backend.namespace === ref.namespace) {
      const primaryPort = (this.read(SERVICE, backend.namespace, backend.name)?.spec?.ports ?? [])
        .find((p) => p.port === backend.port);
      const named = primaryPort?.name && ports.find((p) => p.name === primaryPort.name);
      if (named) return named.port;
    }
    if (ports.some((p) => p.port === backend.port)) return backend.port;
    this.invalid(ref, `canary Service ${ref.namespace}/${canaryName} has no port ${backend.port}; those routes are not split`);
    return null;
  }

  read(kind, namespace, name) {
    const key = `${kind.kind}/${namespace}/${name}`;
    if (!this.objects.has(key)) {
      const object = get(kind.apiVersion, kind.kind, namespace, name);
      this.objects.set(key, object ? JSON.parse(object.json) : null);
    }
    return this.objects.get(key);
  }

  invalid(ref, message) {
    // One cause seen on many routes is reported once.
    if (this.diagnostics.some((d) => d.message === message)) return;
    this.diagnostics.push({
      object: { apiVersion: ref.apiVersion, kind: ref.kind, namespace: ref.namespace, name: ref.name },
      severity: 'error',
      reason: 'InvalidCanary',
      message,
    });
  }
}

// `isobar.dev/canary: <service>:<weight>`, weight a percentage 0-100.
function parseCanary(value) {
  const match = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?):([0-9]{1,3})$/.exec(value.trim());
  if (!match) return { error: 'expected "<service>:<weight>", e.g. "web-canary:20"' };
  const weight = Number(match[3]);
  if (weight > 100) return { error: `weight ${weight} is not a percentage (0-100)` };
  return { service: match[1], weight };
}

// The group of apiVersion tells kinds apart; its version does not matter.
function isIngress(ref) {
  return ref?.kind === 'Ingress' && ref.apiVersion.split('/')[0] === 'networking.k8s.io';
}

// Two primaries on one port of one Service would give the same canary twice.
function merge(weighted) {
  const out = [];
  for (const wb of weighted) {
    const same = out.find((o) => JSON.stringify(o.backend) === JSON.stringify(wb.backend));
    if (same) same.weight += wb.weight;
    else out.push({ ...wb });
  }
  return out;
}
