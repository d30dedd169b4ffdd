import type { FakeComfy, RecordedRequest } from './fakeComfy';

/**
 * The gateway's own calls to ComfyUI, made on nobody's request: learning model folders and the server (discovery), provisioning ComfyUI
 * users, health probes, the queue following its workers. They never carry X-Forwarded-For (every forwarded client request does).
 */
export function isGatewayOwnCall(r: RecordedRequest): boolean {
  if (r.headers['x-forwarded-for'] !== undefined) return false;
  return (
    (r.method === 'GET' && r.rawPath === '/internal/folder_paths') ||
    ((r.method === 'GET' || r.method === 'POST') && r.rawPath === '/users') ||
    (r.method === 'GET' && r.rawPath === '/prompt') ||
    (r.method === 'GET' && r.rawPath === '/system_stats') || // server discovery
    // the gateway queue following its workers: their queue, and a finished prompt's usage
    (r.method === 'GET' && r.rawPath === '/queue') ||
    (r.method === 'GET' && /^\/history\/[^/?]+$/.test(r.rawPath))
  );
}

/** What reached ComfyUI because a client asked: the list a refusal test expects to be empty. */
export function clientTraffic(fake: FakeComfy): RecordedRequest[] {
  return fake.requests.filter((r) => !isGatewayOwnCall(r));
}
