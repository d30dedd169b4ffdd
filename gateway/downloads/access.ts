import type { IncomingMessage } from 'node:http';
import { hasPermission, type Principal } from '../auth/principal';
import { isDirectLoopback } from '../net/clientIp';

/** The permission that lets a user start and cancel downloads (and log in to HuggingFace). */
export const DOWNLOAD_PERMISSION = 'download_models';

/**
 * Whether a principal may start/cancel downloads: the `download_models` permission (admins hold every permission),
 * or a role listed in `model_downloads.allowed_roles` (roles that get the permission implicitly; default ['admin']).
 */
export function mayDownload(p: Principal | null, allowedRoles: readonly string[]): boolean {
  return !!p && (hasPermission(p, DOWNLOAD_PERMISSION) || allowedRoles.includes(p.role));
}

/** What eligibility depends on besides the caller. */
export interface EligibilityConfig {
  /** false when model_downloads is switched off: the flags then say so, whatever ComfyUI advertises */
  enabled?: boolean;
  allowedRoles: readonly string[];
  clientId: string | null;
  redirectUri: string | null;
}

/**
 * `hf_auth.eligible`: the caller may download, HF OAuth is configured, and either the callback goes through the
 * gateway (hf_oauth.redirect_uri) or the browser is on this host (direct loopback socket, no forwarding header),
 * since the loopback callback server is only reachable from there.
 */
export function isEligible(p: Principal | null, directLoopback: boolean, c: EligibilityConfig): boolean {
  return mayDownload(p, c.allowedRoles) && !!c.clientId && (!!c.redirectUri || directLoopback);
}

/** isEligible for an HTTP request. */
export function isEligibleRequest(req: IncomingMessage, p: Principal | null, c: EligibilityConfig): boolean {
  return isEligible(p, isDirectLoopback(req), c);
}
