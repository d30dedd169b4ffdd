/** What HuggingFace's token endpoint returns (the parts we use). */
export interface HfTokenResponse {
  access_token: string;
  refresh_token?: string;
  expires_in?: number;
  scope?: string;
}

/** Outcome of `auth-check`: may fetch, may not (gated / no access), no such repo, or unknown (network). */
export type AuthCheck = 'ok' | 'denied' | 'notfound' | null;

/** The HuggingFace API calls the gateway makes (to the trusted HF_ENDPOINT, never to a client-supplied host). */
export interface HfApi {
  authCheck(repo: string, token: string | null): Promise<AuthCheck>;
  exchangeCode(p: { code: string; verifier: string; redirectUri: string; clientId: string }): Promise<HfTokenResponse>;
  refresh(p: { refreshToken: string; clientId: string }): Promise<HfTokenResponse>;
  whoami(token: string): Promise<string | null>;
  readonly endpoint: string;
}

/** Builds the HF API client; `fetchImpl` is injectable for tests. */
export function createHfApi(opts: { endpoint: string; fetchImpl?: typeof fetch; timeoutMs?: number }): HfApi {
  const f = opts.fetchImpl ?? fetch;
  const base = opts.endpoint.replace(/\/+$/, '');
  const timeout = () => AbortSignal.timeout(opts.timeoutMs ?? 15_000);
  const repoPath = (repo: string) => repo.split('/').map(encodeURIComponent).join('/');

  async function tokenCall(form: Record<string, string>): Promise<HfTokenResponse> {
    const res = await f(`${base}/oauth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: new URLSearchParams(form).toString(),
      signal: timeout(),
      redirect: 'error',
    });
    const text = await res.text();
    if (!res.ok) throw Object.assign(new Error(`token endpoint answered ${res.status}`), { status: res.status });
    const body = JSON.parse(text) as HfTokenResponse;
    if (!body || typeof body.access_token !== 'string' || !body.access_token) throw new Error('token endpoint returned no access_token');
    return body;
  }

  return {
    endpoint: base,
    async authCheck(repo, token) {
      try {
        const res = await f(`${base}/api/models/${repoPath(repo)}/auth-check`, {
          headers: token ? { authorization: `Bearer ${token}` } : {},
          signal: timeout(),
          redirect: 'error',
        });
        await res.arrayBuffer().catch(() => undefined);
        if (res.ok) return 'ok';
        if (res.status === 401 || res.status === 403) return 'denied';
        if (res.status === 404) return 'notfound';
        return null;
      } catch {
        return null;
      }
    },
    exchangeCode: (p) =>
      tokenCall({
        grant_type: 'authorization_code',
        code: p.code,
        redirect_uri: p.redirectUri,
        client_id: p.clientId,
        code_verifier: p.verifier,
      }),
    refresh: (p) => tokenCall({ grant_type: 'refresh_token', refresh_token: p.refreshToken, client_id: p.clientId }),
    async whoami(token) {
      try {
        const res = await f(`${base}/api/whoami-v2`, {
          headers: { authorization: `Bearer ${token}` },
          signal: timeout(),
          redirect: 'error',
        });
        if (!res.ok) {
          await res.arrayBuffer().catch(() => undefined);
          return null;
        }
        const body = (await res.json()) as { name?: unknown; fullname?: unknown };
        const name = typeof body.name === 'string' ? body.name : typeof body.fullname === 'string' ? body.fullname : null;
        return name;
      } catch {
        return null;
      }
    },
  };
}
