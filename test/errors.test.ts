import t from 'tap';
import { ERROR_CATALOG, OcularError, isRetryable } from '../src/errors.js';

t.test('every catalogued error carries its code, status and message', async (t) => {
  for (const [code, entry] of Object.entries(ERROR_CATALOG)) {
    const err = new OcularError(code as keyof typeof ERROR_CATALOG);
    t.equal(err.code, code);
    t.equal(err.status, entry.status);
    t.equal(err.message, entry.message);
  }
});

t.test('overload errors are retryable 503s', async (t) => {
  for (const code of ['QUEUE_FULL', 'QUEUE_TIMEOUT', 'MODEL_NOT_READY', 'DRAINING'] as const) {
    t.equal(new OcularError(code).status, 503);
    t.ok(isRetryable(code));
  }
  t.notOk(isRetryable('IMAGE_DECODE_FAILED'));
});
