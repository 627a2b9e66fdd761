/**
 * JSON.parse for large request headers, written in JavaScript so that it can be stopped. V8's JSON.parse is one
 * native call that never looks at its isolate's termination flag: a parse thread told to terminate() past the
 * time limit (parser.ts) went on parsing a 100 MB body for as long as the whole parse took (26.8 s on a loaded
 * 2-core machine, measured in this project), holding its slot and a core. Every step here is JavaScript, so
 * Worker.terminate() ends it at the next loop iteration.
 *
 * Same result as JSON.parse(utf8 text) for every valid text (numbers correctly rounded, duplicate keys: the last
 * wins, "__proto__" an own property), a SyntaxError for every invalid one. It reads the bytes as they are, so the
 * body is not first turned into a string as large as itself. Nesting is capped at MAX_DEPTH (no request nests
 * that deep; the cap keeps a hostile body from exhausting the stack).
 */

export const MAX_DEPTH = 1000;

/** 10^0 .. 10^22: every one exact as a double (the fast path of number conversion relies on it). */
const POW10 = Array.from({ length: 23 }, (_, i) => Number(`1e${i}`));

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const MINUS = 0x2d;
const PLUS = 0x2b;
const DOT = 0x2e;
const ZERO = 0x30;
const NINE = 0x39;

function isDigit(c: number): boolean {
  return c >= ZERO && c <= NINE;
}

class JsonBytesParser {
  private at: number;
  private readonly latin1: (start: number, end: number) => string;
  private readonly utf8: (start: number, end: number) => string;

  constructor(
    private readonly bytes: Uint8Array,
    start: number,
    private readonly end: number,
  ) {
    this.at = start;
    const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.latin1 = (a, b) => buf.toString('latin1', a, b);
    this.utf8 = (a, b) => buf.toString('utf8', a, b);
  }

  parse(): unknown {
    // A UTF-8 byte order mark is not JSON, and JSON.parse(text) fails on it too (as U+FEFF).
    this.skipSpace();
    const value = this.value(0);
    this.skipSpace();
    if (this.at < this.end) this.fail('Unexpected data after the JSON value');
    return value;
  }

  private fail(what: string): never {
    throw new SyntaxError(`${what} at position ${this.at}`);
  }

  private skipSpace(): void {
    const b = this.bytes;
    let i = this.at;
    while (i < this.end) {
      const c = b[i] as number;
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      i++;
    }
    this.at = i;
  }

  private value(depth: number): unknown {
    if (this.at >= this.end) this.fail('Unexpected end of JSON input');
    const c = this.bytes[this.at] as number;
    if (c === 0x7b) return this.object(depth + 1);
    if (c === 0x5b) return this.array(depth + 1);
    if (c === QUOTE) return this.string();
    if (c === MINUS || isDigit(c)) return this.number();
    if (this.word('true')) return true;
    if (this.word('false')) return false;
    if (this.word('null')) return null;
    return this.fail(`Unexpected token ${JSON.stringify(String.fromCharCode(c))}`);
  }

  private word(w: string): boolean {
    if (this.at + w.length > this.end) return false;
    for (let k = 0; k < w.length; k++) if (this.bytes[this.at + k] !== w.charCodeAt(k)) return false;
    this.at += w.length;
    return true;
  }

  private array(depth: number): unknown[] {
    if (depth > MAX_DEPTH) this.fail(`JSON nested deeper than ${MAX_DEPTH}`);
    this.at++;
    const out: unknown[] = [];
    this.skipSpace();
    if (this.bytes[this.at] === 0x5d && this.at < this.end) {
      this.at++;
      return out;
    }
    for (;;) {
      this.skipSpace();
      out.push(this.value(depth));
      this.skipSpace();
      const c = this.at < this.end ? this.bytes[this.at] : undefined;
      this.at++;
      if (c === COMMA) continue;
      if (c === 0x5d) return out;
      this.at--;
      this.fail(c === undefined ? 'Unexpected end of JSON input' : "Expected ',' or ']' after an array element");
    }
  }

  private object(depth: number): Record<string, unknown> {
    if (depth > MAX_DEPTH) this.fail(`JSON nested deeper than ${MAX_DEPTH}`);
    this.at++;
    const out: Record<string, unknown> = {};
    this.skipSpace();
    if (this.bytes[this.at] === 0x7d && this.at < this.end) {
      this.at++;
      return out;
    }
    for (;;) {
      this.skipSpace();
      if (this.bytes[this.at] !== QUOTE || this.at >= this.end) this.fail('Expected a property name');
      const key = this.string();
      this.skipSpace();
      if (this.bytes[this.at] !== COLON || this.at >= this.end) this.fail("Expected ':' after a property name");
      this.at++;
      this.skipSpace();
      const v = this.value(depth);
      // As JSON.parse: an own data property, "__proto__" included (an assignment would set the prototype instead).
      if (key === '__proto__') Object.defineProperty(out, key, { value: v, writable: true, enumerable: true, configurable: true });
      else out[key] = v;
      this.skipSpace();
      const c = this.at < this.end ? this.bytes[this.at] : undefined;
      this.at++;
      if (c === COMMA) continue;
      if (c === 0x7d) return out;
      this.at--;
      this.fail(c === undefined ? 'Unexpected end of JSON input' : "Expected ',' or '}' after a property value");
    }
  }

  private string(): string {
    const b = this.bytes;
    const start = this.at + 1;
    let i = start;
    let escaped = false;
    let ascii = true;
    for (;;) {
      if (i >= this.end) {
        this.at = i;
        this.fail('Unterminated string in JSON');
      }
      const c = b[i] as number;
      if (c === QUOTE) break;
      if (c < 0x20) {
        this.at = i;
        this.fail('Bad control character in string literal');
      }
      if (c === BACKSLASH) {
        escaped = true;
        i += 2; // the escaped byte cannot end the string
        continue;
      }
      if (c >= 0x80) ascii = false;
      i++;
    }
    this.at = i + 1;
    if (!escaped) return ascii ? this.latin1(start, i) : this.utf8(start, i);
    // Escapes (\n, \uXXXX, surrogate pairs) as JSON.parse reads them: one native call on this string alone.
    const text = this.utf8(start - 1, i + 1);
    try {
      return JSON.parse(text) as string;
    } catch {
      this.at = start - 1;
      return this.fail('Bad escaped character in string literal');
    }
  }

  /**
   * -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, correctly rounded: with at most 15 significant digits and a
   * decimal exponent within 22, digits x 10^e is one exact operation on exact doubles, so correctly rounded (Clinger's
   * fast path); anything else goes to Number(), whose rounding is JSON.parse's.
   */
  private number(): number {
    const b = this.bytes;
    const start = this.at;
    let i = start;
    const negative = b[i] === MINUS;
    if (negative) i++;
    let mantissa = 0;
    let significant = 0;
    let exponent = 0;
    const first = i < this.end ? (b[i] as number) : -1;
    if (first === ZERO) {
      i++;
    } else if (isDigit(first)) {
      while (i < this.end && isDigit(b[i] as number)) {
        if (significant < 16) mantissa = mantissa * 10 + ((b[i] as number) - ZERO);
        significant++;
        i++;
      }
    } else {
      this.at = i;
      this.fail('No number after minus sign in JSON');
    }
    if (i < this.end && b[i] === DOT) {
      i++;
      if (!(i < this.end && isDigit(b[i] as number))) {
        this.at = i;
        this.fail('Unterminated fractional number in JSON');
      }
      while (i < this.end && isDigit(b[i] as number)) {
        const d = (b[i] as number) - ZERO;
        if (significant === 0 && d === 0) {
          exponent--; // a leading zero of the fraction: scale only
        } else {
          // Past 15 digits the value goes to Number() (below): what is summed here no longer matters.
          if (significant < 16) mantissa = mantissa * 10 + d;
          exponent--;
          significant++;
        }
        i++;
      }
    }
    const exact = significant <= 15;
    if (i < this.end && (b[i] === 0x65 || b[i] === 0x45)) {
      i++;
      let sign = 1;
      if (b[i] === PLUS || b[i] === MINUS) {
        if (b[i] === MINUS) sign = -1;
        i++;
      }
      if (!(i < this.end && isDigit(b[i] as number))) {
        this.at = i;
        this.fail('Exponent part is missing a number in JSON');
      }
      let e = 0;
      while (i < this.end && isDigit(b[i] as number)) {
        if (e < 1e6) e = e * 10 + ((b[i] as number) - ZERO);
        i++;
      }
      exponent += sign * e;
    }
    this.at = i;
    if (exact && mantissa === 0) return negative ? -0 : 0;
    if (exact && exponent >= -22 && exponent <= 22) {
      const v = exponent >= 0 ? mantissa * (POW10[exponent] as number) : mantissa / (POW10[-exponent] as number);
      return negative ? -v : v;
    }
    return Number(this.latin1(start, i));
  }
}

/** The JSON value in `bytes[start, end)`, as JSON.parse would give it for their UTF-8 text; SyntaxError if not JSON. */
export function parseJsonBytes(bytes: Uint8Array, start = 0, end = bytes.byteLength): unknown {
  return new JsonBytesParser(bytes, start, end).parse();
}
