import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/**
 * Client ids as ComfyUI sees them. A browser's `clientId` is only a name the browser chose; upstream, the socket and
 * the prompts use an id derived from (gateway user, clientId) with a key only the gateway knows. Another user
 * presenting the same clientId lands on a different upstream id, so ComfyUI's "a reused clientId takes over the
 * socket" rule can never hand one user's events to another.
 */
export interface ClientIds {
  /** the upstream id for a user's clientId (deterministic across restarts, so reconnects and queued prompts keep working) */
  upstreamFor(user: string, clientId: string): string;
  /** a fresh clientId for a socket that asked for none (ComfyUI's uuid4().hex shape) */
  fresh(): string;
  /** an upstream id no socket can ever hold: events of prompts queued without a client id go nowhere */
  nobody(): string;
}

/** Reads (or creates, mode 0600) the key in `file` — or takes the replicas' shared key — and builds the mapping. */
export function createClientIds(file: string, sharedKey?: Buffer): ClientIds {
  let key: Buffer;
  // Several replicas share the key (through the store), so each derives the same upstream ids.
  if (sharedKey) key = sharedKey;
  else
    try {
      key = Buffer.from(fs.readFileSync(file, 'utf8').trim(), 'hex');
      if (key.length < 32) throw new Error('short key');
    } catch {
      key = crypto.randomBytes(32);
      fs.mkdirSync(path.dirname(file), { recursive: true });
      // 'w' with mode only applies to a new file; chmod covers a replaced short one.
      fs.writeFileSync(file, key.toString('hex') + '\n', { mode: 0o600 });
      fs.chmodSync(file, 0o600);
    }
  return {
    upstreamFor(user, clientId) {
      return crypto.createHmac('sha256', key).update(`${user}\u0000${clientId}`).digest('hex').slice(0, 32);
    },
    fresh: () => crypto.randomUUID().replace(/-/g, ''),
    nobody: () => `gw-none-${crypto.randomUUID()}`,
  };
}
