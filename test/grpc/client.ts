/**
 * A gRPC client of Ocular's inference.proto, generated at run time through @grpc/grpc-js from the same file the
 * server loads, with promise wrappers that resolve with the answer or reject with the grpc ServiceError.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { LOADER_OPTIONS, protoPath } from '../../src/protocols/grpc/proto.js';

export type Message = Record<string, unknown>;

export interface InferenceClient {
  raw: grpc.Client & Record<string, (...args: unknown[]) => grpc.ClientUnaryCall>;
  call<T = Message>(method: string, request: Message, opts?: { metadata?: grpc.Metadata; deadlineMs?: number }): Promise<T>;
  /** Starts a call and returns it with its outcome, so a test can cancel it. */
  start<T = Message>(method: string, request: Message, opts?: { metadata?: grpc.Metadata; deadlineMs?: number }): { call: grpc.ClientUnaryCall; done: Promise<T> };
  close(): void;
}

export function inferenceClient(port: number, credentials = grpc.credentials.createInsecure(), options: grpc.ChannelOptions = {}): InferenceClient {
  const definition = protoLoader.loadSync(protoPath(), LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(definition) as unknown as { inference: { GRPCInferenceService: grpc.ServiceClientConstructor } };
  const raw = new pkg.inference.GRPCInferenceService(`127.0.0.1:${port}`, credentials, {
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    'grpc.max_send_message_length': 512 * 1024 * 1024,
    ...options,
  }) as InferenceClient['raw'];
  const start = <T>(method: string, request: Message, opts: { metadata?: grpc.Metadata; deadlineMs?: number } = {}): { call: grpc.ClientUnaryCall; done: Promise<T> } => {
    let call!: grpc.ClientUnaryCall;
    const done = new Promise<T>((resolve, reject) => {
      const fn = raw[method];
      if (fn === undefined) throw new Error(`no method ${method}`);
      const callOptions: grpc.CallOptions = opts.deadlineMs !== undefined ? { deadline: Date.now() + opts.deadlineMs } : {};
      call = fn.call(raw, request, opts.metadata ?? new grpc.Metadata(), callOptions, (err: grpc.ServiceError | null, res: T) => (err !== null ? reject(err) : resolve(res)));
    });
    return { call, done };
  };
  return {
    raw,
    start,
    call: <T>(method: string, request: Message, opts?: { metadata?: grpc.Metadata; deadlineMs?: number }) => start<T>(method, request, opts).done,
    close: () => raw.close(),
  };
}

/** The error a call was refused with (fails the test when it succeeded). */
export async function refusal(p: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('the call succeeded');
}

/** Float32 values from a raw_output_contents entry (copied: the Buffer may sit at any offset). */
export function float32Of(bytes: Buffer): Float32Array {
  const out = new Float32Array(bytes.byteLength / 4);
  new Uint8Array(out.buffer).set(bytes);
  return out;
}

/** BYTES elements in the binary layout (4-byte little-endian length, then the bytes). */
export function bytesElements(elements: readonly Buffer[]): Buffer {
  return Buffer.concat(
    elements.flatMap((e) => {
      const len = Buffer.alloc(4);
      len.writeUInt32LE(e.length);
      return [len, e];
    }),
  );
}
