import request from 'supertest';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { launchBrowser, setupCodeFrom, unexpectedProblems, watchProblems, type PageProblem } from './helpers/browser';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { hit } from './helpers/edge';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

jest.setTimeout(60_000);

const ADMIN = 'admin1';
let adminPass = 'admin-password-1';
const ADMIN_PAGE = '/admin'; // the plain URL (the file is also at /gateway/static/admin.html)

type Allowed = { status: number; path: string }[];

describe('browser: the admin page (users, tokens, own password, IP lists) in real Chromium', () => {
  let fake: FakeComfy;
  let gw: TestGateway;
  let browser: Browser;
  let admin: Page;
  const contexts: { ctx: BrowserContext; problems: PageProblem[]; allowed: Allowed }[] = [];

  async function freshPage(allowed: Allowed = []): Promise<{ ctx: BrowserContext; page: Page }> {
    const ctx = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    await ctx.route(/^https?:\/\/(?!127\.0\.0\.1[:/])/, (route) => route.abort());
    const problems = await watchProblems(ctx);
    contexts.push({ ctx, problems, allowed: [...allowed, { status: 401, path: '/gateway/api/me' }] });
    return { ctx, page: await ctx.newPage() };
  }
  /** Signs in through the sign-in page and waits to land on `next`. */
  async function signIn(page: Page, username: string, password: string, next = '/'): Promise<void> {
    await page.goto(`${gw.url}/login?next=${encodeURIComponent(next)}`);
    await page.fill('#username', username);
    await page.fill('#password', password);
    await page.click('#login-submit');
    await page.waitForURL(gw.url + next);
  }
  const msg = (page: Page, id: string, text: string | RegExp) => page.locator(`#${id}`, { hasText: text }).waitFor();
  const userRow = (name: string) => admin.locator(`#user-list li[data-username="${name}"]`);
  // API-side checks come from their own loopback addresses, so the failures they provoke on purpose never add up
  // to a lockout of the browser (127.0.0.1) the test is driving.
  let probe = 10;
  const apiLogin = (username: string, password: string) =>
    hit(gw.url, '/login', { method: 'POST', body: { username, password }, from: `127.0.0.${probe++}` });
  /** Polls until `get()` returns `want` (the pages' CSP forbids the eval that page.waitForFunction(string) needs). */
  async function until<T>(get: () => Promise<T>, want: T, timeoutMs = 5000): Promise<void> {
    const end = Date.now() + timeoutMs;
    let got = await get();
    while (got !== want && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 50));
      got = await get();
    }
    expect(got).toBe(want);
  }

  beforeAll(async () => {
    browser = await launchBrowser();
    fake = await startFakeComfy();
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY });
    const first = await request(gw.url)
      .post('/register')
      .send({ new_user_username: ADMIN, new_user_password: adminPass, setup_code: setupCodeFrom(gw.composed.notices) });
    expect(first.status).toBe(201);
    const allowed: Allowed = [
      { status: 409, path: '/gateway/api/users' },
      { status: 409, path: `/gateway/api/users/${ADMIN}` },
      { status: 401, path: '/gateway/api/me/password' },
    ];
    admin = (await freshPage(allowed)).page;
    admin.on('dialog', (d) => void d.accept());
    await signIn(admin, ADMIN, adminPass, ADMIN_PAGE);
    await userRow(ADMIN).waitFor();
  });
  afterAll(async () => {
    for (const c of contexts) await c.ctx.close().catch(() => undefined);
    await browser?.close();
    await gw?.close();
    await fake?.close();
  });
  afterEach(() => {
    for (const c of contexts) expect(unexpectedProblems(c.problems, c.allowed)).toEqual([]);
  });

  test('the page shows who is signed in, the admin sections, and lists the admin', async () => {
    await expect(admin.locator('#whoami').textContent()).resolves.toBe(`Signed in as ${ADMIN} (administrator)`);
    await expect(admin.locator('#users').isVisible()).resolves.toBe(true);
    await expect(admin.locator('#iplists').isVisible()).resolves.toBe(true);
    await expect(userRow(ADMIN).textContent()).resolves.toContain('you');
    await admin.screenshot({ path: '/tmp/cgw-admin-desktop.png', fullPage: true });
  });

  test('an admin adds a user (with a permission) who then signs in; duplicates get the gateway message', async () => {
    await admin.fill('#user-name', ADMIN);
    await admin.fill('#user-password', 'whatever-password');
    await admin.click('#user-form button[type=submit]');
    await msg(admin, 'users-msg', `User ${ADMIN} already exists`);

    await admin.fill('#user-name', 'bob');
    await admin.fill('#user-password', 'bob-password-1');
    await admin.check('#new-perm-download_models');
    await admin.click('#user-form button[type=submit]');
    await msg(admin, 'users-msg', 'User bob created. They can sign in now.');
    await userRow('bob').waitFor();
    const bob = gw.composed.users.get('bob')!;
    expect(bob.role).toBe('user');
    expect(bob.permissions).toEqual(['download_models']);
    await expect(userRow('bob').locator('#perm-bob-download_models').isChecked()).resolves.toBe(true);

    const { page } = await freshPage();
    await signIn(page, 'bob', 'bob-password-1');
    const badge = page.locator('#comfy-gateway-badge .badge');
    await expect(badge.textContent()).resolves.toBe('signed in as bob·Account·Log out');
    await badge.locator('a').click();
    await page.waitForURL(gw.url + ADMIN_PAGE);
    await page.locator('#token-form').waitFor();
    await expect(page.locator('#whoami').textContent()).resolves.toBe('Signed in as bob');
    await expect(page.locator('#users').isHidden()).resolves.toBe(true);
    await expect(page.locator('#iplists').isHidden()).resolves.toBe(true);
  });

  test('role, permissions, disable and password reset from the user list take effect', async () => {
    const row = userRow('bob');
    await row.locator('select').selectOption('admin');
    await msg(admin, 'users-msg', 'bob is now an administrator.');
    expect(gw.composed.users.get('bob')!.role).toBe('admin');
    await userRow('bob').locator('select').selectOption('user');
    await msg(admin, 'users-msg', 'bob is now a user.');
    expect(gw.composed.users.get('bob')!.role).toBe('user');

    await userRow('bob').locator('#perm-bob-download_models').uncheck();
    await msg(admin, 'users-msg', 'Permissions of bob saved.');
    expect(gw.composed.users.get('bob')!.permissions).toEqual([]);

    const { page: bobPage } = await freshPage();
    await signIn(bobPage, 'bob', 'bob-password-1');
    await userRow('bob').locator('#dis-bob').check();
    await msg(admin, 'users-msg', 'bob is disabled');
    expect(gw.composed.users.get('bob')!.disabled).toBe(true);
    // The disabled user's open session no longer reaches ComfyUI, and signing in again is refused.
    await bobPage.goto(gw.url + '/');
    expect(new URL(bobPage.url()).pathname).toBe('/login');
    expect(await bobPage.content()).not.toContain('ComfyUI fake');
    expect((await apiLogin('bob', 'bob-password-1')).status).toBe(401);
    await userRow('bob').locator('#dis-bob').uncheck();
    await msg(admin, 'users-msg', 'bob is enabled again.');
    expect((await apiLogin('bob', 'bob-password-1')).status).toBe(200);

    await userRow('bob').locator('input[type=password]').fill('bob-new-password');
    await userRow('bob').locator('button', { hasText: 'Set password' }).click();
    await msg(admin, 'users-msg', 'Password of bob changed');
    expect((await apiLogin('bob', 'bob-password-1')).status).toBe(401);
    const { page } = await freshPage();
    await signIn(page, 'bob', 'bob-new-password');
    await page.locator('#comfy-gateway-badge .badge', { hasText: 'signed in as bob' }).waitFor();
  });

  test('the last admin cannot demote itself: the LAST_ADMIN message is shown and nothing changes', async () => {
    await userRow(ADMIN).locator('select').selectOption('user');
    await msg(admin, 'users-msg', 'That would leave no enabled administrator');
    expect(gw.composed.users.get(ADMIN)!.role).toBe('admin');
    // The list is reloaded from the server, so the control shows the real role again.
    await until(() => userRow(ADMIN).locator('select').inputValue(), 'admin');
  });

  test('a personal token is shown once, works as a Bearer credential, and stops working when revoked', async () => {
    await admin.fill('#token-name', 'ci-bot');
    await admin.fill('#token-hours', '24');
    await admin.click('#token-form button[type=submit]');
    await admin.locator('#token-secret').waitFor({ state: 'visible' });
    const secret = await admin.inputValue('#token-secret-value');
    expect(secret.length).toBeGreaterThan(20);
    const me = await request(gw.url).get('/gateway/api/me').set('Authorization', `Bearer ${secret}`);
    expect(me.status).toBe(200);
    expect(me.body.username).toBe(ADMIN);
    const item = admin.locator('#token-list li', { hasText: 'ci-bot' });
    await item.waitFor();
    expect(await item.textContent()).not.toContain(secret);

    await admin.reload();
    await admin.locator('#token-list li', { hasText: 'ci-bot' }).waitFor();
    await expect(admin.locator('#token-secret').isHidden()).resolves.toBe(true);
    expect(await admin.content()).not.toContain(secret);

    await admin.locator('#token-list li', { hasText: 'ci-bot' }).locator('button', { hasText: 'Revoke' }).click();
    await msg(admin, 'tokens-msg', 'Token ci-bot revoked.');
    await admin.locator('#token-empty').waitFor({ state: 'visible' });
    expect(
      (await hit(gw.url, '/gateway/api/me', { headers: { Authorization: `Bearer ${secret}` }, from: `127.0.0.${probe++}` })).status,
    ).toBe(401);
  });

  test('changing one’s own password: wrong current password is refused; afterwards only the new one works', async () => {
    await admin.fill('#current-password', 'not-my-password');
    await admin.fill('#new-password', 'admin-password-2');
    await admin.fill('#new-password2', 'admin-password-2');
    await admin.click('#password-form button[type=submit]');
    await msg(admin, 'password-msg', /invalid credentials/i);

    await admin.fill('#current-password', adminPass);
    await admin.fill('#new-password2', 'admin-password-3');
    await admin.click('#password-form button[type=submit]');
    await msg(admin, 'password-msg', 'The two new passwords do not match.');

    await admin.fill('#new-password2', 'admin-password-2');
    await admin.click('#password-form button[type=submit]');
    await msg(admin, 'password-msg', 'Password changed.');
    expect((await apiLogin(ADMIN, adminPass)).status).toBe(401);
    adminPass = 'admin-password-2';
    expect((await apiLogin(ADMIN, adminPass)).status).toBe(200);
    // This browser was handed a fresh session, so the page keeps working.
    await admin.reload();
    await userRow(ADMIN).waitFor();
  });

  test('the register page, opened by an admin, adds users with a chosen role', async () => {
    const page = await admin.context().newPage();
    await page.goto(gw.url + '/register');
    await page.locator('#register-title', { hasText: 'Add a user' }).waitFor();
    await expect(page.locator('#setup-block').isHidden()).resolves.toBe(true);
    await page.fill('#new-username', 'carol');
    await page.fill('#new-password', 'carol-password');
    await page.fill('#new-password2', 'carol-password');
    await page.selectOption('#role', 'admin');
    await page.click('#register-submit');
    await msg(page, 'register-ok', 'User carol created (admin).');
    expect(gw.composed.users.get('carol')!.role).toBe('admin');
    await page.close();
  });

  test('an admin sets and clears a user’s email (what Cloudflare Access binds to) from the list', async () => {
    await admin.reload();
    const email = userRow('carol').locator('input[type=email]');
    await email.fill('Carol@Example.com');
    await userRow('carol').locator('button', { hasText: 'Save email' }).click();
    await msg(admin, 'users-msg', 'Email of carol set to Carol@Example.com.');
    expect(gw.composed.users.get('carol')?.email).toBe('carol@example.com');
    await userRow('carol').locator('input[type=email]').fill('');
    await userRow('carol').locator('button', { hasText: 'Save email' }).click();
    await msg(admin, 'users-msg', 'carol has no email now.');
    expect(gw.composed.users.get('carol')?.email).toBeNull();
  });

  test('deleting a user removes it after confirmation', async () => {
    await admin.reload();
    await userRow('carol').locator('button', { hasText: 'Delete' }).click();
    await msg(admin, 'users-msg', 'User carol deleted.');
    await userRow('carol').waitFor({ state: 'detached' });
    expect(gw.composed.users.get('carol')).toBeUndefined();
  });

  test('the IP lists editor saves both lists', async () => {
    await admin.fill('#whitelist', '127.0.0.1\n::1\n# the office\n10.0.0.0/8\n');
    await admin.fill('#blacklist', '203.0.113.7\n');
    await admin.click('#ip-form button[type=submit]');
    await msg(admin, 'ip-msg', 'IP lists saved (3 allowed, 1 blocked).');
    const lists = await request(gw.url).get('/gateway/api/ip-lists').set('X-API-Key', TEST_KEY);
    expect(lists.status).toBe(200);
    expect(lists.body.whitelist).toEqual(expect.arrayContaining(['127.0.0.1', '::1', '10.0.0.0/8']));
    expect(lists.body.blacklist).toEqual(expect.arrayContaining(['203.0.113.7']));
    await admin.reload();
    await until(() => admin.inputValue('#blacklist'), '203.0.113.7');
    // Undo, so the allow list does not outlive the test.
    await admin.fill('#whitelist', '');
    await admin.fill('#blacklist', '');
    await admin.click('#ip-form button[type=submit]');
    await msg(admin, 'ip-msg', 'IP lists saved (0 allowed, 0 blocked).');
  });
});
