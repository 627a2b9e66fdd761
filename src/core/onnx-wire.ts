/**
 * The protobuf wire format, as much of it as editing an ONNX model's graph needs: reading a message as a list of
 * fields (each kept as its original bytes) and writing new fields. A model edited this way keeps every field it
 * had byte for byte, including fields of ONNX versions newer than any schema we know, which decoding against a
 * schema and encoding again would drop (onnx-proto, a dev dependency, knows ONNX 1.10's schema only).
 *
 * Wire types: 0 varint, 1 fixed 64-bit, 2 length-delimited, 5 fixed 32-bit (3 and 4, groups, are not in ONNX).
 */

export class WireError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WireError';
  }
}

export interface WireField {
  /** Field number. */
  field: number;
  wireType: 0 | 1 | 2 | 5;
  /** The whole field as it lies in the message: tag and value. */
  raw: Uint8Array;
  /** Wire type 2: the payload; wire type 0: the varint as a number (exact up to 2^53; larger ones are refused). */
  value: Uint8Array | number;
}

/** Reads a varint at `pos`; returns it and the position after it. Values past 2^53 are refused, not rounded. */
function readVarint(buf: Uint8Array, pos: number): [number, number] {
  let value = 0;
  let factor = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new WireError('message ends inside a varint');
    const byte = buf[pos++] as number;
    value += (byte & 0x7f) * factor;
    if (byte < 0x80) {
      if (value > Number.MAX_SAFE_INTEGER) throw new WireError('varint past 2^53');
      return [value, pos];
    }
    factor *= 128;
  }
  throw new WireError('varint longer than 10 bytes');
}

/** The fields of one message, in order. Throws WireError on bytes that are not a well-formed message. */
export function readFields(buf: Uint8Array): WireField[] {
  const fields: WireField[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    const [tag, afterTag] = readVarint(buf, pos);
    pos = afterTag;
    const field = Math.floor(tag / 8);
    const wireType = tag % 8;
    if (field === 0) throw new WireError('field number 0');
    let value: Uint8Array | number;
    switch (wireType) {
      case 0:
        [value, pos] = readVarint(buf, pos);
        break;
      case 1:
      case 5: {
        const size = wireType === 1 ? 8 : 4;
        if (pos + size > buf.length) throw new WireError('message ends inside a fixed-size field');
        value = buf.subarray(pos, pos + size);
        pos += size;
        break;
      }
      case 2: {
        const [length, afterLength] = readVarint(buf, pos);
        if (afterLength + length > buf.length) throw new WireError(`field ${field} runs past the end of its message`);
        value = buf.subarray(afterLength, afterLength + length);
        pos = afterLength + length;
        break;
      }
      default:
        throw new WireError(`unsupported wire type ${wireType} (field ${field})`);
    }
    fields.push({ field, wireType, raw: buf.subarray(start, pos), value });
  }
  return fields;
}

/** A UTF-8 string field's text (wire type 2), else undefined. */
export function stringOf(f: WireField | undefined): string | undefined {
  return f !== undefined && f.value instanceof Uint8Array ? Buffer.from(f.value).toString('utf8') : undefined;
}

/** A message's fields are written with these; `concat` joins them into the message's bytes. */
function varint(value: number): number[] {
  if (!(Number.isSafeInteger(value) && value >= 0)) throw new WireError(`varint of ${value}`);
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

export function intField(field: number, value: number): Uint8Array {
  return Uint8Array.from([...varint(field * 8), ...varint(value)]);
}

export function bytesField(field: number, payload: Uint8Array): Uint8Array {
  return concat([Uint8Array.from([...varint(field * 8 + 2), ...varint(payload.length)]), payload]);
}

export function stringField(field: number, text: string): Uint8Array {
  return bytesField(field, Buffer.from(text, 'utf8'));
}

/** A nested message field: the message made of `parts` (fields), length-delimited. */
export function messageField(field: number, parts: readonly Uint8Array[]): Uint8Array {
  return bytesField(field, concat(parts));
}

export function concat(parts: readonly Uint8Array[]): Uint8Array {
  return Buffer.concat(parts);
}
