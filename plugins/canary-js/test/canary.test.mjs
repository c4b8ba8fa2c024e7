// Runs the built component (build.sh) in Node: jco transpiles it to JS with
// the contract's imports left to us, so `store` is served from the objects
// each test hands in, and `transformation.apply` is called on hand-built
// virtual hosts.
//
//   npm test     (after build.sh)
//
// CANARY_PLUGIN overrides where the component is looked for (by default
// $CARGO_TARGET_DIR/wasm32-wasip2/release, or ../../target).

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const target = process.env.CARGO_TARGET_DIR || path.resolve(here, '../../../target');
const CANARY = process.env.CANARY_PLUGIN || path.join(target, 'wasm32-wasip2/release/isobar_plugin_canary_js.wasm');

let instantiate;
let outDir;
before(async () => {
  assert.ok(existsSync(CANARY), `not built: ${CANARY} (run sh build.sh)`);
  outDir = mkdtempSync(path.join(os.tmpdir(), 'canary-js-'));
  const run = spawnSync('npx', ['--no-install', 'jco', 'transpile', CANARY, '--instantiation', 'async',
    '--name', 'canary', '-o', outDir, '--quiet'], { cwd: path.resolve(here, '..'), encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  ({ instantiate } = await import(pathToFileURL(path.join(outDir, 'canary.js'))));
});

// A fresh instance whose `store` serves `objects` (parsed manifests); every
// read is recorded in `reads`.
async function plugin(objects) {
  const reads = [];
  const store = {
    get(apiVersion, kind, namespace, name) {
      reads.push(`${kind}/${namespace}/${name}`);
      const o = objects.find((x) => x.kind === kind && x.apiVersion === apiVersion
        && (x.metadata.namespace ?? '') === namespace && x.metadata.name === name);
      return o && { apiVersion, kind, namespace, name, uid: `uid-${name}`, json: JSON.stringify(o) };
    },
    list() { throw new Error('canary-js lists nothing'); },
  };
  const component = await instantiate(
    (file) => WebAssembly.compile(readFileSync(path.join(outDir, file))),
    // jco names imports without their version in async instantiation.
    { 'isobar:plugin/store': store, 'isobar:plugin/log': { log() {} } },
  );
  const t = component.transformation ?? component['isobar:plugin/transformation@0.2.0'];
  t.configure('{}');
  return { t, reads };
}

const ingress = (name, annotations = {}) => ({
  apiVersion: 'networking.k8s.io/v1', kind: 'Ingress', metadata: { namespace: 'shop', name, annotations },
});
const service = (name, ports) => ({ apiVersion: 'v1', kind: 'Service', metadata: { namespace: 'shop', name }, spec: { ports } });
const ref = (name) => ({ apiVersion: 'networking.k8s.io/v1', kind: 'Ingress', namespace: 'shop', name });
const backend = (name, port) => ({ namespace: 'shop', name, port, protocol: 'http1', lbPolicy: 'round-robin' });
const route = (prefix, name, port, source) => ({
  matches: { path: { tag: 'prefix', val: prefix }, headers: [], query: [], method: undefined },
  action: { tag: 'forward', val: [{ backend: backend(name, port), weight: 1 }] },
  pathRewrite: undefined, hostRewrite: undefined, timeoutMs: undefined, retry: undefined,
  requestHeaders: undefined, responseHeaders: undefined, mirrors: [], source,
});
const host = (...routes) => ({ listener: 'ingress_http', domain: 'shop.example.com', tls: undefined, routes });
const cluster = [
  service('web', [{ name: 'http', port: 80 }]),
  service('web-canary', [{ name: 'http', port: 8080 }]),
  service('api', [{ port: 9000 }]),
];

test('describe declares the reads and runs everywhere', async () => {
  const { t } = await plugin([]);
  const info = t.describe();
  assert.equal(info.name, 'canary-js');
  assert.deepEqual(info.reads.map((k) => `${k.apiVersion}/${k.kind}`), ['networking.k8s.io/v1/Ingress', 'v1/Service']);
  assert.deepEqual([info.listeners, info.domains], [[], []]);
  assert.throws(() => t.configure('{"weight": 3}'));
});

test('an annotated Ingress splits its routes, the canary on the port of the same name', async () => {
  const { t, reads } = await plugin([ingress('shop', { 'isobar.dev/canary': 'web-canary:20' }), ...cluster]);
  const input = host(route('/', 'web', 80, ref('shop')));
  const out = t.apply(input);
  assert.deepEqual(out.diagnostics, []);
  assert.equal(out.host.listener, 'ingress_http');
  assert.equal(out.host.domain, 'shop.example.com');
  assert.deepEqual(out.host.routes[0].action, { tag: 'forward', val: [
    { backend: backend('web', 80), weight: 80 },
    { backend: backend('web-canary', 8080), weight: 20 },
  ] });
  assert.deepEqual(out.host.routes[0].source, ref('shop'));
  assert.deepEqual(out.host.routes[0].matches, input.routes[0].matches);
  assert.ok(reads.includes('Ingress/shop/shop'), reads.join());
});

test('routes of an Ingress without the annotation are unchanged', async () => {
  const { t } = await plugin([ingress('plain'), ingress('shop', { 'isobar.dev/canary': 'web-canary:50' }), ...cluster]);
  const out = t.apply(host(route('/a', 'web', 80, ref('plain')), route('/b', 'web', 80, ref('shop'))));
  assert.deepEqual(out.diagnostics, []);
  assert.deepEqual(out.host.routes[0].action.val, [{ backend: backend('web', 80), weight: 1 }]);
  assert.equal(out.host.routes[1].action.val.length, 2);
});

for (const [value, why] of [
  ['web-canary', /expected "<service>:<weight>"/],
  ['web-canary:150', /not a percentage/],
  ['Web_Canary:10', /expected/],
  ['nope:10', /Service shop\/nope not found/],
  ['web-canary:10', /has no port 9000/], // api:9000 has no twin on web-canary
]) {
  test(`a bad annotation "${value}" is an error on the Ingress and the route stays`, async () => {
    const { t } = await plugin([ingress('shop', { 'isobar.dev/canary': value }), ...cluster]);
    const input = host(route('/', 'api', 9000, ref('shop')), route('/x', 'api', 9000, ref('shop')));
    const out = t.apply(input);
    assert.equal(out.diagnostics.length, 1, JSON.stringify(out.diagnostics));
    const [d] = out.diagnostics;
    assert.deepEqual([d.severity, d.reason, d.object], ['error', 'InvalidCanary', ref('shop')]);
    assert.match(d.message, why);
    assert.deepEqual(out.host.routes, input.routes);
  });
}

test('routes without a source, or from other kinds, are left alone and read nothing', async () => {
  const { t, reads } = await plugin(cluster);
  const gw = { apiVersion: 'gateway.networking.k8s.io/v1', kind: 'HTTPRoute', namespace: 'shop', name: 'shop' };
  const input = host(route('/', 'web', 80, undefined), route('/gw', 'web', 80, gw));
  const out = t.apply(input);
  assert.deepEqual(out.host.routes, input.routes);
  assert.deepEqual(out.diagnostics, []);
  assert.deepEqual(reads, []);
});

test('non-forwarding routes stay; weighted splits keep their proportions', async () => {
  const { t } = await plugin([ingress('shop', { 'isobar.dev/canary': 'web-canary:10' }), ...cluster,
    service('web2', [{ name: 'http', port: 81 }])]);
  const direct = { ...route('/503', 'web', 80, ref('shop')), action: { tag: 'direct-response', val: { status: 503, body: undefined } } };
  const split = route('/s', 'web', 80, ref('shop'));
  split.action.val = [{ backend: backend('web', 80), weight: 3 }, { backend: backend('web2', 81), weight: 1 }];
  const out = t.apply(host(direct, split));
  assert.deepEqual(out.host.routes[0], direct);
  assert.deepEqual(out.host.routes[1].action.val, [
    { backend: backend('web', 80), weight: 270 },
    { backend: backend('web2', 81), weight: 90 },
    { backend: backend('web-canary', 8080), weight: 40 }, // both named "http": merged
  ]);
});
