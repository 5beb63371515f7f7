// The package version, written into exported files (GGUF quantform.version, ONNX producer_version).
export const VERSION = '0.1.0';
