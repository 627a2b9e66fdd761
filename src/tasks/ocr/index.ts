/**
 * PP-OCR text detection and recognition, pre- and post-processing only (no runtime, no HTTP): a pipeline runs
 * the detector, `dbPostprocess` on each probability map, `cropTextLine` + `resizeForRecognizer` per box, the
 * recogniser on the crops (padded to a common width), then `ctcDecodeBatch`.
 */
export { DB_DEFAULTS, dbPostprocess, orderPointsClockwise, sortBoxes } from './db-postprocess.js';
export type { DbOptions, Point, ProbabilityMap, Quad, TextBox } from './db-postprocess.js';
export { CROP_DEFAULTS, RECOGNIZER_DEFAULTS, cropTextLine, resizeForRecognizer } from './crop.js';
export type { CropOptions, RecognizerResizeOptions, RgbImage } from './crop.js';
export { ctcDecode, ctcDecodeBatch } from './ctc.js';
export type { RecognizedText } from './ctc.js';
