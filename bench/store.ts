/*
 * Shared-store benchmark (issue 13): a small authenticated GET through one gateway whose records are in
 * PostgreSQL (with Redis for the counters) vs the same gateway on the embedded file store. Both run in rounds with
 * the order rotated; the result is the ratio of their request rates (target: the shared store ≤ 10% slower, which
 * the in-memory caches kept fresh by LISTEN/NOTIFY are for). Needs PostgreSQL and Redis (the machines' own, or
 * BENCH_PG_URL / BENCH_REDIS_URL); it creates and drops a database of its own.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { load, median, type LoadResult } from './load';
import { startFake, startGateway, stop, type BenchGateway } from './procs';

const KEY = 'bench-store-key-0123456789abcdef';
const PASSWORD = 'bench-password-1';
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const PG_URL = process.env.BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';

function post(url: string, headers: Record<string, string>, body: object): Promise<any> {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(url, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => (res.statusCode! < 300 ? resolve(JSON.parse(text)) : reject(new Error(`${url}: ${res.statusCode} ${text}`))));
    });
    req.on('error', reject);
    req.end(data);
  });
}

/** A gateway with alice signed in: her session and a personal token. */
async function prepared(gw: BenchGateway): Promise<{ jwt: Record<string, string>; token: Record<string, string> }> {
  await post(`${gw.url}/gateway/api/users`, { 'X-API-Key': KEY }, { username: 'alice', password: PASSWORD, role: 'user' });
  const jwt = (await post(`${gw.url}/login`, {}, { username: 'alice', password: PASSWORD })).token as string;
  const token = (await post(`${gw.url}/gateway/api/tokens`, { Authorization: `Bearer ${jwt}` }, { name: 'bench' })).token as string;
  return { jwt: { Authorization: `Bearer ${jwt}` }, token: { Authorization: `Bearer ${token}` } };
}

/** Runs the comparison; returns what bench/run.ts prints under "store". */
export async function benchStore(): Promise<Record<string, unknown>> {
  const db = `gw_bench_${crypto.randomBytes(4).toString('hex')}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${db}`);
  const dbUrl = Object.assign(new URL(PG_URL), { pathname: `/${db}` }).toString();
  const fake = await startFake();
  const dirs = [fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-file-')), fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-bench-pg-'))];
  process.env.COMFYUI_GATEWAY_HF_TOKEN_KEY ??= crypto.randomBytes(32).toString('hex');
  const args = ['--upstream', fake.url, '--api-key', KEY];
  const gws: BenchGateway[] = [];
  try {
    gws.push(await startGateway({ dir: dirs[0], config: {}, args }));
    gws.push(
      await startGateway({
        dir: dirs[1],
        config: { store: { kind: 'postgres', url: dbUrl }, redis: { url: REDIS_URL, key_prefix: `${db}:` } },
        args,
      }),
    );
    const [file, shared] = [await prepared(gws[0]), await prepared(gws[1])];
    for (const gw of gws) await load(`${gw.url}/prompt`, { connections: 10, seconds: 1, headers: { 'X-API-Key': KEY } }); // warm-up
    const runs: Record<string, LoadResult[]> = {};
    const targets: [string, () => Promise<LoadResult>][] = [
      ['file_jwt', () => load(`${gws[0].url}/prompt`, { connections: 50, seconds: SECONDS, headers: file.jwt })],
      ['postgres_jwt', () => load(`${gws[1].url}/prompt`, { connections: 50, seconds: SECONDS, headers: shared.jwt })],
      ['file_token', () => load(`${gws[0].url}/prompt`, { connections: 50, seconds: SECONDS, headers: file.token })],
      ['postgres_token', () => load(`${gws[1].url}/prompt`, { connections: 50, seconds: SECONDS, headers: shared.token })],
    ];
    for (let i = 0; i < ROUNDS; i++)
      for (let k = 0; k < targets.length; k++) {
        const [name, run] = targets[(k + i) % targets.length];
        (runs[name] ??= []).push(await run());
      }
    const rps = (n: string) => median(runs[n].map((r) => r.rps));
    const p99 = (n: string) => median(runs[n].map((r) => r.p99_ms));
    const ratio = (a: number, b: number) => +(a / b).toFixed(3);
    return {
      target: 'postgres / file request rate ≥ 0.90 (≤ 10% slower)',
      session_jwt: {
        file_rps: Math.round(rps('file_jwt')),
        postgres_rps: Math.round(rps('postgres_jwt')),
        ratio: ratio(rps('postgres_jwt'), rps('file_jwt')),
        p99_ms: { file: p99('file_jwt'), postgres: p99('postgres_jwt') },
      },
      personal_token: {
        file_rps: Math.round(rps('file_token')),
        postgres_rps: Math.round(rps('postgres_token')),
        ratio: ratio(rps('postgres_token'), rps('file_token')),
        p99_ms: { file: p99('file_token'), postgres: p99('postgres_token') },
      },
    };
  } finally {
    for (const gw of gws) await stop(gw.proc);
    fake.proc.send({ cmd: 'exit' });
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
  }
}

if (require.main === module) {
  benchStore().then(
    (r) => {
      process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      process.exit(0);
    },
    (e) => {
      process.stderr.write(`${(e as Error).stack}\n`);
      process.exit(1);
    },
  );
}
