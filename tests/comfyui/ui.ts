/**
 * Driving ComfyUI's own (legacy) frontend in Chromium through the gateway: signing in, waiting for the app,
 * building and queueing a graph, reading its panels, and a screenshot per step into test-output/comfyui/<server>/.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';

/** One HTTP answer of 400 or more that the page received. */
export interface FailedRequest {
  status: number;
  method: string;
  path: string;
}

/** A signed-in (or about to be) browser profile for one user, with every failed request it saw. */
export interface UiSession {
  ctx: BrowserContext;
  page: Page;
  failed: FailedRequest[];
  /** uncaught exceptions of the page */
  errors: string[];
  shot(name: string): Promise<string>;
}

/** The folder a server's screenshots go to (git-ignored). */
export function shotDir(server: string): string {
  const dir = path.resolve(__dirname, '..', '..', 'test-output', 'comfyui', server);
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/** screenshots taken so far, per server folder, for their NN- prefix */
const shotCounters = new Map<string, number>();

/** A fresh profile whose requests to `gatewayUrl` are watched; nothing may leave for another host. */
export async function openSession(browser: Browser, gatewayUrl: string, server: string, who: string): Promise<UiSession> {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await ctx.route(
    (url) => !url.href.startsWith(gatewayUrl),
    (route) => route.abort(),
  );
  const page = await ctx.newPage();
  const failed: FailedRequest[] = [];
  const errors: string[] = [];
  page.on('response', (r) => {
    if (r.status() < 400 || !r.url().startsWith(gatewayUrl)) return;
    failed.push({ status: r.status(), method: r.request().method(), path: new URL(r.url()).pathname });
  });
  page.on('pageerror', (e) => errors.push(e.message));
  const dir = shotDir(server);
  return {
    ctx,
    page,
    failed,
    errors,
    async shot(name) {
      const n = (shotCounters.get(dir) ?? 0) + 1;
      shotCounters.set(dir, n);
      const file = path.join(dir, `${String(n).padStart(2, '0')}-${who}-${name}.png`);
      await page.screenshot({ path: file });
      return file;
    },
  };
}

/** Opens ComfyUI, is sent to the sign-in page, signs in, and waits until ComfyUI's app has finished its set-up. */
export async function signInToComfy(s: UiSession, gatewayUrl: string, username: string, password: string): Promise<void> {
  await s.page.goto(gatewayUrl + '/');
  await s.page.waitForURL(/\/login\?next=/);
  await s.page.fill('#username', username);
  await s.page.fill('#password', password);
  await s.shot('login');
  await s.page.click('#login-submit');
  await s.page.waitForURL(gatewayUrl + '/');
  await waitForApp(s.page);
}

/** Waits for the legacy frontend's `window.app` (set after `app.setup()` resolved) and its node definitions. */
export async function waitForApp(page: Page): Promise<void> {
  await page.waitForFunction(
    "window.app && window.app.graph && window.LiteGraph && window.LiteGraph.registered_node_types['SaveImage']",
    null,
    {
      timeout: 60_000,
    },
  );
}

/**
 * Replaces the graph with EmptyImage -> SaveImage built through LiteGraph (as a user dragging nodes would),
 * and returns the SaveImage node's id. Strings, not functions: the tests are type-checked without the DOM library.
 */
export async function buildEmptyImageGraph(
  page: Page,
  o: { width: number; height: number; batch: number; color: number; prefix: string },
): Promise<number> {
  return page.evaluate(`(() => {
    const o = ${JSON.stringify(o)};
    app.graph.clear();
    const empty = LiteGraph.createNode('EmptyImage');
    const save = LiteGraph.createNode('SaveImage');
    app.graph.add(empty);
    app.graph.add(save);
    empty.pos = [100, 150];
    save.pos = [450, 150];
    const set = (n, name, v) => { const w = n.widgets.find((w) => w.name === name); w.value = v; };
    set(empty, 'width', o.width); set(empty, 'height', o.height); set(empty, 'batch_size', o.batch); set(empty, 'color', o.color);
    set(save, 'filename_prefix', o.prefix);
    empty.connect(0, save, 0);
    app.graph.setDirtyCanvas(true, true);
    return save.id;
  })()`);
}

/** The images the UI shows on a node once it ran: each one's src and natural size (0 until loaded). */
export async function nodeImages(page: Page, nodeId: number): Promise<{ src: string; width: number; height: number }[]> {
  return page.evaluate(`(() => {
    const n = app.graph.getNodeById(${nodeId});
    return (n && n.imgs ? n.imgs : []).map((i) => ({ src: i.src, width: i.naturalWidth, height: i.naturalHeight }));
  })()`);
}

/** The entry numbers a legacy list panel ("View Queue" / "View History") shows, per section. */
export async function panelEntries(page: Page, button: 'queue' | 'history'): Promise<Record<string, number[]>> {
  const id = button === 'queue' ? '#comfy-view-queue-button' : '#comfy-view-history-button';
  const panel = page.locator('.comfy-list').nth(button === 'queue' ? 0 : 1);
  if (!(await panel.isVisible())) await page.click(id);
  // The panel is filled after its own fetch; its action buttons come last.
  await panel.locator('.comfy-list-actions').waitFor();
  return page.evaluate(`(() => {
    const panel = document.querySelectorAll('.comfy-list')[${button === 'queue' ? 0 : 1}];
    const out = {};
    let section = '';
    for (const el of panel.children) {
      if (el.tagName === 'H4') { section = el.textContent; out[section] = []; }
      else if (el.classList.contains('comfy-list-items'))
        for (const item of el.children) out[section].push(Number(String(item.firstChild && item.firstChild.textContent).split(':')[0]));
    }
    return out;
  })()`);
}
