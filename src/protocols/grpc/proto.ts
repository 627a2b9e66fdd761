import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/**
 * Ocular's .proto for the Open Inference Protocol over gRPC (inference.proto, beside this file), loaded at run
 * time with @grpc/proto-loader. tsc does not copy .proto files: `npm run build` copies it beside the compiled
 * module (dist/src/protocols/grpc/, which the Docker image copies whole); from a dist/ built without that copy it
 * is read from the sources (src/protocols/grpc/).
 *
 * Loading options, chosen for exactness: 64-bit integers as decimal strings (an INT64 tensor keeps every digit;
 * shapes are converted to numbers and checked), bytes as Buffers, enums as their names, defaults filled in, and
 * oneofs named (an InferParameter says which of its fields is set).
 */

const HERE = dirname(fileURLToPath(import.meta.url));
const CANDIDATES = [
  join(HERE, 'inference.proto'),
  // dist/src/protocols/grpc/ -> src/protocols/grpc/
  join(HERE, '..', '..', '..', '..', 'src', 'protocols', 'grpc', 'inference.proto'),
];

/** The path of inference.proto: beside this module, else in the sources. */
export function protoPath(): string {
  const found = CANDIDATES.find((path) => existsSync(path));
  if (found === undefined) throw new Error(`inference.proto not found (looked in ${CANDIDATES.join(', ')}); \`npm run build\` copies it into dist/`);
  return found;
}

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
};

export interface InferenceProto {
  packageDefinition: protoLoader.PackageDefinition;
  service: grpc.ServiceDefinition;
}

/** Loads inference.proto: its package definition (for reflection) and the GRPCInferenceService definition. */
export function loadInferenceProto(): InferenceProto {
  const packageDefinition = protoLoader.loadSync(protoPath(), LOADER_OPTIONS);
  const loaded = grpc.loadPackageDefinition(packageDefinition) as unknown as {
    inference: { GRPCInferenceService: grpc.ServiceClientConstructor };
  };
  return { packageDefinition, service: loaded.inference.GRPCInferenceService.service };
}
