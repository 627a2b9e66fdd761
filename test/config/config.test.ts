import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { ConfigError, helpText, maxConnectionsOf, optionTable, parseConfig, tracingOf } from '../../src/config/config.js';
import { openFileLimit } from '../../src/config/open-files.js';
import { projectRoot } from '../helpers/shared.js';

type Env = Record<string, string | undefined>;

/** Runs parseConfig expecting a ConfigError; returns it (fails the test and returns undefined otherwise). */
function configErrorOf(t: Test, env: Env, argv: string[] = []): ConfigError | undefined {
  try {
    parseConfig(env, argv);
  } catch (err) {
    t.type(err, ConfigError);
    return err instanceof ConfigError ? err : undefined;
  }
  t.fail(`expected a ConfigError for ${JSON.stringify({ env, argv })}`);
  return undefined;
}

t.test('an empty environment gives the documented defaults', async (t) => {
  const { config, warnings, help } = parseConfig({}, []);
  t.equal(config.manifest, './models.manifest.json');
  t.equal(config.host, '0.0.0.0');
  t.equal(config.port, 8080);
  t.equal(config.device, 'auto');
  t.equal(config.providers, undefined);
  t.equal(config.gpuDeviceId, 0);
  t.equal(config.cacheDir, './.cache/models');
  t.equal(config.logLevel, 'info');
  t.equal(config.bodyLimitBytes, 20 * 1024 * 1024);
  t.equal(config.maxInputPixels, 40_000_000);
  t.equal(config.maxFiles, 16);
  t.same(config.imageFormats, ['jpeg', 'png', 'webp']);
  t.equal(config.shutdownGraceMs, 25_000);
  t.equal(config.requestTimeoutMs, 10_000);
  t.equal(config.intraOpThreads, 0);
  t.same(config.corsOrigins, []);
  t.equal(config.playground, true);
  t.equal(config.allowHttpSources, false);
  t.equal(config.sharedDir, '../shared');
  t.same(warnings, []);
  t.equal(help, false);
});

t.test('argv defaults to no flags', async (t) => {
  t.equal(parseConfig({}).config.port, 8080);
});

t.test('environment variables are parsed with their units and types', async (t) => {
  const { config } = parseConfig(
    {
      OCULAR_MANIFEST: '/etc/ocular/models.json',
      HOST: '127.0.0.1',
      PORT: '9000',
      OCULAR_DEVICE: 'cpu',
      OCULAR_GPU_DEVICE_ID: '2',
      OCULAR_CACHE_DIR: '/var/cache/ocular',
      OCULAR_LOG_LEVEL: 'debug',
      OCULAR_BODY_LIMIT_BYTES: '1048576',
      OCULAR_MAX_INPUT_PIXELS: '1000000',
      OCULAR_MAX_FILES: '4',
      OCULAR_IMAGE_FORMATS: 'png, avif',
      OCULAR_SHUTDOWN_GRACE_MS: '5000',
      OCULAR_REQUEST_TIMEOUT_MS: '250',
      OCULAR_INTRA_OP_THREADS: '3',
    },
    [],
  );
  t.equal(config.manifest, '/etc/ocular/models.json');
  t.equal(config.host, '127.0.0.1');
  t.equal(config.port, 9000);
  t.equal(config.device, 'cpu');
  t.equal(config.gpuDeviceId, 2);
  t.equal(config.cacheDir, '/var/cache/ocular');
  t.equal(config.logLevel, 'debug');
  t.equal(config.bodyLimitBytes, 1_048_576);
  t.equal(config.maxInputPixels, 1_000_000);
  t.equal(config.maxFiles, 4);
  t.same(config.imageFormats, ['png', 'avif']);
  t.equal(config.shutdownGraceMs, 5000);
  t.equal(config.requestTimeoutMs, 250);
  t.equal(config.intraOpThreads, 3);
});

t.test('PORT=0 asks for any free port', async (t) => {
  t.equal(parseConfig({ PORT: '0' }, []).config.port, 0);
});

t.test('an empty variable counts as unset', async (t) => {
  const { config } = parseConfig({ PORT: '', OCULAR_DEVICE: '', OCULAR_IMAGE_FORMATS: '' }, []);
  t.equal(config.port, 8080);
  t.equal(config.device, 'auto');
  t.same(config.imageFormats, ['jpeg', 'png', 'webp']);
});

t.test('a blank variable counts as unset, not as 0', async (t) => {
  // z.coerce.number reads ' ' as 0: PORT=' ' would silently listen on a random port.
  const { config } = parseConfig({ PORT: ' ', OCULAR_INTRA_OP_THREADS: '  ', OCULAR_PROVIDERS: ' ' }, []);
  t.equal(config.port, 8080);
  t.equal(config.intraOpThreads, 0);
  t.equal(config.providers, undefined);
  t.equal(parseConfig({}, ['--port', ' ']).config.port, 8080);
});

t.test('OCULAR_PROVIDERS is an ordered list, or auto', async (t) => {
  t.same(parseConfig({ OCULAR_PROVIDERS: 'tensorrt,cuda,cpu' }, []).config.providers, ['tensorrt', 'cuda', 'cpu']);
  t.same(parseConfig({ OCULAR_PROVIDERS: ' cuda , cpu ,' }, []).config.providers, ['cuda', 'cpu'], 'trimmed, empty entries dropped');
  t.equal(parseConfig({ OCULAR_PROVIDERS: 'auto' }, []).config.providers, 'auto');
  t.same(parseConfig({ OCULAR_PROVIDERS: 'webgpu' }, []).config.providers, ['webgpu']);
});

t.test('OCULAR_CORS_ORIGINS is a comma-separated list', async (t) => {
  t.same(
    parseConfig({ OCULAR_CORS_ORIGINS: 'https://a.example, https://b.example' }, []).config.corsOrigins,
    ['https://a.example', 'https://b.example'],
  );
  t.same(parseConfig({ OCULAR_CORS_ORIGINS: 'https://only.example' }, []).config.corsOrigins, ['https://only.example']);
});

t.test('OCULAR_PLAYGROUND is on or off, and anything else is an error naming it', async (t) => {
  for (const on of ['true', 'TRUE', '1', 'on', 'yes']) t.equal(parseConfig({ OCULAR_PLAYGROUND: on }, []).config.playground, true, on);
  for (const off of ['false', 'False', '0', 'off', 'no', ' off ']) {
    t.equal(parseConfig({ OCULAR_PLAYGROUND: off }, []).config.playground, false, off);
  }
  t.equal(parseConfig({ OCULAR_PLAYGROUND: 'true' }, ['--playground', 'false']).config.playground, false, 'the flag wins');
  t.match(configErrorOf(t, { OCULAR_PLAYGROUND: 'maybe' })?.message, /OCULAR_PLAYGROUND="maybe"/);
});

t.test('OCULAR_ALLOW_HTTP_SOURCES is off by default, on or off when set, and anything else is an error naming it', async (t) => {
  t.equal(parseConfig({}, []).config.allowHttpSources, false, 'off by default');
  for (const on of ['true', '1', 'on', 'YES']) {
    t.equal(parseConfig({ OCULAR_ALLOW_HTTP_SOURCES: on }, []).config.allowHttpSources, true, on);
  }
  for (const off of ['false', '0', 'off', 'no']) {
    t.equal(parseConfig({ OCULAR_ALLOW_HTTP_SOURCES: off }, []).config.allowHttpSources, false, off);
  }
  t.equal(parseConfig({}, ['--allow-http-sources', 'true']).config.allowHttpSources, true, 'the flag');
  t.match(configErrorOf(t, { OCULAR_ALLOW_HTTP_SOURCES: 'sometimes' })?.message, /OCULAR_ALLOW_HTTP_SOURCES="sometimes"/);
});

t.test('CLI flags win over environment variables', async (t) => {
  const { config } = parseConfig(
    { PORT: '9000', HOST: '10.0.0.1', OCULAR_DEVICE: 'cuda', OCULAR_PROVIDERS: 'cuda,cpu', OCULAR_CORS_ORIGINS: 'https://env.example' },
    ['--port', '9100', '--device=cpu', '--providers', 'cpu', '--cors-origins', 'https://flag.example'],
  );
  t.equal(config.port, 9100);
  t.equal(config.device, 'cpu');
  t.same(config.providers, ['cpu']);
  t.same(config.corsOrigins, ['https://flag.example']);
  t.equal(config.host, '10.0.0.1', 'a variable with no flag still applies');
});

t.test('every flag is accepted', async (t) => {
  const { config } = parseConfig({}, [
    '--manifest',
    'm.json',
    '--host',
    '::1',
    '--gpu-device-id',
    '1',
    '--cache-dir',
    'c',
    '--log-level',
    'warn',
    '--body-limit-bytes',
    '100',
    '--max-input-pixels',
    '200',
    '--max-files',
    '3',
    '--image-formats',
    'gif,tiff',
    '--shutdown-grace-ms',
    '10',
    '--request-timeout-ms',
    '20',
    '--intra-op-threads',
    '1',
    '--shared-dir',
    's',
  ]);
  t.match(config, {
    manifest: 'm.json',
    host: '::1',
    gpuDeviceId: 1,
    cacheDir: 'c',
    logLevel: 'warn',
    bodyLimitBytes: 100,
    maxInputPixels: 200,
    maxFiles: 3,
    imageFormats: ['gif', 'tiff'],
    shutdownGraceMs: 10,
    requestTimeoutMs: 20,
    intraOpThreads: 1,
    sharedDir: 's',
  });
});

t.test('a bad environment value is a ConfigError naming the variable', async (t) => {
  const cases: [Env, string][] = [
    [{ OCULAR_DEVICE: 'gpu' }, 'OCULAR_DEVICE="gpu"'],
    [{ PORT: '70000' }, 'PORT="70000"'],
    [{ PORT: 'abc' }, 'PORT="abc"'],
    [{ PORT: '80.5' }, 'PORT="80.5"'],
    [{ OCULAR_PROVIDERS: 'cuda,foo' }, 'OCULAR_PROVIDERS="cuda,foo"'],
    [{ OCULAR_PROVIDERS: ',' }, 'OCULAR_PROVIDERS=","'],
    [{ OCULAR_BODY_LIMIT_BYTES: '-1' }, 'OCULAR_BODY_LIMIT_BYTES="-1"'],
    [{ OCULAR_BODY_LIMIT_BYTES: '0' }, 'OCULAR_BODY_LIMIT_BYTES="0"'],
    [{ OCULAR_IMAGE_FORMATS: 'jpeg,svg' }, 'OCULAR_IMAGE_FORMATS="jpeg,svg"'],
    [{ OCULAR_MAX_FILES: '5000' }, 'OCULAR_MAX_FILES="5000"'],
    [{ OCULAR_LOG_LEVEL: 'verbose' }, 'OCULAR_LOG_LEVEL="verbose"'],
    [{ OCULAR_GPU_DEVICE_ID: '-1' }, 'OCULAR_GPU_DEVICE_ID="-1"'],
  ];
  for (const [env, named] of cases) {
    const err = configErrorOf(t, env);
    if (err === undefined) continue;
    t.equal(err.problems.length, 1, `one problem for ${named}`);
    t.match(err.problems[0], named.split('=')[0] as string);
    t.ok(err.message.includes(named), `message names ${named}: ${err.message}`);
  }
});

t.test('a bad flag value names the flag, not the variable', async (t) => {
  const err = configErrorOf(t, { PORT: '9000' }, ['--port', 'abc']);
  t.ok(err?.message.includes('--port="abc"'), err?.message ?? '');
  t.notOk(err?.message.includes('PORT="'), 'the (valid) variable is not blamed');
});

t.test('several bad values are all reported at once', async (t) => {
  const err = configErrorOf(t, { OCULAR_DEVICE: 'gpu', PORT: 'abc', OCULAR_PROVIDERS: 'cuda,foo' }, ['--max-files', '0']);
  t.equal(err?.problems.length, 4, err?.message ?? '');
  for (const name of ['OCULAR_DEVICE', 'PORT', 'OCULAR_PROVIDERS', '--max-files']) {
    t.ok(err?.message.includes(`${name}=`), `names ${name}`);
  }
});

t.test('an unknown flag is rejected', async (t) => {
  const err = configErrorOf(t, {}, ['--prot', '8080']);
  t.match(err?.message, /--prot/);
});

t.test('a positional argument is rejected', async (t) => {
  const err = configErrorOf(t, {}, ['serve']);
  t.match(err?.message, /serve/);
});

t.test('unknown OCULAR_* variables are warnings naming them, not errors', async (t) => {
  // What Kubernetes injects for a Service named "ocular" in the same namespace.
  const { config, warnings } = parseConfig(
    {
      OCULAR_PORT: 'tcp://10.0.0.1:8080',
      OCULAR_SERVICE_HOST: '10.0.0.1',
      OCULAR_SERVICE_PORT: '8080',
      PATH: '/usr/bin',
      HOME: '/root',
    },
    [],
  );
  t.equal(config.port, 8080, 'OCULAR_PORT is not PORT');
  t.equal(warnings.length, 3);
  t.match(warnings.join('\n'), /OCULAR_PORT/);
  t.match(warnings.join('\n'), /OCULAR_SERVICE_HOST/);
  t.match(warnings.join('\n'), /OCULAR_SERVICE_PORT/);
  t.notMatch(warnings.join('\n'), /PATH|HOME/, 'only OCULAR_* variables are checked');
});

t.test('OCULAR_REQUIRE_SHARED and known variables are not warned about', async (t) => {
  const { warnings } = parseConfig({ OCULAR_REQUIRE_SHARED: '1', OCULAR_DEVICE: 'cpu', OCULAR_SHARED_DIR: '/s' }, []);
  t.same(warnings, []);
});

t.test('--help sets help', async (t) => {
  t.equal(parseConfig({}, ['--help']).help, true);
  t.equal(parseConfig({}, ['--port', '1']).help, false);
});

t.test('helpText lists every variable and flag', async (t) => {
  const text = helpText();
  const rows = optionTable();
  t.ok(rows.length >= 17, `${rows.length} options`);
  for (const [variable, flag] of rows) {
    t.ok(text.includes(variable), `help names ${variable}`);
    t.ok(text.includes(flag), `help names ${flag}`);
  }
  t.ok(text.includes('--help'));
  t.match(text, /default: 8080/);
});

t.test('the README table rows cover every option, with defaults', async (t) => {
  const rows = optionTable();
  const byVar = new Map(rows.map((r) => [r[0], r]));
  const expected: [string, string, string][] = [
    ['OCULAR_MANIFEST', '--manifest', './models.manifest.json'],
    ['HOST', '--host', '0.0.0.0'],
    ['PORT', '--port', '8080'],
    ['OCULAR_DEVICE', '--device', 'auto'],
    ['OCULAR_PROVIDERS', '--providers', ''],
    ['OCULAR_GPU_DEVICE_ID', '--gpu-device-id', '0'],
    ['OCULAR_CACHE_DIR', '--cache-dir', './.cache/models'],
    ['OCULAR_LOG_LEVEL', '--log-level', 'info'],
    ['OCULAR_BODY_LIMIT_BYTES', '--body-limit-bytes', String(20 * 1024 * 1024)],
    ['OCULAR_MAX_INPUT_PIXELS', '--max-input-pixels', '40000000'],
    ['OCULAR_MAX_JPEG_SCANS', '--max-jpeg-scans', '100'],
    ['OCULAR_DECODE_TIMEOUT_MS', '--decode-timeout-ms', '10000'],
    ['OCULAR_MAX_FILES', '--max-files', '16'],
    ['OCULAR_IMAGE_FORMATS', '--image-formats', 'jpeg,png,webp'],
    ['OCULAR_SHUTDOWN_GRACE_MS', '--shutdown-grace-ms', '25000'],
    ['OCULAR_REQUEST_TIMEOUT_MS', '--request-timeout-ms', '10000'],
    ['OCULAR_INTRA_OP_THREADS', '--intra-op-threads', '0'],
    ['OCULAR_PREPROCESS_PROCESSES', '--preprocess-processes', 'auto'],
    ['OCULAR_COMPUTE_NICE', '--compute-nice', '0'],
    ['OCULAR_CORS_ORIGINS', '--cors-origins', 'none'],
    ['OCULAR_PLAYGROUND', '--playground', 'true'],
    ['OCULAR_AUTH_KEYS_FILE', '--auth-keys-file', ''],
    ['OCULAR_AUTH_PROBES', '--auth-probes', 'false'],
    ['OCULAR_AUTH_METRICS', '--auth-metrics', 'false'],
    ['OCULAR_SOURCE_CA_FILE', '--source-ca-file', ''],
    ['OCULAR_ALLOW_HTTP_SOURCES', '--allow-http-sources', 'false'],
    ['OCULAR_DOWNLOAD_STALL_MS', '--download-stall-ms', '30000'],
    ['OCULAR_HTTP_REQUEST_TIMEOUT_MS', '--http-request-timeout-ms', '60000'],
    ['OCULAR_HTTP_HEADERS_TIMEOUT_MS', '--http-headers-timeout-ms', '10000'],
    ['OCULAR_MAX_CONNECTIONS', '--max-connections', 'auto'],
    ['OCULAR_KEEP_ALIVE_TIMEOUT_MS', '--keep-alive-timeout-ms', '65000'],
    ['OCULAR_PROBE_PORT', '--probe-port', ''],
    ['OCULAR_TRACING', '--tracing', ''],
    ['OTEL_EXPORTER_OTLP_ENDPOINT', '--otlp-endpoint', ''],
    ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', '--otlp-traces-endpoint', ''],
    ['OTEL_EXPORTER_OTLP_PROTOCOL', '--otlp-protocol', 'http/protobuf'],
    ['OTEL_EXPORTER_OTLP_TRACES_PROTOCOL', '--otlp-traces-protocol', ''],
    ['OCULAR_TENSOR_BODY_LIMIT_BYTES', '--tensor-body-limit-bytes', String(256 * 1024 * 1024)],
    ['OCULAR_MAX_INFLIGHT_BODY_BYTES', '--max-inflight-body-bytes', String(512 * 1024 * 1024)],
    ['OCULAR_PARSE_THREADS', '--parse-threads', '0'],
    ['OCULAR_POSTPROCESS_THREADS', '--postprocess-threads', '0'],
    ['OCULAR_PARSE_QUEUE_SIZE', '--parse-queue-size', '16'],
    ['OCULAR_PARSE_TIMEOUT_MS', '--parse-timeout-ms', '10000'],
    ['OCULAR_MAX_RESPONSE_BYTES', '--max-response-bytes', String(64 * 1024 * 1024)],
    ['OCULAR_RESPONSE_WRITE_TIMEOUT_MS', '--response-write-timeout-ms', '30000'],
    ['OCULAR_MANIFEST_WATCH_MS', '--manifest-watch-ms', '2000'],
    ['OCULAR_SHARED_DIR', '--shared-dir', '../shared'],
    ['OCULAR_MODEL_CONTROL', '--model-control', 'none'],
    ['OCULAR_AUTH_ADMIN_KEYS_FILE', '--auth-admin-keys-file', ''],
    ['OCULAR_GRPC_PORT', '--grpc-port', '8081'],
    ['OCULAR_GRPC_TLS_CERT_FILE', '--grpc-tls-cert-file', ''],
    ['OCULAR_GRPC_TLS_KEY_FILE', '--grpc-tls-key-file', ''],
  ];
  t.equal(rows.length, expected.length, 'one row per option');
  for (const [variable, flag, dflt] of expected) {
    const row = byVar.get(variable);
    t.ok(row, `a row for ${variable}`);
    t.equal(row?.[1], flag);
    t.equal(row?.[2], dflt, `default of ${variable}`);
    t.ok((row?.[3] ?? '').length > 0, `meaning of ${variable}`);
  }
  // Every row's variable and flag is accepted by the parser.
  const keys = Object.keys(parseConfig({}, []).config);
  t.equal(keys.length, rows.length, 'every config key has a row');
  // And README.md's configuration table carries each row as optionTable gives it.
  const readme = readFileSync(join(projectRoot, 'README.md'), 'utf8');
  for (const [variable, flag, dflt, meaning] of rows) {
    const line = `| \`${variable}\` | \`${flag}\` | ${dflt === '' ? '' : `\`${dflt}\``} | ${meaning} |`;
    t.ok(readme.includes(line), `README.md has the row for ${variable}`);
  }
});

t.test('the connection cap: a number as given, auto under the open-file limit', async (t) => {
  t.equal(parseConfig({ OCULAR_MAX_CONNECTIONS: '20' }).config.maxConnections, 20);
  t.equal(parseConfig({}).config.maxConnections, 'auto');
  t.match(configErrorOf(t, { OCULAR_MAX_CONNECTIONS: '0' })?.message ?? '', /OCULAR_MAX_CONNECTIONS/);
  t.equal(maxConnectionsOf({ maxConnections: 20 }, 1024), 20, 'a number is kept');
  t.equal(maxConnectionsOf({ maxConnections: 'auto' }, 1024), 768, 'under ulimit -n 1024: 256 descriptors kept for the rest');
  t.equal(maxConnectionsOf({ maxConnections: 'auto' }, 1_048_576), 4096, 'a high limit: the memory bound');
  t.equal(maxConnectionsOf({ maxConnections: 'auto' }, undefined), 4096, 'no limit known');
  t.equal(maxConnectionsOf({ maxConnections: 'auto' }, 100), 16, 'a tiny limit still leaves a few connections');
});

t.test('the open-file limit is the soft limit of /proc/self/limits', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ocular-limits-'));
  const file = join(dir, 'limits');
  writeFileSync(file, 'Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n');
  t.equal(openFileLimit(file), 1024);
  writeFileSync(file, 'Max open files            unlimited            unlimited            files\n');
  t.equal(openFileLimit(file), undefined, 'unlimited: none');
  t.equal(openFileLimit(join(dir, 'absent')), undefined, 'unreadable: none');
  if (process.platform === 'linux') t.ok((openFileLimit() ?? 0) > 0, 'this process has one');
});

t.test('tracing: off by default, on with an OTLP endpoint or OCULAR_TRACING, URLs as the OTLP specification resolves them', async (t) => {
  const of = (env: Env) => tracingOf(parseConfig(env).config);
  t.equal(of({}), undefined, 'off without an endpoint');
  t.same(of({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }), { protocol: 'http/protobuf', url: 'http://collector:4318/v1/traces' });
  t.same(of({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/base/' }), { protocol: 'http/protobuf', url: 'http://collector:4318/base/v1/traces' });
  t.same(of({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4317', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }), { protocol: 'grpc', url: 'http://collector:4317' });
  t.same(
    of({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://b:9999/traces', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/protobuf' }),
    { protocol: 'http/protobuf', url: 'http://b:9999/traces' },
    'the traces variables win, the URL as given',
  );
  t.same(of({ OCULAR_TRACING: 'true' }), { protocol: 'http/protobuf', url: 'http://localhost:4318/v1/traces' }, 'on without an endpoint: the local collector');
  t.same(of({ OCULAR_TRACING: 'on', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc' }), { protocol: 'grpc', url: 'http://localhost:4317' });
  t.equal(of({ OCULAR_TRACING: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }), undefined, 'OCULAR_TRACING=false wins');
  t.match(configErrorOf(t, { OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' })?.message ?? '', /OTEL_EXPORTER_OTLP_PROTOCOL/, 'http/json is refused, naming the variable');
  t.match(configErrorOf(t, { OTEL_EXPORTER_OTLP_ENDPOINT: 'not a url' })?.message ?? '', /OTEL_EXPORTER_OTLP_ENDPOINT/);
});

t.test('the gRPC port: 8081 by default, 0 or off for none, never the HTTP or probe port; TLS files go together', async (t) => {
  t.equal(parseConfig({}).config.grpcPort, 8081);
  t.equal(parseConfig({ OCULAR_GRPC_PORT: 'off' }).config.grpcPort, 0);
  t.equal(parseConfig({ OCULAR_GRPC_PORT: 'OFF' }).config.grpcPort, 0);
  t.equal(parseConfig({ OCULAR_GRPC_PORT: '0' }).config.grpcPort, 0);
  t.equal(parseConfig({}, ['--grpc-port', '9000']).config.grpcPort, 9000);
  t.match(configErrorOf(t, { OCULAR_GRPC_PORT: 'on' })?.message ?? '', /OCULAR_GRPC_PORT/);
  t.match(configErrorOf(t, { OCULAR_GRPC_PORT: '8080' })?.message ?? '', /OCULAR_GRPC_PORT=8080 is also PORT/);
  t.match(configErrorOf(t, { OCULAR_PROBE_PORT: '8081' })?.message ?? '', /OCULAR_GRPC_PORT=8081 is also OCULAR_PROBE_PORT/);
  t.equal(parseConfig({ OCULAR_PROBE_PORT: '8081', OCULAR_GRPC_PORT: 'off' }).config.probePort, 8081, 'no clash with gRPC off');
  t.match(configErrorOf(t, { OCULAR_GRPC_TLS_CERT_FILE: '/c.pem' })?.message ?? '', /go together/);
});
