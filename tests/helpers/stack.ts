import { startFakeComfy, type FakeComfy } from './fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './gateway';

/** A fake ComfyUI and a real gateway in front of it (static key TEST_KEY), for the enclosing describe block. */
export interface Stack {
  fake: FakeComfy;
  gw: TestGateway;
  /** the gateway's ws:// base */
  wsUrl(path: string): string;
}

/** Starts the stack before the block's tests and stops it after them; `config` overrides the gateway's config. */
export function useStack(config: Record<string, unknown> = {}): Stack {
  const stack = {
    wsUrl: (path: string) => stack.gw.url.replace(/^http/, 'ws') + path,
  } as Stack;
  beforeAll(async () => {
    stack.fake = await startFakeComfy();
    stack.gw = await startGateway({ upstream: stack.fake.url, api_key: TEST_KEY, ...config });
  });
  afterAll(async () => {
    await stack.gw?.close();
    await stack.fake?.close();
  });
  return stack;
}
