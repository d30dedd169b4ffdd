import crypto from 'node:crypto';
import type { AuditEvent } from '../audit';
import { absoluteRoots, type RootsPersistence } from '../downloads/roots';
import type { StoredToken, TokenPersistence } from '../downloads/tokens';
import type { Logger } from '../log';
import type { PromptRecord } from '../proxy/isolation/ledger';
import type { IsolationShared } from '../proxy/isolation';
import type { UploadEntry } from '../proxy/isolation/uploadList';
import { generateSetupCode } from '../users/setup';
import type { SharedStore } from './compose';
import { q } from './pg';
import { open, seal } from './secrets';

/** Document collections of what used to be files in data_dir (migrate-store writes the same names). */
export const UPLOADS_COLLECTION = 'uploads';
export const ROOTS_COLLECTION = 'download_roots';

/** The ledger, the ComfyUI user ids, the uploads and the client-id key, as isolation takes them from the shared store. */
export async function isolationShared(s: SharedStore): Promise<IsolationShared> {
  const ledger = s.docs.collection<PromptRecord>('ledger');
  const comfyUsers = s.docs.collection<string>('comfy_users');
  const uploads = s.docs.collection<UploadEntry>(UPLOADS_COLLECTION);
  const [ledgerAll, comfyAll, uploadsAll, key] = await Promise.all([
    ledger.all(),
    comfyUsers.all(),
    uploads.all(),
    s.secret('isolation', () => randomHex(32)),
  ]);
  return {
    ledger: { initial: ledgerAll, docs: ledger },
    comfyUsers: { initial: comfyAll, docs: comfyUsers },
    uploads: { initial: uploadsAll, docs: uploads },
    clientIdKey: Buffer.from(key, 'hex'),
  };
}

const randomHex = (n: number) => crypto.randomBytes(n).toString('hex');

/** A sealed HF token as stored: only ciphertext, bound to the account key it belongs to. */
interface SealedToken {
  sealed: string;
}

/**
 * HuggingFace tokens in the shared store, encrypted at rest with AES-256-GCM (key from the environment, never in the
 * database). A row that does not open (another key, tampered, moved to another account) counts as logged out.
 */
export async function hfTokenPersistence(s: SharedStore, logger: Logger): Promise<TokenPersistence> {
  const key = s.hfKey;
  if (!key) throw new Error('HF tokens need the encryption key');
  const docs = s.docs.collection<SealedToken>('hf_tokens');
  const unseal = (user: string, v: SealedToken | undefined): StoredToken | null => {
    if (!v || typeof v.sealed !== 'string') return null;
    const text = open(key, v.sealed, `hf:${user}`);
    if (text === null) {
      logger.warn({ user }, 'a stored HuggingFace token does not decrypt with this key; treating the user as logged out of HF');
      return null;
    }
    return JSON.parse(text) as StoredToken;
  };
  const initial = new Map<string, StoredToken>();
  for (const [user, v] of await docs.all()) {
    const t = unseal(user, v);
    if (t) initial.set(user, t);
  }
  let writing: Promise<void> = Promise.resolve();
  return {
    initial,
    save(user, t) {
      const value = t ? { sealed: seal(key, JSON.stringify(t), `hf:${user}`) } : undefined;
      writing = writing
        .then(() => docs.write([[user, value]]))
        .catch((e) => logger.error({ err: (e as Error).message, user }, 'HuggingFace token not saved to the shared store'));
    },
    onRemote: (h) => docs.onRemote((user, v) => h(user, unseal(user, v))),
  };
}

/** The model roots downloads learned from ComfyUI, one document every replica reads at start (downloads/index.ts). */
export function sharedRoots(s: SharedStore, logger: Logger): RootsPersistence {
  const docs = s.docs.collection<string[]>(ROOTS_COLLECTION);
  let last = '';
  let writing: Promise<void> = Promise.resolve();
  return {
    load: async () => absoluteRoots(await docs.get('roots')),
    save(roots) {
      const text = JSON.stringify(roots);
      if (text === last) return;
      last = text;
      writing = writing
        .then(() => docs.write([['roots', roots]]))
        .catch((e) => {
          last = ''; // the next learning tries again
          logger.warn({ err: (e as Error).message }, 'model folder roots not saved to the shared store');
        });
    },
  };
}

/** The first-run setup code, the same on every replica (the first to start makes it). */
export function sharedSetupCode(s: SharedStore): Promise<string> {
  return s.secret('setup_code', generateSetupCode);
}

/** Writes each audit record to gw_audit as well (the log keeps it too); a failure is logged, never thrown. */
export function auditSink(s: SharedStore, logger: Logger): (e: AuditEvent) => void {
  return (e) => {
    q(s.pool, 'INSERT INTO gw_audit (event, username, record) VALUES ($1, $2, $3)', [
      e.event,
      typeof e.user === 'string' ? e.user : null,
      JSON.stringify(e),
    ]).catch((err: Error) => logger.error({ err: err.message, event: e.event }, 'audit record not written to the shared store'));
  };
}
