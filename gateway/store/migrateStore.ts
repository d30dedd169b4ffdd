import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { JWT_SECRET_FILE } from '../auth/jwt';
import { ConfigError, loadConfig } from '../config/load';
import { AppError } from '../errors';
import { EXIT } from '../exitCodes';
import { createUserStore, UserStoreError } from '../users/store';
import { createPool, migrate, q, withTx } from './pg';
import { pgHasRecords } from './pgUsers';
import { ledgerRecordOf } from '../proxy/isolation/ledgerRow';
import { HF_KEY_ENV, hfKeyFromEnv, seal } from './secrets';
import { createFileQueueStore } from '../queue/fileStore';
import { copyQueueState } from '../queue/pgStore';
import { readUploadsFile, uploadKey } from '../proxy/isolation/uploadList';
import { fileRoots } from '../downloads/roots';
import { ROOTS_COLLECTION, UPLOADS_COLLECTION } from './parts';

const USAGE = `usage: comfyui-gateway migrate-store --from file --to postgres [--config FILE] [--url postgres://…]
  Copies a single-process install (users_db.json and the other files in data_dir) into an empty PostgreSQL
  database: users, personal tokens, logged-out sessions, the prompt ledger, ComfyUI user ids, the uploads list, the
  learned model roots, HuggingFace tokens (encrypted with ${HF_KEY_ENV}), the JWT and isolation keys (so sessions and client ids stay valid), and the
  gateway queue (held and refused prompts, per-user limits, daily usage). Stop the gateway first.
  The database is store.url of the config unless --url is given. A database that already holds records is
  refused (STORE_NOT_EMPTY). Exit codes: 0 copied, 1 refused or failed, 2 usage or configuration error.`;

/** Reads the ledger file's rows as the records the shared ledger keeps (ledger.ts's format, version 1). */
function ledgerRecords(file: string): [string, unknown][] {
  if (!fs.existsSync(file)) return [];
  const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as { version?: number; prompts?: unknown[] };
  if (parsed.version !== 1 || !Array.isArray(parsed.prompts)) throw new Error(`${file}: unknown ledger format`);
  const out: [string, unknown][] = [];
  for (const row of parsed.prompts) {
    const r = ledgerRecordOf(row);
    if (r) out.push([r.id, r]);
  }
  return out;
}

const readJson = (file: string): unknown => (fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : null);
const readText = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : null);

/** `comfyui-gateway migrate-store`: returns the exit code. */
export async function runMigrateStore(
  argv: string[],
  io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream; cwd: string; env: NodeJS.ProcessEnv },
): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: argv,
      strict: true,
      options: {
        from: { type: 'string' },
        to: { type: 'string' },
        config: { type: 'string' },
        url: { type: 'string' },
        help: { type: 'boolean' },
      },
    }).values;
  } catch (e) {
    io.stderr.write(`migrate-store: ${(e as Error).message}\n${USAGE}\n`);
    return EXIT.USAGE;
  }
  if (values.help) return (void io.stdout.write(`${USAGE}\n`), EXIT.OK);
  if (values.from !== 'file' || values.to !== 'postgres') {
    io.stderr.write(`migrate-store: only --from file --to postgres is supported\n${USAGE}\n`);
    return EXIT.USAGE;
  }
  try {
    const configFile = values.config ?? (fs.existsSync(path.join(io.cwd, 'config.json')) ? 'config.json' : undefined);
    const config = loadConfig(configFile ? ['--config', configFile] : [], io.env, io.cwd);
    const url = values.url ?? config.store.url;
    if (!url) throw new ConfigError(['no PostgreSQL database: give --url or set store.url in the config']);
    const hfKey = hfKeyFromEnv(io.env);
    const dataDir = config.paths.dataDir;
    const hfDir = path.join(dataDir, 'hf_tokens');
    const hfFiles = fs.existsSync(hfDir) ? fs.readdirSync(hfDir).filter((f) => f.endsWith('.json')) : [];
    if (hfFiles.length && !hfKey)
      throw new ConfigError([`${hfFiles.length} HuggingFace token(s) to copy: set ${HF_KEY_ENV} (64 hex characters)`]);

    const users = await createUserStore({ file: config.paths.usersDb });
    const raw = readJson(config.paths.usersDb) as { revoked?: { jti: string; exp: number }[] } | null;
    const ledger = ledgerRecords(path.join(dataDir, 'prompt_ledger.json'));
    const comfy = Object.entries(
      ((readJson(path.join(dataDir, 'comfy_users.json')) as { users?: Record<string, string> }) ?? {}).users ?? {},
    );
    const uploads = [...readUploadsFile(path.join(dataDir, 'uploads.json'))].flatMap(([u, names]) => names.map((n) => [u, n] as const));
    const roots = await fileRoots(path.join(dataDir, 'model_download_roots.json'), pino({ level: 'warn' }, pino.destination(2))).load();
    // the queue's journal and snapshot, replayed as the gateway would at start
    const queueStore = createFileQueueStore({ dir: path.join(dataDir, 'queue'), logger: pino({ level: 'warn' }, pino.destination(2)) });
    const queue = await queueStore.load();
    await queueStore.close();
    await migrate(url);
    const pool = createPool(url);
    try {
      if (await pgHasRecords(pool))
        throw new AppError(409, 'STORE_NOT_EMPTY', 'the target database already holds gateway records; nothing was copied');
      const now = Math.floor(Date.now() / 1000);
      const revoked = (raw?.revoked ?? []).filter((r) => r.exp > now);
      await withTx(pool, async (c) => {
        for (const u of users.list())
          await c.query(
            `INSERT INTO gw_users (id, username, email, legacy, role, password_hash, disabled, permissions, created_at, tokens_valid_after)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
            [
              u.id,
              u.username,
              u.email ?? null,
              !!u.legacy,
              u.role,
              u.password_hash,
              u.disabled,
              JSON.stringify(u.permissions),
              u.created_at,
              u.tokens_valid_after,
            ],
          );
        for (const u of users.list())
          for (const t of users.tokens.list(u.username))
            await c.query(
              'INSERT INTO gw_tokens (id, username, name, prefix, sha256, created_at, expires_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)',
              [t.id, t.username, t.name, t.prefix, t.sha256, t.created_at, t.expires_at, t.last_used_at],
            );
        for (const r of revoked) await c.query('INSERT INTO gw_revoked (jti, exp) VALUES ($1, $2) ON CONFLICT DO NOTHING', [r.jti, r.exp]);
        const setup = users.setupInfo();
        if (setup) await c.query("INSERT INTO gw_meta (key, value) VALUES ('setup', $1)", [JSON.stringify(setup)]);
        const doc = (coll: string, key: string, value: unknown) =>
          c.query(
            'INSERT INTO gw_docs (coll, key, value) VALUES ($1, $2, $3) ON CONFLICT (coll, key) DO UPDATE SET value = EXCLUDED.value',
            [coll, key, JSON.stringify(value)],
          );
        for (const [id, rec] of ledger) await doc('ledger', id, rec);
        for (const [key, id] of comfy) if (typeof id === 'string') await doc('comfy_users', key, id);
        for (const [user, name] of uploads) await doc(UPLOADS_COLLECTION, uploadKey(user, name), { user, name });
        if (roots.length) await doc(ROOTS_COLLECTION, 'roots', roots);
        for (const f of hfFiles) {
          // Files are named after the account key (a hashed name only for unusual legacy names, which cannot be mapped back).
          const key = f.slice(0, -'.json'.length);
          if (key.startsWith('u-')) continue;
          await doc('hf_tokens', key, { sealed: seal(hfKey!, fs.readFileSync(path.join(hfDir, f), 'utf8'), `hf:${key}`) });
        }
        // The keys come along: sessions stay valid and ComfyUI keeps seeing the same client ids.
        const jwt = readText(path.join(dataDir, JWT_SECRET_FILE));
        if (jwt) await c.query("INSERT INTO gw_meta (key, value) VALUES ('secret:jwt', $1)", [JSON.stringify(jwt)]);
        const iso = readText(path.join(dataDir, 'isolation.key'));
        if (iso) await c.query("INSERT INTO gw_meta (key, value) VALUES ('secret:isolation', $1)", [JSON.stringify(iso)]);
        await copyQueueState(c, queue);
      });
      const tokens = users.list().reduce((n, u) => n + users.tokens.list(u.username).length, 0);
      const counts = (await q<{ n: string }>(pool, 'SELECT count(*) AS n FROM gw_users')).rows[0].n;
      io.stdout.write(
        `copied ${counts} users, ${tokens} tokens, ${revoked.length} logged-out sessions, ${ledger.length} ledger entries, ` +
          `${comfy.length} ComfyUI ids, ${hfFiles.length} HF tokens, ${uploads.length} uploads, ${roots.length} model roots, ${queue.held.length} held prompts, ` +
          `${Object.keys(queue.limits).length} user limits, ${queue.usage.length} usage rows; set "store": {"kind": "postgres", "url": …} in the config to use it\n`,
      );
      return EXIT.OK;
    } finally {
      await pool.end();
    }
  } catch (e) {
    if (e instanceof ConfigError || e instanceof UserStoreError) {
      io.stderr.write(`migrate-store: ${e.message}\n`);
      return EXIT.USAGE;
    }
    if (e instanceof AppError) {
      io.stderr.write(`migrate-store: ${e.message} (${e.code})\n`);
      return EXIT.RUNTIME;
    }
    io.stderr.write(`migrate-store: ${(e as Error).message}\n`);
    return EXIT.RUNTIME;
  }
}
