/** The harness itself: each real server starts, answers through the gateway, and its whole process group stops. */
import { TREES, startRealComfy, startGatewayFor, TEST_KEY } from './realComfy';

describe.each(TREES)('real ComfyUI %s harness', (tree) => {
  test('starts, answers through a gateway with the static key, refuses without it, and stops its process group', async () => {
    const comfy = await startRealComfy(tree);
    let pgid = 0;
    try {
      pgid = comfy.proc.pid!;
      const gw = await startGatewayFor(comfy);
      try {
        const ok = await fetch(`${gw.url}/object_info/EmptyImage`, { headers: { 'X-API-Key': TEST_KEY } });
        expect(ok.status).toBe(200);
        expect(Object.keys((await ok.json()) as object)).toEqual(['EmptyImage']);
        const refused = await fetch(`${gw.url}/object_info/EmptyImage`);
        expect(refused.status).toBe(401);
      } finally {
        await gw.close();
      }
    } finally {
      await comfy.stop();
    }
    // kill(-pgid, 0) throws ESRCH once no process of the group is left
    expect(() => process.kill(-pgid, 0)).toThrow();
    await expect(fetch(`${comfy.url}/system_stats`)).rejects.toThrow();
  });
});
