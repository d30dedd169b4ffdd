import { AppError } from '../errors';

/** A request path reduced to the one form every policy decision is made on. */
export interface CanonicalRoute {
  /** decoded, dot-resolved, empty segments removed, leading `api` segments dropped (a segment may hold an encoded `/`) */
  segments: string[];
  /** `/` + segments joined: the key the policy table matches */
  path: string;
  /** whether the client used the `/api` twin */
  apiPrefixed: boolean;
  /** the path to send upstream: exactly the route that was decided on, re-encoded */
  forwardPath: string;
  /** raw query string without `?` ('' when none) */
  query: string;
  /**
   * Only when a segment held an encoded slash (`%2F`): the segments split at it too, leading `api` dropped.
   * ComfyUI (aiohttp) routes with `%2F` kept inside the segment (`/userdata/{file}` relies on it), so the path is
   * forwarded that way; the policy decides on both readings and keeps the stricter one.
   */
  flatSegments?: string[];
}

const badPath = (why: string) => new AppError(400, 'INVALID_PATH', `Invalid request path: ${why}`);

function dropApi(segments: string[]): boolean {
  let dropped = false;
  while (segments.length && segments[0].toLowerCase() === 'api') {
    dropped = true;
    segments.shift();
  }
  return dropped;
}

/**
 * Percent-decodes each segment once, collapses `//`, resolves dot segments, drops the leading `/api` (every
 * repetition of it, case-insensitively). Throws 400 INVALID_PATH.
 *
 * Why every repetition: ComfyUI registers each route twice (`/x` and `/api` + `/x`), and routes that already
 * carry `/api` in their own path (`/api/jobs`) therefore also answer at `/api/api/jobs`. Deciding on `/jobs` and
 * forwarding with a single `/api` keeps every twin on one route and one decision.
 */
export function canonicalize(rawUrl: string): CanonicalRoute {
  if (!rawUrl.startsWith('/')) throw badPath('must start with /');
  const q = rawUrl.indexOf('?');
  const rawPath = q >= 0 ? rawUrl.slice(0, q) : rawUrl;
  const query = q >= 0 ? rawUrl.slice(q + 1) : '';
  const segments: string[] = [];
  for (const raw of rawPath.split('/')) {
    let seg: string;
    try {
      seg = decodeURIComponent(raw);
    } catch {
      throw badPath('malformed percent-encoding');
    }
    if (/[\u0000-\u001f\u007f\\]/.test(seg)) throw badPath('control character or backslash');
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (!segments.length) throw badPath('escapes the root');
      segments.pop();
      continue;
    }
    segments.push(seg);
  }
  let flatSegments: string[] | undefined;
  if (segments.some((x) => x.includes('/'))) {
    flatSegments = segments.flatMap((x) => x.split('/')).filter((x) => x !== '');
    if (flatSegments.some((x) => x === '.' || x === '..')) throw badPath('dot segment behind an encoded slash');
    dropApi(flatSegments);
  }
  const apiPrefixed = dropApi(segments);
  const path = '/' + segments.join('/');
  const trailing = rawPath.endsWith('/') && segments.length > 0 ? '/' : '';
  const forwardPath = (apiPrefixed ? '/api' : '') + encodePath(segments) + trailing;
  return { segments, path, apiPrefixed, forwardPath, query, ...(flatSegments ? { flatSegments } : {}) };
}

/**
 * Canonical segments back to a path, each re-encoded: what goes upstream and what the gateway's own Express routes
 * see. Never the decoded path — a decoded `%3F` or `%23` would end the path there for the next parser.
 */
export function encodePath(segments: string[]): string {
  return '/' + segments.map(encodeSegment).join('/');
}

// Keep the characters aiohttp leaves alone readable; encode everything else.
function encodeSegment(s: string): string {
  return encodeURIComponent(s).replace(/%(3A|40|2C|3D|2B|24|26|21|27|28|29|2A|3B)/gi, (m) => decodeURIComponent(m));
}
