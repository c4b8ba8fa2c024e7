// Drives the built component through the isobar binary (`isobar translate`)
// with the manifests in ../testdata and checks the Envoy routes it prints.
//
//   npm test     (after build.sh and the host's own build)
//
// ISOBAR, CANARY_PLUGIN and INGRESS_PLUGIN override where the host binary,
// this plugin and the Rust Ingress plugin are looked for (by default under
// $CARGO_TARGET_DIR, or ../../target). Tests whose files are missing skip.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const target = process.env.CARGO_TARGET_DIR || path.resolve(here, '../../../target');
const wasmDir = path.join(target, 'wasm32-wasip2/release');
const ISOBAR = process.env.ISOBAR || path.join(target, 'debug/isobar');
const CANARY = process.env.CANARY_PLUGIN || path.join(wasmDir, 'isobar_plugin_canary_js.wasm');
const INGRESS = process.env.INGRESS_PLUGIN || path.join(wasmDir, 'isobar_plugin_ingress.wasm');

const missing = (...files) => {
  const absent = files.filter((f) => !existsSync(f));
  return absent.length > 0 && `not built: ${absent.join(', ')}`;
};

function isobar(...args) {
  const run = spawnSync(ISOBAR, args, { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  return JSON.parse(run.stdout);
}

function translate(plugin, manifest) {
  const testdata = path.join(here, '../testdata');
  return isobar('translate', '-f', path.join(testdata, '00-cluster.yaml'),
    '-f', path.join(testdata, manifest), '--plugin', plugin, '-o', 'json');
}

// The Envoy route named `name` ("<domain>/<index>[/exact|/prefix]").
function route(output, name) {
  const found = output.resources.routes
    .flatMap((config) => config.virtualHosts)
    .flatMap((vh) => vh.routes)
    .find((r) => r.name === name);
  assert.ok(found, `no route ${name}`);
  return found;
}

const split = (...pairs) => ({ weightedClusters: { clusters: pairs.map(([name, weight]) => ({ name, weight })) } });

function diagnostics(output, name) {
  return output.diagnostics
    .filter((d) => d.object.name === name)
    .map(({ severity, reason }) => `${severity} ${reason}`);
}

test('describe: canary-js, Ingress root, reads IngressClass and Service', { skip: missing(ISOBAR, CANARY) }, () => {
  const info = isobar('plugin', 'inspect', CANARY, '-o', 'json');
  assert.equal(info.contract, 'isobar:plugin@0.1.0');
  assert.equal(info.info.name, 'canary-js');
  assert.deepEqual(info.info.roots.map((k) => k.kind), ['Ingress']);
  assert.deepEqual(info.info.watches.map((k) => k.kind).sort(), ['Ingress', 'IngressClass', 'Service']);
});

test('no annotation: the same output as the Rust Ingress plugin', { skip: missing(ISOBAR, CANARY, INGRESS) }, () => {
  assert.deepEqual(translate(CANARY, 'plain.yaml'), translate(INGRESS, 'plain.yaml'));
});

test('canary shop-canary:20 splits every route 80/20 on the same port', { skip: missing(ISOBAR, CANARY) }, () => {
  const out = translate(CANARY, 'canary.yaml');
  const web = split(['shop/web/80', 80], ['shop/shop-canary/80', 20]);
  const cart = split(['shop/cart/9000/http2', 80], ['shop/shop-canary/9000/http2', 20]);
  assert.deepEqual(route(out, 'shop.example.com/3').route, web); // port by name
  assert.deepEqual(route(out, 'shop.example.com/0').route, web); // Exact, by number
  assert.deepEqual(route(out, 'shop.example.com/2/prefix').route, cart);
  assert.deepEqual(route(out, '*/0').route, web); // default backend
  // A route whose own Service is missing stays a 503.
  assert.deepEqual(route(out, 'shop.example.com/1/prefix').directResponse, { status: 503 });
  assert.deepEqual(diagnostics(out, 'shop'), ['Warning ServiceNotFound']);
});

test('malformed canary: InvalidCanary error, routes kept unsplit', { skip: missing(ISOBAR, CANARY) }, () => {
  const out = translate(CANARY, 'malformed.yaml');
  for (const name of ['no-weight', 'too-heavy', 'negative', 'unknown-service']) {
    assert.deepEqual(diagnostics(out, name), ['Error InvalidCanary'], name);
    assert.deepEqual(route(out, `${name}.example.com/0`).route, { cluster: 'shop/web/80' }, name);
  }
  // The canary has the "http" port but not 9000: only "/" is split.
  assert.deepEqual(diagnostics(out, 'missing-port'), ['Error InvalidCanary']);
  assert.deepEqual(route(out, 'missing-port.example.com/1').route,
    split(['shop/web/80', 70], ['shop/http-only-canary/8081', 30]));
  assert.deepEqual(route(out, 'missing-port.example.com/0/prefix').route, { cluster: 'shop/cart/9000/http2' });
});
