/** Who a request acts as, once the credential chain has decided. */
export type Role = 'admin' | 'user';

/** How the principal was established; the ambient kinds (`cookie`, `cf-access`) are subject to the CSRF rule (auth/csrf.ts). */
export type CredentialSource = 'api-key' | 'api-token' | 'jwt' | 'cookie' | 'query' | 'cf-access' | 'loopback';

/** The identity every later decision (policy, isolation, downloads) is made on. */
export interface Principal {
  /** gateway username; the static key is the admin principal `api-key` */
  username: string;
  role: Role;
  /** per-user grants such as `download_models`; admins implicitly hold all */
  permissions: string[];
  source: CredentialSource;
  /** the ComfyUI user id sent upstream as `comfy-user` */
  comfyUser?: string;
  /** JWT id when the credential was a JWT (header or cookie), for logout revocation */
  jti?: string;
  /** expiry (unix seconds) of the presented credential, when it has one */
  exp?: number;
  /** personal API token id when the credential was one */
  tokenId?: string;
}

/** Permission check: admins hold every permission. */
export function hasPermission(p: Principal, permission: string): boolean {
  return p.role === 'admin' || p.permissions.includes(permission);
}
