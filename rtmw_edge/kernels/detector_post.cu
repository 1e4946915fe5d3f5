// Detector post-processing on the GPU: fixed-size detector outputs -> at most max_persons person boxes
// in image pixels, their scores and a small header the host reads (the only detector value that crosses).
//
// rtmdet_rawhead_decode: twin of geometry.decode_rtmdet for the RTMDet raw head (three NHWC [1,H,W,5]
//   maps: channel 0 the person logit, 1..4 the l,t,r,b distances already times the stride) -> boxes [K,4]
//   in input pixels and sigmoid scores [K], levels in stride order, priors (col*stride, row*stride).
//   Launch: block 256, grid ceil(K / 256).
//
// detector_select: twin of the CPU pipeline's detector.postprocess + PoseEstimator.detect, on boxes [K,4]
//   (input pixels) and scores [K] of one image:
//     1. keep score > score_threshold and a usable box (box_valid: geometry.valid_boxes), order by score
//        descending, ties by lower index (np.argsort stable);
//     2. greedy NMS at iou1 (skipped when the graph already ran NMS), at most max_det1 kept
//        (geometry.filter_detections);
//     3. input pixels -> image pixels: x / scale_x, y / scale_y (float32), clipped to [0, clip_w] x [0, clip_h]
//        (Letterbox.boxes_to_image and the clip of OnnxDetector.postprocess);
//     4. greedy NMS at iou2 on the image boxes that are still usable (a box wholly outside the frame is clipped
//        to zero area and dropped, as OnnxDetector.postprocess does) (the top-down demo's person NMS, geometry.nms);
//     5. the first max_persons boxes and scores are written; header = {count, total after step 4,
//        candidates after step 1, kept after step 2}.
//   IoU is computed in double with the operations of geometry.box_iou (compiled with --fmad=false), so
//   the kept set is exactly the CPU one. One block (blockDim.x threads, a multiple of 32); all state in
//   the scratch buffer `work` (see rtmw_edge/cuda/kernels.py: nms_scratch_bytes).

extern "C" __global__ void __launch_bounds__(256) rtmdet_rawhead_decode(
    const float* __restrict__ level0, int h0, int w0, int stride0,
    const float* __restrict__ level1, int h1, int w1, int stride1,
    const float* __restrict__ level2, int h2, int w2, int stride2,
    float* __restrict__ boxes, float* __restrict__ scores)
{
    const int n0 = h0 * w0, n1 = h1 * w1, n2 = h2 * w2;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n0 + n1 + n2) return;
    const float* map;
    int w, stride, j;
    if (i < n0) { map = level0; w = w0; stride = stride0; j = i; }
    else if (i < n0 + n1) { map = level1; w = w1; stride = stride1; j = i - n0; }
    else { map = level2; w = w2; stride = stride2; j = i - n0 - n1; }
    const float px = (float)((j % w) * stride);
    const float py = (float)((j / w) * stride);
    const float* cell = map + (size_t)j * 5;
    scores[i] = 1.0f / (1.0f + expf(-cell[0]));
    boxes[i * 4 + 0] = px - cell[1];
    boxes[i * 4 + 1] = py - cell[2];
    boxes[i * 4 + 2] = px + cell[3];
    boxes[i * 4 + 3] = py + cell[4];
}

// geometry.valid_boxes, the one rule for degenerate boxes: 0 < x2 - x1 <= 1e6 and 0 < y2 - y1 <= 1e6 in float32
// (false for zero-area and inverted boxes and for NaN or infinite coordinates)
__device__ __forceinline__ bool box_valid(const float* b)
{
    const float w = b[2] - b[0], h = b[3] - b[1];
    return w > 0.0f && w <= 1e6f && h > 0.0f && h <= 1e6f;
}

// IoU of two xyxy boxes, exactly as geometry.box_iou (float64, clip at 0, union > 0 else 0).
__device__ __forceinline__ double box_iou_f64(const float* a, const float* b)
{
    const double ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
    const double bx1 = b[0], by1 = b[1], bx2 = b[2], by2 = b[3];
    const double iw = fmax(fmin(ax2, bx2) - fmax(ax1, bx1), 0.0);
    const double ih = fmax(fmin(ay2, by2) - fmax(ay1, by1), 0.0);
    const double inter = iw * ih;
    const double area_a = fmax(ax2 - ax1, 0.0) * fmax(ay2 - ay1, 0.0);
    const double area_b = fmax(bx2 - bx1, 0.0) * fmax(by2 - by1, 0.0);
    const double uni = area_a + area_b - inter;
    return uni > 0.0 ? inter / fmax(uni, 1e-12) : 0.0;
}

// Greedy NMS over `n` boxes already in score order (box r at boxes + 4 * r); writes kept positions to
// `kept` and returns their number (the same value in every thread). `flags` holds n bytes of scratch.
// A box that is not box_valid starts suppressed: it is never kept and suppresses nothing.
__device__ int greedy_nms(const float* boxes, int n, double iou_threshold, int max_keep, int run,
                          unsigned char* flags, int* kept)
{
    for (int q = threadIdx.x; q < n; q += blockDim.x) flags[q] = box_valid(boxes + 4 * (size_t)q) ? 0 : 1;
    __syncthreads();
    int count = 0;
    for (int r = 0; r < n; ++r) {
        const bool suppressed = flags[r] != 0;   // written before the last barrier: the same in all threads
        __syncthreads();                         // nobody writes flags before everybody has read flags[r]
        if (suppressed) continue;
        if (threadIdx.x == 0) kept[count] = r;
        ++count;
        if (count >= max_keep) break;
        if (run) {
            const float* box = boxes + 4 * r;
            for (int q = r + 1 + threadIdx.x; q < n; q += blockDim.x) {
                if (!flags[q] && box_iou_f64(box, boxes + 4 * q) > iou_threshold) flags[q] = 1;
            }
        }
        __syncthreads();
    }
    __syncthreads();
    return count;
}

extern "C" __global__ void __launch_bounds__(512) detector_select(
    const float* __restrict__ boxes, const float* __restrict__ scores, int num_candidates,
    float score_threshold, int run_nms1, double iou1, int max_det1,
    float scale_x, float scale_y, float clip_w, float clip_h,
    double iou2, int max_persons,
    unsigned char* __restrict__ work,
    float* __restrict__ out_boxes, float* __restrict__ out_scores, int* __restrict__ header)
{
    // scratch layout (kernels.py: nms_scratch_layout): candidates | order | kept1 | kept2 (int32 x K),
    // sorted boxes | image boxes (float32 x 4K), sorted scores (float32 x K), flags (uint8 x K)
    const int K = num_candidates;
    int* candidates = (int*)work;
    int* order = candidates + K;
    int* kept1 = order + K;
    int* kept2 = kept1 + K;
    float* sorted_boxes = (float*)(kept2 + K);
    float* image_boxes = sorted_boxes + 4 * (size_t)K;
    float* sorted_scores = image_boxes + 4 * (size_t)K;
    unsigned char* flags = (unsigned char*)(sorted_scores + K);

    __shared__ int s_count;
    if (threadIdx.x == 0) s_count = 0;
    __syncthreads();

    // 1. threshold (NaN scores fail the comparison, as in numpy; degenerate boxes are no candidates), compact,
    //    then rank: order by score
    //    descending with ties broken by the lower index, which is np.argsort(-scores, kind="stable")
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
        if (scores[i] > score_threshold && box_valid(boxes + 4 * (size_t)i)) candidates[atomicAdd(&s_count, 1)] = i;
    }
    __syncthreads();
    const int n = s_count;
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const int i = candidates[p];
        const float si = scores[i];
        int rank = 0;
        for (int q = 0; q < n; ++q) {
            const int j = candidates[q];
            const float sj = scores[j];
            rank += (sj > si) || (sj == si && j < i);
        }
        order[rank] = i;
    }
    __syncthreads();
    for (int r = threadIdx.x; r < n; r += blockDim.x) {
        const int i = order[r];
        #pragma unroll
        for (int c = 0; c < 4; ++c) sorted_boxes[4 * r + c] = boxes[4 * i + c];
        sorted_scores[r] = scores[i];
    }
    __syncthreads();

    // 2. NMS in detector-input pixels
    const int n1 = greedy_nms(sorted_boxes, n, iou1, max_det1 > 0 ? max_det1 : n + 1, run_nms1, flags, kept1);

    // 3. to image pixels, clipped
    for (int r = threadIdx.x; r < n1; r += blockDim.x) {
        const float* b = sorted_boxes + 4 * kept1[r];
        float* o = image_boxes + 4 * r;
        o[0] = fminf(fmaxf(b[0] / scale_x, 0.0f), clip_w);
        o[1] = fminf(fmaxf(b[1] / scale_y, 0.0f), clip_h);
        o[2] = fminf(fmaxf(b[2] / scale_x, 0.0f), clip_w);
        o[3] = fminf(fmaxf(b[3] / scale_y, 0.0f), clip_h);
    }
    __syncthreads();

    // 4. person NMS in image pixels (the kept list is already in score order)
    const int n2 = greedy_nms(image_boxes, n1, iou2, n1 + 1, 1, flags, kept2);

    // 5. outputs
    const int count = min(n2, max_persons);
    for (int r = threadIdx.x; r < count; r += blockDim.x) {
        const int k = kept2[r];
        #pragma unroll
        for (int c = 0; c < 4; ++c) out_boxes[4 * r + c] = image_boxes[4 * k + c];
        out_scores[r] = sorted_scores[kept1[k]];
    }
    if (threadIdx.x == 0) {
        header[0] = count;
        header[1] = n2;
        header[2] = n;
        header[3] = n1;
    }
}
