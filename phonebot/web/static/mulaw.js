// G.711 mu-law, bit for bit as Python's audioop does it (and so phonebot's codec, and the phone
// network): a 16-bit sample keeps its top 14 bits, and is companded to 8. Tables, built once.

const CLIP = 8159;
const SEGMENT_ENDS = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

function encode14(sample) {
  // audioop's st_14linear2ulaw: sign, clipped magnitude plus bias, segment, 4 bits within it.
  let magnitude = sample;
  let mask = 0xff;
  if (magnitude < 0) {
    magnitude = -magnitude;
    mask = 0x7f;
  }
  magnitude = Math.min(magnitude, CLIP) + (0x84 >> 2);
  const segment = SEGMENT_ENDS.findIndex((end) => magnitude <= end);
  if (segment < 0) return 0x7f ^ mask;
  return ((segment << 4) | ((magnitude >> (segment + 1)) & 0xf)) ^ mask;
}

function decode(byte) {
  // audioop's st_ulaw2linear16.
  const u = ~byte & 0xff;
  const t = (((u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
  return u & 0x80 ? 0x84 - t : t - 0x84;
}

const ENCODE = new Uint8Array(1 << 14); // by 14-bit sample + 8192
for (let i = 0; i < ENCODE.length; i++) ENCODE[i] = encode14(i - 8192);

/** mu-law byte -> 16-bit sample value, and -> float in [-1, 1) as Web Audio plays it. */
export const DECODE16 = Int16Array.from({ length: 256 }, (_, byte) => decode(byte));
export const DECODE = Float32Array.from(DECODE16, (value) => value / 32768);

/** A 16-bit sample value -> mu-law byte. */
export function encode16(value) {
  return ENCODE[(value >> 2) + 8192];
}

/** A Web Audio float sample -> mu-law byte (rounded to 16 bits first, clipped at full scale). */
export function encodeFloat(x) {
  const value = Math.max(-32768, Math.min(32767, Math.round(x * 32768)));
  return ENCODE[(value >> 2) + 8192];
}
