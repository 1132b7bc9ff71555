// The viewer page in a real browser: Debian's Chromium, headless, driven by
// playwright-core, against the real server binary with a random model made by the
// project's own exporter. Upload the CMU slide through the page, wait for the grade,
// check the summary, the Deep Zoom tiles and the heatmap overlay (placement and
// controls), and save a screenshot to target/artifacts/viewer.png; then the same with
// API keys on, the key pasted into the page.
//
// Run from web/: `node --test tests/viewer.test.mjs` (make test does, after the cargo
// tests, which build target/debug/slidegrade).

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const binary = path.join(root, 'target/debug/slidegrade');
const slide = path.resolve(root, '../shared/data/slides/CMU-1-Small-Region.svs');
const screenshot = path.join(root, 'target/artifacts/viewer.png');
const CHROMIUM = '/usr/bin/chromium';
// This machine has no internet: without these Chromium waits on network lookups
// (component updates, sync, QUIC probes) before it does anything.
const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const TILE = /\/v1\/jobs\/[0-9a-f-]+\/slide_files\/\d+\/\d+_\d+\.jpeg$/;

// Servers still running after the tests (a timed-out test may not have reached its
// `finally` yet) or when this process ends: killed, so no server outlives the run.
const liveServers = new Set();
function killLiveServers() {
  for (const server of liveServers) {
    server.kill('SIGKILL');
  }
}
after(killLiveServers);
process.on('exit', killLiveServers);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(1));
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitForReady(base, server, log) {
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    if (server.exitCode !== null) {
      throw new Error(`server exited with ${server.exitCode}:\n${log.join('')}`);
    }
    try {
      if ((await fetch(`${base}/readyz`)).ok) {
        return;
      }
    } catch (_) {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`server not ready after 30 s:\n${log.join('')}`);
}

function stopServer(server) {
  if (!server || server.exitCode !== null || server.signalCode !== null) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const kill = setTimeout(() => server.kill('SIGKILL'), 5000);
    server.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    server.kill('SIGTERM');
  });
}

// Polls `check` until it returns a truthy value (which is returned), or fails.
async function eventually(what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

// Starts `slidegrade serve` on a free loopback port with a random model (64 px tiles at
// 8 µm/px), with or without API keys; with keys, `key` is a fresh submit key.
async function startServer(tmp, { auth }) {
  execFileSync(binary, ['export-random', '--out', path.join(tmp, 'models/random'),
    '--input-size', '64', '--mpp', '8'], { stdio: 'pipe' });
  const data = path.join(tmp, 'data');
  const key = auth
    ? execFileSync(binary, ['keys', '--data-dir', data, 'create', '--name', 'viewer', '--role', 'submit'])
      .toString().trim()
    : null;
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const log = [];
  const server = spawn(binary, ['serve', '--bind', `127.0.0.1:${port}`,
    ...(auth ? [] : ['--no-auth']),
    '--models-dir', path.join(tmp, 'models'), '--data-dir', data],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  liveServers.add(server);
  server.once('exit', () => liveServers.delete(server));
  server.stdout.on('data', (d) => log.push(d.toString()));
  server.stderr.on('data', (d) => log.push(d.toString()));
  try {
    await waitForReady(base, server, log);
  } catch (e) {
    await stopServer(server);
    throw e;
  }
  return { server, base, port, key };
}

function launchBrowser(tmp) {
  return chromium.launchPersistentContext(path.join(tmp, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1400, height: 900 },
  });
}

// Records what the page asks for: Deep Zoom tile responses, their Authorization
// headers, and anything that went wrong (other hosts, HTTP errors, script errors).
function watch(page, port) {
  const seen = { tiles: [], tileAuth: new Set(), problems: [] };
  page.on('request', (r) => {
    const url = new URL(r.url());
    if (/^https?:$/.test(url.protocol) && url.host !== `127.0.0.1:${port}`) {
      seen.problems.push(`request to another host: ${r.url()}`);
    }
    if (TILE.test(url.pathname)) {
      seen.tileAuth.add(r.headers().authorization || '(none)');
    }
  });
  page.on('response', (r) => {
    const url = new URL(r.url());
    if (TILE.test(url.pathname)) {
      seen.tiles.push(r.status());
    }
    if (r.status() >= 400) {
      seen.problems.push(`${r.status()} ${url.pathname}`);
    }
  });
  page.on('requestfailed', (r) => seen.problems.push(`failed ${r.url()}: ${r.failure()?.errorText}`));
  page.on('pageerror', (e) => seen.problems.push(`page error: ${e.message}`));
  return seen;
}

const missing = [binary, slide, CHROMIUM].filter((p) => !existsSync(p));
const skip = missing.length ? `missing: ${missing.join(', ')} (run make test)` : false;

test('the viewer grades an uploaded slide and lays its heatmap over the slide',
  { timeout: 120000, skip },
  async () => {
    const tmp = mkdtempSync(path.join(tmpdir(), 'slidegrade-viewer-'));
    let server;
    let context;
    try {
      const started = await startServer(tmp, { auth: false });
      server = started.server;
      const { base, port } = started;
      context = await launchBrowser(tmp);
      const page = context.pages()[0] || await context.newPage();
      const seen = watch(page, port);
      const { tiles, problems } = seen;

      await page.goto(`${base}/`);
      await page.locator('#model option', { hasText: 'random' }).waitFor({ state: 'attached' });
      await page.locator('#slide-file').setInputFiles(slide);

      // The grade summary.
      await page.locator('#summary').waitFor({ state: 'visible', timeout: 60000 });
      assert.equal(await page.textContent('#job-state'), 'done');
      const summary = await page.textContent('#summary');
      assert.match(summary, /Gleason score/);
      assert.match(summary, /ISUP grade group/);
      assert.match(await page.textContent('#gleason'), /^(\d\+\d=\d+|benign)$/);
      assert.match(await page.textContent('#isup'), /^[0-5]/);
      assert.match(await page.textContent('#tumour'), /^\d+\.\d %$/);
      assert.match(await page.textContent('#model-name'), /^random v/);
      const outputs = await page.locator('#outputs a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
      for (const route of ['result', 'overlay.png', 'tiles.geojson', 'tiles.csv', 'fhir', 'hl7']) {
        assert.ok(outputs.some((href) => href.endsWith(`/${route}`)), `link to ${route}`);
      }
      // The job is listed among the recent jobs.
      await page.locator('#jobs li.current').waitFor();

      // Deep Zoom tiles were served and drawn.
      await eventually('a Deep Zoom tile', () => tiles.includes(200));
      await page.waitForFunction(() => {
        const item = window.slidegrade.viewer && window.slidegrade.viewer.world.getItemAt(0);
        return item && item.getFullyLoaded();
      }, null, { timeout: 30000 });

      // The heatmap lies where result.json says, in the slide's own frame: the slide is
      // 1 viewport unit = W level-0 px wide, so heatmap pixel (i, j) must land on
      // level-0 pixel origin + (i, j) · level0_px_per_px at every zoom.
      await page.waitForFunction(() => window.slidegrade.shownOverlay() !== null
        && !document.getElementById('opacity').disabled, null, { timeout: 30000 });
      const placement = await page.evaluate(() => {
        const { viewer, current } = window.slidegrade;
        const g = current.result.heatmap;
        const slideItem = viewer.world.getItemAt(0);
        const overlay = current.overlays.get(document.getElementById('overlay-class').value);
        const errors = [];
        for (const zoom of [1, 3.7, 11]) {
          viewer.viewport.zoomTo(zoom, null, true);
          for (const [i, j] of [[0, 0], [1, 2], [g.width_px, g.height_px]]) {
            const onOverlay = viewer.viewport.viewportToViewerElementCoordinates(
              overlay.imageToViewportCoordinates(i, j, true));
            const onSlide = viewer.viewport.viewportToViewerElementCoordinates(
              slideItem.imageToViewportCoordinates(
                g.origin_level0_px[0] + i * g.level0_px_per_px,
                g.origin_level0_px[1] + j * g.level0_px_per_px, true));
            errors.push(Math.hypot(onOverlay.x - onSlide.x, onOverlay.y - onSlide.y));
          }
        }
        viewer.viewport.goHome(true);
        return {
          maxErrorPx: Math.max(...errors),
          slideWidth: slideItem.source.dimensions.x,
          overlaySize: [overlay.source.dimensions.x, overlay.source.dimensions.y],
          heatmap: g,
          bounds: window.slidegrade.shownOverlay(),
        };
      });
      assert.equal(placement.slideWidth, 2220);
      assert.deepEqual(placement.overlaySize, [placement.heatmap.width_px, placement.heatmap.height_px]);
      assert.ok(placement.maxErrorPx < 0.01, `heatmap off by ${placement.maxErrorPx} screen px`);
      assert.ok(Math.abs(placement.bounds.width - placement.heatmap.extent_level0_px[0] / 2220) < 1e-9);
      // The heatmap is wider than the slide: scaled to the slide's width it would be off.
      assert.ok(placement.heatmap.extent_level0_px[0] > 2220);

      // Overlay controls change the OpenSeadragon item's opacity.
      const opacity = async () => (await page.evaluate(() => window.slidegrade.shownOverlay())).opacity;
      assert.equal(await opacity(), 0.5);
      await page.locator('#opacity').focus();
      await page.keyboard.press('End');
      assert.equal(await opacity(), 1);
      for (let i = 0; i < 40; i++) {
        await page.keyboard.press('ArrowLeft');
      }
      assert.equal(await opacity(), 0.6);
      await page.locator('#overlay-on').uncheck();
      assert.equal(await opacity(), 0);
      await page.locator('#overlay-on').check();
      assert.equal(await opacity(), 0.6);
      // Another class: its layer is shown, the previous one hidden.
      const classes = await page.locator('#overlay-class option').allTextContents();
      assert.ok(classes.length >= 2, `classes: ${classes}`);
      const before = await page.inputValue('#overlay-class');
      const other = classes.find((c) => c !== before);
      await page.selectOption('#overlay-class', other);
      assert.equal(await opacity(), 0.6);
      const hidden = await page.evaluate((cls) => window.slidegrade.current.overlays.get(cls).getOpacity(), before);
      assert.equal(hidden, 0);
      await page.selectOption('#overlay-class', before);
      // The AT+ map (the random model exports one): the same class's AT+ layer is shown
      // at the same opacity and place, its Grad-CAM layer hidden, and back.
      const attention = await page.evaluate(() => window.slidegrade.current.result.heatmap.attention_layers.length);
      assert.ok(attention >= 2, `attention layers: ${attention}`);
      assert.equal(await page.isDisabled('#overlay-map'), false);
      await page.selectOption('#overlay-map', 'attention');
      const atPlus = await page.evaluate((cls) => {
        const { current } = window.slidegrade;
        return {
          shown: window.slidegrade.shownOverlay(),
          isAttention: current.attentionOverlays.get(cls) !== undefined
            && current.attentionOverlays.get(cls).getOpacity() > 0,
          gradCam: current.overlays.get(cls).getOpacity(),
        };
      }, before);
      assert.equal(atPlus.shown.opacity, 0.6);
      assert.ok(atPlus.isAttention);
      assert.equal(atPlus.gradCam, 0);
      assert.ok(Math.abs(atPlus.shown.width - placement.bounds.width) < 1e-9);
      await page.selectOption('#overlay-map', 'heatmap');
      assert.equal(await opacity(), 0.6);

      await page.waitForFunction(() => {
        const { viewer, current } = window.slidegrade;
        const shown = current.overlays.get(document.getElementById('overlay-class').value);
        return viewer.world.getItemAt(0).getFullyLoaded() && shown.getFullyLoaded();
      }, null, { timeout: 30000 });
      mkdirSync(path.dirname(screenshot), { recursive: true });
      await page.screenshot({ path: screenshot });

      assert.deepEqual(problems, []);
    } finally {
      if (context) {
        await context.close().catch(() => {});
      }
      await stopServer(server);
      rmSync(tmp, { recursive: true, force: true });
    }
  });

test('with API keys on, the page asks for a key and sends it with every request, tiles included',
  { timeout: 120000, skip },
  async () => {
    const tmp = mkdtempSync(path.join(tmpdir(), 'slidegrade-viewer-auth-'));
    let server;
    let context;
    try {
      const started = await startServer(tmp, { auth: true });
      server = started.server;
      const { base, port, key } = started;
      context = await launchBrowser(tmp);
      const page = context.pages()[0] || await context.newPage();
      const seen = watch(page, port);

      // The page itself needs no key; the API answers 401 and the page asks for one.
      const response = await page.goto(`${base}/`);
      assert.equal(response.status(), 200);
      await page.locator('#auth.needed').waitFor();
      assert.ok(seen.problems.every((p) => p.startsWith('401 ')), seen.problems.join('\n'));
      seen.problems.length = 0;

      await page.fill('#api-key', key);
      await page.click('#key-form button[type=submit]');
      assert.equal(await page.evaluate(() => localStorage.getItem('slidegrade.apiKey')), key);
      await page.locator('#model option', { hasText: 'random' }).waitFor({ state: 'attached' });
      await page.locator('#slide-file').setInputFiles(slide);
      await page.locator('#summary').waitFor({ state: 'visible', timeout: 60000 });
      assert.match(await page.textContent('#gleason'), /^(\d\+\d=\d+|benign)$/);
      await eventually('a Deep Zoom tile', () => seen.tiles.includes(200));
      await page.waitForFunction(() => window.slidegrade.shownOverlay() !== null, null, { timeout: 30000 });
      assert.deepEqual([...seen.tileAuth], [`Bearer ${key}`]);
      assert.deepEqual(seen.problems, []);
    } finally {
      if (context) {
        await context.close().catch(() => {});
      }
      await stopServer(server);
      rmSync(tmp, { recursive: true, force: true });
    }
  });
