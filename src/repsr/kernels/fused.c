/* repsr fused plain-network kernel: conv3x3 + PReLU stack, pixel shuffle and nearest skip, depth first.
 *
 * The image is cut into tiles; for each tile every layer is computed on the tile plus the halo the
 * remaining layers need (one pixel per 3x3 conv), in two ping-pong NHWC buffers that stay in L2. Bias and
 * PReLU are applied to each layer's accumulators before they are stored; the last layer adds the input
 * (nearest skip) and writes straight into the pixel-shuffled NCHW output. No full-size intermediate is
 * ever written. Threads (pthreads, not OpenMP: the process already runs torch's OpenMP runtime) take
 * tiles from a shared counter.
 *
 * Compiled once per instruction set (see repsr/kernels/build.py): -mavx2 -mfma (8 lanes) or
 * -mavx512f -mavx512bw -mavx512vl (16 lanes), plus -mavx512bf16 for the bf16 path (vdpbf16ps: activations
 * and weights bf16, accumulation, bias, PReLU and the output float32).
 *
 * int8 (u8 activations with a zero point, s8 weights, int32 sums; bias, PReLU and the output float32) in
 * three forms, all exact integer sums, so tile- and thread-independent like the others:
 *   -mavx512vnni: vpdpbusd on zmm (16 lanes);
 *   -mavxvnni (AVX2 CPUs with VEX vpdpbusd): the same on ymm (8 lanes), the same weights;
 *   plain AVX2: vpmaddubsw (u8 x s8 -> pairs summed in int16), two such steps (4 input channels each)
 *   added in int16, then vpmaddwd with ones (-> int32) into the accumulators. int16 must hold every lane's
 *   sum exactly, so fused.py limits each output channel's weight scale until 255 x (the sum of the
 *   same-sign weights sharing a lane) <= 32767 (`repsr_fused_int8_lane_weights` tells it how many share
 *   one: 4); the activations keep all 8 bits.
 * Outliers (all three forms, the same scalar C): an activation outside its layer's static input range is
 * clamped to 0 or 255 for the integer sums, and what the clamp cut off is kept as a float residual (per pixel
 * a flag byte, and the residuals in a side buffer paired with the ping-pong buffer); the next layer adds the
 * flagged neighbours' residuals times its float weights to its sum before bias and PReLU. Calibrated ranges
 * clip 1-7% of a photograph's pixels per layer, and without this the worst output pixel was 60-95 levels
 * from fp32 (docs/results/avx2-int8.md). The layer-0 input (the image, 0..1 -> 0..255) has none.
 *
 * Image-border semantics equal the PyTorch network's zero padding: every layer's values at positions
 * outside the image are set to zero before the next layer reads them, so the tiled result equals the
 * untiled one (the same sums in the same order per output pixel).
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAXL 64
#define MAXG 4 /* vector blocks of output channels per register tile */

#if defined(__AVX512F__)
#define VL 16
typedef __m512 vec;
#define vload(p) _mm512_loadu_ps(p)
#define vbcast(p) _mm512_set1_ps(*(p))
#define vfma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vstore(p, v) _mm512_storeu_ps(p, v)
#define vadd(a, b) _mm512_add_ps(a, b)
#define vzero() _mm512_setzero_ps()
static inline vec vprelu(vec x, vec a) {
    __mmask16 m = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mask_mul_ps(x, m, x, a);
}
/* pixels per register tile for 1..4 vector blocks: accumulators + weights + one broadcast <= 32 */
#define PB1 14
#define PB2 12
#define PB3 8
#define PB4 6
#elif defined(__AVX2__)
#define VL 8
typedef __m256 vec;
#define vload(p) _mm256_loadu_ps(p)
#define vbcast(p) _mm256_broadcast_ss(p)
#define vfma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vstore(p, v) _mm256_storeu_ps(p, v)
#define vadd(a, b) _mm256_add_ps(a, b)
#define vzero() _mm256_setzero_ps()
static inline vec vprelu(vec x, vec a) {
    vec m = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(x, _mm256_mul_ps(x, a), m);
}
/* <= 16 ymm registers */
#define PB1 12
#define PB2 6
#define PB3 4
#define PB4 2
#else
#error "repsr fused kernel needs AVX2+FMA or AVX-512"
#endif

#if defined(__AVX512BF16__)
#define HAVE_BF16 1
#else
#define HAVE_BF16 0
#endif

/* INT8: 0 none, 1 AVX512-VNNI (zmm vpdpbusd), 2 AVX-VNNI (ymm vpdpbusd), 3 AVX2 (vpmaddubsw, int16 pairs) */
#if defined(__AVX512VNNI__)
#define INT8 1
#elif defined(__AVX512F__)
#define INT8 0
#elif defined(__AVXVNNI__)
#define INT8 2
#else
#define INT8 3
#endif
#define HAVE_INT8 (INT8 != 0)
/* weights summed in one int16 lane before widening (0: none, vpdpbusd sums in int32) */
#define INT8_LANE_WEIGHTS (INT8 == 3 ? 4 : 0)

#if INT8 == 1
typedef __m512i ivec;
#define icvt(a) _mm512_cvtepi32_ps(a)
#elif INT8 >= 2
typedef __m256i ivec;
#define icvt(a) _mm256_cvtepi32_ps(a)
#endif

/* int8 register tiles: as fp32 where vpdpbusd accumulates in place; the AVX2 form also needs ones, two
 * broadcasts and two temporaries (its weights are read from L1 by the multiplies) */
#if defined(__AVX512F__) || defined(__AVXVNNI__)
#define PBI1 PB1
#define PBI2 PB2
#define PBI3 PB3
#define PBI4 PB4
#else
#define PBI1 11
#define PBI2 5
#define PBI3 3
#define PBI4 2
#endif

#define PB_MAX 14

typedef struct {
    int cin, cout, cpad, istr; /* istr: elements per pixel in this layer's input buffer */
    const void *w;             /* fp32 [9][cin][cpad], bf16 [9][ceil(cin/2)][cpad][2], int8 [9][ceil(cin/4)][cpad][4] */
    const float *b, *a;        /* [cpad] each; a unused for the last layer */
    const float *mul;          /* int8: [cpad] input scale x weight scale per output channel */
    const float *wf;           /* int8: the float weights [9][cin][cpad], for the input's outliers */
    float qinv, qzero;         /* int8: quantization of this layer's INPUT: q = round(x * qinv + qzero) */
    float qstep;               /* int8: 1 / qinv, the input's step */
} Layer;

typedef struct {
    int mode; /* 0 fp32, 1 bf16, 2 int8 */
    int nl, in_ch, scale, n, H, W, th, tw, tiles_y, tiles_x;
    Layer L[MAXL];
    const float *in;
    float *out;     /* float (n, in_ch, H*s, W*s), or NULL when writing out8 */
    uint8_t *out8;  /* 8-bit pixels (n, H*s, W*s, in_ch), floor(clamp(255 x) + 0.5), or NULL */
    int next;
    int failed;
    size_t rstride; /* elements per buffer row */
    size_t bufelems;
    /* int8 outliers: per buffer pixel a byte of flags (bit g: output-channel group g has values outside the
     * next layer's input range) and maxstr floats of residuals; fstride pixels per row */
    size_t fstride, flagbytes, rpix;
    size_t out_off[MAXL * 16], skip_off[MAXL * 16]; /* per output channel of the last layer */
#if defined(__AVX512F__)
    /* last layer, element k of an output row segment (pixel k / s, sub-column k % s): its offset in the
     * register tile's floats (plus the row's first channel) and its LR pixel, 16 lanes per entry */
    __m512i tidx[(4 * PB_MAX + VL - 1) / VL], sidx[(4 * PB_MAX + VL - 1) / VL];
    /* the same for an out8 row segment: element k is pixel k / (C s), sub-column k / C % s, channel k % C */
    __m512i tidx8[(4 * 3 * PB_MAX + VL - 1) / VL], sidx8[(4 * 3 * PB_MAX + VL - 1) / VL];
#endif
} Job;

/* ---------------------------------------------------------------------------------------- fp32 conv */

static inline __attribute__((always_inline)) void conv_f32(const int NB, const int PB, const float *ip,
                                                           int istr, size_t rstride, int cin,
                                                           const float *w, int wpad, const float *bias,
                                                           vec acc[PB_MAX][MAXG]) {
#pragma GCC unroll 14
    for (int p = 0; p < PB; p++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[p][b] = vload(bias + b * VL);
    for (int dy = 0; dy < 3; dy++) {
        for (int dx = 0; dx < 3; dx++) {
            const float *src = ip + dy * rstride + dx * istr;
            const float *wt = w + (size_t)(dy * 3 + dx) * cin * wpad;
            for (int ci = 0; ci < cin; ci++) {
                vec wv[MAXG];
#pragma GCC unroll 4
                for (int b = 0; b < NB; b++) wv[b] = vload(wt + (size_t)ci * wpad + b * VL);
#pragma GCC unroll 14
                for (int p = 0; p < PB; p++) {
                    vec x = vbcast(src + p * istr + ci);
#pragma GCC unroll 4
                    for (int b = 0; b < NB; b++) acc[p][b] = vfma(x, wv[b], acc[p][b]);
                }
            }
        }
    }
}

#if HAVE_BF16
static inline __attribute__((always_inline)) void conv_bf16(const int NB, const int PB, const uint16_t *ip,
                                                            int istr, size_t rstride, int cin2,
                                                            const uint16_t *w, int wpad, const float *bias,
                                                            vec acc[PB_MAX][MAXG]) {
#pragma GCC unroll 14
    for (int p = 0; p < PB; p++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[p][b] = vload(bias + b * VL);
    for (int dy = 0; dy < 3; dy++) {
        for (int dx = 0; dx < 3; dx++) {
            const uint16_t *src = ip + dy * rstride + dx * istr;
            const uint16_t *wt = w + (size_t)(dy * 3 + dx) * cin2 * wpad * 2;
            for (int k = 0; k < cin2; k++) {
                __m512bh wv[MAXG];
#pragma GCC unroll 4
                for (int b = 0; b < NB; b++)
                    wv[b] = (__m512bh)_mm512_loadu_si512((const void *)(wt + ((size_t)k * wpad + b * VL) * 2));
#pragma GCC unroll 14
                for (int p = 0; p < PB; p++) {
                    int32_t pair;
                    memcpy(&pair, src + p * istr + 2 * k, 4);
                    __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
                    for (int b = 0; b < NB; b++) acc[p][b] = _mm512_dpbf16_ps(acc[p][b], x, wv[b]);
                }
            }
        }
    }
}
#endif

#if INT8 == 1 || INT8 == 2
#if INT8 == 1
#define iload(p) _mm512_loadu_si512((const void *)(p))
#define izero() _mm512_setzero_si512()
#define ibcast(q) _mm512_set1_epi32(q)
#define idot(acc, x, w) _mm512_dpbusd_epi32(acc, x, w)
#else
#define iload(p) _mm256_loadu_si256((const __m256i *)(p))
#define izero() _mm256_setzero_si256()
#define ibcast(q) _mm256_set1_epi32(q)
#define idot(acc, x, w) _mm256_dpbusd_avx_epi32(acc, x, w)
#endif
static inline __attribute__((always_inline)) void conv_i8(const int NB, const int PB, const uint8_t *ip,
                                                          int istr, size_t rstride, int cin4, const int8_t *w,
                                                          int wpad, ivec acc[PB_MAX][MAXG]) {
#pragma GCC unroll 14
    for (int p = 0; p < PB; p++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[p][b] = izero();
    for (int dy = 0; dy < 3; dy++) {
        for (int dx = 0; dx < 3; dx++) {
            const uint8_t *src = ip + dy * rstride + dx * istr;
            const int8_t *wt = w + (size_t)(dy * 3 + dx) * cin4 * wpad * 4;
            for (int k = 0; k < cin4; k++) {
                ivec wv[MAXG];
#pragma GCC unroll 4
                for (int b = 0; b < NB; b++) wv[b] = iload(wt + ((size_t)k * wpad + b * VL) * 4);
#pragma GCC unroll 14
                for (int p = 0; p < PB; p++) {
                    int32_t quad;
                    memcpy(&quad, src + p * istr + 4 * k, 4);
                    ivec x = ibcast(quad);
#pragma GCC unroll 4
                    for (int b = 0; b < NB; b++) acc[p][b] = idot(acc[p][b], x, wv[b]);
                }
            }
        }
    }
}
#elif INT8 == 3
/* vpmaddubsw: each int16 lane gets a0 w0 + a1 w1 of one channel pair; two quads' (input channels 4k..4k+7)
 * results added in int16 (exact: fused.py bounds the four weights' same-sign sums), then vpmaddwd with ones
 * sums the lane pairs into int32. An odd last quad goes alone.
 *
 * One asm statement per pixel and pair of blocks: as intrinsics gcc keeps every weight vector of the tile in
 * a register (loop-invariant over the pixels), reassociates the int32 sums and spills accumulators; here
 * the weights are the multiplies' memory operands (L1) and a pixel needs its accumulators, ones, one
 * broadcast and three temporaries: PB NB + 5 <= 16 ymm. */
#define Q(p) (*(const int32_t *)(const void *)(p))
#define W(p) (*(const __m256i *)(const void *)(p))
/* blocks b, b+1 of one pixel, quads k (weights w0) and k+1 (w1) */
static inline __attribute__((always_inline)) void mac2x2(__m256i *a0, __m256i *a1, const uint8_t *x,
                                                         const int8_t *w0, const int8_t *w1, __m256i ones) {
    __m256i v, t0, t1, u;
    __asm__("vpbroadcastd %[x0], %[v]\n\t"
            "vpmaddubsw %[w00], %[v], %[t0]\n\t"
            "vpmaddubsw %[w01], %[v], %[t1]\n\t"
            "vpbroadcastd %[x1], %[v]\n\t"
            "vpmaddubsw %[w10], %[v], %[u]\n\t"
            "vpaddw %[u], %[t0], %[t0]\n\t"
            "vpmaddubsw %[w11], %[v], %[u]\n\t"
            "vpaddw %[u], %[t1], %[t1]\n\t"
            "vpmaddwd %[ones], %[t0], %[t0]\n\t"
            "vpmaddwd %[ones], %[t1], %[t1]\n\t"
            "vpaddd %[t0], %[a0], %[a0]\n\t"
            "vpaddd %[t1], %[a1], %[a1]"
            : [a0] "+x"(*a0), [a1] "+x"(*a1), [v] "=&x"(v), [t0] "=&x"(t0), [t1] "=&x"(t1), [u] "=&x"(u)
            : [x0] "m"(Q(x)), [x1] "m"(Q(x + 4)), [w00] "m"(W(w0)), [w01] "m"(W(w0 + 32)),
              [w10] "m"(W(w1)), [w11] "m"(W(w1 + 32)), [ones] "x"(ones));
}
static inline __attribute__((always_inline)) void mac1x2(__m256i *a0, const uint8_t *x, const int8_t *w0,
                                                         const int8_t *w1, __m256i ones) {
    __m256i v, t0, u;
    __asm__("vpbroadcastd %[x0], %[v]\n\t"
            "vpmaddubsw %[w00], %[v], %[t0]\n\t"
            "vpbroadcastd %[x1], %[v]\n\t"
            "vpmaddubsw %[w10], %[v], %[u]\n\t"
            "vpaddw %[u], %[t0], %[t0]\n\t"
            "vpmaddwd %[ones], %[t0], %[t0]\n\t"
            "vpaddd %[t0], %[a0], %[a0]"
            : [a0] "+x"(*a0), [v] "=&x"(v), [t0] "=&x"(t0), [u] "=&x"(u)
            : [x0] "m"(Q(x)), [x1] "m"(Q(x + 4)), [w00] "m"(W(w0)), [w10] "m"(W(w1)), [ones] "x"(ones));
}
/* a lone quad k (weights w0): blocks b, b+1 / block b */
static inline __attribute__((always_inline)) void mac2x1(__m256i *a0, __m256i *a1, const uint8_t *x,
                                                         const int8_t *w0, __m256i ones) {
    __m256i v, t0, t1;
    __asm__("vpbroadcastd %[x0], %[v]\n\t"
            "vpmaddubsw %[w00], %[v], %[t0]\n\t"
            "vpmaddubsw %[w01], %[v], %[t1]\n\t"
            "vpmaddwd %[ones], %[t0], %[t0]\n\t"
            "vpmaddwd %[ones], %[t1], %[t1]\n\t"
            "vpaddd %[t0], %[a0], %[a0]\n\t"
            "vpaddd %[t1], %[a1], %[a1]"
            : [a0] "+x"(*a0), [a1] "+x"(*a1), [v] "=&x"(v), [t0] "=&x"(t0), [t1] "=&x"(t1)
            : [x0] "m"(Q(x)), [w00] "m"(W(w0)), [w01] "m"(W(w0 + 32)), [ones] "x"(ones));
}
static inline __attribute__((always_inline)) void mac1x1(__m256i *a0, const uint8_t *x, const int8_t *w0,
                                                         __m256i ones) {
    __m256i v, t0;
    __asm__("vpbroadcastd %[x0], %[v]\n\t"
            "vpmaddubsw %[w00], %[v], %[t0]\n\t"
            "vpmaddwd %[ones], %[t0], %[t0]\n\t"
            "vpaddd %[t0], %[a0], %[a0]"
            : [a0] "+x"(*a0), [v] "=&x"(v), [t0] "=&x"(t0)
            : [x0] "m"(Q(x)), [w00] "m"(W(w0)), [ones] "x"(ones));
}
static inline __attribute__((always_inline)) void conv_i8(const int NB, const int PB, const uint8_t *ip,
                                                          int istr, size_t rstride, int cin4, const int8_t *w,
                                                          int wpad, ivec acc[PB_MAX][MAXG]) {
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 14
    for (int p = 0; p < PB; p++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) acc[p][b] = _mm256_setzero_si256();
    for (int dy = 0; dy < 3; dy++) {
        for (int dx = 0; dx < 3; dx++) {
            const uint8_t *src = ip + dy * rstride + dx * istr;
            const int8_t *wt = w + (size_t)(dy * 3 + dx) * cin4 * wpad * 4;
            int k = 0;
            for (; k + 2 <= cin4; k += 2) {
                const int8_t *w0 = wt + (size_t)k * wpad * 4, *w1 = w0 + (size_t)wpad * 4;
#pragma GCC unroll 14
                for (int p = 0; p < PB; p++) {
                    const uint8_t *x = src + p * istr + 4 * k;
                    int b = 0;
#pragma GCC unroll 2
                    for (; b + 2 <= NB; b += 2)
                        mac2x2(&acc[p][b], &acc[p][b + 1], x, w0 + b * VL * 4, w1 + b * VL * 4, ones);
                    if (b < NB) mac1x2(&acc[p][b], x, w0 + b * VL * 4, w1 + b * VL * 4, ones);
                }
            }
            if (k < cin4) {
                const int8_t *w0 = wt + (size_t)k * wpad * 4;
#pragma GCC unroll 14
                for (int p = 0; p < PB; p++) {
                    const uint8_t *x = src + p * istr + 4 * k;
                    int b = 0;
#pragma GCC unroll 2
                    for (; b + 2 <= NB; b += 2) mac2x1(&acc[p][b], &acc[p][b + 1], x, w0 + b * VL * 4, ones);
                    if (b < NB) mac1x1(&acc[p][b], x, w0 + b * VL * 4, ones);
                }
            }
        }
    }
}
#undef Q
#undef W
#endif

/* One row segment of one layer: output pixels (r, c0..c1) of output-channel group g (NB blocks).
 * Intermediate layers: PReLU, store into `obuf` (may write up to PB-1 pixels past c1: padding columns).
 * Last layer: add the skip and scatter into the pixel-shuffled output (only pixels < c1). */
typedef struct {
    const Job *job;
    const Layer *ly;
    int last;
    const void *ibuf;
    void *obuf;
    const Layer *next; /* the following layer (its input quantization), NULL for the last */
    int img, gy, gx0; /* global LR row of this buffer row, global LR column of buffer column 0 */
    /* int8 outliers (NULL otherwise): this layer's input flags and residuals (NULL for layer 0: the image),
     * and its output's (NULL for the last layer) */
    const uint8_t *iflag;
    const float *ires;
    uint8_t *oflag;
    float *ores;
    float *scratch; /* int8: the outlier window, 3 (PB_MAX + 2) rpix floats */
} RowCtx;

#if HAVE_INT8
/* int8 outliers. Every u8 activation is q = round(v qinv + qzero) clamped to 0..255; a value outside the
 * range (q < 0 or q > 255 before the clamp) is an outlier: its pixel's flag gets the bit of its output-channel
 * group g, and the pixel's residuals of that group (maxstr floats per pixel) get v - (clamped q - qzero) qstep
 * for the outliers, 0 for the others. The next layer adds the residuals of its 3x3 input window's flagged
 * pixels times its float weights (`outlier_sparse`, `outlier_dense`) to the integer sum: clipped values count
 * in full. Both
 * sides are per pixel and in a fixed order, so tile- and thread-independent; the arithmetic is the same on
 * every int8 path (the quantization the epilogue stores: cvtps2dq, round half to even, INT32_MIN out of
 * range, which the store clamps to 0; the residual one fnmadd). */
#if INT8 == 1
static inline vec residual_of(vec v, const Layer *nx) {
    const __m512 t = _mm512_fmadd_ps(v, _mm512_set1_ps(nx->qinv), _mm512_set1_ps(nx->qzero));
    const __m512i q = _mm512_cvtps_epi32(t);
    const __m512i qc = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()), _mm512_set1_epi32(255));
    const __mmask16 out = _mm512_cmpneq_epi32_mask(q, qc);
    const vec r = _mm512_fnmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(qc), _mm512_set1_ps(nx->qzero)),
                                   _mm512_set1_ps(nx->qstep), v);
    return _mm512_maskz_mov_ps(out, r);
}
static inline unsigned nonzero_lanes(const float *p) {
    return (unsigned)_mm512_cmp_ps_mask(_mm512_loadu_ps(p), _mm512_setzero_ps(), _CMP_NEQ_UQ);
}
#else
static inline vec residual_of(vec v, const Layer *nx) {
    const __m256 t = _mm256_fmadd_ps(v, _mm256_set1_ps(nx->qinv), _mm256_set1_ps(nx->qzero));
    const __m256i q = _mm256_cvtps_epi32(t);
    const __m256i qc = _mm256_min_epi32(_mm256_max_epi32(q, _mm256_setzero_si256()), _mm256_set1_epi32(255));
    const __m256 in = _mm256_castsi256_ps(_mm256_cmpeq_epi32(q, qc));
    const vec r = _mm256_fnmadd_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(qc), _mm256_set1_ps(nx->qzero)),
                                   _mm256_set1_ps(nx->qstep), v);
    return _mm256_blendv_ps(r, _mm256_setzero_ps(), in);
}
static inline unsigned nonzero_lanes(const float *p) {
    return (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p), _mm256_setzero_ps(), _CMP_NEQ_UQ));
}
#endif

/* The outliers of a register tile (row r, its `pb` valid pixels from column c, output group g) whose
 * quantization found some: per pixel with any, its flag bit and residuals. The accumulators come through
 * memory (`tile`, PB_MAX x MAXG vectors), so the tile costs one call, not one per pixel. */
static __attribute__((noinline)) void store_outliers(const RowCtx *cx, int r, int c, int g, int nb, int pb,
                                                     const float *tile) {
    const Job *job = cx->job;
    const Layer *ly = cx->ly;
    for (int p = 0; p < pb; p++) {
        vec res[MAXG];
        unsigned any = 0;
        for (int b = 0; b < nb; b++) {
            const vec a = vload(tile + (p * MAXG + b) * VL);
            res[b] = residual_of(vprelu(a, vload(ly->a + g * MAXG * VL + b * VL)), cx->next);
            any |= nonzero_lanes((const float *)&res[b]);
        }
        if (!any) continue;
        const size_t px = (size_t)r * job->fstride + c + p;
        cx->oflag[px] = (uint8_t)(cx->oflag[px] | (1u << g));
        float *out = cx->ores + px * job->rpix + g * MAXG * VL;
        for (int b = 0; b < nb; b++) vstore(out + b * VL, res[b]);
    }
}

/* The outliers' terms of a register tile (row r, columns c..c+PB-1, output group g): per output pixel p the
 * sum over its 3x3 input window's flagged pixels (and their flagged groups) of residual x float weight, in
 * one FMA chain from 0 in the order (tap dy, dx; input channel), into extra[p][b * VL ...] (MAXG * VL floats
 * per pixel). Two ways to the same sums: `outlier_sparse` visits only the nonzero residuals (few flagged
 * pixels, photographs); `outlier_dense` copies the window's residuals (0 where not flagged) and runs the fp32
 * register tile over all of them (most pixels flagged, noise or graphics: no data-dependent branches). A zero
 * residual's FMA leaves a sum as it is, so both give the same floats and the choice may depend on the tile. */
/* bit j: byte j of p[0..n) (n <= 16) is not 0; reads 16 bytes (a flag row has PB_MAX + 2 columns of room) */
static inline unsigned nonzero_byte_bits(const uint8_t *p, int n) {
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
    return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) & ((1u << n) - 1u);
}

static inline __attribute__((always_inline)) void outlier_sparse(const int NB, const int PB, const RowCtx *cx,
                                                                 int r, int c, int g, int valid, float *extra) {
    /* the flagged window pixels (row dy, column j) in order, their nonzero residuals in channel order; each
     * updates only the pixel sums it reaches, p = j - dx for taps dx 0..2 (at most 3 of the PB), kept in
     * `extra` (L1): every pixel's chain is the order (dy, dx, channel), as the dense way's. The branch-free
     * form before ran every residual through all PB pixels (+0 x a weight for those out of reach). */
    const Job *job = cx->job;
    const Layer *ly = cx->ly;
    const int cin = ly->cin, cpad = ly->cpad;
    const size_t fs = job->fstride, rp = job->rpix;
#pragma GCC unroll 14
    for (int p = 0; p < PB; p++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) vstore(extra + (p * MAXG + b) * VL, vzero());
    for (int dy = 0; dy < 3; dy++) {
        const size_t row = (size_t)(r - 1 + dy) * fs + (size_t)(c - 1);
        const float *wrow = ly->wf + (size_t)(dy * 3) * cin * cpad + g * MAXG * VL; /* tap (dy, 0) */
        unsigned cols = nonzero_byte_bits(cx->iflag + row, valid + 2); /* the valid pixels' inputs */
        while (cols) {
            const int j = __builtin_ctz(cols);
            cols &= cols - 1u;
            const unsigned flags = cx->iflag[row + j];
            const float *res = cx->ires + (row + j) * rp;
            const int p0 = j - 2 > 0 ? j - 2 : 0, p1 = j < PB - 1 ? j : PB - 1; /* the pixels it reaches */
            for (int k = 0; k < cin; k += 32) { /* 32 channels per mask word */
                uint32_t lanes = 0;
                for (int kk = k; kk < k + 32 && kk < cin; kk += VL)
                    if (flags >> (kk / (MAXG * VL)) & 1u) lanes |= (uint32_t)nonzero_lanes(res + kk) << (kk - k);
                if (cin - k < 32) lanes &= (UINT32_C(1) << (cin - k)) - 1u;
                while (lanes) {
                    const int ci = k + __builtin_ctz(lanes);
                    lanes &= lanes - 1u;
                    const vec x = vbcast(res + ci);
                    for (int p = p1; p >= p0; p--) { /* tap dx = j - p ascending */
                        const float *wt = wrow + ((size_t)(j - p) * cin + ci) * cpad;
                        float *sum = extra + p * MAXG * VL;
#pragma GCC unroll 4
                        for (int b = 0; b < NB; b++)
                            vstore(sum + b * VL, vfma(x, vload(wt + b * VL), vload(sum + b * VL)));
                    }
                }
            }
        }
    }
}

static const float ZEROS[MAXG * VL];
/* a register tile takes the dense way where more than OUTLIER_DENSE / 3 of its window's pixels are flagged
 * (x2 960x540, cachegrind instructions + 15 cycles per mispredicted branch: 2 is best on a photograph and on
 * noise; 1: +1% / +7%, 3 (never): 0 / +10%) */
#define OUTLIER_DENSE 2

static inline __attribute__((always_inline)) void outlier_dense(const int NB, const int PB, const RowCtx *cx,
                                                                int r, int c, int g, float *extra) {
    const Job *job = cx->job;
    const Layer *ly = cx->ly;
    const int cin = ly->cin;
    const size_t fs = job->fstride, rp = job->rpix;
    float *win = cx->scratch; /* [3][PB + 2][rpix] */
    for (int dy = 0; dy < 3; dy++) {
        const size_t row = (size_t)(r - 1 + dy) * fs + (size_t)(c - 1);
        for (int j = 0; j < PB + 2; j++) {
            const unsigned flags = cx->iflag[row + j];
            const float *res = cx->ires + (row + j) * rp;
            float *dst = win + ((size_t)dy * (PB + 2) + j) * rp;
            for (int k = 0; k < cin; k += VL)
                vstore(dst + k, flags >> (k / (MAXG * VL)) & 1u ? vload(res + k) : vzero());
        }
    }
    vec acc[PB_MAX][MAXG];
    conv_f32(NB, PB, win, (int)rp, (PB + 2) * rp, cin, ly->wf + g * MAXG * VL, ly->cpad, ZEROS, acc);
#pragma GCC unroll 14
    for (int p = 0; p < PB; p++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) vstore(extra + (p * MAXG + b) * VL, acc[p][b]);
}

/* out of line, one copy per block count and its register tile */
#define DEFINE_OUTLIER_TERMS(NB, PB)                                                                      \
    static __attribute__((noinline)) void outlier_sparse_##NB(const RowCtx *cx, int r, int c, int g,      \
                                                             int valid, float *extra) {                   \
        outlier_sparse(NB, PB, cx, r, c, g, valid, extra);                                                \
    }                                                                                                     \
    static __attribute__((noinline)) void outlier_dense_##NB(const RowCtx *cx, int r, int c, int g,       \
                                                            float *extra) {                               \
        outlier_dense(NB, PB, cx, r, c, g, extra);                                                        \
    }
DEFINE_OUTLIER_TERMS(1, PBI1)
DEFINE_OUTLIER_TERMS(2, PBI2)
DEFINE_OUTLIER_TERMS(3, PBI3)
DEFINE_OUTLIER_TERMS(4, PBI4)

/* How many pixels of a register tile's input window (rows r-1..r+1, columns c-1..c+valid) are flagged: at most
 * PB + 2 <= 16 bytes per row, read as two words (a flag row has PB_MAX + 2 columns of room past the tile).
 * Only the columns of the tile's `valid` pixels count: past them, the previous layer's register tiles ran
 * over the row's end on whatever the buffer held, and their flags (a row's last tile, on any input: 5% of
 * all tiles at x2) would send this tile down the outlier path for outputs nobody keeps. */
static inline uint64_t nonzero_bytes(uint64_t w) { /* bit 0 of each byte: the byte is not 0 */
    w |= w >> 4;
    w |= w >> 2;
    w |= w >> 1;
    return w & UINT64_C(0x0101010101010101);
}
static inline __attribute__((always_inline)) int window_flagged(const RowCtx *cx, const int PB, int r, int c,
                                                                int valid) {
    const size_t fs = cx->job->fstride;
    const uint8_t *f = cx->iflag + (size_t)(r - 1) * fs + (c - 1);
    const int n = valid + 2;
    const uint64_t m0 = n >= 8 ? ~UINT64_C(0) : (UINT64_C(1) << (8 * n)) - 1;
    const uint64_t m1 = n >= 16 ? ~UINT64_C(0) : n <= 8 ? 0 : (UINT64_C(1) << (8 * (n - 8))) - 1;
    uint64_t any = 0, count = 0;
#pragma GCC unroll 3
    for (int dy = 0; dy < 3; dy++) {
        uint64_t w0, w1 = 0;
        memcpy(&w0, f + dy * fs, 8);
        if (PB + 2 > 8) memcpy(&w1, f + dy * fs + 8, 8);
        w0 &= m0;
        w1 &= m1;
        any |= w0 | w1;
        count += nonzero_bytes(w0) + nonzero_bytes(w1); /* per byte at most 6: no carry */
    }
    return any ? (int)((count * UINT64_C(0x0101010101010101)) >> 56) : 0;
}
#endif

/* Q8: called by an int8 row (a constant: the fp32 and bf16 rows get none of the int8 code, whose
 * outlier calls would otherwise keep their accumulators in memory) */
static inline __attribute__((always_inline)) void epilogue(const int Q8, const int NB, const int PB,
                                                           const RowCtx *cx, int r, int c, int g, int valid,
                                                           vec acc[PB_MAX][MAXG]) {
    const Job *job = cx->job;
    const Layer *ly = cx->ly;
    if (!cx->last) {
        int ostr = ly->cpad;
        size_t base = (size_t)r * job->rstride + (size_t)c * ostr + g * MAXG * VL;
#if HAVE_INT8
        if (Q8) {
            /* u8 for the next layer: round half to even, clamp to 0..255. Invariants in locals (the byte
             * stores may alias anything); the unclamped q of the whole register tile OR-ed together: a value
             * is an outlier where q has bits above 0xFF (q < 0 or q > 255), tested once per tile. */
            const vec qi = vbcast(&cx->next->qinv), qz = vbcast(&cx->next->qzero);
            vec alpha[MAXG];
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) alpha[b] = vload(ly->a + g * MAXG * VL + b * VL);
            uint8_t *const ob = (uint8_t *)cx->obuf + base;
#if INT8 == 1
            __m512i high = _mm512_setzero_si512();
#else
            __m256i high = _mm256_setzero_si256();
#endif
#pragma GCC unroll 14
            for (int p = 0; p < PB; p++) {
#pragma GCC unroll 4
                for (int b = 0; b < NB; b++) {
                    const vec v = vprelu(acc[p][b], alpha[b]);
#if INT8 == 1
                    __m512i q = _mm512_cvtps_epi32(_mm512_fmadd_ps(v, qi, qz));
                    if (p < valid) high = _mm512_or_si512(high, q); /* past them: nobody reads them */
                    q = _mm512_max_epi32(q, _mm512_setzero_si512());
                    _mm_storeu_si128((__m128i *)(ob + p * ostr + b * VL), _mm512_cvtusepi32_epi8(q));
#else
                    /* signed saturation to int16, then unsigned to u8 (what max(q, 0) and vpmovusdb give on
                     * AVX-512), the 8 bytes stored at once */
                    __m256i q = _mm256_cvtps_epi32(_mm256_fmadd_ps(v, qi, qz));
                    if (p < valid) high = _mm256_or_si256(high, q);
                    q = _mm256_packs_epi32(q, q);
                    q = _mm256_packus_epi16(q, q);
                    __m128i lo = _mm_unpacklo_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
                    _mm_storel_epi64((__m128i *)(ob + p * ostr + b * VL), lo);
#endif
                }
            }
            uint8_t *const flag = cx->oflag + (size_t)r * job->fstride + c;
            if (g == 0) memset(flag, 0, PB); /* group 0 sets this layer's flags, later groups add bits */
#if INT8 == 1
            const int any = _mm512_test_epi32_mask(high, _mm512_set1_epi32(~0xFF)) != 0;
#else
            const int any = !_mm256_testz_si256(high, _mm256_set1_epi32(~0xFF));
#endif
            if (any) {
                float tile[PB_MAX * MAXG * VL] __attribute__((aligned(64)));
#pragma GCC unroll 14
                for (int p = 0; p < PB; p++)
#pragma GCC unroll 4
                    for (int b = 0; b < NB; b++) vstore(tile + (p * MAXG + b) * VL, acc[p][b]);
                store_outliers(cx, r, c, g, NB, valid, tile);
            }
            return;
        }
#else
        (void)Q8;
#endif
#pragma GCC unroll 14
        for (int p = 0; p < PB; p++) {
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) {
                vec v = vprelu(acc[p][b], vload(ly->a + g * MAXG * VL + b * VL));
#if HAVE_BF16
                if (job->mode == 1) {
                    __m256bh h = _mm512_cvtneps_pbh(v);
                    _mm256_storeu_si256((__m256i *)((uint16_t *)cx->obuf + base + p * ostr + b * VL),
                                        (__m256i)h);
                    continue;
                }
#endif
                vstore((float *)cx->obuf + base + p * ostr + b * VL, v);
            }
        }
        return;
    }
    /* last layer: channel co = ch * s*s + i * s + j -> out[img][ch][gy*s + i][gx*s + j] (+ in[ch][gy][gx]) */
    float tmp[PB_MAX][MAXG * VL];
#pragma GCC unroll 14
    for (int p = 0; p < PB; p++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++) vstore(&tmp[p][b * VL], acc[p][b]);
    const int s = job->scale, H = job->H, W = job->W, C = job->in_ch;
    const size_t OW = (size_t)W * s;
    const float *in = job->in + (size_t)cx->img * C * H * W + (size_t)cx->gy * W + cx->gx0 + c;
    const int co0 = g * MAXG * VL, co1 = co0 + NB * VL < ly->cout ? co0 + NB * VL : ly->cout;
    if (job->out8) {
        /* pixel rows (gy*s + i) of the (n, H*s, W*s, C) array: C * s * valid consecutive bytes each */
        uint8_t *out8 = job->out8 + (((size_t)cx->img * H + cx->gy) * s * OW + (size_t)(cx->gx0 + c) * s) * C;
#if defined(__AVX512F__)
        if (co0 == 0 && co1 == ly->cout && s <= 4 && C <= 3) {
            const int E = C * s * valid;
            const __m512 peak = _mm512_set1_ps(255.0f), zero = _mm512_setzero_ps(), half = _mm512_set1_ps(0.5f);
            for (int i = 0; i < s; i++) {
                const __m512i base = _mm512_set1_epi32(i * s);
                uint8_t *dst = out8 + (size_t)i * OW * C;
                for (int k0 = 0, q = 0; k0 < E; k0 += VL, q++) {
                    const __mmask16 m = E - k0 >= VL ? (__mmask16)0xFFFF : (__mmask16)((1u << (E - k0)) - 1);
                    __m512 v = _mm512_mask_i32gather_ps(zero, m, _mm512_add_epi32(job->tidx8[q], base),
                                                        &tmp[0][0], 4);
                    v = _mm512_add_ps(v, _mm512_mask_i32gather_ps(zero, m, job->sidx8[q], in, 4));
                    /* repsr.image.pixels' rule: clamp(255 v), + 0.5, floor (truncation: v >= 0), NaN -> 0 */
                    v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, peak), zero), peak);
                    v = _mm512_add_ps(v, half);
                    _mm_mask_storeu_epi8(dst + k0, m, _mm512_cvtusepi32_epi8(_mm512_cvttps_epi32(v)));
                }
            }
            return;
        }
#endif
        for (int co = co0; co < co1; co++) {
            const int ch = co / (s * s), i = co / s % s, j = co % s;
            const float *skip = in + job->skip_off[co];
            uint8_t *dst = out8 + ((size_t)i * OW + j) * C + ch;
            for (int p = 0; p < valid; p++) {
                float v = (tmp[p][co - co0] + skip[p]) * 255.0f;
                v = v > 0.0f ? (v < 255.0f ? v : 255.0f) : 0.0f; /* NaN -> 0 */
                dst[(size_t)p * s * C] = (uint8_t)(int)(v + 0.5f);   /* half up, as repsr.image.pixels */
            }
        }
        return;
    }
    float *out = job->out + (size_t)cx->img * C * H * s * OW + (size_t)cx->gy * s * OW +
                 (size_t)(cx->gx0 + c) * s;
#if defined(__AVX512F__)
    if (co0 == 0 && co1 == ly->cout && s <= 4) {
        /* the whole last layer in this group (3 s^2 <= 64 channels): each output row (ch, i) of the tile's
         * pixels is s * valid consecutive floats, gathered 16 at a time from the accumulators (tidx) and
         * the input row (sidx: the nearest skip repeats each LR pixel s times), one masked store each */
        const int E = s * valid;
        const size_t plane = (size_t)H * s * OW;
        for (int ch = 0; ch < C; ch++) {
            const float *skip = in + (size_t)ch * H * W;
            for (int i = 0; i < s; i++) {
                const __m512i base = _mm512_set1_epi32(ch * s * s + i * s);
                float *dst = out + ch * plane + (size_t)i * OW;
                for (int k0 = 0, q = 0; k0 < E; k0 += VL, q++) {
                    const __mmask16 m = E - k0 >= VL ? (__mmask16)0xFFFF : (__mmask16)((1u << (E - k0)) - 1);
                    __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m,
                                                        _mm512_add_epi32(job->tidx[q], base), &tmp[0][0], 4);
                    __m512 k = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, job->sidx[q], skip, 4);
                    _mm512_mask_storeu_ps(dst + k0, m, _mm512_add_ps(v, k));
                }
            }
        }
        return;
    }
#else
    if (co0 % s == 0 && (co1 - co0) % s == 0 && (s == 2 || s == 4)) {
        /* AVX2, x2 and x4: an output row segment (ch, i) takes channels co..co+s-1 (sub-columns j) of each
         * pixel: s consecutive floats in tmp[p] and in the output. x4: one 4-float vector per pixel; x2: two
         * pixels per 4-float vector. The skip value repeats per sub-column. The same adds as below. */
        for (int co = co0; co < co1; co += s) {
            const float *skip = in + job->skip_off[co];
            float *dst = out + job->out_off[co];
            int p = 0;
            if (s == 4) {
                for (; p < valid; p++)
                    _mm_storeu_ps(dst + 4 * p, _mm_add_ps(_mm_loadu_ps(&tmp[p][co - co0]), _mm_set1_ps(skip[p])));
            } else {
                for (; p + 2 <= valid; p += 2) {
                    const __m128d t = _mm_loadh_pd(_mm_load_sd((const double *)(const void *)&tmp[p][co - co0]),
                                                   (const double *)(const void *)&tmp[p + 1][co - co0]);
                    const __m128 k = _mm_castpd_ps(_mm_load_sd((const double *)(const void *)(skip + p)));
                    _mm_storeu_ps(dst + 2 * p, _mm_add_ps(_mm_castpd_ps(t), _mm_unpacklo_ps(k, k)));
                }
                for (; p < valid; p++) {
                    dst[2 * p] = tmp[p][co - co0] + skip[p];
                    dst[2 * p + 1] = tmp[p][co - co0 + 1] + skip[p];
                }
            }
        }
        return;
    }
#endif
    for (int co = co0; co < co1; co++) {
        const float *skip = in + job->skip_off[co];
        float *dst = out + job->out_off[co];
        for (int p = 0; p < valid; p++) dst[(size_t)p * s] = tmp[p][co - co0] + skip[p];
    }
}

#define DEFINE_ROW(NB, PB)                                                                                \
    static void row_f32_##NB(const RowCtx *cx, int r, int c0, int c1, int g) {                            \
        const Layer *ly = cx->ly;                                                                         \
        const Job *job = cx->job;                                                                         \
        vec acc[PB_MAX][MAXG];                                                                            \
        for (int c = c0; c < c1; c += PB) {                                                               \
            const float *ip = (const float *)cx->ibuf + (size_t)(r - 1) * job->rstride +                  \
                              (size_t)(c - 1) * ly->istr;                                                 \
            const float *wg = (const float *)ly->w + g * MAXG * VL, *bg = ly->b + g * MAXG * VL;          \
            if (ly->istr == 16 && ly->cin == 16) /* constant strides: one base register (see int8) */      \
                conv_f32(NB, PB, ip, 16, job->rstride, 16, wg, ly->cpad, bg, acc);                        \
            else if (ly->istr == 32 && ly->cin == 32)                                                     \
                conv_f32(NB, PB, ip, 32, job->rstride, 32, wg, ly->cpad, bg, acc);                        \
            else if (ly->istr == 64 && ly->cin == 64)                                                     \
                conv_f32(NB, PB, ip, 64, job->rstride, 64, wg, ly->cpad, bg, acc);                        \
            else                                                                                          \
                conv_f32(NB, PB, ip, ly->istr, job->rstride, ly->cin, wg, ly->cpad, bg, acc);             \
            int valid = c1 - c < PB ? c1 - c : PB;                                                        \
            epilogue(0, NB, PB, cx, r, c, g, valid, acc);                                                 \
        }                                                                                                 \
    }
DEFINE_ROW(1, PB1)
DEFINE_ROW(2, PB2)
DEFINE_ROW(3, PB3)
DEFINE_ROW(4, PB4)

#if HAVE_BF16
#define DEFINE_ROW_BF16(NB, PB)                                                                           \
    static void row_bf16_##NB(const RowCtx *cx, int r, int c0, int c1, int g) {                           \
        const Layer *ly = cx->ly;                                                                         \
        const Job *job = cx->job;                                                                         \
        vec acc[PB_MAX][MAXG];                                                                            \
        for (int c = c0; c < c1; c += PB) {                                                               \
            const uint16_t *ip = (const uint16_t *)cx->ibuf + (size_t)(r - 1) * job->rstride +            \
                                 (size_t)(c - 1) * ly->istr;                                              \
            const uint16_t *wg = (const uint16_t *)ly->w + g * MAXG * VL * 2;                              \
            const float *bg = ly->b + g * MAXG * VL;                                                      \
            const int cin2 = (ly->cin + 1) / 2;                                                           \
            if (ly->istr == 16 && cin2 == 8) /* constant strides: one base register (see int8) */          \
                conv_bf16(NB, PB, ip, 16, job->rstride, 8, wg, ly->cpad, bg, acc);                        \
            else if (ly->istr == 32 && cin2 == 16)                                                        \
                conv_bf16(NB, PB, ip, 32, job->rstride, 16, wg, ly->cpad, bg, acc);                       \
            else if (ly->istr == 64 && cin2 == 32)                                                        \
                conv_bf16(NB, PB, ip, 64, job->rstride, 32, wg, ly->cpad, bg, acc);                       \
            else                                                                                          \
                conv_bf16(NB, PB, ip, ly->istr, job->rstride, cin2, wg, ly->cpad, bg, acc);               \
            int valid = c1 - c < PB ? c1 - c : PB;                                                        \
            epilogue(0, NB, PB, cx, r, c, g, valid, acc);                                                 \
        }                                                                                                 \
    }
DEFINE_ROW_BF16(1, PB1)
DEFINE_ROW_BF16(2, PB2)
DEFINE_ROW_BF16(3, PB3)
DEFINE_ROW_BF16(4, PB4)
#endif

#if HAVE_INT8
#define DEFINE_ROW_INT8(NB, PB)                                                                           \
    static void row_i8_##NB(const RowCtx *cx, int r, int c0, int c1, int g) {                             \
        const Layer *ly = cx->ly;                                                                         \
        const Job *job = cx->job;                                                                         \
        ivec acci[PB_MAX][MAXG];                                                                          \
        vec acc[PB_MAX][MAXG];                                                                            \
        for (int c = c0; c < c1; c += PB) {                                                               \
            const uint8_t *ip = (const uint8_t *)cx->ibuf + (size_t)(r - 1) * job->rstride +              \
                                (size_t)(c - 1) * ly->istr;                                               \
            const int8_t *wg = (const int8_t *)ly->w + g * MAXG * VL * 4;                                  \
            const int cin4 = (ly->cin + 3) / 4;                                                           \
            /* the input's outliers, in float, into `extra` (added to the sums below); they depend on the \
             * flags and residuals only, so they are computed before the convolution */                   \
            const int valid = c1 - c < PB ? c1 - c : PB;                                                  \
            float extra[PB * MAXG * VL] __attribute__((aligned(64)));                                     \
            const int flagged = cx->iflag ? window_flagged(cx, PB, r, c, valid) : 0;                      \
            if (flagged > OUTLIER_DENSE * (PB + 2))                                                       \
                outlier_dense_##NB(cx, r, c, g, extra);                                                   \
            else if (flagged)                                                                             \
                outlier_sparse_##NB(cx, r, c, g, valid, extra);                                           \
            /* the common strides as constants: one base register addresses all PB pixels' broadcasts */   \
            if (ly->istr == 16 && cin4 == 4)                                                              \
                conv_i8(NB, PB, ip, 16, job->rstride, 4, wg, ly->cpad, acci);                             \
            else if (ly->istr == 32 && cin4 == 8)                                                         \
                conv_i8(NB, PB, ip, 32, job->rstride, 8, wg, ly->cpad, acci);                             \
            else if (ly->istr == 64 && cin4 == 16)                                                        \
                conv_i8(NB, PB, ip, 64, job->rstride, 16, wg, ly->cpad, acci);                            \
            else if (ly->istr == 4 && cin4 == 1)                                                          \
                conv_i8(NB, PB, ip, 4, job->rstride, 1, wg, ly->cpad, acci);                              \
            else                                                                                          \
                conv_i8(NB, PB, ip, ly->istr, job->rstride, cin4, wg, ly->cpad, acci);                    \
            for (int p = 0; p < PB; p++)                                                                  \
                for (int b = 0; b < NB; b++)                                                              \
                    acc[p][b] = vfma(icvt(acci[p][b]), vload(ly->mul + g * MAXG * VL + b * VL),           \
                                     vload(ly->b + g * MAXG * VL + b * VL));                              \
            if (flagged) {                                                                                \
                for (int p = 0; p < PB; p++)                                                              \
                    for (int b = 0; b < NB; b++)                                                          \
                        acc[p][b] = vadd(acc[p][b], vload(extra + (p * MAXG + b) * VL));                  \
            }                                                                                             \
            epilogue(1, NB, PB, cx, r, c, g, valid, acc);                                                 \
        }                                                                                                 \
    }
DEFINE_ROW_INT8(1, PBI1)
DEFINE_ROW_INT8(2, PBI2)
DEFINE_ROW_INT8(3, PBI3)
DEFINE_ROW_INT8(4, PBI4)
#endif

typedef void (*row_fn)(const RowCtx *, int, int, int, int);

static row_fn pick_row(int mode, int nb) {
#if HAVE_INT8
    if (mode == 2) {
        static const row_fn fns[4] = {row_i8_1, row_i8_2, row_i8_3, row_i8_4};
        return fns[nb - 1];
    }
#endif
#if HAVE_BF16
    if (mode == 1) {
        static const row_fn fns[4] = {row_bf16_1, row_bf16_2, row_bf16_3, row_bf16_4};
        return fns[nb - 1];
    }
#endif
    (void)mode;
    static const row_fn fns[4] = {row_f32_1, row_f32_2, row_f32_3, row_f32_4};
    return fns[nb - 1];
}

/* ---------------------------------------------------------------------------------------- tiles */

static size_t elem_size(int mode) { return mode == 0 ? 4 : mode == 1 ? 2 : 1; }

static void zero_outside(const Job *job, void *buf, size_t row_bytes, size_t es, int fr0, int fr1, int fc0,
                         int fc1, int oy, int ox, int fill) {
    /* zero the buffer pixels (rows fr0..fr1, cols fc0..fc1; `es` bytes each) whose global position is
     * outside the image (`fill`: the byte pattern of zero, the zero point for int8; int8 flags: 0) */
    for (int r = fr0; r < fr1; r++) {
        int gy = oy + r;
        char *row = (char *)buf + (size_t)r * row_bytes;
        if (gy < 0 || gy >= job->H) {
            memset(row + (size_t)fc0 * es, fill, (size_t)(fc1 - fc0) * es);
            continue;
        }
        int left = -ox; /* columns < left are outside */
        if (left > fc0) {
            int e = left < fc1 ? left : fc1;
            memset(row + (size_t)fc0 * es, fill, (size_t)(e - fc0) * es);
        }
        int right = job->W - ox; /* columns >= right are outside */
        if (right < fc1) {
            int b = right > fc0 ? right : fc0;
            memset(row + (size_t)b * es, fill, (size_t)(fc1 - b) * es);
        }
    }
}

static inline uint16_t to_bf16(float f) { /* round to nearest even (finite values) */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* b0, b1: the ping-pong activation buffers; int8 also f0, f1 (flags) and q0, q1 (residuals), paired with them,
 * and the outlier window's scratch */
static void run_tile(Job *job, int t, void *b0, void *b1, uint8_t *f0, uint8_t *f1, float *q0, float *q1,
                     float *scratch) {
    const int nl = job->nl, per_img = job->tiles_y * job->tiles_x;
    const int img = t / per_img, ty = (t % per_img) / job->tiles_x, tx = t % job->tiles_x;
    const int y0 = ty * job->th, x0 = tx * job->tw;
    const int ch = (job->H - y0 < job->th ? job->H - y0 : job->th);
    const int cw = (job->W - x0 < job->tw ? job->W - x0 : job->tw);
    const int FR = ch + 2 * nl, FC = cw + 2 * nl;
    const int oy = y0 - nl, ox = x0 - nl; /* global position of buffer pixel (0, 0) */
    const int H = job->H, W = job->W, C = job->in_ch;
    const float *in = job->in + (size_t)img * C * H * W;
    const int border = oy < 0 || ox < 0 || oy + FR > H || ox + FC > W;

    /* layer-0 input, NCHW -> the buffer's NHWC (zero outside the image) */
    const int istr = job->L[0].istr;
#if INT8 == 1
    if (job->mode == 2 && istr == 4) {
        /* int8, up to 4 input channels: 16 pixels at a time, one 32-bit lane per pixel (its channels'
         * bytes), the same rounding as the scalar loop below (round half to even of clamp(x qinv + qzero)) */
        const __m512 qi = _mm512_set1_ps(job->L[0].qinv), qz = _mm512_set1_ps(job->L[0].qzero);
        const __m512 lo = _mm512_setzero_ps(), hi = _mm512_set1_ps(255.0f);
        const __m512i outside = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(qz, lo), hi));
        const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        uint32_t pad = 0; /* channels C..3: the zero point, as the scalar loop's (uint8_t)qzero */
        for (int k = C; k < 4; k++) pad |= (uint32_t)(uint8_t)job->L[0].qzero << (8 * k);
        const int cl = ox < 0 ? -ox : 0, cr = ox + FC > W ? W - ox : FC; /* inside columns [cl, cr) */
        for (int r = 0; r < FR; r++) {
            const int gy = oy + r, row_in = gy >= 0 && gy < H;
            uint32_t *dst = (uint32_t *)((uint8_t *)b0 + (size_t)r * job->rstride);
            for (int c = 0; c < FC; c += 16) {
                const __m512i col = _mm512_add_epi32(_mm512_set1_epi32(c), lanes);
                const __mmask16 store = _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32(FC));
                const __mmask16 live = row_in ? store & _mm512_cmpge_epi32_mask(col, _mm512_set1_epi32(cl)) &
                                                    _mm512_cmplt_epi32_mask(col, _mm512_set1_epi32(cr))
                                              : 0;
                __m512i px = _mm512_set1_epi32((int)pad);
                for (int k = 0; k < C; k++) {
                    const float *src = in + (size_t)k * H * W + (size_t)(row_in ? gy : 0) * W + ox + c;
                    __m512 q = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(live, src), qi, qz);
                    __m512i v = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q, lo), hi));
                    v = _mm512_mask_mov_epi32(outside, live, v);
                    px = _mm512_or_si512(px, _mm512_slli_epi32(v, 8 * k));
                }
                _mm512_mask_storeu_epi32(dst + c, store, px);
            }
        }
    } else
#elif INT8 >= 2
    if (job->mode == 2 && istr == 4) {
        /* the same 8 pixels at a time (AVX2: masked loads and stores by lane masks) */
        const __m256 qi = _mm256_set1_ps(job->L[0].qinv), qz = _mm256_set1_ps(job->L[0].qzero);
        const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(255.0f);
        const __m256i outside = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(qz, lo), hi));
        const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        uint32_t pad = 0;
        for (int k = C; k < 4; k++) pad |= (uint32_t)(uint8_t)job->L[0].qzero << (8 * k);
        const int cl = ox < 0 ? -ox : 0, cr = ox + FC > W ? W - ox : FC;
        for (int r = 0; r < FR; r++) {
            const int gy = oy + r, row_in = gy >= 0 && gy < H;
            uint32_t *dst = (uint32_t *)((uint8_t *)b0 + (size_t)r * job->rstride);
            for (int c = 0; c < FC; c += 8) {
                const __m256i col = _mm256_add_epi32(_mm256_set1_epi32(c), lanes);
                const __m256i store = _mm256_cmpgt_epi32(_mm256_set1_epi32(FC), col);
                const __m256i live =
                    row_in ? _mm256_and_si256(_mm256_and_si256(store, _mm256_cmpgt_epi32(_mm256_set1_epi32(cr), col)),
                                              _mm256_cmpgt_epi32(col, _mm256_set1_epi32(cl - 1)))
                           : _mm256_setzero_si256();
                __m256i px = _mm256_set1_epi32((int)pad);
                for (int k = 0; k < C; k++) {
                    const float *src = in + (size_t)k * H * W + (size_t)(row_in ? gy : 0) * W + ox + c;
                    __m256 q = _mm256_fmadd_ps(_mm256_maskload_ps(src, live), qi, qz);
                    __m256i v = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(q, lo), hi));
                    v = _mm256_blendv_epi8(outside, v, live);
                    px = _mm256_or_si256(px, _mm256_slli_epi32(v, 8 * k));
                }
                if (c + 8 <= FC)
                    _mm256_storeu_si256((__m256i *)(dst + c), px);
                else
                    _mm256_maskstore_epi32((int *)(dst + c), store, px);
            }
        }
    } else
#endif
    for (int r = 0; r < FR; r++) {
        const int gy = oy + r;
        const int row_in = gy >= 0 && gy < H;
        const int cl = ox < 0 ? -ox : 0, cr = ox + FC > W ? W - ox : FC; /* inside columns [cl, cr) */
        for (int k = 0; k < istr; k++) {
            const float *src = in + (size_t)k * H * W + (size_t)(row_in ? gy : 0) * W + ox;
            const int live = row_in && k < C;
            if (job->mode == 2) {
                uint8_t *dst = (uint8_t *)b0 + (size_t)r * job->rstride + k;
                const float qi = job->L[0].qinv, qz = job->L[0].qzero;
                const uint8_t zq = (uint8_t)qz;
                for (int c = 0; c < FC; c++) {
                    float q = (live && c >= cl && c < cr) ? src[c] * qi + qz : qz;
                    q = q < 0.0f ? 0.0f : q > 255.0f ? 255.0f : q;
                    dst[(size_t)c * istr] = k < C ? (uint8_t)__builtin_lrintf(q) : zq;
                }
            } else if (job->mode == 1) {
                uint16_t *dst = (uint16_t *)b0 + (size_t)r * job->rstride + k;
                for (int c = 0; c < FC; c++) dst[(size_t)c * istr] = (live && c >= cl && c < cr) ? to_bf16(src[c]) : 0;
            } else {
                float *dst = (float *)b0 + (size_t)r * job->rstride + k;
                for (int c = 0; c < FC; c++) dst[(size_t)c * istr] = (live && c >= cl && c < cr) ? src[c] : 0.0f;
            }
        }
    }

    void *ib = b0, *ob = b1;
    uint8_t *ifl = f0, *ofl = f1;
    float *ire = q0, *ore = q1;
    const int int8 = job->mode == 2;
    for (int l = 0; l < nl; l++) {
        const Layer *ly = &job->L[l];
        const int last = l == nl - 1;
        RowCtx cx = {job, ly, last, ib, ob, last ? NULL : &job->L[l + 1], img, 0, ox,
                     int8 && l > 0 ? ifl : NULL, int8 && l > 0 ? ire : NULL, int8 && !last ? ofl : NULL,
                     int8 && !last ? ore : NULL, scratch};
        const int r0 = l + 1, r1 = FR - l - 1, c0 = l + 1, c1 = FC - l - 1;
        const int groups = (ly->cpad / VL + MAXG - 1) / MAXG;
        for (int g = 0; g < groups; g++) {
            int nb = ly->cpad / VL - g * MAXG;
            if (nb > MAXG) nb = MAXG;
            row_fn fn = pick_row(job->mode, nb);
            for (int r = r0; r < r1; r++) {
                cx.gy = oy + r;
                fn(&cx, r, c0, c1, g);
            }
        }
        if (!last && border) {
            const size_t es = elem_size(job->mode);
            zero_outside(job, ob, job->rstride * es, ly->cpad * es, r0, r1, c0, c1, oy, ox,
                         int8 ? (int)job->L[l + 1].qzero : 0);
            if (int8) zero_outside(job, ofl, job->fstride, 1, r0, r1, c0, c1, oy, ox, 0); /* no outliers */
        }
        void *tmp = ib;
        ib = ob;
        ob = tmp;
        uint8_t *ftmp = ifl;
        ifl = ofl;
        ofl = ftmp;
        float *rtmp = ire;
        ire = ore;
        ore = rtmp;
    }
}

static void *worker(void *arg) {
    Job *job = (Job *)arg;
    size_t es = elem_size(job->mode);
    size_t bytes = (job->bufelems * es + 63) / 64 * 64;
    void *b0 = aligned_alloc(64, bytes), *b1 = aligned_alloc(64, bytes);
    if (!b0 || !b1) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        free(b0);
        free(b1);
        return NULL;
    }
    memset(b0, 0, bytes);
    memset(b1, 0, bytes);
    /* int8 outliers: flags and residuals, zeroed (calloc: untouched pages of the sparse residuals stay free) */
    uint8_t *f0 = NULL, *f1 = NULL;
    float *q0 = NULL, *q1 = NULL, *scratch = NULL;
    if (job->mode == 2) {
        f0 = calloc(job->flagbytes, 1);
        f1 = calloc(job->flagbytes, 1);
        q0 = calloc(job->flagbytes * job->rpix, sizeof(float));
        q1 = calloc(job->flagbytes * job->rpix, sizeof(float));
        scratch = calloc((size_t)3 * (PB_MAX + 2) * job->rpix + VL, sizeof(float));
        if (!f0 || !f1 || !q0 || !q1 || !scratch) {
            __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
            goto done;
        }
    }
    const int total = job->n * job->tiles_y * job->tiles_x;
    for (;;) {
        int t = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (t >= total) break;
        run_tile(job, t, b0, b1, f0, f1, q0, q1, scratch);
    }
done:
    free(scratch);
    free(f0);
    free(f1);
    free(q0);
    free(q1);
    free(b0);
    free(b1);
    return NULL;
}

/* ---------------------------------------------------------------------------------------- API */

int repsr_fused_lanes(void) { return VL; }
int repsr_fused_has_bf16(void) { return HAVE_BF16; }
int repsr_fused_has_int8(void) { return HAVE_INT8; }
/* int8: how many weights one int16 lane sums before widening (0: none); fused.py bounds their sums */
int repsr_fused_int8_lane_weights(void) { return INT8_LANE_WEIGHTS; }

/* dims: nl, in_ch, scale, then cin_l, cout_l per layer. weights: the layers' packed weights one after the
 * other (fp32 [9][cin][cpad], or bf16 [9][ceil(cin/2)][cpad][2], or int8 [9][ceil(cin/4)][cpad][4] followed
 * by the layer's fp32 weights [9][cin][cpad] for the outlier path); ba: per layer bias[cpad], alpha[cpad].
 * int8 (mode 2): ba holds per layer mul[cpad], bias[cpad], alpha[cpad] (the output is acc * mul + bias) and
 * quant per layer (qinv, qzero) of its input. in: (n, in_ch, H, W) float32; exactly one of out: (n, in_ch,
 * H*s, W*s) float32, and out8: (n, H*s, W*s, in_ch) 8-bit pixels (what an encoder takes: no float copy).
 * Returns 0, or -1 bad arguments, -2 out of memory, -3 precision not compiled in. */
int repsr_fused_run(int mode, const int *dims, const void *weights, const float *ba, const float *quant,
                    const float *in, int n, int H, int W, float *out, uint8_t *out8, int th, int tw,
                    int nthreads) {
    if ((mode == 1 && !HAVE_BF16) || (mode == 2 && !HAVE_INT8)) return -3;
    if (mode < 0 || mode > 2 || (mode == 2 && !quant)) return -1;
    Job job;
    memset(&job, 0, sizeof job);
    job.mode = mode;
    job.nl = dims[0];
    job.in_ch = dims[1];
    job.scale = dims[2];
    if (job.nl < 1 || job.nl > MAXL || n < 1 || H < 1 || W < 1 || th < 1 || tw < 1) return -1;
    const char *wp = (const char *)weights;
    const float *bp = ba;
    int maxstr = 0;
    for (int l = 0; l < job.nl; l++) {
        Layer *ly = &job.L[l];
        ly->cin = dims[3 + 2 * l];
        ly->cout = dims[4 + 2 * l];
        ly->cpad = (ly->cout + VL - 1) / VL * VL;
        int prev = l == 0 ? job.in_ch : job.L[l - 1].cpad;
        ly->istr = mode == 1 ? (prev + 1) / 2 * 2 : mode == 2 ? (prev + 3) / 4 * 4 : prev;
        if (ly->cin != (l == 0 ? job.in_ch : job.L[l - 1].cout)) return -1;
        ly->w = wp;
        if (mode == 2) {
            wp += (size_t)9 * ((ly->cin + 3) / 4) * ly->cpad * 4;
            ly->wf = (const float *)(const void *)wp;
            wp += (size_t)9 * ly->cin * ly->cpad * 4;
            ly->mul = bp;
            bp += ly->cpad;
            ly->qinv = quant[2 * l];
            ly->qzero = quant[2 * l + 1];
            ly->qstep = 1.0f / ly->qinv;
            if (ly->cpad > 8 * MAXG * VL) return -1; /* one flag bit per output-channel group */
        } else {
            wp += mode == 1 ? (size_t)9 * ((ly->cin + 1) / 2) * ly->cpad * 2 * 2 : (size_t)9 * ly->cin * ly->cpad * 4;
        }
        ly->b = bp;
        ly->a = bp + ly->cpad;
        bp += 2 * ly->cpad;
        if (ly->istr > maxstr) maxstr = ly->istr;
        if (l < job.nl - 1 && ly->cpad > maxstr) maxstr = ly->cpad;
    }
    if (job.L[job.nl - 1].cout != job.in_ch * job.scale * job.scale) return -1;
    {
        const int s = job.scale, ss = s * s;
        const size_t OW = (size_t)W * s, plane = (size_t)H * s * OW;
        for (int co = 0; co < job.L[job.nl - 1].cout; co++) {
            int ch = co / ss, rem = co - ch * ss, i = rem / s, j = rem - i * s;
            job.out_off[co] = ch * plane + (size_t)i * OW + j;
            job.skip_off[co] = (size_t)ch * H * W;
        }
#if defined(__AVX512F__)
        for (int q = 0; q < (4 * PB_MAX + VL - 1) / VL; q++) {
            int t[VL], k[VL];
            for (int lane = 0; lane < VL; lane++) {
                const int e = q * VL + lane;
                t[lane] = (e / s) * MAXG * VL + e % s;
                k[lane] = e / s;
            }
            job.tidx[q] = _mm512_loadu_si512((const void *)t);
            job.sidx[q] = _mm512_loadu_si512((const void *)k);
        }
        const int C = job.in_ch;
        for (int q = 0; q < (4 * 3 * PB_MAX + VL - 1) / VL; q++) {
            int t[VL], k[VL];
            for (int lane = 0; lane < VL; lane++) {
                const int e = q * VL + lane, p = e / (C * s), j = e / C % s, ch = e % C;
                t[lane] = p * MAXG * VL + ch * s * s + j;
                k[lane] = ch * H * W + p;
            }
            job.tidx8[q] = _mm512_loadu_si512((const void *)t);
            job.sidx8[q] = _mm512_loadu_si512((const void *)k);
        }
#endif
    }
    job.n = n;
    job.H = H;
    job.W = W;
    job.th = th < H ? th : H;
    job.tw = tw < W ? tw : W;
    job.tiles_y = (H + job.th - 1) / job.th;
    job.tiles_x = (W + job.tw - 1) / job.tw;
    /* tiles of (nearly) equal size: a narrow last column would leave a thread idle at the end */
    job.th = (H + job.tiles_y - 1) / job.tiles_y;
    job.tw = (W + job.tiles_x - 1) / job.tiles_x;
    job.tiles_y = (H + job.th - 1) / job.th;
    job.tiles_x = (W + job.tw - 1) / job.tw;
    if ((out == NULL) == (out8 == NULL)) return -1;
    if (out8 && (size_t)job.in_ch * H * W >= ((size_t)1 << 31)) return -1; /* 32-bit gather indices */
    job.in = in;
    job.out = out;
    job.out8 = out8;
    /* row: tile + halo + room for a register tile's overrun (PB_MAX + 1 pixels) */
    job.rstride = (size_t)(job.tw + 2 * job.nl + PB_MAX + 2) * maxstr;
    job.bufelems = job.rstride * (size_t)(job.th + 2 * job.nl + 1);
    job.fstride = (size_t)(job.tw + 2 * job.nl + PB_MAX + 2);
    job.flagbytes = job.fstride * (size_t)(job.th + 2 * job.nl + 1);
    job.rpix = (size_t)maxstr;
    int total = n * job.tiles_y * job.tiles_x;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > total) nthreads = total;
    if (nthreads > 256) nthreads = 256;
    pthread_t threads[256];
    int started = 0;
    for (int i = 1; i < nthreads; i++) {
        if (pthread_create(&threads[started], NULL, worker, &job) != 0) break;
        started++;
    }
    worker(&job);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    return job.failed ? -2 : 0;
}
