import t from 'tap';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseLabels, readLabels } from '../../src/tasks/labels.js';
import { modelPath, sharedTestOptions } from '../helpers/shared.js';

t.test('one final newline does not add an empty label', async (t) => {
  t.same(parseLabels('a\nb\n'), ['a', 'b']);
  t.same(parseLabels('a\nb'), ['a', 'b']);
});

t.test('only one final empty entry is dropped', async (t) => {
  t.same(parseLabels('a\n\n'), ['a', '']);
});

t.test('empty text has no labels; a lone newline is one empty label', async (t) => {
  t.same(parseLabels(''), []);
  t.same(parseLabels('\n'), ['']);
});

t.test('whitespace and empty lines in the middle are labels, never trimmed', async (t) => {
  t.same(parseLabels(' a \n\n\u3000\n\tb'), [' a ', '', '\u3000', '\tb']);
});

t.test('a CRLF file reads like an LF file, removing exactly one \\r per line', async (t) => {
  t.same(parseLabels('cat\r\ndog\r\n'), ['cat', 'dog']);
  t.same(parseLabels('cat\r\r\ndog'), ['cat\r', 'dog']);
  t.same(parseLabels('a\rb\n'), ['a\rb'], 'a lone \\r inside a line is kept');
});

t.test('a UTF-8 byte-order mark is not part of the first label', async (t) => {
  t.same(parseLabels('\ufeffperson\ncar\n'), ['person', 'car']);
});

t.test('readLabels reads a file as UTF-8', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ocular-labels-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'labels.txt');
  await writeFile(file, 'background\r\n\u3000\r\nface\r\n', 'utf8');
  t.same(await readLabels(file), ['background', '\u3000', 'face']);
});

t.test(
  'the PaddleOCR dictionary has 6623 entries with U+3000 at index 5709',
  sharedTestOptions('models/ppocrv4-rec/labels.txt'),
  async (t) => {
    const labels = await readLabels(modelPath('ppocrv4-rec', 'labels.txt'));
    t.equal(labels.length, 6623);
    t.equal(labels[5709], '\u3000');
    t.equal(labels[0], "'");
  },
);

t.test(
  'the ImageNet labels have 1000 entries',
  sharedTestOptions('models/mobilenetv2-12-int8/labels.txt'),
  async (t) => {
    const labels = await readLabels(modelPath('mobilenetv2-12-int8', 'labels.txt'));
    t.equal(labels.length, 1000);
    t.equal(labels[285], 'Egyptian cat');
    t.equal(labels[999], 'toilet tissue, toilet paper, bathroom tissue');
  },
);
