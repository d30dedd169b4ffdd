import fs from 'node:fs';
import path from 'node:path';
import { raw, startIsolationEnv, type IsolationEnv } from './isolation-env';

describe('the input folder is learned from ComfyUI when not configured', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv(); // no comfyui.input_dir / base_dir in the config
  });
  afterAll(() => env.close());

  test("a user's own files ComfyUI does not list (subfolder, unusual extension) appear in their LoadImage options only", async () => {
    fs.mkdirSync(path.join(env.fake.inputDir, 'bob'), { recursive: true });
    fs.writeFileSync(path.join(env.fake.inputDir, 'bob', 'photo.jfif'), 'x');
    const options = async (who: typeof env.bob) => {
      const r = await raw(env.gw, 'GET', '/api/object_info/LoadImage', { headers: who.headers });
      expect(r.status).toBe(200);
      return r.json().LoadImage.input.required.image[0] as string[];
    };
    expect(await options(env.bob)).toContain('bob/photo.jfif');
    expect(await options(env.alice)).not.toContain('bob/photo.jfif');
  });
});
