import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Audit } from '../audit';
import { escapeHtml } from '../http/render';
import type { Logger } from '../log';
import { dlErrors } from './errors';
import type { HfApi } from './hfApi';
import type { TokenStore } from './tokens';
import { safeEqual } from '../auth/apiKey';

/** Where HF sends the browser back to (upstream ComfyUI's path, on the loopback callback server). */
export const CALLBACK_PATH = '/api/auth/huggingface/callback';
/** The scopes upstream asks for: identity plus read access to gated repos the user accepted. */
export const SCOPE = 'openid profile gated-repos';
/** How long a login may take before the callback server closes. */
export const LOGIN_TIMEOUT_MS = 5 * 60 * 1000;

const b64url = (b: Buffer) => b.toString('base64url');

/** PKCE S256 material: a 64-byte verifier, its challenge, and a 32-byte state. */
export function makePkce(): { verifier: string; challenge: string; state: string } {
  const verifier = b64url(crypto.randomBytes(64));
  const challenge = b64url(crypto.createHash('sha256').update(verifier).digest());
  const state = b64url(crypto.randomBytes(32));
  return { verifier, challenge, state };
}

/** Writes a callback result as a small script-free page. */
export function sendCallbackPage(res: http.ServerResponse, r: CallbackResult, closeConnection: boolean): void {
  const body = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(r.title)}</title></head><body style="font-family:sans-serif;padding:40px"><h2>${escapeHtml(r.title)}</h2><p>${escapeHtml(r.text)}</p></body></html>`;
  res.writeHead(r.status, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'",
    'referrer-policy': 'no-referrer',
    ...(closeConnection ? { connection: 'close' } : {}),
  });
  res.end(body);
}

/** One login in progress; the state is bound to the user who started it. */
interface Flow {
  user: string;
  ip: string;
  verifier: string;
  state: string;
  redirectUri: string;
  server: http.Server | null;
  timer: NodeJS.Timeout;
  exchanging: boolean;
}

/** The result a callback produced, as an HTTP status and a small page. */
export interface CallbackResult {
  status: number;
  title: string;
  text: string;
}

/**
 * HuggingFace OAuth (authorization code + PKCE), per-user tokens. With the loopback callback there is one port, so one
 * login at a time (only users on this host are eligible). Through the gateway (hf_oauth.redirect_uri) each user has at
 * most one login in progress, and no user's unfinished login blocks anyone else's.
 */
export interface HfOAuth {
  /** starts a login for `user`; resolves to the authorize URL once the callback can be received */
  start(user: string, ip: string): Promise<string>;
  /** the gateway-routed callback (when hf_oauth.redirect_uri is set): needs the same user's session */
  gatewayCallback(user: string, query: URLSearchParams): Promise<CallbackResult>;
  inProgress(): boolean;
  close(): Promise<void>;
}

/** Builds the OAuth service. */
export function createHfOAuth(deps: {
  clientId: string | null;
  callbackPort: number;
  redirectUri: string | null;
  hfApi: HfApi;
  tokens: TokenStore;
  logger: Logger;
  audit: Audit;
  timeoutMs?: number;
}): HfOAuth {
  /** logins in progress by user (loopback mode: at most one in all) */
  const flows = new Map<string, Flow>();
  const live = (f: Flow) => flows.get(f.user) === f;

  /** Ends a login. From inside a callback (`hard` false) the answer still goes out: only idle sockets are cut. */
  function end(f: Flow, hard = true): void {
    clearTimeout(f.timer);
    if (live(f)) flows.delete(f.user);
    if (f.server) {
      const s = f.server;
      f.server = null;
      s.close();
      if (hard) s.closeAllConnections();
      else s.closeIdleConnections();
    }
  }

  async function handleCallback(f: Flow, query: URLSearchParams): Promise<CallbackResult> {
    const state = query.get('state') ?? '';
    // A wrong state never reaches the token endpoint, and does not end the real user's login.
    if (!state || !safeEqual(state, f.state)) return { status: 400, title: 'Login failed', text: 'state mismatch' };
    if (f.exchanging) return { status: 409, title: 'Login already completing', text: 'This login is already being completed.' };
    const err = query.get('error');
    if (err) {
      end(f, false);
      deps.audit.record({ event: 'hf_auth_login_failed', user: f.user, ip: f.ip, reason: err.slice(0, 100) });
      return { status: 400, title: 'Login failed', text: `HuggingFace returned: ${err.slice(0, 100)}` };
    }
    const code = query.get('code');
    if (!code) return { status: 400, title: 'Login failed', text: 'missing code' };
    f.exchanging = true;
    try {
      const tok = await deps.hfApi.exchangeCode({ code, verifier: f.verifier, redirectUri: f.redirectUri, clientId: deps.clientId ?? '' });
      const name = await deps.hfApi.whoami(tok.access_token);
      deps.tokens.save(f.user, tok, name);
      deps.audit.record({ event: 'hf_auth_login', user: f.user, ip: f.ip, hf_username: name });
      return { status: 200, title: 'HuggingFace login successful', text: 'You can close this tab and return to ComfyUI.' };
    } catch (e) {
      deps.logger.warn({ user: f.user, err: (e as Error).message }, 'hf oauth code exchange failed');
      deps.audit.record({ event: 'hf_auth_login_failed', user: f.user, ip: f.ip, reason: 'token exchange failed' });
      return { status: 502, title: 'Login failed', text: 'Could not exchange the authorization code with HuggingFace.' };
    } finally {
      end(f, false);
    }
  }

  /** The one-shot loopback server HF redirects the browser to. */
  function listen(f: Flow): Promise<number> {
    return new Promise((resolve, reject) => {
      const server = http.createServer((req, res) => {
        const u = new URL(req.url ?? '/', 'http://127.0.0.1');
        if (req.method !== 'GET' || u.pathname !== CALLBACK_PATH || !live(f)) {
          res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
          return;
        }
        handleCallback(f, u.searchParams).then(
          (r) => sendCallbackPage(res, r, true),
          () => sendCallbackPage(res, { status: 500, title: 'Login failed', text: 'internal error' }, true),
        );
      });
      server.headersTimeout = 10_000;
      server.requestTimeout = 30_000;
      server.once('error', reject);
      server.listen(deps.callbackPort, '127.0.0.1', () => {
        server.off('error', reject);
        server.on('error', () => undefined);
        f.server = server;
        resolve((server.address() as AddressInfo).port);
      });
    });
  }

  return {
    inProgress: () => flows.size > 0,
    async start(user, ip) {
      if (!deps.clientId) throw dlErrors.hfNotConfigured();
      if (deps.redirectUri ? flows.has(user) : flows.size > 0) throw dlErrors.hfInProgress();
      const { verifier, challenge, state } = makePkce();
      const f: Flow = {
        user,
        ip,
        verifier,
        state,
        redirectUri: deps.redirectUri ?? '',
        server: null,
        exchanging: false,
        timer: setTimeout(() => {
          deps.logger.info({ user }, 'hf oauth login timed out');
          end(f);
        }, deps.timeoutMs ?? LOGIN_TIMEOUT_MS),
      };
      f.timer.unref();
      flows.set(user, f); // claimed before the first await: a concurrent start gets 409
      if (!deps.redirectUri) {
        try {
          const port = await listen(f);
          f.redirectUri = `http://127.0.0.1:${port}${CALLBACK_PATH}`;
        } catch (e) {
          end(f);
          throw dlErrors.hfStartFailed(
            `could not bind the callback port ${deps.callbackPort} (${(e as NodeJS.ErrnoException).code ?? 'error'})`,
          );
        }
      }
      const params = new URLSearchParams({
        client_id: deps.clientId,
        redirect_uri: f.redirectUri,
        response_type: 'code',
        scope: SCOPE,
        state,
        code_challenge: challenge,
        code_challenge_method: 'S256',
      });
      deps.audit.record({ event: 'hf_auth_login_start', user, ip });
      return `${deps.hfApi.endpoint}/oauth/authorize?${params.toString()}`;
    },
    async gatewayCallback(user, query) {
      if (!flows.size || !deps.redirectUri) return { status: 400, title: 'Login failed', text: 'No HuggingFace login is in progress.' };
      const state = query.get('state') ?? '';
      const f = state ? [...flows.values()].find((x) => safeEqual(state, x.state)) : undefined;
      if (!f) return { status: 400, title: 'Login failed', text: 'state mismatch' };
      // The state is bound to the user who started the login: another session cannot complete it.
      if (f.user !== user) return { status: 403, title: 'Login failed', text: 'This login was started by another user.' };
      return handleCallback(f, query);
    },
    async close() {
      for (const f of [...flows.values()]) end(f);
    },
  };
}
