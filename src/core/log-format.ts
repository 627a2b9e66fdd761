/**
 * Log lines for a person at a terminal: `12:04:05 WARN  message key=value ...`, one line per record (a stack, for
 * errors only, on the lines below). src/main.ts writes pino's JSON records through formatLogLine when stdout is a
 * terminal; anywhere else (containers, files, pipes, log collectors) the JSON goes out unchanged.
 */

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
/** Fields every record has, shown in the line's head or not at all. */
const HEAD_FIELDS = new Set(['level', 'time', 'pid', 'hostname', 'service', 'msg']);
const MAX_VALUE_CHARS = 200;

function formatValue(value: unknown): string {
  const text = typeof value === 'string' && /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value) ?? String(value);
  return text.length > MAX_VALUE_CHARS ? `${text.slice(0, MAX_VALUE_CHARS)}...` : text;
}

/** `HH:MM:SS` of an ISO time or epoch milliseconds; empty when neither. */
function clock(time: unknown): string {
  const date = typeof time === 'string' || typeof time === 'number' ? new Date(time) : undefined;
  return date !== undefined && !Number.isNaN(date.getTime()) ? date.toISOString().slice(11, 19) : '';
}

/** One pino JSON record as a readable line; a line that is not JSON is returned as it is. */
export function formatLogLine(json: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.trimEnd();
  }
  const level = typeof record['level'] === 'number' ? (LEVELS[record['level']] ?? String(record['level'])) : 'INFO';
  if (record['msg'] === 'ready' && typeof record['url'] === 'string' && Array.isArray(record['models'])) {
    return [clock(record['time']), level.padEnd(5), readyMessage(record['url'], record['models'] as ServedModel[])].join(' ');
  }
  const parts = [clock(record['time']), level.padEnd(5), String(record['msg'] ?? '')].filter((p) => p !== '');
  let stack = '';
  for (const [key, value] of Object.entries(record)) {
    if (HEAD_FIELDS.has(key) || value === undefined) continue;
    if (key === 'err' && typeof value === 'object' && value !== null) {
      const err = value as { message?: unknown; stack?: unknown };
      parts.push(`err=${formatValue(err.message ?? err)}`);
      // A stack helps with an unexpected error; a refusal or a warning needs none.
      if (typeof err.stack === 'string' && typeof record['level'] === 'number' && record['level'] >= 50) {
        stack = `\n${err.stack.split('\n').slice(1).join('\n')}`;
      }
    } else if (key === 'req' && typeof value === 'object' && value !== null) {
      const req = value as { method?: unknown; url?: unknown };
      parts.push(`${String(req.method)} ${String(req.url)}`);
    } else if (key === 'res' && typeof value === 'object' && value !== null) {
      parts.push(`status=${String((value as { statusCode?: unknown }).statusCode)}`);
    } else {
      parts.push(`${key}=${formatValue(value)}`);
    }
  }
  return parts.join(' ') + stack;
}

/** A pino destination writing readable lines to `out` (a terminal). */
export function readableDestination(out: { write(text: string): unknown }): { write(chunk: string): void } {
  return {
    write(chunk) {
      for (const line of chunk.split('\n')) if (line !== '') out.write(`${formatLogLine(line)}\n`);
    },
  };
}

/** The URL a person opens for a listener on `host` and `port`: a wildcard address is shown as localhost. */
export function listenUrl(host: string, port: number): string {
  const shown = host === '0.0.0.0' || host === '::' || host === '' ? 'localhost' : host.includes(':') ? `[${host}]` : host;
  return `http://${shown}:${port}`;
}

export interface ServedModel {
  name: string;
  task: string;
  provider?: string | undefined;
}

/** The ready line's message: the URL, then each model's name, task and provider. */
export function readyMessage(url: string, models: readonly ServedModel[]): string {
  const list = models.map((m) => `${m.name} (${m.task}, ${m.provider ?? 'no provider'})`).join(', ');
  return `ready at ${url}, serving ${models.length === 0 ? 'no model' : list}`;
}
