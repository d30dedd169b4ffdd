/**
 * What the real npm clients do on the wire, mirrored for the fast suite (issue 10 item 6; the real clients run in
 * tests/comfyui/clients.real.test.ts): @saintno/comfyui-sdk posts prompts as text/plain (its fetchApi replaces the
 * caller's headers with the credential ones), @stable-canvas/comfyui-client adds `?clientId=` to every HTTP request.
 */
import { sampleWorkflow } from './helpers/fakeComfy';
import { raw, received, startIsolationEnv, type IsolationEnv } from './isolation-env';

describe("the npm clients' request shapes through the gateway", () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  // text/plain is what the sdk sends; a missing or foreign type must not be a way around the confinement either.
  describe.each([['text/plain;charset=UTF-8'], ['application/octet-stream'], ['(none)']])(
    'a prompt posted with Content-Type %s',
    (type) => {
      const post = (body: unknown) =>
        raw(env.gw, 'POST', '/prompt', {
          headers: { ...env.alice.headers, ...(type === '(none)' ? {} : { 'Content-Type': type }) },
          body: JSON.stringify(body),
        });

      test('is read like JSON: queued for the caller, its save prefix confined, sent upstream as application/json', async () => {
        env.fake.clearRequests();
        const r = await post({ client_id: 'sdk-client', prompt: sampleWorkflow('sdk') });
        expect(r.status).toBe(200);
        const id = r.json().prompt_id as string;
        const stored = await until(() => env.fake.prompts.get(id));
        expect(stored.prompt['9'].inputs.filename_prefix).toBe('alice/sdk');
        const sent = received(env.fake, /^\/prompt$/, 'POST');
        expect(sent).toHaveLength(1);
        expect(sent[0].headers['content-type']).toBe('application/json');
        const history = await raw(env.gw, 'GET', '/history', { headers: env.bob.headers });
        expect(Object.keys(history.json())).not.toContain(id);
      });

      test("is refused like JSON when a save prefix leaves the user's folder, and nothing reaches ComfyUI", async () => {
        env.fake.clearRequests();
        const r = await post({ client_id: 'sdk-client', prompt: sampleWorkflow('../bob/x') });
        expect(r.status).toBe(400);
        expect(r.json().error.code).toBe('PATH_NOT_ALLOWED');
        expect(received(env.fake, /^\/prompt/, 'POST')).toEqual([]);
      });
    },
  );

  test("`?clientId=` on every HTTP request (stable-canvas) changes nothing: history stays the caller's own", async () => {
    const mine = await raw(env.gw, 'POST', '/prompt?clientId=sc-a', {
      headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
      body: JSON.stringify({ client_id: 'sc-a', prompt: sampleWorkflow('sc') }),
    });
    expect(mine.status).toBe(200);
    const id = mine.json().prompt_id as string;
    await until(async () =>
      Object.keys((await raw(env.gw, 'GET', `/history/${id}?clientId=sc-a`, { headers: env.alice.headers })).json()).length
        ? true
        : undefined,
    );
    const bobs = await raw(env.gw, 'GET', '/history?max_items=200&clientId=sc-a', { headers: env.bob.headers });
    expect(bobs.status).toBe(200);
    expect(Object.keys(bobs.json())).not.toContain(id);
    const alices = await raw(env.gw, 'GET', '/history?max_items=200&clientId=sc-a', { headers: env.alice.headers });
    expect(Object.keys(alices.json())).toContain(id);
  });
});

/** Polls until `probe` gives a value (fake ComfyUI runs prompts after a short delay). */
async function until<T>(probe: () => T | undefined | Promise<T | undefined>, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}
