/** Multipart upload attacks of issue 9 (`_charset_`, part charsets, transfer encodings, RFC 5987), shared by the fast and the real-ComfyUI suites. */
import fs from 'node:fs';
import path from 'node:path';
import { makePng } from './png';

/** alice's file, and the bytes bob tries to put in its place */
export const ALICE_PNG = makePng({ color: [200, 10, 10] });
export const BOB_PNG = makePng({ color: [1, 2, 3] });
/** the boundary of every body built here */
export const B = 'cgwCharsetBoundary42';

/** One part: its header lines and its body. */
export type Part = [string[], Buffer | string];
/** A plain field part. */
export const field = (name: string, value: string, headers: string[] = []): Part => [
  [`Content-Disposition: form-data; name="${name}"`, ...headers],
  value,
];
/** A file part. */
export const file = (
  name = 'image',
  filename = 'secret.png',
  data: Buffer = BOB_PNG,
  headers: string[] = ['Content-Type: image/png'],
): Part => [[`Content-Disposition: form-data; name="${name}"; filename="${filename}"`, ...headers], data];
/** A whole multipart body with boundary B. */
export function body(parts: Part[]): Buffer {
  const out: Buffer[] = [];
  for (const [h, v] of parts) out.push(Buffer.from(`--${B}\r\n${h.join('\r\n')}\r\n\r\n`, 'utf8'), Buffer.from(v), Buffer.from('\r\n'));
  out.push(Buffer.from(`--${B}--\r\n`));
  return Buffer.concat(out);
}

/**
 * The same body framed for aiohttp 3.14's `_charset_` handling, which reads the charset part and then parses the
 * next part's headers without skipping a boundary line: the delimiter after a leading `_charset_` part becomes a
 * header line of the next part (`--B-x: y`). Older aiohttp read the plain framing; the gateway must refuse both.
 */
export function bodyForAiohttp314(parts: Part[]): Buffer {
  const b = body(parts);
  if (!/name="_charset_"/.test(parts[0][0][0])) return b;
  const delim = Buffer.from(`\r\n--${B}\r\n`);
  const at = b.indexOf(delim);
  return Buffer.concat([b.subarray(0, at), Buffer.from(`\r\n--${B}-x: y\r\n`), b.subarray(at + delim.length)]);
}

/** Every file under `dir`, relative, sorted ('' when it does not exist). */
export function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    if (!fs.existsSync(d)) return;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name), rel ? `${rel}/${e.name}` : e.name);
      else out.push(rel ? `${rel}/${e.name}` : e.name);
    }
  };
  walk(dir, '');
  return out.sort();
}

/**
 * The upload attacks: name, route, parts, the file of alice's each overwrites on the fake. The parts are made for a
 * subfolder prefix: '' as the attacker sends them to the gateway, 'bob/' as the gateway used to forward them.
 * UTF-7 spellings are written out by hand: `+AC4ALg-` is "..".
 */
export const ATTACKS: [string, string, (p: string) => Part[], string][] = [
  [
    '_charset_=utf-7 subfolder (the reported one)',
    '/upload/image',
    (p) => [field('_charset_', 'utf-7'), file(), field('subfolder', `${p}+AC4ALg-/alice`), field('overwrite', 'true')],
    'input/alice/secret.png',
  ],
  [
    '_charset_=utf-7 with type=output',
    '/api/upload/image',
    (p) => [
      field('_charset_', 'UTF-7'),
      file(),
      field('subfolder', `${p}+AC4ALg-/alice`),
      field('type', 'output'),
      field('overwrite', 'true'),
    ],
    'output/alice/secret.png',
  ],
  [
    'part charset=utf-7 on the subfolder',
    '/upload/image',
    (p) => [file(), field('subfolder', `${p}+AC4ALg-/alice`, ['Content-Type: text/plain; charset=utf-7']), field('overwrite', 'true')],
    'input/alice/secret.png',
  ],
  [
    'part charset spelled CHARSET="UTF-7"',
    '/api/upload/image',
    (p) => [file(), field('subfolder', `${p}+AC4ALg-/alice`, ['content-type: text/plain; CHARSET = "UTF-7"']), field('overwrite', '1')],
    'input/alice/secret.png',
  ],
  [
    'base64 transfer encoding',
    '/upload/image',
    (p) => [
      file(),
      field('subfolder', Buffer.from(`${p}../alice`).toString('base64'), ['Content-Transfer-Encoding: base64']),
      field('overwrite', 'true'),
    ],
    'input/alice/secret.png',
  ],
  [
    'quoted-printable transfer encoding',
    '/api/upload/image',
    (p) => [file(), field('subfolder', `${p}=2E=2E/alice`, ['Content-Transfer-Encoding: quoted-printable']), field('overwrite', 'true')],
    'input/alice/secret.png',
  ],
  [
    'RFC 5987 name* wins over name',
    '/upload/image',
    (p) => [file(), [[`Content-Disposition: form-data; name="note"; name*=utf-8''subfolder`], `${p}../alice`], field('overwrite', 'true')],
    'input/alice/secret.png',
  ],
  [
    'RFC 5987 filename* in UTF-7',
    '/upload/image',
    (p) => [
      [
        [
          `Content-Disposition: form-data; name="image"; filename="x.png"; filename*=utf-7''+AC4ALg-%2Falice%2Fsecret.png`,
          'Content-Type: image/png',
        ],
        BOB_PNG,
      ],
      field('overwrite', 'true'),
      ...(p ? [field('subfolder', 'bob')] : []),
    ],
    'input/alice/secret.png',
  ],
];

/**
 * A mask reference that names bob's own file as JSON, and alice's once decoded as UTF-7: the `note` string hides
 * `","subfolder":"alice` (`+ACI-` is a double quote), and Python's json keeps the last `subfolder`.
 */
export const MASK_REF_UTF7 = '{"filename":"secret.png","type":"input","subfolder":"bob","note":"+ACI-,+ACI-subfolder+ACI-:+ACI-alice"}';
