/* Scaled dot-product attention for bf16 on CPUs with AVX-512 BF16 (Vaswani et al. 2017).

   softmax(q k^T * scale) v with the same numerics as PyTorch's CPU flash kernel: scores accumulated
   in float32 from bf16 products, softmax in float32, probabilities rounded to bf16 for the product
   with v, float32 accumulation, output rounded to bf16 (nearest even). Each tile of query rows
   holds its whole rows of scores (the maximum taken as they are stored, then exp and sum), so nothing
   is rescaled as in the online softmax of flash attention.

   lienzo_attention packs the keys and values of every (batch, head) into the VNNI layout of
   vdpbf16ps, then shares the (batch, head, query block) items among OpenMP threads: the OpenMP
   runtime PyTorch loaded, so the threads are PyTorch's own. */

#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

#define QROWS 8     /* query rows per register tile */
#define KGROUPS 2   /* 16-key groups per register tile of the score product */
#define VCHUNKS 3   /* 16-lane output chunks per register tile of the value product */

typedef struct {
    int64_t batch, heads, q_len, k_len, dim;  /* dim even */
    int64_t q_stride_b, q_stride_h, q_stride_l;
    int64_t k_stride_b, k_stride_h, k_stride_l;
    int64_t v_stride_b, v_stride_h, v_stride_l;
    int64_t o_stride_b, o_stride_h, o_stride_l;
    int64_t q_block;    /* query rows per work item */
    float scale;
} lienzo_attention_shape;

static inline int64_t key_groups(const lienzo_attention_shape *s) { return (s->k_len + 15) / 16; }
static inline int64_t dim_pairs(const lienzo_attention_shape *s) { return s->dim / 2; }
static inline int64_t value_chunks(const lienzo_attention_shape *s) { return (s->dim + 15) / 16; }
static inline int64_t key_pairs(const lienzo_attention_shape *s) { return (s->k_len + 1) / 2; }

/* Packed keys of one (batch, head): [group][dim pair][16 keys][2]. */
static int64_t packed_k_elements(const lienzo_attention_shape *s) {
    return key_groups(s) * dim_pairs(s) * 32;
}

/* Packed values of one (batch, head): [key pair][value chunk * 16 lanes][2]. */
static int64_t packed_v_elements(const lienzo_attention_shape *s) {
    return key_pairs(s) * value_chunks(s) * 32;
}

/* Float32 scratch one thread needs: a tile of score rows and its bf16 probabilities. */
static int64_t scratch_floats(const lienzo_attention_shape *s) {
    return QROWS * key_groups(s) * 16 * 3 / 2;
}

/* Packs the keys and values of (batch, head) pair `item`; padding stays zero. */
static void pack_kv(const lienzo_attention_shape *s, const bf16 *k, const bf16 *v, bf16 *packed_k,
                    bf16 *packed_v, int64_t item) {
    const int64_t pairs = dim_pairs(s), chunks = value_chunks(s);
    const int64_t b = item / s->heads, h = item % s->heads;
    const bf16 *keys = k + b * s->k_stride_b + h * s->k_stride_h;
    const bf16 *values = v + b * s->v_stride_b + h * s->v_stride_h;
    bf16 *kp = packed_k + item * packed_k_elements(s);
    bf16 *vp = packed_v + item * packed_v_elements(s);
    memset(kp, 0, packed_k_elements(s) * sizeof(bf16));
    memset(vp, 0, packed_v_elements(s) * sizeof(bf16));
    for (int64_t n = 0; n < s->k_len; n++) {
        const bf16 *key = keys + n * s->k_stride_l;
        bf16 *key_dst = kp + (n / 16) * pairs * 32 + (n % 16) * 2;
        for (int64_t p = 0; p < pairs; p++) {
            key_dst[p * 32] = key[2 * p];
            key_dst[p * 32 + 1] = key[2 * p + 1];
        }
        const bf16 *value = values + n * s->v_stride_l;
        bf16 *value_dst = vp + (n / 2) * chunks * 32 + (n % 2);
        for (int64_t d = 0; d < s->dim; d++) value_dst[d * 2] = value[d];
    }
}

/* e^x for x <= 0: Cody-Waite reduction by ln 2 and a degree-6 Taylor polynomial (relative error
   below 2e-7), scaled by 2^n with vscalefps. */
static inline __m512 exp_nonpositive(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512bh broadcast_pair(const bf16 *pair) {
    int32_t bits;
    memcpy(&bits, pair, sizeof(bits));
    return (__m512bh)_mm512_set1_epi32(bits);
}

/* scores[r][n] = scale * q_r . k_n for `rows` query rows and `groups` 16-key groups from group g0;
   row_max[r] takes the largest score of the real (not padded) keys. */
static inline __attribute__((always_inline)) void score_tile(
    const lienzo_attention_shape *s, const bf16 *const *q_rows, const bf16 *kp, float *scores,
    int64_t row_stride, __m512 *row_max, int rows, int groups, int64_t g0) {
    const int64_t pairs = dim_pairs(s);
    __m512 acc[QROWS][KGROUPS];
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < groups; g++) acc[r][g] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; p++) {
        __m512bh kv[KGROUPS];
        for (int g = 0; g < groups; g++)
            kv[g] = (__m512bh)_mm512_loadu_si512(kp + ((g0 + g) * pairs + p) * 32);
        for (int r = 0; r < rows; r++) {
            const __m512bh qq = broadcast_pair(q_rows[r] + 2 * p);
            for (int g = 0; g < groups; g++) acc[r][g] = _mm512_dpbf16_ps(acc[r][g], qq, kv[g]);
        }
    }
    const __m512 scale = _mm512_set1_ps(s->scale);
    for (int g = 0; g < groups; g++) {
        const int64_t real = s->k_len - (g0 + g) * 16;
        const __mmask16 keys = real >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << real) - 1u);
        for (int r = 0; r < rows; r++) {
            const __m512 scaled = _mm512_mul_ps(acc[r][g], scale);
            _mm512_storeu_ps(scores + r * row_stride + (g0 + g) * 16, scaled);
            row_max[r] = _mm512_mask_max_ps(row_max[r], keys, row_max[r], scaled);
        }
    }
}

/* The scores of `rows` query rows against every key, and each row's largest score. */
static void scores_block(const lienzo_attention_shape *s, const bf16 *const *q_rows, const bf16 *kp,
                         float *scores, int64_t row_stride, float *maxima, int rows) {
    const int64_t groups = key_groups(s);
    __m512 row_max[QROWS];
    for (int r = 0; r < rows; r++) row_max[r] = _mm512_set1_ps(-__builtin_inff());
    int64_t g = 0;
    for (; g + KGROUPS <= groups; g += KGROUPS) {
        switch (rows) {
#define TILE(R) case R: score_tile(s, q_rows, kp, scores, row_stride, row_max, R, KGROUPS, g); break;
            TILE(8) TILE(7) TILE(6) TILE(5) TILE(4) TILE(3) TILE(2) TILE(1)
#undef TILE
        }
    }
    for (; g < groups; g++) score_tile(s, q_rows, kp, scores, row_stride, row_max, rows, 1, g);
    for (int r = 0; r < rows; r++) maxima[r] = _mm512_reduce_max_ps(row_max[r]);
}

/* Turns a row of scores into bf16 probabilities (unnormalised, padded keys zero); returns the sum. */
static float softmax_row(const lienzo_attention_shape *s, const float *scores, float max, bf16 *probs) {
    const int64_t full = s->k_len / 16, tail = s->k_len % 16;
    const __mmask16 tail_mask = (__mmask16)((1u << tail) - 1u);
    const __m512 row_max = _mm512_set1_ps(max);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t g = 0; g < full; g++) {
        const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + g * 16), row_max));
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256((__m256i *)(probs + g * 16), (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (tail) {
        __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + full * 16), row_max));
        e = _mm512_maskz_mov_ps(tail_mask, e);
        sum = _mm512_add_ps(sum, e);
        _mm256_storeu_si256((__m256i *)(probs + full * 16), (__m256i)_mm512_cvtneps_pbh(e));
    }
    return _mm512_reduce_add_ps(sum);
}

/* out_r = (sum_n probs[r][n] v_n) / sums[r] for `rows` rows and `chunks` 16-lane chunks from c0. */
static inline __attribute__((always_inline)) void value_tile(
    const lienzo_attention_shape *s, const bf16 *probs, int64_t prob_stride, const bf16 *vp,
    const float *sums, bf16 *const *out_rows, int rows, int chunks, int64_t c0) {
    const int64_t all_chunks = value_chunks(s), pairs = key_pairs(s);
    __m512 acc[QROWS][VCHUNKS];
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < chunks; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t j = 0; j < pairs; j++) {
        __m512bh vv[VCHUNKS];
        for (int c = 0; c < chunks; c++)
            vv[c] = (__m512bh)_mm512_loadu_si512(vp + (j * all_chunks + c0 + c) * 32);
        for (int r = 0; r < rows; r++) {
            const __m512bh pp = broadcast_pair(probs + r * prob_stride + 2 * j);
            for (int c = 0; c < chunks; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], pp, vv[c]);
        }
    }
    for (int r = 0; r < rows; r++) {
        const __m512 inv = _mm512_set1_ps(1.0f / sums[r]);
        for (int c = 0; c < chunks; c++) {
            const int64_t d0 = (c0 + c) * 16;
            const int64_t lanes = s->dim - d0 < 16 ? s->dim - d0 : 16;
            const __m256bh out = _mm512_cvtneps_pbh(_mm512_mul_ps(acc[r][c], inv));
            _mm256_mask_storeu_epi16(out_rows[r] + d0, (__mmask16)((1u << lanes) - 1u), (__m256i)out);
        }
    }
}

static void values_block(const lienzo_attention_shape *s, const bf16 *probs, int64_t prob_stride,
                         const bf16 *vp, const float *sums, bf16 *const *out_rows, int rows) {
    const int64_t chunks = value_chunks(s);
    for (int64_t c = 0; c < chunks; c += VCHUNKS) {
        const int n = chunks - c < VCHUNKS ? (int)(chunks - c) : VCHUNKS;
        switch (rows * 8 + n) {
#define TILE(R, C) case R * 8 + C: value_tile(s, probs, prob_stride, vp, sums, out_rows, R, C, c); break;
#define ROWS(R) TILE(R, 3) TILE(R, 2) TILE(R, 1)
            ROWS(8) ROWS(7) ROWS(6) ROWS(5) ROWS(4) ROWS(3) ROWS(2) ROWS(1)
#undef ROWS
#undef TILE
        }
    }
}

/* Attention of the query rows of work item `item` (one query block of one batch and head). */
static void attend_item(const lienzo_attention_shape *s, const bf16 *q, const bf16 *packed_k,
                        const bf16 *packed_v, bf16 *out, float *scratch, int64_t item) {
    const int64_t blocks = (s->q_len + s->q_block - 1) / s->q_block;
    const int64_t padded_keys = key_groups(s) * 16;
    float *scores = scratch;
    bf16 *probs = (bf16 *)(scratch + QROWS * padded_keys);
    const int64_t bh = item / blocks, block = item % blocks;
    const int64_t b = bh / s->heads, h = bh % s->heads;
    const bf16 *kp = packed_k + bh * packed_k_elements(s);
    const bf16 *vp = packed_v + bh * packed_v_elements(s);
    const int64_t row0 = block * s->q_block;
    const int64_t row1 = row0 + s->q_block < s->q_len ? row0 + s->q_block : s->q_len;
    for (int64_t i = row0; i < row1; i += QROWS) {
        const int rows = row1 - i < QROWS ? (int)(row1 - i) : QROWS;
        const bf16 *q_rows[QROWS];
        bf16 *out_rows[QROWS];
        float sums[QROWS], maxima[QROWS];
        for (int r = 0; r < rows; r++) {
            q_rows[r] = q + b * s->q_stride_b + h * s->q_stride_h + (i + r) * s->q_stride_l;
            out_rows[r] = out + b * s->o_stride_b + h * s->o_stride_h + (i + r) * s->o_stride_l;
        }
        scores_block(s, q_rows, kp, scores, padded_keys, maxima, rows);
        for (int r = 0; r < rows; r++)
            sums[r] = softmax_row(s, scores + r * padded_keys, maxima[r], probs + r * padded_keys);
        values_block(s, probs, padded_keys, vp, sums, out_rows, rows);
    }
}

/* out = softmax(q k^T * scale) v on `threads` threads; returns 0, or -1 when memory ran out. */
int lienzo_attention(const lienzo_attention_shape *s, const bf16 *q, const bf16 *k, const bf16 *v,
                     bf16 *out, int threads) {
    const int64_t pairs = s->batch * s->heads;
    const int64_t items = pairs * ((s->q_len + s->q_block - 1) / s->q_block);
    bf16 *packed_k = aligned_alloc(64, (pairs * packed_k_elements(s) * sizeof(bf16) + 63) / 64 * 64);
    bf16 *packed_v = aligned_alloc(64, (pairs * packed_v_elements(s) * sizeof(bf16) + 63) / 64 * 64);
    int failed = packed_k == NULL || packed_v == NULL;
    if (!failed) {
#pragma omp parallel num_threads(threads) reduction(| : failed)
        {
#pragma omp for schedule(static)
            for (int64_t item = 0; item < pairs; item++) pack_kv(s, k, v, packed_k, packed_v, item);
            float *scratch = aligned_alloc(64, (scratch_floats(s) * sizeof(float) + 63) / 64 * 64);
            failed = scratch == NULL;
#pragma omp for schedule(static)
            for (int64_t item = 0; item < items; item++)
                if (scratch != NULL) attend_item(s, q, packed_k, packed_v, out, scratch, item);
            free(scratch);
        }
    }
    free(packed_k);
    free(packed_v);
    return failed ? -1 : 0;
}
