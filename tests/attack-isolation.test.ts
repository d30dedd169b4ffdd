/** Attacker's review of multi-user isolation: bob (a normal user) going after alice's files, prompts and events. */
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { createLedger } from '../gateway/proxy/isolation/ledger';
import { createIsolationWsHooks } from '../gateway/proxy/isolation/ws';
import { pyJson, sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { makePng } from './helpers/png';
import { multipartBody, postJson, raw, received, socket, startIsolationEnv, type Caller, type IsolationEnv } from './isolation-env';

const PNG = makePng({ color: [200, 10, 10] });
const q = (o: Record<string, string>) => new URLSearchParams(o).toString();

function upload(env: IsolationEnv, who: Caller, parts: Parameters<typeof multipartBody>[0], route = '/api/upload/image') {
  const mp = multipartBody(parts);
  return raw(env.gw, 'POST', route, { headers: { ...who.headers, 'Content-Type': mp.contentType }, body: mp.body });
}

/** Records every JSON body the gateway's isolation layer sends upstream (what ComfyUI would act on). */
function sentUpstream(env: IsolationEnv): { path: string; body: any }[] {
  const up = env.gw.composed.upstream as { request: (...a: any[]) => Promise<unknown> };
  const orig = up.request;
  const seen: { path: string; body: any }[] = [];
  up.request = (method: string, p: string, init: { body?: Buffer | string } = {}) => {
    if (method === 'POST' && init.body !== undefined) seen.push({ path: p, body: JSON.parse(String(init.body)) });
    return orig(method, p, init);
  };
  return seen;
}

describe('bob attacks alice', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  let sent: { path: string; body: any }[];
  const prompts = () => sent.filter((x) => /\/prompt$/.test(x.path)).map((x) => x.body);
  let aliceId: string;
  let aliceOut: { filename: string; subfolder: string };

  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 20 });
    env = await startIsolationEnv({ fakeInstance: fake, config: { comfyui: { input_dir: fake.inputDir } } });
    sent = sentUpstream(env);
    expect((await upload(env, env.alice, [{ name: 'image', filename: 'secret.png', data: PNG }])).status).toBe(200);
    const r = await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('private'), client_id: 'alice-tab' });
    aliceId = r.json().prompt_id;
    aliceOut = (await fake.waitForPrompt(aliceId)).outputs['9'].images[0];
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
  });

  const bobPrompt = async (prompt: Record<string, unknown>, who: Caller = env.bob) => {
    const before = prompts().length;
    const r = await postJson(env.gw, '/api/prompt', who, { prompt });
    const now = prompts();
    return { r, sent: now.length > before ? now[now.length - 1].prompt : null };
  };

  describe('route twins and encodings', () => {
    it('history, jobs and view of alice’s prompt and files answer like missing ones on every twin', async () => {
      const missingHist = (await raw(env.gw, 'GET', '/history/00000000-0000-4000-8000-000000000000', { headers: env.bob.headers })).text;
      for (const p of ['/history', '/api/history', '/api/api/history', '//api//history', '/%68istory']) {
        expect([p, (await raw(env.gw, 'GET', `${p}/${aliceId}`, { headers: env.bob.headers })).text]).toEqual([p, missingHist]);
        expect([p, (await raw(env.gw, 'GET', `${p}?max_items=100000`, { headers: env.bob.headers })).text]).toEqual([p, '{}']);
      }
      for (const p of [`/history%2F${aliceId}`, `/history%252F${aliceId}`, `/api/jobs%2F${aliceId}`]) {
        expect((await raw(env.gw, 'GET', p, { headers: env.bob.headers })).text).not.toContain(aliceOut.filename);
      }
      for (const p of ['/api/jobs', '/api/api/jobs', '//api//jobs']) {
        const j = await raw(env.gw, 'GET', `${p}/${aliceId}`, { headers: env.bob.headers });
        expect([p, j.status]).toEqual([p, 404]);
        const list = (await raw(env.gw, 'GET', `${p}?limit=1&offset=0&status=completed`, { headers: env.bob.headers })).json();
        expect([p, list.jobs, list.pagination.total]).toEqual([p, [], 0]);
      }
      const view = q({ filename: aliceOut.filename, subfolder: aliceOut.subfolder, type: 'output' });
      for (const p of ['/view', '/api/view', '/api/api/view', '//api//view', '/%76iew']) {
        expect([p, (await raw(env.gw, 'GET', `${p}?${view}`, { headers: env.bob.headers })).status]).toEqual([p, 404]);
      }
      fake.clearRequests();
      for (const p of ['/internal/files/output', '/api/internal/files/input', '//internal//files%2Ftemp']) {
        expect([p, (await raw(env.gw, 'GET', p, { headers: env.bob.headers })).status]).toEqual([p, 403]);
      }
      expect(received(fake, /files/)).toEqual([]);
      const queue = (await raw(env.gw, 'GET', '/api/api/queue', { headers: env.bob.headers })).json();
      expect(JSON.stringify(queue)).not.toContain(aliceId);
    });

    it('bob cannot delete, clear or interrupt alice’s prompts, whatever the twin or body', async () => {
      const start = sent.length;
      for (const p of ['/history', '/api/api/history', '//api//history']) {
        expect((await postJson(env.gw, p, env.bob, { delete: [aliceId], clear: true })).status).toBe(200);
        expect((await postJson(env.gw, '/queue', env.bob, { delete: [aliceId], clear: true })).status).toBe(200);
      }
      const deletes = sent.slice(start).map((x) => x.body);
      expect(deletes).toHaveLength(6);
      for (const d of deletes) expect(d).toEqual({ delete: [] });
      const after = (await raw(env.gw, 'GET', `/history/${aliceId}`, { headers: env.alice.headers })).json();
      expect(Object.keys(after)).toEqual([aliceId]);
      const before = sent.length;
      for (const body of [{ prompt_id: aliceId }, {}, { prompt_id: [aliceId] }, { prompt_id: 1 }]) {
        expect((await postJson(env.gw, '/api/api/interrupt', env.bob, body)).status).toBe(200);
      }
      // every interrupt sent upstream names one prompt that is not alice's: never a global one
      const interrupts = sent
        .slice(before)
        .filter((x) => /interrupt$/.test(x.path))
        .map((x) => x.body.prompt_id);
      expect(interrupts).toHaveLength(4);
      for (const id of interrupts) expect(typeof id === 'string' && id !== aliceId).toBe(true);
    });

    it('userdata traversal with %2F, %252F and %2e%2e never reaches alice’s workflows', async () => {
      const aliceUser = Object.keys(fake.users).find((k) => fake.users[k] === 'alice')!;
      const put = await raw(env.gw, 'POST', '/api/userdata/workflows%2Fdiary.json', {
        headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
        body: '{"secret":42}',
      });
      expect(put.status).toBe(200);
      for (const p of [
        `/api/userdata/..%2F${aliceUser}%2Fworkflows%2Fdiary.json`,
        `/api/userdata/..%252F${aliceUser}%252Fworkflows%252Fdiary.json`,
        `/userdata/%2e%2e%2F${aliceUser}%2Fworkflows%2Fdiary.json`,
        `/api/v2/userdata?path=..%2F${aliceUser}%2Fworkflows`,
        `/api/userdata?dir=..%2F${aliceUser}%2Fworkflows`,
      ]) {
        const r = await raw(env.gw, 'GET', p, { headers: { ...env.bob.headers, 'comfy-user': aliceUser } });
        expect([p, r.text.includes('secret') || r.text.includes('diary')]).toEqual([p, false]);
      }
    });

    it('bob’s socket named with alice’s clientId or her upstream id hears nothing of her run', async () => {
      const upstreamIds = fake.wsClients().map((c) => c.clientId);
      const a = await socket(env.gw, env.alice, 'alice-tab');
      const b1 = await socket(env.gw, env.bob, 'alice-tab');
      const aliceUp = fake.wsClients().find((c) => !upstreamIds.includes(c.clientId))!.clientId; // alice's, the first one opened
      const b2 = await socket(env.gw, env.bob, aliceUp);
      const r = await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('ws'), client_id: 'alice-tab' });
      const id = r.json().prompt_id;
      await a.next((f) => f.json?.type === 'executing' && f.json.data.node === null && f.json.data.prompt_id === id);
      expect(b1.frames.some((f) => f.data.includes(id)) || b2.frames.some((f) => f.data.includes(id))).toBe(false);
      // and bob's prompts aimed at alice's socket (her clientId, her upstream id, her prompt id) never reach it
      const aimed = await postJson(env.gw, '/prompt', env.bob, {
        prompt: sampleWorkflow('aimed'),
        client_id: 'alice-tab',
        prompt_id: id,
        extra_data: { client_id: aliceUp },
      });
      const bobId = aimed.json().prompt_id;
      expect(bobId).not.toBe(id);
      await fake.waitForPrompt(bobId);
      await b1.next((f) => f.json?.type === 'executing' && f.json.data.node === null && f.json.data.prompt_id === bobId);
      expect(a.frames.some((f) => f.data.includes(bobId))).toBe(false);
      expect(Object.keys((await raw(env.gw, 'GET', `/history/${id}`, { headers: env.alice.headers })).json())).toEqual([id]);
      for (const s of [a, b1, b2]) s.close();
    });
  });

  describe('prompt paths', () => {
    it('a link or list in place of a path string is refused (saves and loaders); .. and absolute paths anywhere', async () => {
      fake.clearRequests();
      const viaLink = (node: Record<string, unknown>) => ({
        ...sampleWorkflow(),
        '30': { class_type: 'PrimitiveString', inputs: { value: '../alice/x' } },
        '31': node,
      });
      for (const prompt of [
        {
          ...sampleWorkflow(),
          '9': { class_type: 'SaveImage', inputs: { filename_prefix: ['30', 0], images: ['8', 0] } },
          '30': { class_type: 'PrimitiveString', inputs: { value: '../alice/x' } },
        },
        viaLink({ class_type: 'LoadImage', inputs: { image: ['30', 0] } }),
        viaLink({ class_type: 'LoadImageDataSetFromFolder', inputs: { folder: ['30', 0] } }),
        viaLink({ class_type: 'SaveImageDataSetToFolder', inputs: { folder_name: ['30', 0], filename_prefix: 'x', images: ['8', 0] } }),
        viaLink({ class_type: 'LoadImage', inputs: { image: ['alice/secret.png'] } }),
        viaLink({ class_type: 'Image Save', inputs: { output_path: null, images: ['8', 0] } }),
        viaLink({ class_type: 'MyCustomNode', inputs: { directory: '../alice' } }),
        viaLink({ class_type: 'MyCustomNode', inputs: { path: '/srv/comfy/output/alice' } }),
      ]) {
        const { r } = await bobPrompt(prompt);
        expect([r.status, r.json().error?.code]).toEqual([400, 'PATH_NOT_ALLOWED']);
      }
      expect(received(fake, /prompt/, 'POST')).toEqual([]);
    });

    it('a filename_prefix naming only the user’s folder still saves inside it', async () => {
      for (const prefix of ['bob', 'bob/', './bob']) {
        const { r } = await bobPrompt(sampleWorkflow(prefix));
        expect(r.status).toBe(200);
        const h = await fake.waitForPrompt(r.json().prompt_id);
        expect([prefix, h.outputs['9'].images[0].subfolder]).toEqual([prefix, 'bob']);
      }
      expect(fs.readdirSync(fake.outputDir).filter((f) => f.startsWith('bob_'))).toEqual([]);
    });

    it('path-like inputs of any node are confined to the user’s folder', async () => {
      const cases: [string, Record<string, unknown>, (n: any) => unknown, unknown][] = [
        [
          'WebcamCapture image',
          { class_type: 'WebcamCapture', inputs: { image: 'alice/secret.png', width: 0, height: 0, capture_on_queue: false } },
          (n) => n.inputs.image,
          'bob/alice/secret.png',
        ],
        [
          'LoadLatent latent [output]',
          { class_type: 'LoadLatent', inputs: { latent: 'alice/x_00001_.latent [output]' } },
          (n) => n.inputs.latent,
          'bob/alice/x_00001_.latent [output]',
        ],
        ['dataset folder', { class_type: 'LoadImageDataSetFromFolder', inputs: { folder: 'alice' } }, (n) => n.inputs.folder, 'bob/alice'],
        [
          'dataset folder_name',
          {
            class_type: 'SaveImageDataSetToFolder',
            inputs: { images: ['8', 0], folder_name: 'alice', filename_prefix: 'image', mode: 'overwrite' },
          },
          (n) => n.inputs.folder_name,
          'bob/alice',
        ],
        [
          'SaveLoRA prefix',
          { class_type: 'SaveLoRA', inputs: { lora: ['8', 0], prefix: 'alice/evil' } },
          (n) => n.inputs.prefix,
          'bob/alice/evil',
        ],
        [
          'a custom node’s path and filename',
          { class_type: 'MyCustomNode', inputs: { path: 'output/alice', filename: 'alice/x.txt', text: 'alice/keep' } },
          (n) => n.inputs,
          { path: 'bob/output/alice', filename: 'bob/alice/x.txt', text: 'alice/keep' },
        ],
        [
          'a custom saver’s file',
          { class_type: 'SaveText|pysssss', inputs: { root_dir: 'output', file: 'alice/notes.txt', text: 'x', append: 'overwrite' } },
          (n) => n.inputs.file,
          'bob/alice/notes.txt',
        ],
        [
          'Load3D image members',
          {
            class_type: 'Load3D',
            inputs: {
              model_file: '3d/m.glb',
              image: {
                image: 'alice/secret.png',
                mask: 'alice/secret.png',
                normal: 'n.png',
                recording: '',
                camera_info: { cameraType: 'perspective' },
              },
              width: 8,
              height: 8,
            },
          },
          (n) => n.inputs.image,
          {
            image: 'bob/alice/secret.png',
            mask: 'bob/alice/secret.png',
            normal: 'bob/n.png',
            recording: '',
            camera_info: { cameraType: 'perspective' },
          },
        ],
      ];
      for (const [name, node, pick, want] of cases) {
        const { sent } = await bobPrompt({ ...sampleWorkflow(), '40': node });
        expect([name, sent && pick(sent['40'])]).toEqual([name, want]);
      }
      const abs = await bobPrompt({
        ...sampleWorkflow(),
        '40': { class_type: 'LoadImageDataSetFromFolder', inputs: { folder: '/srv/comfy/input/alice' } },
      });
      expect([abs.r.status, abs.r.json().error?.code, abs.sent]).toEqual([400, 'PATH_NOT_ALLOWED', null]);
    });

    it('admins’ reads stay free but their saves are prefixed, links included', async () => {
      const a = await bobPrompt(
        {
          ...sampleWorkflow(),
          '40': { class_type: 'LoadImageDataSetFromFolder', inputs: { folder: 'alice' } },
          '41': { class_type: 'SaveLoRA', inputs: { lora: ['8', 0], prefix: 'x' } },
        },
        env.admin,
      );
      expect(a.r.status).toBe(400); // the fake knows neither node; what matters is what was sent
      expect([a.sent['40'].inputs.folder, a.sent['41'].inputs.prefix]).toEqual(['alice', 'api-key/x']);
      const link = await bobPrompt(
        { ...sampleWorkflow(), '9': { class_type: 'SaveImage', inputs: { filename_prefix: ['7', 0], images: ['8', 0] } } },
        env.admin,
      );
      expect([link.r.status, link.r.json().error?.code, link.sent]).toEqual([400, 'PATH_NOT_ALLOWED', null]);
    });

    it('a temp file the user uploaded into their own folder may be loaded; someone else’s may not', async () => {
      const up = await upload(env, env.bob, [
        { name: 'image', filename: 'cam.png', data: PNG },
        { name: 'type', value: 'temp' },
        { name: 'subfolder', value: 'webcam' },
      ]);
      expect(up.json()).toMatchObject({ subfolder: 'bob/webcam', type: 'temp' });
      const { r } = await bobPrompt({
        ...sampleWorkflow(),
        '20': { class_type: 'LoadImage', inputs: { image: 'bob/webcam/cam.png [temp]' } },
      });
      expect(r.status).toBe(200);
      await fake.waitForPrompt(r.json().prompt_id);
      await upload(env, env.alice, [
        { name: 'image', filename: 'cam.png', data: PNG },
        { name: 'type', value: 'temp' },
        { name: 'subfolder', value: 'webcam' },
      ]);
      const theirs = await bobPrompt({
        ...sampleWorkflow(),
        '20': { class_type: 'LoadImage', inputs: { image: 'alice/webcam/cam.png [temp]' } },
      });
      expect([theirs.r.status, theirs.r.json().error?.code]).toEqual([400, 'PATH_NOT_ALLOWED']);
    });
  });

  describe('uploads', () => {
    it('a field named "/subfolder" (aiohttp strips leading slashes of quoted names) is refused before ComfyUI sees it', async () => {
      fake.clearRequests();
      for (const name of ['/subfolder', '//original_ref']) {
        const r = await upload(
          env,
          env.bob,
          [
            { name, value: name.includes('ref') ? JSON.stringify({ filename: 'secret.png', subfolder: 'alice', type: 'input' }) : 'alice' },
            { name: 'image', filename: 'secret.png', data: PNG },
            { name: 'overwrite', value: 'true' },
          ],
          name.includes('ref') ? '/upload/mask' : '/upload/image',
        );
        expect([name, r.status, r.json().error?.code]).toEqual([name, 400, 'INVALID_BODY']);
      }
      expect(received(fake, /upload/)).toEqual([]);
      expect(fs.readFileSync(path.join(fake.inputDir, 'alice', 'secret.png'))).toEqual(PNG);
    });
  });

  describe('custom nodes’ file routes', () => {
    it('VideoHelperSuite’s un-prefixed /viewvideo twin and /getpath neither serve nor list alice’s files', async () => {
      fake.clearRequests();
      for (const p of ['/viewvideo', '/api/viewvideo', '/vhs/viewvideo']) {
        await raw(env.gw, 'GET', `${p}?${q({ filename: aliceOut.filename, subfolder: 'alice', type: 'output' })}`, {
          headers: env.bob.headers,
        });
        await raw(
          env.gw,
          'GET',
          `${p}?${q({ filename: path.join(fake.outputDir, aliceOut.subfolder, aliceOut.filename), type: 'path' })}`,
          { headers: env.bob.headers },
        );
      }
      const seen = received(fake, /viewvideo/);
      expect(seen).toHaveLength(6);
      for (const s of seen) expect([s.rawPath, /alice|type=path/.test(decodeURIComponent(s.rawPath))]).toEqual([s.rawPath, false]);
      for (const p of ['/vhs/getpath', '/getpath', '/api/vhs/getpath']) {
        const r = await raw(env.gw, 'GET', `${p}?${q({ path: path.join(fake.outputDir, 'alice') + '/' })}`, { headers: env.bob.headers });
        expect([p, r.status, r.text]).toEqual([p, 200, '[]']);
      }
      expect(received(fake, /getpath/)).toEqual([]);
    });
  });
});

describe('WebSocket frames after the ledger forgets a prompt', () => {
  it('a socket whose running prompt left the ledger stops receiving ownerless frames', () => {
    const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'cgw-attack-'));
    const ledger = createLedger({ file: path.join(dir, 'ledger.json'), logger: pino({ level: 'silent' }), max: 2 });
    const tracker = {
      state: { kind: 'unknown' },
      idle: () => false,
      onStatus: () => undefined,
      onPromptEvent: () => undefined,
    } as Parameters<typeof createIsolationWsHooks>[0]['tracker'];
    const clientIds = { upstreamFor: (u: string, c: string) => `up-${u}-${c}`, fresh: () => 'fresh', nobody: () => 'nobody' };
    const hooks = createIsolationWsHooks({ clientIds, ledger, tracker });
    const principal = { username: 'bob', role: 'user' as const, permissions: [], source: 'jwt' as const };
    const s = { principal, clientId: 'b', upstreamClientId: hooks.upstreamClientId!(principal, 'b') };
    const ownerless = Buffer.concat([Buffer.from([0, 0, 0, 3, 0, 0, 0, 1]), Buffer.from('3alice is drawing')]);
    ledger.add({ id: 'p-bob', owner: 'bob', clientId: 'b', upstreamClientId: s.upstreamClientId! });
    hooks.fromUpstream!(s, Buffer.from(pyJson({ type: 'execution_start', data: { prompt_id: 'p-bob' } })), false);
    expect(hooks.fromUpstream!(s, ownerless, true)).not.toBeNull();
    // bob floods the ledger until his running prompt is evicted, then it ends
    ledger.add({ id: 'p-x1', owner: 'bob', clientId: '', upstreamClientId: 'n' });
    ledger.add({ id: 'p-x2', owner: 'bob', clientId: '', upstreamClientId: 'n' });
    expect(ledger.owner('p-bob')).toBeUndefined();
    hooks.fromUpstream!(s, Buffer.from(pyJson({ type: 'executing', data: { node: null, prompt_id: 'p-bob' } })), false);
    expect(hooks.fromUpstream!(s, ownerless, true)).toBeNull();
    void ledger.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
