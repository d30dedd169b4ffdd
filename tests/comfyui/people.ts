/**
 * Accounts for the client conformance tests: the first admin, two normal users (names unique per run, because
 * 7914c47 keeps one user folder for every run), a personal token for a user, and waiting with deadlines.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { login, PW, registerFirstAdmin, registerUser } from '../helpers/auth';
import type { TestGateway } from '../helpers/gateway';
import { TREES, type RealComfy, type Tree } from './realComfy';

/** Every real server the client tests drive: each tree as started by default, and with `--multi-user`. */
export const SERVERS: { label: string; tree: Tree; args: string[] }[] = TREES.flatMap((tree) => [
  { label: tree, tree, args: [] },
  { label: `${tree}-multi-user`, tree, args: ['--multi-user'] },
]);

/** The two normal users of a run and their passwords. */
export interface People {
  alice: string;
  bob: string;
  password: string;
}

/** Registers the first admin and two normal users whose names are new on this machine. */
export async function createPeople(gw: TestGateway): Promise<People> {
  const tag = crypto.randomBytes(3).toString('hex');
  const people = { alice: `alice${tag}`, bob: `bob${tag}`, password: PW };
  await registerFirstAdmin(gw);
  await registerUser(gw, people.alice);
  await registerUser(gw, people.bob);
  return people;
}

/** Signs `username` in and creates a personal token for them; returns the token's secret. */
export async function personalToken(gw: TestGateway, username: string): Promise<string> {
  const { token } = await login(gw, username);
  const res = await fetch(`${gw.url}/gateway/api/tokens`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json', Origin: gw.url },
    body: JSON.stringify({ name: 'conformance', expires_in_hours: 1 }),
  });
  if (res.status !== 201) throw new Error(`personal token for ${username}: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { token: string }).token;
}

/** Polls `probe` until it returns something other than undefined, or throws `what` after `ms`. */
export async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A PNG's width and height from its IHDR chunk (the tests check the image they got is the 64x64 they asked for). */
export function pngSize(buf: Buffer): { width: number; height: number } {
  if (buf.length < 24 || buf.readUInt32BE(0) !== 0x89504e47) throw new Error(`not a PNG (${buf.length} bytes)`);
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

/**
 * Removes what the run's users saved from the server's user folder: 7914c47 keeps one folder for every run
 * (`default/gateway-users/<name>` without --multi-user, `<name>_<uuid>` with it). users.json is left alone: other
 * runs may be writing it.
 */
export function removeUserFolders(comfy: RealComfy, people: People | undefined): void {
  if (!people || !fs.existsSync(comfy.userDir)) return;
  for (const name of [people.alice, people.bob]) {
    fs.rmSync(path.join(comfy.userDir, 'default', 'gateway-users', name), { recursive: true, force: true });
    for (const entry of fs.readdirSync(comfy.userDir)) {
      if (entry.startsWith(`${name}_`)) fs.rmSync(path.join(comfy.userDir, entry), { recursive: true, force: true });
    }
  }
}
