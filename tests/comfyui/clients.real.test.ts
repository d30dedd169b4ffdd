/**
 * Issue 10 item 6: the two npm ComfyUI clients, unmodified, through the gateway to both real servers, with a
 * normal user's personal token and with the static key: run EmptyImage -> SaveImage and fetch the image.
 * `@saintno/comfyui-sdk` with bearer credentials; `@stable-canvas/comfyui-client` with custom headers (a plugin for
 * HTTP, a `ws` subclass for the socket) and with `?token=` (its own LoginAuthPlugin). README "Clients".
 */
import { CallWrapper, ComfyApi, PromptBuilder } from '@saintno/comfyui-sdk';
import { Client, Plugin, plugins, type WorkflowOutput } from '@stable-canvas/comfyui-client';
import WebSocket from 'ws';
import { TEST_KEY } from '../helpers/gateway';
import { createPeople, personalToken, pngSize, removeUserFolders, SERVERS, until, type People } from './people';
import { emptyImageWorkflow, useRealStack } from './realComfy';

jest.setTimeout(180_000);

/** Whose credential a client uses. */
type Who = 'user' | 'static key';

/** A stable-canvas plugin adding fixed headers to every HTTP request the client makes. */
class HeadersPlugin extends Plugin {
  constructor(headers: Record<string, string>) {
    super();
    this.addHook({
      type: 'function',
      name: 'apiHeaders',
      fn: (orig: (...a: unknown[]) => object, ...args: unknown[]) => ({ ...orig(...args), ...headers }),
    } as never);
  }
}

/** `ws` with fixed upgrade headers, for clients that take a WebSocket class. */
function wsWithHeaders(headers: Record<string, string>): typeof WebSocket {
  return class extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols, { headers });
    }
  } as unknown as typeof WebSocket;
}

describe.each(SERVERS)('npm clients through the gateway on ComfyUI $label', ({ tree, args }) => {
  const stack = useRealStack(tree, { args });
  let people: People;
  const cred: Record<Who, string> = { user: '', 'static key': TEST_KEY };

  beforeAll(async () => {
    people = await createPeople(stack.gw);
    cred.user = await personalToken(stack.gw, people.alice);
  }, 120_000);
  afterAll(() => removeUserFolders(stack.comfy, people));

  /** Fetches `url` (with `headers`) and checks it is the 64x64 PNG the workflow made. */
  async function expectImage(url: string, headers: Record<string, string> = {}): Promise<void> {
    const res = await fetch(url, { headers });
    expect(res.status).toBe(200);
    expect(pngSize(Buffer.from(await res.arrayBuffer()))).toEqual({ width: 64, height: 64 });
  }

  describe.each<Who>(['user', 'static key'])('with the %s', (who) => {
    test('@saintno/comfyui-sdk with bearer credentials: starts, runs the workflow, fetches the image', async () => {
      const api = new ComfyApi(stack.gw.url, undefined, { credentials: { type: 'bearer_token', token: cred[who] } });
      const problems: string[] = [];
      let connected = false;
      api.on('connected', () => (connected = true));
      for (const ev of ['auth_error', 'connection_error', 'queue_error', 'reconnection_failed'] as const)
        api.on(ev as never, () => problems.push(ev));
      try {
        await api.init(3, 500).waitForReady();
        // What the sdk reads at start-up (its pullOsType crashes on a refusal): /system_stats with an OS.
        const stats = await api.getSystemStats();
        expect(typeof stats.system.os).toBe('string');
        await until("the sdk's WebSocket", () => (connected ? true : undefined));

        const wf = new PromptBuilder<string, 'images', Record<string, any>>(
          emptyImageWorkflow(`saintno-${who.replace(' ', '-')}`) as never,
          [],
          ['images'],
        ).setOutputNode('images', '2');
        let failure: unknown;
        // run() never settles when the sdk misses its prompt's events; give it a deadline.
        const out = await Promise.race([
          new CallWrapper(api, wf).onFailed((e) => (failure = e)).run(),
          new Promise((_, reject) => setTimeout(() => reject(new Error("the sdk's run() did not finish within 60 s")), 60_000).unref()),
        ]);
        expect(failure).toBeUndefined();
        expect(out).toBeTruthy();
        const img = (out as { images: { images: { filename: string; subfolder: string; type: string }[] } }).images.images[0];
        expect(img.type).toBe('output');

        // getImage() sends the credentials: the PNG itself.
        const blob = await api.getImage(img);
        expect(pngSize(Buffer.from(await blob.arrayBuffer()))).toEqual({ width: 64, height: 64 });
        // getPathImage() builds a bare URL (for <img src>): refused without credentials, fine with ?token=.
        const bare = api.getPathImage(img);
        expect((await fetch(bare)).status).toBe(401);
        await expectImage(`${bare}&token=${encodeURIComponent(cred[who])}`);
        expect(problems).toEqual([]);
      } finally {
        api.destroy();
      }
    });

    test('@stable-canvas/comfyui-client with custom headers: connects, enqueues over WebSocket, fetches the image', async () => {
      const headers: Record<string, string> = who === 'user' ? { Authorization: `Bearer ${cred[who]}` } : { 'X-API-Key': cred[who] };
      const client = new Client({
        api_host: new URL(stack.gw.url).host,
        WebSocket: wsWithHeaders(headers),
        clientId: `sc-h-${who.replace(' ', '-')}`,
      });
      client.use(new HeadersPlugin(headers) as never);
      try {
        await expect(client.connect({ websocket: { enabled: true }, timeout_ms: 30_000 })).resolves.toBe(true);
        const stats = await client.getSystemStats();
        expect(typeof stats.system.os).toBe('string');
        const out = (await client.enqueue(emptyImageWorkflow(`sc-headers-${who.replace(' ', '-')}`), {
          timeout_ms: 60_000,
        })) as WorkflowOutput;
        expect(out.images).toHaveLength(1);
        expect(out.images[0].type).toBe('url');
        const url = out.images[0].data as string;
        // viewURL() carries no credentials: send the same header (or add ?token=) when fetching it.
        expect((await fetch(url)).status).toBe(401);
        await expectImage(url, headers);
        // The run is in the caller's own history, under the id the client was given.
        const history = await client.getHistory(50);
        expect(history.History.map((h) => h.prompt[1])).toContain(out.prompt_id);
      } finally {
        client.close();
      }
    });

    test('@stable-canvas/comfyui-client with ?token= (its LoginAuthPlugin): connects, enqueues, fetches the image', async () => {
      const client = new Client({ api_host: new URL(stack.gw.url).host, WebSocket, clientId: `sc-t-${who.replace(' ', '-')}` });
      client.use(new plugins.LoginAuthPlugin({ token: cred[who] }));
      try {
        await expect(client.connect({ websocket: { enabled: true }, timeout_ms: 30_000 })).resolves.toBe(true);
        const out = (await client.enqueue(emptyImageWorkflow(`sc-token-${who.replace(' ', '-')}`), {
          timeout_ms: 60_000,
        })) as WorkflowOutput;
        expect(out.images).toHaveLength(1);
        const url = out.images[0].data as string;
        expect((await fetch(url)).status).toBe(401);
        await expectImage(`${url}&token=${encodeURIComponent(cred[who])}`);
        const history = await client.getHistory(50);
        expect(history.History.map((h) => h.prompt[1])).toContain(out.prompt_id);
      } finally {
        client.close();
      }
    });
  });

  test("the user's three client runs are in their own history and not in another user's", async () => {
    const historyOf = async (token: string) => {
      const res = await fetch(`${stack.gw.url}/history?max_items=200`, { headers: { Authorization: `Bearer ${token}` } });
      expect(res.status).toBe(200);
      return Object.keys((await res.json()) as object);
    };
    await expect(historyOf(cred.user)).resolves.toHaveLength(3);
    await expect(historyOf(await personalToken(stack.gw, people.bob))).resolves.toEqual([]);
  });
});
