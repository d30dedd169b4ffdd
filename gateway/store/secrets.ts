import crypto from 'node:crypto';

/** The environment variable holding the key HF tokens are encrypted with in PostgreSQL. */
export const HF_KEY_ENV = 'COMFYUI_GATEWAY_HF_TOKEN_KEY';

/** The 32-byte key from the environment (64 hex characters, or base64 of 32 bytes); null when absent or malformed. */
export function hfKeyFromEnv(env: NodeJS.ProcessEnv): Buffer | null {
  const raw = env[HF_KEY_ENV]?.trim();
  if (!raw) return null;
  const key = /^[0-9a-fA-F]{64}$/.test(raw) ? Buffer.from(raw, 'hex') : Buffer.from(raw, 'base64');
  return key.length === 32 ? key : null;
}

/** AES-256-GCM: `v1.<iv>.<tag>.<ciphertext>` (base64url), authenticated with `aad` so a row cannot be moved to another user. */
export function seal(key: Buffer, plain: string, aad: string): string {
  const iv = crypto.randomBytes(12);
  const c = crypto.createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
  return ['v1', iv, c.getAuthTag(), body].map((p) => (typeof p === 'string' ? p : p.toString('base64url'))).join('.');
}

/** Opens what seal() made; null when the key is wrong, the text altered, or it belongs to another `aad`. */
export function open(key: Buffer, sealed: string, aad: string): string | null {
  const [v, iv, tag, body] = sealed.split('.');
  if (v !== 'v1' || !iv || !tag || body === undefined) return null;
  try {
    const d = crypto.createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'));
    d.setAAD(Buffer.from(aad, 'utf8'));
    d.setAuthTag(Buffer.from(tag, 'base64url'));
    return Buffer.concat([d.update(Buffer.from(body, 'base64url')), d.final()]).toString('utf8');
  } catch {
    return null;
  }
}
