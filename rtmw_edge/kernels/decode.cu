// SimCC decode and back-mapping on the GPU: pose outputs -> [N,K,3] (x, y, score) in image pixels,
// and [N,K,3] camera-space (X, Y, Z) for RTMW3D.
//
// simcc_decode_to_image: twin of geometry.simcc_decode (+ simcc_decode_z), geometry.crop_to_image,
//   TopDownPose.postprocess and geometry.depth_to_camera. Per keypoint: argmax of each axis (first
//   maximum wins, as numpy; a NaN logit never wins), score = min(max_x, max_y) made finite
//   (geometry.finite_scores), location = index / split_ratio, a score <= 0 gives (-1, -1);
//   image = loc / input_size * scale + centre - 0.5 * scale with (centre, scale) from params [N,4] (written
//   by the crop kernel); for RTMW3D z = argmax_z / split_ratio,
//   depth = (z / depth_half - 1) * z_range + root_z, X = (u - cx) / fx * depth, Y = (v - cy) / fy * depth
//   (u, v: the final image point, (-1, -1) when invalid). All float32 with the numpy evaluation order
//   (compiled with --fmad=false), so the results equal the CPU pipeline's bit for bit.
//   Launch: block 256 = 8 warps, one warp per keypoint, grid ceil(N * K / 8).
//
// decoded_to_image: the same back-mapping for graphs exported with --decode (keypoints [N,K,2] in crop
//   pixels, scores [N,K] (made finite as above), z [N,K] or null). Launch: block 256, one thread per keypoint, grid ceil(N*K/256).

__device__ __forceinline__ void warp_argmax(const float* __restrict__ row, int bins, float* best, int* index)
{
    float v = -__int_as_float(0x7f800000);  // -inf
    int i = 0x7fffffff;
    for (int b = threadIdx.x & 31; b < bins; b += 32) {
        const float raw = row[b];
        const float x = raw != raw ? -__int_as_float(0x7f800000) : raw;  // a NaN never wins (geometry._argmax_max)
        if (x > v || i == 0x7fffffff) { v = x; i = b; }
    }
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_down_sync(0xffffffffu, v, offset);
        const int oi = __shfl_down_sync(0xffffffffu, i, offset);
        if (oi != 0x7fffffff && (i == 0x7fffffff || ov > v || (ov == v && oi < i))) { v = ov; i = oi; }
    }
    *best = __shfl_sync(0xffffffffu, v, 0);
    *index = __shfl_sync(0xffffffffu, i, 0);
}

__device__ __forceinline__ void write_keypoint(
    float lx, float ly, float score, float z, const float* __restrict__ p, float in_w, float in_h,
    float* __restrict__ out, float* __restrict__ out3d, float depth_half, float z_range, float root_z,
    float fx, float fy, float cx, float cy)
{
    // geometry.finite_scores: NaN -> -FLT_MAX, +-inf -> +-FLT_MAX
    const float flt_max = __int_as_float(0x7f7fffff);
    if (!(score >= -flt_max)) score = -flt_max;
    else if (score > flt_max) score = flt_max;
    const bool invalid = score <= 0.0f;
    if (invalid) { lx = -1.0f; ly = -1.0f; }
    float u = lx / in_w * p[2] + p[0] - 0.5f * p[2];
    float v = ly / in_h * p[3] + p[1] - 0.5f * p[3];
    if (invalid) { u = -1.0f; v = -1.0f; }
    out[0] = u;
    out[1] = v;
    out[2] = score;
    if (out3d != nullptr) {
        const float depth = (z / depth_half - 1.0f) * z_range + root_z;
        out3d[0] = (u - cx) / fx * depth;
        out3d[1] = (v - cy) / fy * depth;
        out3d[2] = depth;
    }
}

extern "C" __global__ void __launch_bounds__(256) simcc_decode_to_image(
    const float* __restrict__ simcc_x, int bins_x, const float* __restrict__ simcc_y, int bins_y,
    const float* __restrict__ simcc_z, int bins_z,
    const float* __restrict__ params, int num_persons, int num_keypoints,
    float split_ratio, float in_w, float in_h,
    float* __restrict__ out, float* __restrict__ out3d,
    float depth_half, float z_range, float root_z, float fx, float fy, float cx, float cy)
{
    const int item = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);   // person * K + keypoint
    if (item >= num_persons * num_keypoints) return;                        // whole warps leave together
    float mx, my, mz;
    int ix, iy, iz = 0;
    warp_argmax(simcc_x + (size_t)item * bins_x, bins_x, &mx, &ix);
    warp_argmax(simcc_y + (size_t)item * bins_y, bins_y, &my, &iy);
    if (simcc_z != nullptr) warp_argmax(simcc_z + (size_t)item * bins_z, bins_z, &mz, &iz);
    if ((threadIdx.x & 31) != 0) return;
    const float score = fminf(mx, my);
    const int person = item / num_keypoints;
    write_keypoint((float)ix / split_ratio, (float)iy / split_ratio, score, (float)iz / split_ratio,
                   params + 4 * person, in_w, in_h, out + 3 * (size_t)item,
                   (out3d != nullptr && simcc_z != nullptr) ? out3d + 3 * (size_t)item : nullptr,
                   depth_half, z_range, root_z, fx, fy, cx, cy);
}

extern "C" __global__ void __launch_bounds__(256) decoded_to_image(
    const float* __restrict__ keypoints, const float* __restrict__ scores, const float* __restrict__ z,
    const float* __restrict__ params, int num_persons, int num_keypoints, float in_w, float in_h,
    float* __restrict__ out, float* __restrict__ out3d,
    float depth_half, float z_range, float root_z, float fx, float fy, float cx, float cy)
{
    const int item = blockIdx.x * blockDim.x + threadIdx.x;
    if (item >= num_persons * num_keypoints) return;
    const int person = item / num_keypoints;
    write_keypoint(keypoints[2 * (size_t)item], keypoints[2 * (size_t)item + 1], scores[item],
                   z != nullptr ? z[item] : 0.0f, params + 4 * person, in_w, in_h, out + 3 * (size_t)item,
                   (out3d != nullptr && z != nullptr) ? out3d + 3 * (size_t)item : nullptr,
                   depth_half, z_range, root_z, fx, fy, cx, cy);
}
