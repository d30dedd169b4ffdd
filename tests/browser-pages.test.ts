/**
 * The pages a person sees, in real Chromium at desktop and phone widths (screenshots in $SCREENSHOT_DIR or the
 * temp dir): first-run hint only on a first run, signed-out notice, refusals that say what to do, every register
 * problem at once, and the admin page at /admin with its users table, an unwrapped Copy button and a cleared form.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { launchBrowser, unexpectedProblems, watchProblems, type PageProblem } from './helpers/browser';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { hit } from './helpers/edge';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

jest.setTimeout(90_000);

const SHOTS = process.env.SCREENSHOT_DIR || path.join(os.tmpdir(), 'cgw-screens');
const VIEWPORTS = [
  { name: 'desktop', width: 1280, height: 900 },
  { name: 'phone', width: 390, height: 844 },
] as const;

let browser: Browser;
let fake: FakeComfy;
beforeAll(async () => {
  fs.mkdirSync(SHOTS, { recursive: true });
  browser = await launchBrowser();
  fake = await startFakeComfy();
});
afterAll(async () => {
  await browser?.close();
  await fake?.close();
});

describe.each(VIEWPORTS)('pages at $name width ($width px)', (vp) => {
  let gw: TestGateway;
  let ctx: BrowserContext;
  let page: Page;
  let problems: PageProblem[];
  const shot = (name: string) => page.screenshot({ path: path.join(SHOTS, `${name}-${vp.name}.png`), fullPage: true });
  const text = (sel: string) => page.locator(sel).innerText();

  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
    ctx = await browser.newContext({ viewport: { width: vp.width, height: vp.height } });
    await ctx.route(/^https?:\/\/(?!127\.0\.0\.1[:/])/, (route) => route.abort());
    problems = await watchProblems(ctx);
    page = await ctx.newPage();
    page.on('dialog', (d) => void d.accept());
  });
  afterAll(async () => {
    await ctx?.close();
    await gw?.close();
  });
  afterEach(() => {
    // expected refusals the pages themselves provoke: the "signed in already?" probe, wrong passwords, a lockout
    const allowed = [
      { status: 401, path: '/gateway/api/me' },
      { status: 401, path: '/login' },
      { status: 429, path: '/login' },
      { status: 400, path: '/register' },
    ];
    expect(unexpectedProblems(problems.splice(0), allowed)).toEqual([]);
  });

  test('the first-run hint shows while no administrator exists, and disappears once one does', async () => {
    await page.goto(`${gw.url}/login`);
    await page.locator('#first-run').waitFor({ state: 'visible' });
    expect(await text('#first-run')).toMatch(/First run: no administrator exists yet/);
    await shot('login-first-run');
    // the first admin, from this machine (no setup code needed)
    const made = await hit(gw.url, '/register', {
      method: 'POST',
      from: '127.0.0.254',
      body: { new_user_username: 'root', new_user_password: 'root-password-1' },
    });
    expect(made.status).toBe(201);
    // the hint starts hidden: judge it only after the page has heard the answer
    const state = page.waitForResponse((r) => r.url().endsWith('/gateway/login-state'));
    await page.goto(`${gw.url}/login`);
    expect(await (await state).json()).toEqual({ first_run: false });
    await expect(page.locator('#admin-link').getAttribute('href')).resolves.toBe('/admin');
    expect(await page.locator('#first-run').isHidden()).toBe(true);
    await shot('login');
  });

  test('register: every problem at once, focus on the first field to fix', async () => {
    await page.goto(`${gw.url}/register`);
    await page.fill('#new-username', 'X');
    await page.fill('#new-password', 'short');
    await page.fill('#new-password2', 'different');
    await page.click('#register-submit');
    const err = page.locator('#register-error');
    await err.waitFor({ state: 'visible' });
    const t = await err.innerText();
    expect(t).toMatch(/username must be 2–32 characters/);
    expect(t).toMatch(/at least 8 characters/);
    expect(t).toMatch(/do not match/);
    expect(await page.evaluate('document.activeElement && document.activeElement.id')).toBe('new-username');
    await shot('register-errors');
  });

  test('a wrong password says what to do (Caps Lock, ask an administrator)', async () => {
    await page.goto(`${gw.url}/login`);
    await page.fill('#username', 'root');
    await page.fill('#password', 'not-the-password');
    await page.click('#login-submit');
    await page.locator('#login-error').waitFor({ state: 'visible' });
    expect(await text('#login-error')).toMatch(
      /Wrong username or password\. Check that Caps Lock is off; if you forgot your password, ask an administrator/,
    );
    await shot('login-wrong-password');
  });

  test('/admin: signed out goes to sign-in and back; users table with role, permissions, last sign-in, tokens', async () => {
    await page.goto(`${gw.url}/admin`);
    await page.waitForURL(/\/login\?next=%2Fadmin$/);
    await page.fill('#username', 'root');
    await page.fill('#password', 'root-password-1');
    await page.click('#login-submit');
    await page.waitForURL(`${gw.url}/admin`);
    const row = page.locator('#user-table tbody tr', { hasText: 'root' });
    await row.waitFor();
    const cells = await row.locator('th, td').allInnerTexts();
    expect(cells[0]).toBe('root');
    expect(cells[1]).toBe('Administrator');
    expect(cells[2]).toBe('all');
    expect(cells[3]).not.toBe('—'); // signed in just now
    expect(cells[4]).toBe('0');
    expect(cells[5]).toBe('active');

    // a token: the Copy button stays on one line beside the secret
    await page.fill('#token-name', 'render-bot');
    await page.click('#token-form button[type=submit]');
    await page.locator('#token-secret').waitFor({ state: 'visible' });
    const copy = await page.locator('#token-copy').boundingBox();
    const input = await page.locator('#token-secret-value').boundingBox();
    expect(copy!.height).toBeLessThan(48);
    expect(copy!.width).toBeGreaterThan(40);
    expect(Math.abs(copy!.y - input!.y)).toBeLessThan(12);
    expect(await page.locator('#token-copy').innerText()).toBe('Copy');

    // add a user: the password does not stay in the form, and the table shows the new row
    await page.fill('#user-name', 'carol');
    await page.fill('#user-password', 'carol-password-1');
    await page.check('#new-perm-download_models');
    await page.click('#user-form button[type=submit]');
    await page.locator('#users-msg', { hasText: 'User carol created' }).waitFor();
    expect(await page.inputValue('#user-password')).toBe('');
    expect(await page.inputValue('#user-name')).toBe('');
    const carol = page.locator('#user-table tbody tr', { hasText: 'carol' });
    await carol.waitFor();
    expect(await carol.locator('td').allInnerTexts()).toEqual(['User', 'download_models', '—', '0', 'active']);
    await page.reload();
    await page.locator('#user-table tbody tr', { hasText: 'root' }).waitFor();
    expect((await page.locator('#user-table tbody tr', { hasText: 'root' }).locator('td').allInnerTexts())[3]).toBe('1'); // the token
    await shot('admin');
    // nothing on the page is wider than the viewport (the table scrolls inside its own box)
    expect(await page.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(vp.width);
  });

  test('a non-admin gets /admin for their own password and tokens, without the admin sections or their data', async () => {
    const r = await request(gw.url).post('/login').send({ username: 'carol', password: 'carol-password-1' });
    const cookie = ([] as string[]).concat(r.headers['set-cookie'])[0].split(';')[0];
    const res = await request(gw.url).get('/admin').set('Cookie', cookie).set('Accept', 'text/html');
    expect(res.status).toBe(200);
    const users = await request(gw.url).get('/gateway/api/users').set('Cookie', cookie);
    expect(users.status).toBe(403);
    expect(users.body.error.code).toBe('FORBIDDEN');
    const anon = await request(gw.url).get('/admin').set('Accept', 'text/html');
    expect([anon.status, anon.headers.location]).toEqual([302, '/login?next=%2Fadmin']);
  });

  test('signing out shows a "signed out" notice on the sign-in page', async () => {
    await page.goto(`${gw.url}/admin`);
    await page.locator('#logout').click();
    await page.waitForURL(/\/login\?signed_out=1$/);
    await page.locator('#login-notice').waitFor({ state: 'visible' });
    expect(await text('#login-notice')).toBe('You have been signed out.');
    await shot('login-signed-out');
  });

  test('a lockout says for how long', async () => {
    await page.goto(`${gw.url}/login`);
    for (let i = 0; i < 6; i++) {
      await page.fill('#username', 'root');
      await page.fill('#password', `wrong-${i}-password`);
      await page.click('#login-submit');
      await page.locator('#login-error').waitFor({ state: 'visible' });
      if (/locked/.test(await text('#login-error'))) break;
    }
    expect(await text('#login-error')).toMatch(
      /Too many failed attempts: sign-in is locked for \d+ (seconds|minutes?)\. Wait, then try again\./,
    );
    await shot('login-locked');
  });
});
