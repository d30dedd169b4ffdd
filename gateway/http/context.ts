import type { IncomingMessage } from 'node:http';
import type { Upstream } from '../proxy/upstream';
import type { Principal } from '../auth/principal';
import type { CanonicalRoute } from '../proxy/canonical';
import type { Decision } from '../proxy/policy';

/** What the front door learned about a request; attached once, read everywhere after. */
export interface RequestContext {
  clientIp: string;
  route: CanonicalRoute;
  decision: Decision;
  /** parsed query of the raw URL */
  query: URLSearchParams;
  /** set by the front door for routes that need a principal; gateway handlers of public routes resolve it lazily */
  principal: Principal | null;
  /** true when the request reached us over TLS, or a trusted proxy says the original was HTTPS */
  secure: boolean;
  startedAt: bigint;
  /** the error.code of a refusal, set when it is rendered (metrics count refusals by code) */
  errorCode?: string;
  /** another ComfyUI worker serves this request (the one that made the prompt or file it names) */
  upstream?: Upstream;
}

const CTX = Symbol('gatewayContext');

/** Attaches the request context. */
export function setContext(req: IncomingMessage, ctx: RequestContext): void {
  (req as unknown as Record<symbol, RequestContext>)[CTX] = ctx;
}

/** The request context set by the front door (throws if a route is reached without it: a wiring bug). */
export function getContext(req: IncomingMessage): RequestContext {
  const ctx = (req as unknown as Record<symbol, RequestContext | undefined>)[CTX];
  if (!ctx) throw new Error('request reached a handler without passing the front door');
  return ctx;
}

/** The context when present (error rendering and logging paths). */
export function peekContext(req: IncomingMessage): RequestContext | undefined {
  return (req as unknown as Record<symbol, RequestContext | undefined>)[CTX];
}
