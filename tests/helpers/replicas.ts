import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { freshIp, PW, registerFirstAdmin } from './auth';
import { spawnGateway, type ChildGateway } from './child';

/** The HF token key every replica of a test shares (PostgreSQL stores require one). */
export const REPLICA_ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: '5b'.repeat(32) };

/**
 * Starts one compiled gateway as a child process on a shared PostgreSQL database and Redis key prefix, with a data
 * dir of its own (`dir/name`: nothing shared through files), logging at info (tests read who took the releaser lease).
 */
export async function spawnReplica(o: {
  dir: string;
  name: string;
  dbUrl: string;
  redis: { url: string; prefix: string };
  /** the upstream part of the config (and anything else the test needs; it wins over the defaults) */
  config: Record<string, unknown>;
  env?: Record<string, string>;
}): Promise<ChildGateway> {
  const rdir = path.join(o.dir, o.name);
  fs.mkdirSync(rdir);
  const config = {
    host: '127.0.0.1',
    port: 0,
    data_dir: './data',
    bcrypt_cost: 4,
    log_levels: ['info'],
    store: { kind: 'postgres', url: o.dbUrl },
    redis: { url: o.redis.url, key_prefix: o.redis.prefix },
    model_downloads: { enabled: false },
    ...o.config,
  };
  fs.writeFileSync(path.join(rdir, 'config.json'), JSON.stringify(config));
  return spawnGateway(['--config', path.join(rdir, 'config.json')], { ...REPLICA_ENV, ...o.env });
}

/** Starts `count` replicas (r0, r1, …) under `dir` on one database and one Redis key prefix named after `dir`. */
export async function spawnReplicas(o: {
  dir: string;
  count: number;
  dbUrl: string;
  prefix: string;
  config: Record<string, unknown>;
}): Promise<ChildGateway[]> {
  const out: ChildGateway[] = [];
  const redis = { url: 'redis://127.0.0.1:6379', prefix: `${o.prefix}-${path.basename(o.dir)}:` };
  for (let i = 0; i < o.count; i++) out.push(await spawnReplica({ dir: o.dir, name: `r${i}`, dbUrl: o.dbUrl, redis, config: o.config }));
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
