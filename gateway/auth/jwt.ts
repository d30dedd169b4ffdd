import crypto, { type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import jwt from 'jsonwebtoken';
import { AppError, errors } from '../errors';
import { writeFileAtomic } from '../users/atomicFile';
import type { UserRecord, UserStore } from '../users/types';
import type { CredentialSource, Principal } from './principal';

/** Name of the generated secret's file inside data_dir. */
export const JWT_SECRET_FILE = 'jwt_secret';

/** The signing secret and where it came from (for a start-up notice; never the value). */
export interface JwtSecret {
  key: KeyObject;
  source: 'env' | 'file' | 'generated' | 'store';
  /** something the operator should hear about (a weak env secret, a file mode that was too open) */
  warning?: string;
}

/**
 * The JWT secret: the env variable named by `secret_key_env`, else `data_dir/jwt_secret` (64 random bytes made
 * once, mode 0600) so restarts keep sessions.
 */
export async function loadJwtSecret(opts: {
  env: NodeJS.ProcessEnv;
  envName: string;
  dataDir: string;
  /** the shared store of several replicas: the key lives there, so a token minted on one verifies on all */
  shared?: { secret(name: string, make: () => string): Promise<string> } | null;
}): Promise<JwtSecret> {
  const fromEnv = opts.env[opts.envName];
  if (fromEnv) {
    const warning =
      Buffer.byteLength(fromEnv) < 32
        ? `${opts.envName} is shorter than 32 bytes; use a long random value for signing sessions`
        : undefined;
    return { key: crypto.createSecretKey(Buffer.from(fromEnv, 'utf8')), source: 'env', warning };
  }
  if (opts.shared) {
    const secret = await opts.shared.secret('jwt', () => crypto.randomBytes(64).toString('base64url'));
    return { key: crypto.createSecretKey(Buffer.from(secret, 'utf8')), source: 'store' };
  }
  const file = path.join(opts.dataDir, JWT_SECRET_FILE);
  let text: string | null = null;
  let warning: string | undefined;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
    if ((fs.statSync(file).mode & 0o077) !== 0) {
      fs.chmodSync(file, 0o600);
      warning = `${file} was readable by other users; its mode is now 0600`;
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (text !== null) {
    if (text.length < 32) throw new Error(`${file}: secret is too short; delete the file to generate a new one (signs everyone out)`);
    return { key: crypto.createSecretKey(Buffer.from(text, 'utf8')), source: 'file', warning };
  }
  fs.mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  const secret = crypto.randomBytes(64).toString('base64url');
  await writeFileAtomic(file, secret + '\n', 0o600);
  return { key: crypto.createSecretKey(Buffer.from(secret, 'utf8')), source: 'generated' };
}

/** A freshly signed session token. */
export interface IssuedJwt {
  token: string;
  jti: string;
  /** unix seconds */
  exp: number;
  expires_at: string;
  /** lifetime in seconds, for the cookie's Max-Age */
  maxAgeSeconds: number;
}

interface Claims {
  sub?: unknown;
  role?: unknown;
  jti?: unknown;
  iat?: unknown;
  exp?: unknown;
  /** issue time in ms: `iat` has only seconds, too coarse to order against a password change */
  iat_ms?: unknown;
}

/** The token service errors. */
export const tokenRevoked = () => new AppError(401, 'TOKEN_REVOKED', 'This session was signed out or its password changed; sign in again');

/** Issues and verifies HS256 session JWTs; the verified principal always reflects the current user store. */
export function createJwtService(deps: { key: KeyObject; store: UserStore; expiryHours: number; now?: () => number }) {
  const now = deps.now ?? Date.now;
  const lifetime = Math.max(1, Math.round(deps.expiryHours * 3600));
  return {
    /** Signs a session for `user` (claims sub, role, jti, iat, exp, iat_ms). */
    issue(user: UserRecord): IssuedJwt {
      // Never before tokens_valid_after: a session made right after a password change must survive it.
      const issuedMs = Math.max(now(), user.tokens_valid_after);
      const iat = Math.floor(issuedMs / 1000);
      const exp = iat + lifetime;
      const jti = crypto.randomBytes(16).toString('base64url');
      const token = jwt.sign({ sub: user.username, role: user.role, jti, iat, exp, iat_ms: issuedMs }, deps.key, {
        algorithm: 'HS256',
      });
      return { token, jti, exp, expires_at: new Date(exp * 1000).toISOString(), maxAgeSeconds: exp - Math.floor(now() / 1000) };
    },

    /** Verifies a JWT (HS256 only) and resolves its user now; throws 401 INVALID_CREDENTIALS or TOKEN_REVOKED. */
    verify(token: string, source: CredentialSource): Principal {
      let claims: Claims;
      try {
        const decoded = jwt.verify(token, deps.key, { algorithms: ['HS256'], clockTimestamp: Math.floor(now() / 1000) });
        if (!decoded || typeof decoded !== 'object') throw new Error('payload is not an object');
        claims = decoded as Claims;
      } catch {
        throw errors.invalidCredentials();
      }
      const { sub, jti, iat, exp, iat_ms } = claims;
      if (typeof sub !== 'string' || typeof jti !== 'string' || typeof iat !== 'number' || typeof exp !== 'number')
        throw errors.invalidCredentials();
      if (deps.store.revocations.isRevoked(jti)) throw tokenRevoked();
      const user = deps.store.get(sub);
      if (!user || user.disabled) throw errors.invalidCredentials();
      const issuedMs = typeof iat_ms === 'number' && Math.floor(iat_ms / 1000) === iat ? iat_ms : iat * 1000;
      if (issuedMs < user.tokens_valid_after) throw tokenRevoked();
      return { username: user.username, role: user.role, permissions: [...user.permissions], source, jti, exp };
    },
  };
}

/** The JWT service's interface. */
export type JwtService = ReturnType<typeof createJwtService>;
