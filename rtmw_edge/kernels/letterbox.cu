// Detector letterbox on the GPU: uint8 BGR frame -> float32 NCHW detector input.
//
// Twin of geometry.letterbox + geometry.normalize_to_nchw (CPU pipeline). The frame is resized with
// bilinear sampling in the top-left new_w x new_h of the input, the rest is the pad value, then every
// channel becomes (v - mean[c]) / std[c] (channel c reads source channel 2 - c when swap_rb).
//
// Sampling = cv2.resize INTER_LINEAR: half-pixel centres, src = (dst + 0.5) * scale - 0.5 with
// scale = src_size / new_size, taps clamped to the edge (a negative src coordinate samples pixel 0 with
// weight 1, one past the last pixel samples the last pixel). OpenCV computes the position in double and
// quantises the weights to 11 bits and rounds to uint8; here the position is float32 (FP64 runs at 1/64 rate
// on Jetson Orin; the float reference in cuda/kernels.py does the same arithmetic), the weights are float and
// the value stays float (quantize = 1 rounds it to the nearest integer, like the uint8 canvas of the CPU
// pipeline).
//
// Launch: block (32, 8), grid (ceil(dst_w / 32), ceil(dst_h / 8), 1); one thread per output pixel
// (3 channels). Compiled with --fmad=false (see rtmw_edge/cuda/nvrtc.py).

extern "C" __global__ void __launch_bounds__(256) letterbox_bgr_to_nchw(
    const unsigned char* __restrict__ src, int src_w, int src_h, int src_pitch,
    float* __restrict__ dst, int dst_w, int dst_h, int new_w, int new_h,
    float scale_x, float scale_y,
    float mean0, float mean1, float mean2, float std0, float std1, float std2,
    int swap_rb, float pad_value, int quantize)
{
    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;

    float v[3];
    if (x < new_w && y < new_h) {
        // horizontal taps (float32: (x + 0.5) * scale - 0.5, no FMA)
        const float fx_full = ((float)x + 0.5f) * scale_x - 0.5f;
        int sx = (int)floorf(fx_full);
        float ax = fx_full - (float)sx;
        if (sx < 0) { sx = 0; ax = 0.0f; }
        if (sx >= src_w - 1) { sx = src_w - 1; ax = 0.0f; }
        const int sx1 = min(sx + 1, src_w - 1);

        const float fy_full = ((float)y + 0.5f) * scale_y - 0.5f;
        int sy = (int)floorf(fy_full);
        float ay = fy_full - (float)sy;
        if (sy < 0) { sy = 0; ay = 0.0f; }
        if (sy >= src_h - 1) { sy = src_h - 1; ay = 0.0f; }
        const int sy1 = min(sy + 1, src_h - 1);

        const unsigned char* row0 = src + (long long)sy * src_pitch;
        const unsigned char* row1 = src + (long long)sy1 * src_pitch;
        #pragma unroll
        for (int c = 0; c < 3; ++c) {
            const float top = (1.0f - ax) * (float)row0[sx * 3 + c] + ax * (float)row0[sx1 * 3 + c];
            const float bottom = (1.0f - ax) * (float)row1[sx * 3 + c] + ax * (float)row1[sx1 * 3 + c];
            float value = (1.0f - ay) * top + ay * bottom;
            if (quantize) value = rintf(value);
            v[c] = value;
        }
    } else {
        v[0] = v[1] = v[2] = pad_value;
    }

    const size_t plane = (size_t)dst_w * dst_h;
    const size_t offset = (size_t)y * dst_w + x;
    const float b = v[0], g = v[1], r = v[2];
    dst[offset] = ((swap_rb ? r : b) - mean0) / std0;
    dst[plane + offset] = (g - mean1) / std1;
    dst[2 * plane + offset] = ((swap_rb ? b : r) - mean2) / std2;
}
