import t from 'tap';
import { ShapeSet } from '../../../src/core/runner/shape-set.js';

t.test('a shape is the whole dims tuple of every input, batch included', async (t) => {
  const shapes = new ShapeSet();
  t.equal(shapes.record({ x: { dims: [1, 3, 32, 32] } }), 1);
  t.equal(shapes.record({ x: { dims: [1, 3, 32, 32] } }), 1, 'the same dims again');
  t.equal(shapes.record({ x: { dims: [2, 3, 32, 32] } }), 2, 'another batch size is another shape');
  t.equal(shapes.record({ x: { dims: [1, 3, 32, 64] } }), 3, 'another width too');
  t.equal(shapes.record({ b: { dims: [1] }, a: { dims: [1, 3] } }), 4);
  t.equal(shapes.record({ a: { dims: [1, 3] }, b: { dims: [1] } }), 4, 'inputs in any order are one tuple');
  t.equal(shapes.size, 4);
});
