import request from 'supertest';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { launchBrowser, setupCodeFrom, unexpectedProblems, watchProblems, type PageProblem } from './helpers/browser';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

jest.setTimeout(60_000);

const ADMIN = 'admin1';
const ADMIN_PASS = 'correct-horse-battery';
/**
 * Failed requests the pages make on purpose and handle: "am I signed in already?" (401 when not), and the
 * refused sign-in / registration attempts these tests make. Chromium logs each as a console error.
 */
const ME_401 = ['/gateway/api/me', '/login', '/register'].map((path) => ({ status: 401, path }));

describe('browser: first admin, sign-in, ComfyUI page, sign-out (real Chromium)', () => {
  let fake: FakeComfy;
  let gw: TestGateway;
  let browser: Browser;
  const contexts: { ctx: BrowserContext; problems: PageProblem[]; allowed: { status: number; path: string }[] }[] = [];

  /** A fresh browser profile (no cookies) whose console errors and CSP violations are recorded. */
  async function freshPage(
    viewport = { width: 1280, height: 800 },
    allowed = ME_401,
  ): Promise<{ ctx: BrowserContext; page: Page; problems: PageProblem[] }> {
    const ctx = await browser.newContext({ viewport });
    // Nothing may leave for another host; an open redirect would show up as a navigation away from the gateway.
    await ctx.route(/^https?:\/\/(?!127\.0\.0\.1[:/])/, (route) => route.abort());
    const problems = await watchProblems(ctx);
    contexts.push({ ctx, problems, allowed });
    return { ctx, page: await ctx.newPage(), problems };
  }

  /** Signs in from `path`; returns the sign-in page's URL as it was before submitting (the redirect may be instant). */
  async function signIn(page: Page, path: string, username = ADMIN, password = ADMIN_PASS): Promise<string> {
    await page.goto(gw.url + path);
    await page.waitForURL(/\/login\b/);
    const loginUrl = page.url();
    await page.fill('#username', username);
    await page.fill('#password', password);
    await page.click('#login-submit');
    return loginUrl;
  }

  beforeAll(async () => {
    browser = await launchBrowser();
    fake = await startFakeComfy();
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
  });
  afterAll(async () => {
    for (const c of contexts) await c.ctx.close().catch(() => undefined);
    await browser?.close();
    await gw?.close();
    await fake?.close();
  });
  afterEach(() => {
    // Every page of every test: no CSP violation, no uncaught error, no unexpected failed request.
    for (const c of contexts) expect(unexpectedProblems(c.problems, c.allowed)).toEqual([]);
  });

  test('an unauthenticated visit to ComfyUI goes to the sign-in page; the first admin registers with the setup code', async () => {
    const { page } = await freshPage();
    const nav = await page.goto(gw.url + '/');
    expect(page.url()).toBe(gw.url + '/login?next=%2F');
    expect(nav!.status()).toBe(200);
    expect(nav!.headers()['content-security-policy']).toContain("script-src 'self'");
    expect(fake.requests.filter((r) => r.rawPath === '/')).toHaveLength(0);

    await page.click('a[href="/register"]');
    await page.waitForURL(gw.url + '/register');
    await expect(page.locator('#register-title').textContent()).resolves.toMatch(/administrator/i);
    await page.fill('#new-username', ADMIN);
    await page.fill('#new-password', ADMIN_PASS);
    await page.fill('#new-password2', ADMIN_PASS + 'x');
    await page.fill('#setup-code', setupCodeFrom(gw.composed.notices));
    await page.click('#register-submit');
    await expect(page.locator('#register-error').textContent()).resolves.toMatch(/do not match/);
    expect(gw.composed.users.get(ADMIN)).toBeUndefined();

    // A wrong setup code is refused with the gateway's own message.
    await page.fill('#new-password2', ADMIN_PASS);
    await page.fill('#setup-code', 'AAAA-BBBB-CCCC-DDDD');
    await page.click('#register-submit');
    await page.locator('#register-error', { hasText: /setup code is wrong/i }).waitFor();
    expect(gw.composed.users.get(ADMIN)).toBeUndefined();

    await page.fill('#setup-code', setupCodeFrom(gw.composed.notices));
    await page.click('#register-submit');
    await page.locator('#register-ok', { hasText: `${ADMIN} created as administrator` }).waitFor();
    expect(gw.composed.users.get(ADMIN)?.role).toBe('admin');
    await page.click('#register-signin');
    await page.waitForURL(/\/login\?username=admin1$/);
    await expect(page.inputValue('#username')).resolves.toBe(ADMIN);
  });

  test('a wrong password shows the error message and sets no cookie', async () => {
    const { ctx, page } = await freshPage();
    await signIn(page, '/login', ADMIN, 'not-the-password');
    const err = page.locator('#login-error');
    await err.waitFor({ state: 'visible' });
    await expect(err.textContent()).resolves.toMatch(/Wrong username or password\. Check that Caps Lock is off/);
    expect(page.url()).toBe(gw.url + '/login');
    await expect(page.inputValue('#password')).resolves.toBe('');
    expect(await ctx.cookies()).toEqual([]);
    // Empty fields are caught before anything is sent.
    await page.fill('#username', '');
    await page.click('#login-submit');
    await page.locator('#login-error', { hasText: 'Enter your username and password' }).waitFor();
  });

  let signedIn: { ctx: BrowserContext; page: Page };

  test('signing in honours next= and lands on the ComfyUI page with the injected badge', async () => {
    const { ctx, page } = await freshPage();
    expect(await signIn(page, '/index.html')).toContain('/login?next=%2Findex.html');
    await page.waitForURL(gw.url + '/index.html');
    await expect(page.locator('#app').textContent()).resolves.toBe('ComfyUI fake');
    const badge = page.locator('#comfy-gateway-badge .badge');
    await badge.waitFor();
    await expect(badge.textContent()).resolves.toBe(`signed in as ${ADMIN}·Admin·Log out`);
    await expect(badge.locator('a').getAttribute('href')).resolves.toBe('/admin');
    // The frontend's user choice is pinned to the signed-in user, and re-pinned when something changes it.
    await expect(page.evaluate('localStorage.getItem("Comfy.userName")')).resolves.toBe(ADMIN);
    // ComfyUI's id for the user (created upstream by the gateway), not just the gateway name.
    const comfyId = Object.keys(fake.users).find((id) => fake.users[id] === ADMIN);
    expect(comfyId).toBeTruthy();
    await expect(page.evaluate('localStorage.getItem("Comfy.userId")')).resolves.toBe(comfyId);
    await page.evaluate('localStorage.setItem("Comfy.userId", "someone-else"); localStorage.removeItem("Comfy.userName")');
    await page.waitForFunction(
      `localStorage.getItem("Comfy.userId") === ${JSON.stringify(comfyId)} && localStorage.getItem("Comfy.userName") === "admin1"`,
    );
    const cookies = await ctx.cookies();
    expect(cookies.map((c) => c.name)).toEqual(['jwt_token']);
    expect(cookies[0].httpOnly).toBe(true);
    signedIn = { ctx, page };
  });

  test('log out from the badge, then back at the sign-in page; the copied cookie is refused everywhere', async () => {
    const { ctx, page } = signedIn;
    const stolen = (await ctx.cookies()).find((c) => c.name === 'jwt_token')!.value;
    // Before logout the same cookie works from a plain HTTP client.
    const before = await request(gw.url).get('/gateway/api/me').set('Cookie', `jwt_token=${stolen}`);
    expect(before.status).toBe(200);
    expect(before.body.username).toBe(ADMIN);

    await page.locator('#comfy-gateway-badge button', { hasText: 'Log out' }).click();
    await page.waitForURL(gw.url + '/login');
    expect((await ctx.cookies()).filter((c) => c.name === 'jwt_token')).toEqual([]);
    await page.goto(gw.url + '/');
    expect(page.url()).toBe(gw.url + '/login?next=%2F');

    fake.clearRequests();
    const http = await request(gw.url).get('/gateway/api/me').set('Cookie', `jwt_token=${stolen}`);
    expect(http.status).toBe(401);
    expect(http.body.error.code).toBe('TOKEN_REVOKED');
    const proxied = await request(gw.url).get('/').set('Cookie', `jwt_token=${stolen}`).set('Accept', 'application/json');
    expect(proxied.status).toBe(401);

    // A different browser given the copied cookie does not get ComfyUI either: it lands on the login page
    // and the dead cookie is dropped.
    const { ctx: thief, page: thiefPage } = await freshPage();
    await thief.addCookies([{ name: 'jwt_token', value: stolen, url: gw.url, httpOnly: true }]);
    await thiefPage.goto(gw.url + '/');
    expect(new URL(thiefPage.url()).pathname).toBe('/login');
    expect((await thief.cookies()).find((c) => c.name === 'jwt_token')).toBeUndefined();
    expect(await thiefPage.content()).not.toContain('ComfyUI fake');
    expect(fake.requests.filter((r) => r.rawPath === '/')).toHaveLength(0);
  });

  test.each([
    ['//evil.com', 'protocol-relative'],
    ['https://evil.com/x', 'absolute URL'],
    ['/\\evil.com', 'backslash trick'],
    ['\\\\evil.com', 'double backslash'],
    ['/\t/evil.com', 'tab that browsers strip'],
    ['javascript:alert(1)', 'script URL'],
    ['http:/evil.com', 'scheme without slashes'],
  ])('next=%j (%s) lands on / after signing in', async (next) => {
    const { page } = await freshPage();
    await page.goto(`${gw.url}/login?next=${encodeURIComponent(next)}`);
    await page.fill('#username', ADMIN);
    await page.fill('#password', ADMIN_PASS);
    await page.click('#login-submit');
    await page.waitForURL(gw.url + '/', { timeout: 5000 });
    await page.locator('#comfy-gateway-badge .badge').waitFor();
    // Already signed in: the page forwards at once, through the same check.
    await page.goto(`${gw.url}/login?next=${encodeURIComponent(next)}`);
    await page.waitForURL(gw.url + '/', { timeout: 5000 });
  });

  test('pages render at phone width (375 px) without horizontal scrolling or CSP violations', async () => {
    const { page } = await freshPage({ width: 375, height: 740 });
    const widthOf = () => page.evaluate('document.documentElement.scrollWidth') as Promise<number>;
    for (const [path, shot] of [
      ['/login?next=%2F', 'login'],
      ['/register', 'register'],
    ] as const) {
      await page.goto(gw.url + path);
      await page.locator('main.card').waitFor();
      expect(await widthOf()).toBeLessThanOrEqual(375);
      await page.screenshot({ path: `/tmp/cgw-${shot}-375.png`, fullPage: true });
    }
    await page.goto(gw.url + '/login?next=%2F');
    await page.fill('#username', ADMIN);
    await page.fill('#password', 'wrong-password-here');
    await page.click('#login-submit');
    await page.locator('#login-error').waitFor();
    await page.screenshot({ path: '/tmp/cgw-login-error-375.png', fullPage: true });
    await page.fill('#password', ADMIN_PASS);
    await page.click('#login-submit');
    await page.waitForURL(gw.url + '/');
    await page.locator('#comfy-gateway-badge .badge').waitFor();
    expect(await widthOf()).toBeLessThanOrEqual(375);
    await page.screenshot({ path: '/tmp/cgw-comfy-375.png' });
    await page.goto(gw.url + '/gateway/static/admin.html');
    await page.locator('#user-list li').first().waitFor();
    expect(await widthOf()).toBeLessThanOrEqual(375);
    await page.screenshot({ path: '/tmp/cgw-admin-375.png', fullPage: true });
  });
});
