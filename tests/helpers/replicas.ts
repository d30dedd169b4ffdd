import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { freshIp, PW, registerFirstAdmin } from './auth';
import { spawnGateway, type ChildGateway } from './child';

/** The HF token key every replica of a test shares (PostgreSQL stores require one). */
export const REPLICA_ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: '5b'.repeat(32) };

/**
 * Starts `count` compiled gateways as child processes on one PostgreSQL database and one Redis key prefix, each
 * with a data dir of its own under `dir`, logging at info (tests read which replica took the releaser lease).
 */
export async function spawnReplicas(o: {
  dir: string;
  count: number;
  dbUrl: string;
  prefix: string;
  /** the upstream part of the config (and anything else the test needs) */
  config: Record<string, unknown>;
}): Promise<ChildGateway[]> {
  const out: ChildGateway[] = [];
  for (let i = 0; i < o.count; i++) {
    const rdir = path.join(o.dir, `r${i}`);
    fs.mkdirSync(rdir);
    const config = {
      host: '127.0.0.1',
      port: 0,
      data_dir: './data',
      bcrypt_cost: 4,
      log_levels: ['info'],
      store: { kind: 'postgres', url: o.dbUrl },
      redis: { url: 'redis://127.0.0.1:6379', key_prefix: `${o.prefix}-${path.basename(o.dir)}:` },
      model_downloads: { enabled: false },
      ...o.config,
    };
    fs.writeFileSync(path.join(rdir, 'config.json'), JSON.stringify(config));
    out.push(await spawnGateway(['--config', path.join(rdir, 'config.json')], REPLICA_ENV));
  }
  return out;
}

/** Creates the first admin and `users` through `first`, signs everyone in through `loginUrl`: their tokens by name. */
export async function signedUpUsers(first: ChildGateway, loginUrl: string, users: string[]): Promise<Record<string, string>> {
  await registerFirstAdmin(first);
  for (const name of users) {
    const r = await request(first.url)
      .post('/register')
      .set('X-Forwarded-For', freshIp())
      .send({ new_user_username: name, new_user_password: PW, username: 'admin', password: PW });
    if (r.status !== 201) throw new Error(`register ${name}: ${r.status}`);
  }
  const tokens: Record<string, string> = {};
  for (const name of ['admin', ...users]) {
    const r = await request(loginUrl).post('/login').set('X-Forwarded-For', freshIp()).send({ username: name, password: PW });
    if (r.status !== 200) throw new Error(`login ${name}: ${r.status}`);
    tokens[name] = r.body.token as string;
  }
  return tokens;
}
