/**
 * Issue 10 items 2-4 against both real servers: the gateway learns the server it stands in front of (one log
 * line), users' uploads appear in their LoadImage list, and /system_stats answers every user (redacted).
 */
import { adminAndUser, login, registerUser } from '../helpers/auth';
import { flushedLogs } from '../helpers/gateway';
import { makePng } from '../helpers/png';
import { TEST_KEY, TREES, startGatewayFor, startRealComfy, useRealStack } from './realComfy';

const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });

async function upload(url: string, token: string, name: string): Promise<Response> {
  const form = new FormData();
  form.append('image', new Blob([new Uint8Array(makePng({ width: 8, height: 8 }))], { type: 'image/png' }), name);
  return fetch(`${url}/upload/image`, { method: 'POST', headers: bearer(token), body: form });
}

describe.each(TREES)('real ComfyUI %s: knowing the server, uploads, /system_stats', (tree) => {
  const stack = useRealStack(tree);
  let alice: { token: string };
  let bob: { token: string };
  beforeAll(async () => {
    ({ user: alice } = await adminAndUser(stack.gw, 'alice'));
    await registerUser(stack.gw, 'bob');
    bob = await login(stack.gw, 'bob');
  });

  test('one clear line names the version, multi-user, /internal/folder_paths, prompt ids and the input folder', async () => {
    const lines = (await flushedLogs(stack.gw)).filter((l) => String(l.msg).startsWith('ComfyUI at '));
    expect(lines).toHaveLength(1);
    const msg = String(lines[0].msg);
    expect(msg).toContain(tree === '0.3.44' ? 'version 0.3.44' : 'version unknown');
    expect(msg).toContain(tree === '0.3.44' ? '/internal/folder_paths present' : '/internal/folder_paths absent');
    expect(msg).toContain('multi-user OFF');
    // 0.3.44 reports its command line (--input-directory); 7914c47 reports nothing the folder can be learned from.
    if (tree === '0.3.44') expect(msg).toContain(`input folder ${stack.comfy.inputDir} (from argv)`);
    else expect(msg).toContain('input folder unknown');
    expect((await flushedLogs(stack.gw)).filter((l) => String(l.msg).includes('bypasses the gateway'))).toEqual([]);
  });

  test("a user's upload appears in their own LoadImage list and nobody else's", async () => {
    const name = `up-${tree}-${Date.now()}.png`;
    const up = await upload(stack.gw.url, alice.token, name);
    expect(up.status).toBe(200);
    const answer = (await up.json()) as { name: string; subfolder: string };
    expect(answer.subfolder).toBe('alice');
    const list = async (token: string) => {
      const j = (await (await fetch(`${stack.gw.url}/object_info/LoadImage`, { headers: bearer(token) })).json()) as any;
      return j.LoadImage.input.required.image[0] as string[];
    };
    expect(await list(alice.token)).toContain(`alice/${answer.name}`);
    expect((await list(bob.token)).some((f) => f.includes(answer.name))).toBe(false);
    // and it loads: a prompt that reads it runs
    const res = await fetch(`${stack.gw.url}/prompt`, {
      method: 'POST',
      headers: { ...bearer(alice.token), 'content-type': 'application/json' },
      body: JSON.stringify({
        prompt: {
          '1': { class_type: 'LoadImage', inputs: { image: answer.name } },
          '2': { class_type: 'SaveImage', inputs: { images: ['1', 0], filename_prefix: 'loaded' } },
        },
      }),
    });
    expect(res.status).toBe(200);
  });

  test('/system_stats: a user gets a redacted copy, an admin the full one', async () => {
    const r = await fetch(`${stack.gw.url}/system_stats`, { headers: bearer(alice.token) });
    expect(r.status).toBe(200);
    const text = await r.text();
    const j = JSON.parse(text);
    expect(j.devices[0].name).toBe('cpu');
    expect(typeof j.system.python_version).toBe('string');
    expect(text).not.toContain('argv');
    expect(text).not.toContain(stack.comfy.dataDir);
    if (tree === '0.3.44') expect(j.system.comfyui_version).toBe('0.3.44');
    const full = (await (await fetch(`${stack.gw.url}/system_stats`, { headers: { 'X-API-Key': TEST_KEY } })).json()) as any;
    if (tree === '0.3.44') expect(full.system.argv).toContain(stack.comfy.inputDir);
    expect(full.devices[0].name).toBe('cpu');
  });
});

test('0.3.44 listening on every address: the gateway warns loudly that it can be reached around it', async () => {
  const comfy = await startRealComfy('0.3.44', ['--listen', '0.0.0.0']);
  try {
    const gw = await startGatewayFor(comfy);
    try {
      const warn = (await flushedLogs(gw)).filter((l) => String(l.msg).includes('bypasses the gateway'));
      expect(warn).toHaveLength(1);
      expect(warn[0].level).toBe(40);
      expect(String(warn[0].msg)).toContain('0.0.0.0');
    } finally {
      await gw.close();
    }
  } finally {
    await comfy.stop();
  }
});
