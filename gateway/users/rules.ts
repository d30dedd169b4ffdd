import crypto from 'node:crypto';
import type { UserRecord } from './types';
/** Usernames (DESIGN §4): lower-case, 2–32 characters, safe in paths and the `comfy-user` header. */
export const USERNAME_RE = /^[a-z0-9][a-z0-9_-]{1,31}$/;

/** Names a user may not take: `api-key` is the static key's principal, and audit lines must not confuse the two. */
export const RESERVED_USERNAMES = new Set(['api-key']);

/** Permission names: lower-case words such as `download_models`. */
export const PERMISSION_RE = /^[a-z][a-z0-9_]{0,47}$/;

/** Shortest password, in characters. */
export const PASSWORD_MIN_CHARS = 8;
/** bcrypt reads only the first 72 bytes; longer passwords would be silently truncated, so they are refused. */
export const PASSWORD_MAX_BYTES = 72;

/** Why a username is unacceptable, or null when it is fine. */
export function usernameProblem(v: unknown): string | null {
  if (typeof v !== 'string') return 'must be a string';
  if (!USERNAME_RE.test(v)) return 'must match ^[a-z0-9][a-z0-9_-]{1,31}$ (lower-case letters, digits, _ and -, 2 to 32 characters)';
  if (RESERVED_USERNAMES.has(v)) return 'is reserved';
  return null;
}

/** Why a new password is unacceptable, or null when it is fine. */
export function passwordProblem(v: unknown): string | null {
  if (typeof v !== 'string') return 'must be a string';
  if ([...v].length < PASSWORD_MIN_CHARS) return `must be at least ${PASSWORD_MIN_CHARS} characters`;
  if (Buffer.byteLength(v, 'utf8') > PASSWORD_MAX_BYTES) return `must be at most ${PASSWORD_MAX_BYTES} bytes (bcrypt ignores the rest)`;
  // The native binding reads a C string: everything after a NUL would be ignored.
  if (v.includes('\0')) return 'must not contain NUL characters';
  return null;
}

/** Why a permission list is unacceptable, or null when it is fine. */
export function permissionsProblem(v: unknown): string | null {
  if (!Array.isArray(v)) return 'must be an array of strings';
  if (v.length > 32) return 'at most 32 permissions';
  for (const p of v) if (typeof p !== 'string' || !PERMISSION_RE.test(p)) return `not a permission name: ${JSON.stringify(p)}`;
  return null;
}

/** Why an account email is unacceptable, or null when it is fine (null or '' clears it, where clearing is allowed). */
export function emailProblem(v: unknown): string | null {
  if (typeof v !== 'string') return 'must be a string (an email address)';
  if (v.length > 320 || !/^[^@\s\u0000-\u001f\u007f]+@[^@\s\u0000-\u001f\u007f]+$/.test(v.trim()))
    return 'must be one email address (local@domain)';
  return null;
}

/** The one email normalisation: what an account's email is stored and matched as (Cloudflare binding, clashes). */
export const emailKey = (e: string | null | undefined): string | null =>
  typeof e === 'string' && e.trim() ? e.trim().toLowerCase() : null;

/** A new account's record, the same in every store; `validAfter` voids tokens minted for an earlier holder of the name. */
export function newUserRecord(
  u: { username: string; password_hash: string; role: UserRecord['role']; permissions?: string[] },
  email: string | null,
  at: number,
  validAfter: number,
): UserRecord {
  return {
    id: crypto.randomUUID(),
    username: u.username,
    email,
    role: u.role,
    password_hash: u.password_hash,
    disabled: false,
    permissions: [...(u.permissions ?? [])],
    created_at: new Date(at).toISOString(),
    tokens_valid_after: validAfter,
  };
}
