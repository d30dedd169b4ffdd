/**
 * Tiny, dependency-free PNG encoder/decoder-of-chunks for tests.
 *
 * `makePng()` produces a real, valid PNG (8-bit RGB, filter 0 scanlines, zlib IDAT, correct CRC32s),
 * optionally with tEXt chunks (ComfyUI's SaveImage embeds `prompt` / `workflow` this way).
 */
import * as zlib from 'node:zlib';

export const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const CRC_TABLE: Uint32Array = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO-HDLC, as used by PNG and zlib). */
export function crc32(...bufs: Buffer[]): number {
  let c = 0xffffffff;
  for (const buf of bufs) {
    for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length, 0);
  const typeBuf = Buffer.from(type, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(typeBuf, data), 0);
  return Buffer.concat([len, typeBuf, data, crc]);
}

export interface MakePngOptions {
  width?: number; // default 2
  height?: number; // default 2
  /** solid colour, or a function of (x, y). Default: a 2x2-ish red/green/blue/white pattern. */
  color?: [number, number, number] | ((x: number, y: number) => [number, number, number]);
  /** tEXt chunks (keyword -> latin1 text), written before IDAT. */
  text?: Record<string, string>;
}

const PATTERN: [number, number, number][] = [
  [255, 0, 0],
  [0, 255, 0],
  [0, 0, 255],
  [255, 255, 255],
];

/** Encode a real PNG image (RGB, 8 bits per channel). */
export function makePng(opts: MakePngOptions = {}): Buffer {
  const width = Math.max(1, Math.floor(opts.width ?? 2));
  const height = Math.max(1, Math.floor(opts.height ?? 2));
  const color = opts.color;
  const pick = (x: number, y: number): [number, number, number] => {
    if (typeof color === 'function') return color(x, y);
    if (color) return color;
    return PATTERN[((y & 1) << 1) | (x & 1)];
  };
  const stride = width * 3 + 1;
  const raw = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    raw[y * stride] = 0; // filter type: None
    for (let x = 0; x < width; x++) {
      const [r, g, b] = pick(x, y);
      const o = y * stride + 1 + x * 3;
      raw[o] = r & 0xff;
      raw[o + 1] = g & 0xff;
      raw[o + 2] = b & 0xff;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // colour type: truecolour (RGB)
  ihdr[10] = 0; // compression
  ihdr[11] = 0; // filter
  ihdr[12] = 0; // interlace
  const parts: Buffer[] = [PNG_SIGNATURE, chunk('IHDR', ihdr)];
  for (const [k, v] of Object.entries(opts.text ?? {})) {
    parts.push(chunk('tEXt', Buffer.concat([Buffer.from(k, 'latin1'), Buffer.from([0]), Buffer.from(v, 'latin1')])));
  }
  parts.push(chunk('IDAT', zlib.deflateSync(raw)));
  parts.push(chunk('IEND', Buffer.alloc(0)));
  return Buffer.concat(parts);
}

export interface PngChunk {
  type: string;
  data: Buffer;
  crcOk: boolean;
}

/** True when `buf` starts with the PNG signature. */
export function isPng(buf: Buffer): boolean {
  return buf.length >= 8 && buf.subarray(0, 8).equals(PNG_SIGNATURE);
}

/** Split a PNG into chunks (checks CRCs). Throws on a truncated file or a missing signature. */
export function parsePngChunks(buf: Buffer): PngChunk[] {
  if (!isPng(buf)) throw new Error('not a PNG (bad signature)');
  const out: PngChunk[] = [];
  let o = 8;
  while (o < buf.length) {
    if (o + 12 > buf.length) throw new Error('truncated PNG chunk header');
    const len = buf.readUInt32BE(o);
    const type = buf.toString('latin1', o + 4, o + 8);
    if (o + 12 + len > buf.length) throw new Error(`truncated PNG chunk ${type}`);
    const data = buf.subarray(o + 8, o + 8 + len);
    const crc = buf.readUInt32BE(o + 8 + len);
    out.push({ type, data, crcOk: crc === crc32(buf.subarray(o + 4, o + 8), data) });
    o += 12 + len;
    if (type === 'IEND') break;
  }
  return out;
}

/** Validate a PNG fully: signature, every CRC, IHDR first, IEND last, IDAT inflates to the right size. */
export function validatePng(buf: Buffer): { width: number; height: number; text: Record<string, string> } {
  const chunks = parsePngChunks(buf);
  if (chunks.length < 3 || chunks[0].type !== 'IHDR') throw new Error('IHDR must come first');
  if (chunks[chunks.length - 1].type !== 'IEND') throw new Error('IEND must come last');
  for (const c of chunks) if (!c.crcOk) throw new Error(`bad CRC in ${c.type}`);
  const ihdr = chunks[0].data;
  const width = ihdr.readUInt32BE(0);
  const height = ihdr.readUInt32BE(4);
  const text: Record<string, string> = {};
  for (const c of chunks) {
    if (c.type !== 'tEXt') continue;
    const z = c.data.indexOf(0);
    text[c.data.toString('latin1', 0, z)] = c.data.toString('latin1', z + 1);
  }
  const idat = Buffer.concat(chunks.filter((c) => c.type === 'IDAT').map((c) => c.data));
  const raw = zlib.inflateSync(idat);
  if (ihdr[8] === 8 && ihdr[9] === 2 && raw.length !== height * (width * 3 + 1)) {
    throw new Error('IDAT size does not match IHDR');
  }
  return { width, height, text };
}
