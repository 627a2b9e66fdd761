/**
 * An OTLP/HTTP trace receiver for tests: a server on 127.0.0.1, port 0, that decodes each protobuf export with
 * OpenTelemetry's own generated proto types (the `otlp-transformer-decode` dev dependency) and keeps its spans, ids
 * as hex, attributes as plain values.
 */
import { createServer, type Server } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';

interface AnyValue {
  value?: 'stringValue' | 'intValue' | 'boolValue' | 'doubleValue' | string;
  stringValue?: string;
  intValue?: number | { toNumber(): number };
  boolValue?: boolean;
  doubleValue?: number;
}
interface KeyValue {
  key: string;
  value?: AnyValue;
}
interface ProtoSpan {
  traceId: Uint8Array;
  spanId: Uint8Array;
  parentSpanId?: Uint8Array | null;
  traceState?: string;
  name: string;
  kind: number;
  startTimeUnixNano: number | { toString(): string };
  endTimeUnixNano: number | { toString(): string };
  attributes?: KeyValue[];
  links?: { traceId: Uint8Array; spanId: Uint8Array }[];
  status?: { code?: number; message?: string };
}
interface ExportRequest {
  resourceSpans: { resource?: { attributes?: KeyValue[] }; scopeSpans: { spans: ProtoSpan[] }[] }[];
}

const require = createRequire(import.meta.url);
const root = require('otlp-transformer-decode/build/src/generated/root.js') as {
  opentelemetry: { proto: { collector: { trace: { v1: { ExportTraceServiceRequest: { decode(b: Uint8Array): ExportRequest } } } } } };
};
const { ExportTraceServiceRequest } = root.opentelemetry.proto.collector.trace.v1;

export type AttrValue = string | number | boolean | undefined;

export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  traceState: string;
  name: string;
  /** OTLP's SpanKind: 1 internal, 2 server. */
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, AttrValue>;
  links: { traceId: string; spanId: string }[];
  /** 0 unset, 1 ok, 2 error. */
  statusCode: number;
  statusMessage: string;
  resource: Record<string, AttrValue>;
}

const hex = (b: Uint8Array | null | undefined): string => (b === undefined || b === null ? '' : Buffer.from(b).toString('hex'));

function valueOf(v: AnyValue | undefined): AttrValue {
  // protobufjs names the oneof's set field in `value`; the others read null.
  switch (v?.value) {
    case 'stringValue':
      return v.stringValue;
    case 'intValue':
      return typeof v.intValue === 'number' ? v.intValue : v.intValue?.toNumber();
    case 'boolValue':
      return v.boolValue;
    case 'doubleValue':
      return v.doubleValue;
    default:
      return undefined;
  }
}

const attrs = (kvs: KeyValue[] | undefined): Record<string, AttrValue> => Object.fromEntries((kvs ?? []).map((kv) => [kv.key, valueOf(kv.value)]));

export interface OtlpReceiver {
  /** The traces URL, for OTEL_EXPORTER_OTLP_TRACES_ENDPOINT. */
  url: string;
  spans: ReceivedSpan[];
  /** Export requests received (any path). */
  requests: number;
  close(): Promise<void>;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  let requests = 0;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      requests++;
      if (req.method !== 'POST' || req.url !== '/v1/traces' || req.headers['content-type'] !== 'application/x-protobuf') {
        res.writeHead(400).end();
        return;
      }
      const decoded = ExportTraceServiceRequest.decode(Buffer.concat(chunks));
      for (const rs of decoded.resourceSpans) {
        const resource = attrs(rs.resource?.attributes);
        for (const ss of rs.scopeSpans) {
          for (const s of ss.spans) {
            spans.push({
              traceId: hex(s.traceId),
              spanId: hex(s.spanId),
              parentSpanId: hex(s.parentSpanId),
              traceState: s.traceState ?? '',
              name: s.name,
              kind: s.kind,
              startNs: BigInt(s.startTimeUnixNano.toString()),
              endNs: BigInt(s.endTimeUnixNano.toString()),
              attributes: attrs(s.attributes),
              links: (s.links ?? []).map((l) => ({ traceId: hex(l.traceId), spanId: hex(l.spanId) })),
              statusCode: s.status?.code ?? 0,
              statusMessage: s.status?.message ?? '',
              resource,
            });
          }
        }
      }
      // An empty ExportTraceServiceResponse: full success.
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1/traces`,
    spans,
    get requests() {
      return requests;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
