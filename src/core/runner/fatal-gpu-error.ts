/** Run errors after which the GPU context is presumed broken. */
const FATAL_GPU_ERROR = /CUDA failure|CUDNN|cudaError|CUBLAS_STATUS|CUDA error/i;

/**
 * Whether a run error means the GPU context is presumed broken (the process should restart). Quoted text is left
 * out: onnxruntime quotes the model's own names there (node, input and output names: "running Conv node.
 * Name:'conv_cudnn_1'"), and a name must not turn an ordinary error, such as a client's tensor of the wrong shape,
 * into a restart.
 */
export function isFatalGpuError(message: string): boolean {
  return FATAL_GPU_ERROR.test(message.replace(/'[^']*'/g, "''"));
}
