/**
 * The load test's gRPC client: a closed loop of ModelInfer calls on Ocular's gRPC port, each photo sent as a BYTES
 * input with Triton's classification parameter (top 5), which is the work of a /v1 predict (decode, resize, run,
 * top-k) over the Open Inference Protocol. `concurrency` calls are kept in flight on one channel (one HTTP/2
 * connection, as gRPC clients use one), each sending the next photo when its answer arrives.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { LOADER_OPTIONS, protoPath } from '../../src/protocols/grpc/proto.js';
import type { LoadResult } from './load.js';
import type { Photo } from './photos.js';
import { summarize } from './stats.js';

export interface GrpcLoadTarget {
  /** host:port of the gRPC listener. */
  address: string;
  model: string;
  photos: readonly Photo[];
}

type InferFn = (request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null) => void) => void;

/** Status key of an outcome, as the HTTP loops report statuses: `grpc-<CODE>` for a refused call. */
function statusKey(err: grpc.ServiceError | null): string {
  return err === null ? '200' : `grpc-${grpc.status[err.code] ?? err.code}`;
}

export async function grpcClosedLoop(target: GrpcLoadTarget, concurrency: number, durationS: number): Promise<LoadResult> {
  const definition = protoLoader.loadSync(protoPath(), LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(definition) as unknown as { inference: { GRPCInferenceService: grpc.ServiceClientConstructor } };
  const client = new pkg.inference.GRPCInferenceService(target.address, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    'grpc.max_send_message_length': 64 * 1024 * 1024,
  });
  const infer = (client as unknown as { ModelInfer: InferFn }).ModelInfer.bind(client);
  const requests = target.photos.map((p) => ({
    model_name: target.model,
    inputs: [{ name: 'image', datatype: 'BYTES', shape: [1], contents: { bytes_contents: [p.bytes] } }],
    outputs: [{ name: 'output', parameters: { classification: { int64_param: '5' } } }],
  }));
  const latencies: number[] = [];
  const statuses: Record<string, number> = {};
  const end = performance.now() + durationS * 1000;
  let next = 0;
  const loop = async (): Promise<void> => {
    while (performance.now() < end) {
      const request = requests[next++ % requests.length];
      const sentAt = performance.now();
      const err = await new Promise<grpc.ServiceError | null>((resolve) => infer(request as object, new grpc.Metadata(), { deadline: Date.now() + 60_000 }, resolve));
      const key = statusKey(err);
      statuses[key] = (statuses[key] ?? 0) + 1;
      if (err === null) latencies.push(performance.now() - sentAt);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  client.close();
  return {
    mode: 'closed',
    connections: concurrency,
    durationS,
    requests: Object.values(statuses).reduce((a, b) => a + b, 0),
    throughputRps: latencies.length / durationS,
    latencyMs: summarize(latencies),
    statuses,
  };
}
