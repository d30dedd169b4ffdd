import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import request from 'supertest';
import { runUsersCli } from '../gateway/users/cli';
import { login } from './helpers/auth';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, type TestGateway } from './helpers/gateway';

const ROOT = path.resolve(__dirname, '..');

/** Runs the compiled `comfyui-gateway users ...` the way `npm run users --` does, with `stdin` piped in. */
function cli(args: string[], opts: { cwd: string; stdin?: string }): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // the built bin (npm test builds dist/ first): transpiling TypeScript in every child took most of a loaded CPU
    const p = spawn(process.execPath, [path.join(ROOT, 'dist/gateway/bin.js'), 'users', ...args], {
      cwd: opts.cwd,
      env: { PATH: process.env.PATH },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`cli ${args.join(' ')} hung: ${stderr}`));
    }, 45_000);
    p.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
    p.stdin.end(opts.stdin ?? '');
  });
}

/** The same CLI in-process (fast), with stdin/stdout/stderr as plain streams. */
async function cliInProcess(args: string[], opts: { cwd: string; stdin?: string }) {
  const collect = () => {
    const s = new PassThrough();
    let text = '';
    s.on('data', (d) => (text += d));
    return { s, text: () => text };
  };
  const out = collect();
  const err = collect();
  const code = await runUsersCli(args, {
    stdin: Readable.from([Buffer.from(opts.stdin ?? '')]) as unknown as NodeJS.ReadStream,
    stdout: out.s as unknown as NodeJS.WriteStream,
    stderr: err.s as unknown as NodeJS.WriteStream,
    cwd: opts.cwd,
    env: {},
  });
  return { code, stdout: out.text(), stderr: err.text() };
}

let fake: FakeComfy;
let gw: TestGateway;
beforeAll(async () => {
  fake = await startFakeComfy();
  gw = await startGateway({ upstream: fake.url });
});
afterAll(async () => {
  await gw.close();
  await fake.close();
});

test('add --admin, list, role, passwd, remove against the running gateway’s store', async () => {
  const add = await cli(['add', 'root', '--admin'], { cwd: gw.dir, stdin: 'root-password-1\n' });
  expect(add).toMatchObject({ code: 0, stdout: 'added root (admin)\n' });
  // The running gateway sees the new admin at once: the setup path is closed and the admin can sign in.
  expect(gw.composed.users.hasAdmin()).toBe(true);
  expect((await request(gw.url).post('/register').send({ new_user_username: 'late', new_user_password: 'late-password-1' })).status).toBe(
    401,
  );
  const root = await login(gw, 'root', 'root-password-1');

  expect(
    (await cli(['add', 'bob', '--config', 'config.json'], { cwd: gw.dir, stdin: 'bob-password-1\r\nignored second line\n' })).code,
  ).toBe(0);
  const bob = await login(gw, 'bob', 'bob-password-1');
  expect((await request(gw.url).get('/gateway/api/users').set('Cookie', bob.cookie)).status).toBe(403);
  expect((await cli(['role', 'bob', 'admin'], { cwd: gw.dir })).stdout).toBe('bob is now admin\n');
  expect((await request(gw.url).get('/gateway/api/users').set('Cookie', bob.cookie)).status).toBe(200);

  const list = await cli(['list'], { cwd: gw.dir });
  expect(list.code).toBe(0);
  const rows = list.stdout
    .trim()
    .split('\n')
    .map((l) => l.split('\t'));
  expect(rows.map((r) => r.slice(0, 3))).toEqual([
    ['root', 'admin', 'enabled'],
    ['bob', 'admin', 'enabled'],
  ]);

  const pw = await cli(['passwd', 'bob'], { cwd: gw.dir, stdin: 'bob-password-2\n' });
  expect(pw.code).toBe(0);
  const old = await request(gw.url).get('/gateway/api/me').set('Cookie', bob.cookie);
  expect(old.status).toBe(401);
  expect(old.body.error.code).toBe('TOKEN_REVOKED');
  await login(gw, 'bob', 'bob-password-2');

  expect((await cli(['remove', 'bob'], { cwd: gw.dir })).stdout).toBe('removed bob\n');
  expect((await request(gw.url).post('/login').send({ username: 'bob', password: 'bob-password-2' })).status).toBe(401);
  expect((await request(gw.url).get('/gateway/api/me').set('Cookie', root.cookie)).status).toBe(200);
  for (const out of [add, pw, list]) expect(out.stdout + out.stderr).not.toMatch(/password-\d|\$2b\$/);
  const file = JSON.parse(fs.readFileSync(gw.config.paths.usersDb, 'utf8'));
  expect(file.users.map((u: { username: string }) => u.username)).toEqual(['root']);
  expect(fs.statSync(gw.config.paths.usersDb).mode & 0o777).toBe(0o600);
}, 60_000);

test('refusals: bad names and passwords, duplicates, last admin, usage errors — nothing written', async () => {
  const before = fs.readFileSync(gw.config.paths.usersDb, 'utf8');
  const cases: [string[], string | undefined, number, RegExp][] = [
    [['add', 'Bad Name'], 'good-password-1', 2, /user name must match/],
    [['add', 'api-key'], 'good-password-1', 2, /reserved/],
    [['add', 'shorty'], 'short', 2, /at least 8/],
    [['add', 'longy'], 'x'.repeat(73), 2, /72 bytes/],
    [['add', 'root'], 'good-password-1', 2, /already exists/],
    [['remove', 'root'], undefined, 1, /LAST_ADMIN/],
    [['role', 'root', 'user'], undefined, 1, /LAST_ADMIN/],
    [['role', 'root', 'superuser'], undefined, 2, /admin or user/],
    [['remove', 'ghost'], undefined, 1, /NOT_FOUND/],
    [['passwd', 'ghost'], 'good-password-1', 2, /no user ghost/],
    [['frobnicate'], undefined, 2, /unknown command/],
    [['add'], 'good-password-1', 2, /needs a user name/],
    [['list', '--admin'], undefined, 2, /--admin only applies to add/],
    [['list', '--config', 'missing.json'], undefined, 2, /missing\.json/],
    [[], undefined, 2, /usage/],
  ];
  const results = [];
  for (const [args, stdin] of cases) results.push(await cliInProcess(args, { cwd: gw.dir, stdin }));
  results.forEach((r, i) => {
    const [args, , code, msg] = cases[i];
    if (r.code !== code || !msg.test(r.stderr)) throw new Error(`${args.join(' ')} → ${r.code} ${r.stderr}`);
  });
  expect(fs.readFileSync(gw.config.paths.usersDb, 'utf8')).toBe(before);
  // The spawned CLI reports failures the same way.
  const spawned = await cli(['remove', 'root'], { cwd: gw.dir });
  expect(spawned.code).toBe(1);
  expect(spawned.stderr).toMatch(/LAST_ADMIN/);
  expect(fs.readFileSync(gw.config.paths.usersDb, 'utf8')).toBe(before);
}, 60_000);

test('--data-dir points the CLI at another store; without config.json the defaults apply', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-cli-'));
  try {
    expect((await cli(['add', 'solo', '--admin', '--data-dir', 'elsewhere'], { cwd: dir, stdin: 'solo-password-1\n' })).code).toBe(0);
    const file = path.join(dir, 'elsewhere', 'users_db.json');
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).users[0]).toMatchObject({ username: 'solo', role: 'admin' });
    expect((await cliInProcess(['list', '--data-dir', 'elsewhere'], { cwd: dir })).stdout).toMatch(/^solo\tadmin\tenabled/);
    expect((await cliInProcess(['list'], { cwd: dir })).stdout).toBe('no users\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 60_000);
