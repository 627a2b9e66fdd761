/**
 * Greedy CTC decoding of a PP-OCR recogniser output, after PaddleOCR's `CTCLabelDecode`: argmax per timestep,
 * repeats collapsed, blanks dropped; the score is the mean of the kept steps' maximum probabilities (0 when no
 * character is kept).
 *
 * Class layout: 0 = blank, 1..n = labels[k - 1], and, when the output has n + 2 classes, n + 1 = ' ' (PaddleOCR's
 * use_space_char). Decoding runs over every timestep, as PaddleOCR does: batch items narrower than the batch were
 * padded with 0 (mid-grey after normalisation), which the model reads as blanks.
 */

export interface RecognizedText {
  text: string;
  score: number;
}

/**
 * Decodes one item: `probs` holds `steps x classes` values, row-major. `labels` is the dictionary without blank
 * and space (6623 entries for ppocr_keys_v1); the class count must be labels.length + 1 or + 2.
 */
export function ctcDecode(
  probs: Float32Array,
  steps: number,
  classes: number,
  labels: readonly string[],
): RecognizedText {
  const spaceClass = classSpace(classes, labels.length);
  if (probs.length < steps * classes) {
    throw new RangeError(`CTC output holds ${probs.length} values, ${steps}x${classes} needs ${steps * classes}`);
  }
  let text = '';
  let sum = 0;
  let kept = 0;
  let previous = -1;
  for (let t = 0; t < steps; t++) {
    const base = t * classes;
    let best = 0;
    let bestP = probs[base] as number;
    for (let c = 1; c < classes; c++) {
      const p = probs[base + c] as number;
      if (p > bestP) {
        bestP = p;
        best = c;
      }
    }
    if (best !== 0 && best !== previous) {
      text += best === spaceClass ? ' ' : (labels[best - 1] as string);
      sum += bestP;
      kept++;
    }
    previous = best;
  }
  return { text, score: kept === 0 ? 0 : sum / kept };
}

/** The class index of ' ', or -1 when the model has no space class. */
function classSpace(classes: number, labelCount: number): number {
  if (classes === labelCount + 2) return labelCount + 1;
  if (classes === labelCount + 1) return -1;
  throw new RangeError(`CTC output has ${classes} classes; ${labelCount} labels need ${labelCount + 2} (blank + space)`);
}
