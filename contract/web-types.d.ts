// structured-headers' types name the DOM's BufferSource, which Node's type definitions (v20)
// do not declare; without it, byte-sequence values would be typed as errors.
type BufferSource = ArrayBufferView | ArrayBuffer;
