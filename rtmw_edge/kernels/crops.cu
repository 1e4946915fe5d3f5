// Top-down crops for all persons in one launch: uint8 BGR frame + person boxes -> float32 [N,3,H,W] pose input.
//
// Twin of geometry.crop_persons (box_to_center_scale, warp_matrix, cv2.warpAffine bilinear with a constant
// 0 border, BGR->RGB, (v - mean) / std). Per person z = blockIdx.z:
//   centre = (x1 + x2, y1 + y2) * 0.5, scale = (x2 - x1, y2 - y1) * padding, then grown to the input aspect
//   (float32, the operations of box_to_center_scale); the forward affine is x' = s x + (w/2 - s cx) with
//   s = w / scale_w (float64, as warp_matrix); it is inverted as cv2.invertAffineTransform does, and output
//   pixel (x, y) samples the frame at (A x + b): no half-pixel offset (cv2.warpAffine). Bilinear taps
//   outside the frame contribute the border value 0. OpenCV quantises the position to 1/32 pixel and
//   the weights to 15 bits and rounds to uint8; here the position is float64, the weights float32 and the
//   value stays float (quantize = 1 rounds it to the nearest integer, like the CPU pipeline's uint8 crop).
// The centre and scale of every person are written to params [N,4] = (cx, cy, scale_w, scale_h) for the
// decode kernel (thread (0,0) of block (0,0,z)).
//
// Launch: block (32, 8), grid (ceil(W / 32), ceil(H / 8), N). Compiled with --fmad=false.

__device__ __forceinline__ float tap(const unsigned char* src, int w, int h, int pitch, int x, int y, int c)
{
    return (x >= 0 && x < w && y >= 0 && y < h) ? (float)src[(long long)y * pitch + x * 3 + c] : 0.0f;
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
    if (person >= num_persons) return;
    const float* box = boxes + 4 * person;

    // geometry.box_to_center_scale (float32)
    const float cx = (box[0] + box[2]) * 0.5f;
    const float cy = (box[1] + box[3]) * 0.5f;
    const float sw0 = (box[2] - box[0]) * padding;
    const float sh0 = (box[3] - box[1]) * padding;
    const bool wider = sw0 > sh0 * aspect;
    const float sw = wider ? sw0 : sh0 * aspect;
    const float sh = wider ? sw0 / aspect : sh0;

    const int x = blockIdx.x * blockDim.x + threadIdx.x;
    const int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x == 0 && y == 0) {
        float* p = params + 4 * person;
        p[0] = cx; p[1] = cy; p[2] = sw; p[3] = sh;
    }
    if (x >= dst_w || y >= dst_h) return;

    // geometry.warp_matrix (float64) and its inverse as cv2.invertAffineTransform computes it
    const double s = (double)dst_w / (double)sw;
    const double m02 = (double)dst_w / 2.0 - s * (double)cx;
    const double m12 = (double)dst_h / 2.0 - s * (double)cy;
    const double d = 1.0 / (s * s);
    const double a11 = s * d, a22 = s * d;
    const double b1 = -a11 * m02;
    const double b2 = -a22 * m12;
    const double fx = a11 * (double)x + b1;
    const double fy = a22 * (double)y + b2;

    const double x0d = floor(fx), y0d = floor(fy);
    float v[3];
    if (x0d < -1.0 || y0d < -1.0 || x0d > (double)src_w || y0d > (double)src_h) {
        v[0] = v[1] = v[2] = 0.0f;  // the whole 2x2 footprint is outside (also guards the int conversion)
    } else {
        const int x0 = (int)x0d, y0 = (int)y0d;
        const float ax = (float)(fx - x0d), ay = (float)(fy - y0d);
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

    const size_t plane = (size_t)dst_w * dst_h;
    float* out = dst + (size_t)person * 3 * plane + (size_t)y * dst_w + x;
    const float b = v[0], g = v[1], r = v[2];
    out[0] = ((swap_rb ? r : b) - mean0) / std0;
    out[plane] = (g - mean1) / std1;
    out[2 * plane] = ((swap_rb ? b : r) - mean2) / std2;
}
