import crypto from 'node:crypto';
import type { Logger } from '../log';
import type { SharedRedis } from '../store/redis';
import type { IpLists, IpListsSnapshot } from './ipLists';

const CHANNEL = 'ip-lists';

/**
 * Keeps the IP lists of several replicas the same: a change made through one (the admin API's PUT, an automatic
 * blacklisting) is published on Redis and written into every other replica's own files, where it applies at once.
 * Hand edits of a replica's files stay that replica's (make them through the API to reach all).
 */
export function syncIpLists(inner: IpLists, deps: { redis: SharedRedis; logger: Logger }): IpLists {
  const origin = crypto.randomUUID();
  const publish = (snapshot: IpListsSnapshot) =>
    void deps.redis.publish(CHANNEL, JSON.stringify({ origin, ...snapshot })).then((ok) => {
      if (!ok) deps.logger.error('could not share an IP-list change with the other replicas (Redis unreachable)');
    });
  // One at a time, in arrival order: two quick changes elsewhere must land here in their order.
  let applying: Promise<unknown> = Promise.resolve();
  deps.redis.subscribe(CHANNEL, (m) => {
    let msg: { origin?: string } & Partial<IpListsSnapshot>;
    try {
      msg = JSON.parse(m) as typeof msg;
    } catch {
      return;
    }
    if (msg.origin === origin || !Array.isArray(msg.whitelist) || !Array.isArray(msg.blacklist)) return;
    const next = { whitelist: msg.whitelist, blacklist: msg.blacklist };
    applying = applying
      .then(() => inner.replace(next))
      .then(() =>
        deps.logger.info(
          { whitelist: next.whitelist.length, blacklist: next.blacklist.length },
          'IP lists changed on another replica; applied',
        ),
      )
      .catch((err: Error) => deps.logger.error({ err: err.message }, 'an IP-list change from another replica could not be applied'));
  });
  return {
    ...inner,
    async replace(next, keep) {
      const out = await inner.replace(next, keep);
      publish(out);
      return out;
    },
    async appendToBlacklist(entry, comment) {
      const added = await inner.appendToBlacklist(entry, comment);
      if (added) publish(inner.get());
      return added;
    },
  };
}
