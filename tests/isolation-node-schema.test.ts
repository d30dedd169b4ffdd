/**
 * Issue 9 (Low): whether a node reads or writes files comes from its schema (/object_info: upload flags, file
 * widgets such as WEBCAM, option lists of the input folder, output nodes with a save prefix), not from "load" or
 * "save" in its class name. WebcamCapture and custom pickers/exporters are confined like LoadImage and SaveImage.
 */
import fs from 'node:fs';
import path from 'node:path';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { makePng } from './helpers/png';
import { eventually } from './helpers/queue';
import { multipartBody, postJson, raw, received, startIsolationEnv, type Caller, type IsolationEnv } from './isolation-env';

const PNG = makePng({ color: [9, 9, 9] });

describe('file nodes known by their schema', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 5 });
    env = await startIsolationEnv({ fakeInstance: fake, config: { comfyui: { input_dir: fake.inputDir } } });
    for (const who of [env.alice, env.bob]) {
      const mp = multipartBody([{ name: 'image', filename: 'pic.png', data: PNG }]);
      const r = await raw(env.gw, 'POST', '/upload/image', { headers: { ...who.headers, 'Content-Type': mp.contentType }, body: mp.body });
      expect(r.status).toBe(200);
    }
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
  });

  /** A prompt with node 20 of `cls` (its output previewed when it makes images), as ComfyUI received it. */
  async function submit(who: Caller, node: Record<string, unknown>, extra: Record<string, unknown> = {}) {
    fake.clearRequests();
    const prompt = {
      ...sampleWorkflow('schema'),
      ...extra,
      '20': node,
      '21': { class_type: 'PreviewImage', inputs: { images: ['20', 0] } },
    };
    const r = await postJson(env.gw, '/prompt', who, { prompt });
    // accepted while the previous prompt still runs, it reaches ComfyUI when the gateway's queue releases it
    const id = r.status === 200 ? r.json().prompt_id : null;
    const find = () => received(fake, /^\/prompt$/, 'POST').find((x) => !id || JSON.parse(x.bodyText!).prompt_id === id);
    const sent = id ? await eventually(find, 10_000, 'the prompt reaching ComfyUI') : find();
    return { r, forwarded: sent ? (JSON.parse(sent.bodyText!).prompt as Record<string, any>) : null };
  }

  it.each([
    [
      'WebcamCapture (a WEBCAM widget)',
      { class_type: 'WebcamCapture', inputs: { image: 'alice/pic.png', width: 0, height: 0, capture_on_queue: false } },
      'image',
    ],
    [
      'a custom picker with an upload flag and an unusual input name',
      { class_type: 'PhotoPicker', inputs: { photo: 'alice/pic.png' } },
      'photo',
    ],
    [
      'a custom picker listing the input folder without any flag',
      { class_type: 'FolderPicker', inputs: { picture: 'alice/pic.png' } },
      'picture',
    ],
  ])('%s: bob’s reference to alice’s file is read from his own folder instead', async (_n, node, input) => {
    const { forwarded } = await submit(env.bob, node);
    expect(forwarded!['20'].inputs[input]).toBe('bob/alice/pic.png');
    const own = await submit(env.bob, { ...node, inputs: { ...(node.inputs as object), [input]: 'bob/pic.png' } });
    expect(own.forwarded!['20'].inputs[input]).toBe('bob/pic.png');
  });

  it.each([
    ['WebcamCapture', { class_type: 'WebcamCapture', inputs: { image: ['30', 0], width: 0, height: 0, capture_on_queue: false } }],
    ['PhotoPicker', { class_type: 'PhotoPicker', inputs: { photo: ['30', 0] } }],
    ['FolderPicker', { class_type: 'FolderPicker', inputs: { picture: '../alice/pic.png' } }],
  ])('%s with a file name taken from another node, or leaving the folder → 400 PATH_NOT_ALLOWED, nothing queued', async (_n, node) => {
    const { r, forwarded } = await submit(env.bob, node, {
      '30': { class_type: 'CLIPTextEncode', inputs: { text: 'alice/pic.png', clip: ['4', 1] } },
    });
    expect([r.status, r.json().error.code, r.json().error.details.node]).toEqual([400, 'PATH_NOT_ALLOWED', '20']);
    expect(forwarded).toBeNull();
  });

  it('an output node with a save prefix (not called Save…) writes under output/<user>/', async () => {
    const { forwarded } = await submit(env.bob, { class_type: 'ExportFrames', inputs: { frames: ['8', 0], prefix: '../alice/frames' } });
    expect(forwarded).toBeNull();
    const ok = await submit(env.bob, { class_type: 'ExportFrames', inputs: { frames: ['8', 0], prefix: 'clips/frames' } });
    expect(ok.forwarded!['20'].inputs.prefix).toBe('bob/clips/frames');
  });

  it('a node that merely has "Load" in its name but no file input is left alone; schemas are asked once per class', async () => {
    fake.clearRequests();
    for (let i = 0; i < 3; i++)
      await postJson(env.gw, '/prompt', env.bob, {
        prompt: {
          ...sampleWorkflow('again'),
          '20': { class_type: 'PhotoPicker', inputs: { photo: 'bob/pic.png' } },
          '21': { class_type: 'PreviewImage', inputs: { images: ['20', 0] } },
        },
      });
    // asked before this test already (cached): no schema reads at all now
    expect(received(fake, /^\/object_info/)).toEqual([]);
    // CheckpointLoaderSimple has "Load" in its name and a model list, not a file of the input folder: untouched
    const { forwarded } = await submit(env.bob, { class_type: 'CheckpointLoaderSimple', inputs: { ckpt_name: 'fake_model.safetensors' } });
    expect(forwarded!['20'].inputs.ckpt_name).toBe('fake_model.safetensors');
  });

  it('/object_info shows bob only his own files in every file input, whatever the node is called', async () => {
    const oi = (await raw(env.gw, 'GET', '/object_info', { headers: env.bob.headers })).json();
    for (const [cls, input] of [
      ['LoadImage', 'image'],
      ['PhotoPicker', 'photo'],
      ['FolderPicker', 'picture'],
    ]) {
      const list = oi[cls].input.required[input][0] as string[];
      expect([cls, list.includes('bob/pic.png'), list.some((f) => f.startsWith('alice/'))]).toEqual([cls, true, false]);
    }
    expect(oi.WebcamCapture.input.required.image).toEqual(['WEBCAM', {}]);
    expect(fs.existsSync(path.join(fake.inputDir, 'alice', 'pic.png'))).toBe(true);
  });
});
