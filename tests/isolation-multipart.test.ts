/** The multipart rewriter of uploads on its own (issue 5; issue 9: the header grammar shared with aiohttp). */
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import { AppError } from '../gateway/errors';
import { formDataBoundary, multipartRewriter, parseDisposition } from '../gateway/proxy/isolation/multipart';
import { splitUserPath, underUser } from '../gateway/proxy/isolation/paths';

const code = (f: () => unknown): string | null => {
  try {
    f();
    return null;
  } catch (e) {
    return e instanceof AppError ? e.code : String(e);
  }
};

describe('multipart rewriter', () => {
  const B = 'XyZ-boundary-123';
  const file = crypto.randomBytes(200_000);
  const body = Buffer.concat([
    Buffer.from(`preamble junk\r\n--${B}\r\nContent-Disposition: form-data; name="type"\r\n\r\ninput\r\n`),
    Buffer.from(`--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n`),
    file,
    Buffer.from(
      `\r\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain; charset="UTF-8"\r\n\r\nsub/dir\r\n`,
    ),
    Buffer.from(`--${B}--\r\nepilogue`),
  ]);
  const rules = (extra: Partial<Parameters<typeof multipartRewriter>[0]> = {}) => ({
    boundary: B,
    fields: { subfolder: (v: string) => underUser('alice', splitUserPath(v)).join('/'), type: (v: string) => v },
    ensure: { subfolder: () => 'alice' },
    files: {
      image: (n: string) => {
        if (splitUserPath(n).length !== 1) throw new AppError(400, 'PATH_NOT_ALLOWED', 'dir');
      },
    },
    ...extra,
  });
  async function run(input: Buffer, chunk: (i: number) => number, r = rules()): Promise<Buffer> {
    const pieces: Buffer[] = [];
    for (let i = 0, n = 0; i < input.length; n++) {
      const len = Math.max(1, chunk(n));
      pieces.push(input.subarray(i, i + len));
      i += len;
    }
    const out: Buffer[] = [];
    const t = Readable.from(pieces).pipe(multipartRewriter(r));
    for await (const c of t) out.push(c as Buffer);
    return Buffer.concat(out);
  }

  it('gives the same output however the body is chunked', async () => {
    const whole = await run(body, () => body.length);
    expect(whole.toString('latin1')).toContain(
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nalice/sub/dir\r\n--${B}--\r\n`,
    );
    expect(whole.toString('latin1')).not.toContain('charset');
    expect(whole.toString('latin1')).not.toContain('preamble');
    expect(whole.toString('latin1')).not.toContain('epilogue');
    expect(whole.includes(file)).toBe(true);
    expect(await run(body, () => 1 + crypto.randomInt(70))).toEqual(whole);
    expect(await run(body, () => 4096)).toEqual(whole);
    // byte by byte, on a body small enough for it: boundaries split at every possible offset
    const small = Buffer.concat([body.subarray(0, 200), body.subarray(body.length - 200)]);
    expect(await run(small, () => 1)).toEqual(await run(small, () => small.length));
    const truncated = await run(body.subarray(0, body.length - 400), () => 1000).catch((e) => e);
    expect(truncated).toBeInstanceOf(AppError);
  });

  it('adds the subfolder when the body has none', async () => {
    const b = Buffer.from(`--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nPNG\r\n--${B}--\r\n`);
    const out = (await run(b, () => 3)).toString();
    expect(out).toBe(
      `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nPNG\r\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nalice\r\n--${B}--\r\n`,
    );
  });

  it.each([
    [
      'a bare boundary inside a part',
      `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nxx\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n../x\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    ['a truncated body', `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nxx`, 'INVALID_BODY'],
    ['name*', `--${B}\r\nContent-Disposition: form-data; name*=UTF-8''subfolder\r\n\r\n../x\r\n--${B}--\r\n`, 'INVALID_BODY'],
    [
      'two dispositions',
      `--${B}\r\nContent-Disposition: form-data; name="x"\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n../x\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    ['a folded header', `--${B}\r\nContent-Disposition: form-data;\r\n name="subfolder"\r\n\r\n../x\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a part without headers', `--${B}\r\n\r\n../x\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a bad subfolder', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n../x\r\n--${B}--\r\n`, 'PATH_NOT_ALLOWED'],
    [
      'a directory in the file name',
      `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a/b.png"\r\n\r\nx\r\n--${B}--\r\n`,
      'PATH_NOT_ALLOWED',
    ],
    [
      'a _charset_ part',
      `--${B}\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\nutf-7\r\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'a utf-7 part charset',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain; charset=utf-7\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'a quoted, upper-case utf-7 part charset',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain; CHARSET = "UTF-7"\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'a second charset after utf-8',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain; charset=utf-8; charset=utf-7\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'a charset on the file part',
      `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png; charset=utf-16\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'base64 transfer encoding',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Transfer-Encoding: base64\r\n\r\nLi4vYm9i\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'quoted-printable transfer encoding',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\ncontent-transfer-encoding: Quoted-Printable\r\n\r\n=2E=2E/bob\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      '7bit transfer encoding on the file',
      `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'another part header',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Encoding: gzip\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'two content types',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain\r\nContent-Type: text/plain; charset=utf-7\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    ['an unknown field', `--${B}\r\nContent-Disposition: form-data; name="comfy_user"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a field name in another case', `--${B}\r\nContent-Disposition: form-data; name="Subfolder"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    [
      'a duplicate field',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nx\r\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\ny\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'a duplicate file',
      `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nx\r\n--${B}\r\nContent-Disposition: form-data; name="image"; filename="b.png"\r\n\r\ny\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'a field sent as a file',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"; filename="x"\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    ['a file sent as a field', `--${B}\r\nContent-Disposition: form-data; name="image"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['an empty file name', `--${B}\r\nContent-Disposition: form-data; name="image"; filename=""\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    [
      'name*0 continuation',
      `--${B}\r\nContent-Disposition: form-data; name*0="sub"; name*1="folder"\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'an unquoted non-token value',
      `--${B}\r\nContent-Disposition: form-data; name="image"; filename=a/b.png\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'a non-ASCII parameter name',
      `--${B}\r\nContent-Disposition: form-data; \u212Aey="x"; name="subfolder"\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'two semicolons in a quoted value',
      `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a;b;c.png"\r\n\r\nx\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
    [
      'an oversized subfolder',
      `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n${'a'.repeat(70_000)}\r\n--${B}--\r\n`,
      'INVALID_BODY',
    ],
  ])('refuses %s', async (_n, text, expected) => {
    const err = await run(Buffer.from(text), () => 7).catch((e) => e);
    expect(err).toBeInstanceOf(AppError);
    expect((err as AppError).code).toBe(expected);
  });

  it('parses Content-Type boundaries and dispositions strictly', () => {
    expect(formDataBoundary('multipart/form-data; boundary=abc')).toBe('abc');
    expect(formDataBoundary('multipart/form-data; boundary="a b:c"')).toBe('a b:c');
    expect(formDataBoundary('multipart/form-data; boundary=a; boundary=b')).toBeNull();
    expect(formDataBoundary('multipart/mixed; boundary=a')).toBeNull();
    expect(formDataBoundary('application/json')).toBeNull();
    expect(formDataBoundary('multipart/form-data; charset=utf-8; boundary=a')).toBe('a');
    expect(formDataBoundary('multipart/form-data; charset=utf-7; boundary=a')).toBeNull();
    expect(parseDisposition('form-data; name="a;b"; filename="x.png"')).toEqual({ name: 'a;b', filename: 'x.png' });
    expect(code(() => parseDisposition('form-data; name="a"; NAME="b"'))).toBe('INVALID_BODY');
    expect(code(() => parseDisposition('attachment; name="a"'))).toBe('INVALID_BODY');
  });
});
