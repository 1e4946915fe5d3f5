// Top-down crops for all persons in one launch: uint8 BGR frame + person boxes -> float32 [N,3,H,W] pose input.
//
// Twin of geometry.crop_persons (box_to_center_scale, warp_matrix, cv2.warpAffine bilinear with a constant
// 0 border, BGR->RGB, (v - mean) / std). Per person z = blockIdx.z:
//   centre = (x1 + x2, y1 + y2) * 0.5, scale = (x2 - x1, y2 - y1) * padding, then grown to the input aspect
//   (float32, the operations of box_to_center_scale); the forward affine is x' = s x + (w/2 - s cx) with
//   s = w / scale_w (float64, as warp_matrix); it is inverted as cv2.invertAffineTransform does, and output
//   pixel (x, y) samples the frame at (A x + b): no half-pixel offset (cv2.warpAffine). Bilinear taps
//   outside the frame contribute the border value 0. OpenCV quantises the position to 1/32 pixel and
//   the weights to 15 bits and rounds to uint8; here the affine is computed in float64 once per block and
//   kept as float32, the position per pixel is float32 (FP64 runs at 1/64 rate on Jetson Orin; the float
//   reference in cuda/kernels.py does the same arithmetic), the weights float32 and the value stays float
//   (quantize = 1 rounds it to the nearest integer, like the CPU pipeline's uint8 crop).
// A box that fails box_valid (geometry.valid_boxes: zero-area, inverted, NaN/inf, larger than 1e6 px) gets the
// empty crop (all border) and centre = scale = 0, as box_to_center_scale gives it.
// The centre/scale and the inverse (float64, rounded to float32) are computed once per block by its first thread
// (shared memory, one barrier), not per pixel: per pixel only x * a + b remains, in float32.
// The centre and scale of every person are written to params [N,4] = (cx, cy, scale_w, scale_h) for the
// decode kernel (first thread of block (0,0,z)).
//
// Launch: block (32, 8), grid (ceil(W / 32), ceil(H / 8), N). Compiled with --fmad=false.

__device__ __forceinline__ float tap(const unsigned char* src, int w, int h, int pitch, int x, int y, int c)
{
    return (x >= 0 && x < w && y >= 0 && y < h) ? (float)src[(long long)y * pitch + x * 3 + c] : 0.0f;
}

// geometry.valid_boxes, the one rule for degenerate boxes: 0 < x2 - x1 <= 1e6 and 0 < y2 - y1 <= 1e6 in float32
__device__ __forceinline__ bool box_valid(const float* b)
{
    const float w = b[2] - b[0], h = b[3] - b[1];
    return w > 0.0f && w <= 1e6f && h > 0.0f && h <= 1e6f;
}

extern "C" __global__ void __launch_bounds__(256) crop_persons_bgr_to_nchw(
    const unsigned char* __restrict__ src, int src_w, int src_h, int src_pitch,
    const float* __restrict__ boxes, int num_persons,
    float* __restrict__ dst, int dst_w, int dst_h, float* __restrict__ params,
    float padding, float aspect,
    float mean0, float mean1, float mean2, float std0, float std1, float std2,
    int swap_rb, int quantize)
{
    const int person = blockIdx.z;
    if (person >= num_persons) return;   // whole blocks leave together, before the barrier

    __shared__ float s_affine[4];        // a11, b1, a22, b2 of the inverse affine (crop pixel -> frame pixel)
    __shared__ int s_valid;
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        const float* box = boxes + 4 * person;
        const bool valid = box_valid(box);
        float cx = 0.0f, cy = 0.0f, sw = 0.0f, sh = 0.0f;
        if (valid) {  // geometry.box_to_center_scale (float32)
            cx = (box[0] + box[2]) * 0.5f;
            cy = (box[1] + box[3]) * 0.5f;
            const float sw0 = (box[2] - box[0]) * padding;
            const float sh0 = (box[3] - box[1]) * padding;
            const bool wider = sw0 > sh0 * aspect;
            sw = wider ? sw0 : sh0 * aspect;
            sh = wider ? sw0 / aspect : sh0;
            // geometry.warp_matrix (float64) and its inverse as cv2.invertAffineTransform computes it
            const double s = (double)dst_w / (double)sw;
            const double m02 = (double)dst_w / 2.0 - s * (double)cx;
            const double m12 = (double)dst_h / 2.0 - s * (double)cy;
            const double d = 1.0 / (s * s);
            const double a11 = s * d, a22 = s * d;
            s_affine[0] = (float)a11;
            s_affine[1] = (float)(-a11 * m02);
            s_affine[2] = (float)a22;
            s_affine[3] = (float)(-a22 * m12);
        }
        s_valid = valid;
        if (blockIdx.x == 0 && blockIdx.y == 0) {
            float* p = params + 4 * person;
            p[0] = cx; p[1] = cy; p[2] = sw; p[3] = sh;
        }
    }
    __syncthreads();

    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;

    float v[3] = {0.0f, 0.0f, 0.0f};
    if (s_valid) {
        const float fx = s_affine[0] * (float)x + s_affine[1];
        const float fy = s_affine[2] * (float)y + s_affine[3];
        const float x0f = floorf(fx), y0f = floorf(fy);
        // a 2x2 footprint wholly outside the frame keeps the border (this also guards the int conversion)
        if (!(x0f < -1.0f || y0f < -1.0f || x0f > (float)src_w || y0f > (float)src_h)) {
            const int x0 = (int)x0f, y0 = (int)y0f;
            const float ax = fx - x0f, ay = fy - y0f;
            #pragma unroll
            for (int c = 0; c < 3; ++c) {
                const float top = (1.0f - ax) * tap(src, src_w, src_h, src_pitch, x0, y0, c)
                                  + ax * tap(src, src_w, src_h, src_pitch, x0 + 1, y0, c);
                const float bottom = (1.0f - ax) * tap(src, src_w, src_h, src_pitch, x0, y0 + 1, c)
                                     + ax * tap(src, src_w, src_h, src_pitch, x0 + 1, y0 + 1, c);
                float value = (1.0f - ay) * top + ay * bottom;
                if (quantize) value = rintf(value);
                v[c] = value;
            }
        }
    }

    const size_t plane = (size_t)dst_w * dst_h;
    float* out = dst + (size_t)person * 3 * plane + (size_t)y * dst_w + x;
    const float b = v[0], g = v[1], r = v[2];
    out[0] = ((swap_rb ? r : b) - mean0) / std0;
    out[plane] = (g - mean1) / std1;
    out[2 * plane] = ((swap_rb ? b : r) - mean2) / std2;
}
