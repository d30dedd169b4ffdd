import { sampleWorkflow } from './helpers/fakeComfy';
import { promptReached } from './helpers/queue';
import { postJson, startIsolationEnv, type IsolationEnv } from './isolation-env';

describe('the shared queue', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv();
  });
  afterAll(() => env.close());

  test('a user cannot jump ahead with front or a chosen number; an admin can', async () => {
    const bob = await postJson(env.gw, '/api/prompt', env.bob, { prompt: sampleWorkflow('fair'), front: true, number: -1000 });
    expect(bob.status).toBe(200);
    const bobEntry = await promptReached(env.fake, bob.json().prompt_id);
    expect(bobEntry.number).toBeGreaterThanOrEqual(0);
    const admin = await postJson(env.gw, '/api/prompt', env.admin, { prompt: sampleWorkflow('urgent'), number: -1000 });
    expect(admin.status).toBe(200);
    // held by the gateway while bob's runs, then released with the admin's number
    expect((await promptReached(env.fake, admin.json().prompt_id)).number).toBe(-1000);
  });
});
