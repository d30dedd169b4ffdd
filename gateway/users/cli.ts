#!/usr/bin/env node
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createPasswords } from '../auth/passwords';
import { ConfigError, loadConfig } from '../config/load';
import { AppError } from '../errors';
import { emailProblem, passwordProblem, usernameProblem } from './rules';
import { openStores, type Stores } from '../store/compose';
import { UserStoreError } from './store';

const USAGE = `usage: comfyui-gateway users <command> [--config FILE] [--data-dir DIR]   (or: npm run users -- <command> ...)
  add NAME [--admin] [--email ADDR]
                         create a user (password read from stdin)
  email NAME ADDR|-      set (or with - clear) the email a Cloudflare Access identity binds to
  list                   list users
  remove NAME            delete a user and their tokens
  passwd NAME            set a user's password (read from stdin); signs them out everywhere
  role NAME admin|user   change a user's role
--config defaults to ./config.json when it exists. Exit codes: 0 done, 1 refused (e.g. LAST_ADMIN, NOT_FOUND),
2 usage or configuration error.`;

/** A usage or validation problem: printed without a stack, exit code 2. */
class UsageError extends Error {}

/** Reads a password: a hidden prompt (asked twice) on a terminal, else the first line of stdin. */
async function readPassword(input: NodeJS.ReadStream, err: NodeJS.WriteStream): Promise<string> {
  if (input.isTTY) {
    const first = await promptHidden(input, err, 'Password: ');
    const again = await promptHidden(input, err, 'Repeat password: ');
    if (first !== again) throw new UsageError('passwords do not match');
    return first;
  }
  const chunks: Buffer[] = [];
  for await (const c of input) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  return Buffer.concat(chunks).toString('utf8').split(/\r?\n/)[0];
}

function promptHidden(input: NodeJS.ReadStream, err: NodeJS.WriteStream, label: string): Promise<string> {
  return new Promise((resolve, reject) => {
    err.write(label);
    let value = '';
    input.setRawMode(true);
    input.resume();
    const onData = (d: Buffer) => {
      for (const ch of d.toString('utf8')) {
        if (ch === '\r' || ch === '\n') {
          done();
          return resolve(value);
        }
        if (ch === '\u0003') {
          done();
          return reject(new UsageError('cancelled'));
        }
        if (ch === '\u007f' || ch === '\b') value = [...value].slice(0, -1).join('');
        else value += ch;
      }
    };
    const done = () => {
      input.off('data', onData);
      input.setRawMode(false);
      input.pause();
      err.write('\n');
    };
    input.on('data', onData);
  });
}

/** Runs one users CLI command against the same users_db.json the gateway uses; returns the exit code. */
export async function runUsersCli(
  argv: string[],
  io: { stdin: NodeJS.ReadStream; stdout: NodeJS.WriteStream; stderr: NodeJS.WriteStream; cwd: string; env: NodeJS.ProcessEnv },
): Promise<number> {
  const { stdout, stderr } = io;
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      tokens: true,
      options: {
        config: { type: 'string' },
        'data-dir': { type: 'string' },
        admin: { type: 'boolean' },
        email: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    // as for the gateway: a repeated option is an error, not "last one wins"
    const names = parsed.tokens.flatMap((t) => (t.kind === 'option' ? [t.name] : []));
    const repeated = names.find((n, i) => names.indexOf(n) !== i);
    if (repeated) throw new Error(`--${repeated} given more than once`);
  } catch (e) {
    stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [cmd, name, extra, ...rest] = positionals;
  if (values.help || !cmd) {
    (values.help ? stdout : stderr).write(USAGE + '\n');
    return values.help ? 0 : 2;
  }

  let stores: Stores | undefined;
  try {
    // --config defaults to ./config.json when it exists, like `npm start`; without one the defaults apply.
    const configArgs: string[] = [];
    const configFile = values.config ?? (fs.existsSync(path.join(io.cwd, 'config.json')) ? 'config.json' : undefined);
    if (configFile) configArgs.push('--config', configFile);
    if (values['data-dir']) configArgs.push('--data-dir', values['data-dir']);
    const config = loadConfig(configArgs, io.env, io.cwd);

    const needName = () => {
      if (!name) throw new UsageError(`${cmd} needs a user name\n${USAGE}`);
      return name;
    };
    const expectArgs = (n: number) => {
      if ([name, extra, ...rest].filter((x) => x !== undefined).length > n) throw new UsageError(`too many arguments\n${USAGE}`);
    };
    if (values.admin && cmd !== 'add') throw new UsageError('--admin only applies to add');
    if (values.email !== undefined && cmd !== 'add') throw new UsageError('--email only applies to add');
    if (values.email !== undefined && emailProblem(values.email)) throw new UsageError(`email ${emailProblem(values.email)}`);
    if (!['add', 'list', 'remove', 'passwd', 'role', 'email'].includes(cmd)) throw new UsageError(`unknown command ${cmd}\n${USAGE}`);

    // The same records the gateway uses: users_db.json, or the PostgreSQL store of several replicas.
    stores = await openStores({ config, env: io.env, needHfKey: false });
    const store = stores.users;
    const passwords = createPasswords(config.bcrypt_cost);
    const newPassword = async () => {
      const pw = await readPassword(io.stdin, stderr);
      const problem = passwordProblem(pw);
      if (problem) throw new UsageError(`password ${problem}`);
      return passwords.hash(pw);
    };

    switch (cmd) {
      case 'add': {
        expectArgs(1);
        const u = needName();
        const problem = usernameProblem(u);
        if (problem) throw new UsageError(`user name ${problem}`);
        if (store.get(u)) throw new UsageError(`user ${u} already exists`);
        if (values.email !== undefined && store.byEmail(values.email))
          throw new UsageError(`another account already has the email ${values.email}`);
        const rec = await store.create({
          username: u,
          password_hash: await newPassword(),
          role: values.admin ? 'admin' : 'user',
          email: values.email ?? null,
        });
        stdout.write(`added ${rec.username} (${rec.role})\n`);
        break;
      }
      case 'list': {
        expectArgs(0);
        const users = store.list();
        if (!users.length) stdout.write('no users\n');
        for (const u of users)
          stdout.write(
            `${u.username}\t${u.role}\t${u.disabled ? 'disabled' : 'enabled'}\t${u.permissions.join(',') || '-'}\t${u.created_at}\t${u.email ?? '-'}\n`,
          );
        break;
      }
      case 'remove': {
        expectArgs(1);
        await store.remove(needName());
        stdout.write(`removed ${name}\n`);
        break;
      }
      case 'passwd': {
        expectArgs(1);
        const u = needName();
        if (!store.get(u)) throw new UsageError(`no user ${u}`);
        await store.update(u, { password_hash: await newPassword() });
        stdout.write(`password changed for ${u}; their sessions and tokens were revoked\n`);
        break;
      }
      case 'email': {
        expectArgs(2);
        const u = needName();
        if (extra === undefined) throw new UsageError(`email needs an address (or - to clear)\n${USAGE}`);
        if (extra !== '-' && emailProblem(extra)) throw new UsageError(`email ${emailProblem(extra)}`);
        const rec = await store.update(u, { email: extra === '-' ? null : extra });
        stdout.write(rec.email ? `${rec.username} has the email ${rec.email}\n` : `${rec.username} has no email\n`);
        break;
      }
      case 'role': {
        expectArgs(2);
        const u = needName();
        if (extra !== 'admin' && extra !== 'user') throw new UsageError(`role must be admin or user\n${USAGE}`);
        const rec = await store.update(u, { role: extra });
        stdout.write(`${rec.username} is now ${rec.role}\n`);
        break;
      }
    }
    await stores.close();
    return 0;
  } catch (e) {
    await stores?.close().catch(() => undefined);
    if (e instanceof UsageError || e instanceof ConfigError || e instanceof UserStoreError) {
      stderr.write(`users: ${e.message}\n`);
      return 2;
    }
    if (e instanceof AppError) {
      stderr.write(`users: ${e.message} (${e.code})\n`);
      return 1;
    }
    throw e;
  }
}

if (require.main === module) {
  runUsersCli(process.argv.slice(2), {
    stdin: process.stdin,
    stdout: process.stdout,
    stderr: process.stderr,
    cwd: process.cwd(),
    env: process.env,
  }).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`users: ${(err as Error).stack ?? err}\n`);
      process.exit(1);
    },
  );
}
