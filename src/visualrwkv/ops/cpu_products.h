// The products of the compiled CPU step (rwkv_cpu.cpp, the only file that includes this one: they are
// one translation unit, split by job): the tensors the step is handed, and y = x @ w for a few rows over
// fp32, bf16, int8 or int4 matrices, by every thread of a parallel region (`team_matmul`) or on their own
// (`rows_matmul`).

#pragma once

#include <omp.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define VISUALRWKV_SIMD 1
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------- tensors

enum Kind : int64_t { F32 = 0, BF16 = 1, INT8 = 2, INT4 = 3 };

// What Python hands over for every parameter (`cpu_kernels.TensorArg`). Matrices are [in, out]
// row-major; int8 codes [in, out], int4 codes [in/2, out] (byte (p, j): input rows 2p in the low
// nibble, 2p+1 in the high one, each stored as q + 8), fp16 scales [in/group, out]. A null `data`
// is a parameter the layer does not have.
struct Tensor {
    const void* data;
    const uint16_t* scales;
    int64_t kind;
    int64_t group;
};

// A bfloat16 weight: the top half of an fp32, so widening it is exact (a shift).
struct bf16 {
    uint16_t bits;
    operator float() const;
};

inline float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline bf16::operator float() const { return from_bits(uint32_t(bits) << 16); }

// An IEEE half (the quantized scales), widened exactly.
inline float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16, exponent = (h >> 10) & 31, mantissa = h & 1023;
    if (exponent == 31) return from_bits(sign | 0x7f800000u | (mantissa << 13));
    if (exponent) return from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13));
    return (sign ? -1.0f : 1.0f) * float(mantissa) * 5.9604644775390625e-8f;  // subnormal: m * 2^-24
}

// Rows [row, ...) of a dense matrix `width` wide (the five slots of RWKV-6's maa_w2).
Tensor rows_from(const Tensor& t, int64_t row, int64_t width) {
    const int64_t size = t.kind == F32 ? 4 : 2;
    return {static_cast<const char*>(t.data) + row * width * size, nullptr, t.kind, 0};
}

// A vector parameter as fp32: in place, or widened into `scratch`.
const float* as_floats(const Tensor& t, int64_t n, float* scratch) {
    if (t.data == nullptr || t.kind == F32) return static_cast<const float*>(t.data);
    const bf16* v = static_cast<const bf16*>(t.data);
    for (int64_t i = 0; i < n; ++i) scratch[i] = v[i];
    return scratch;
}

// ---------------------------------------------------------------------------------------------- products

constexpr int64_t U = 16;  // input rows per pass over a partial row (see team_matmul)

// acc[j] += sum_u xs[u] block[u * out + j] for j < n, the U input rows of one pass (fp32 or int8 codes).
template <typename Weight>
inline void accumulate(float* __restrict acc, const float* xs, const Weight* __restrict block, int64_t out,
                       int64_t n) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        float s = acc[j];
#pragma GCC unroll 16
        for (int64_t u = 0; u < U; ++u) s += xs[u] * float(block[u * out + j]);
        acc[j] = s;
    }
}

// The same over bf16 weights. One 32-bit load holds columns 2k and 2k+1: its low half shifted up and
// its high half masked off are their fp32 values, with no cross-lane shuffle (widening 16 values into
// 16 lanes read the 65536-column head at ~23 GB/s here, the pairs at ~27); the partial row is split
// into even and odd columns once per pass, for all U input rows.
inline void accumulate(float* __restrict acc, const float* xs, const bf16* __restrict block, int64_t out,
                       int64_t n) {
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        float even[16], odd[16];
        for (int k = 0; k < 16; ++k) {
            even[k] = acc[j + 2 * k];
            odd[k] = acc[j + 2 * k + 1];
        }
#pragma GCC unroll 16
        for (int64_t u = 0; u < U; ++u) {
            const bf16* row = block + u * out + j;
#pragma omp simd
            for (int k = 0; k < 16; ++k) {
                uint32_t pair;
                std::memcpy(&pair, row + 2 * k, sizeof pair);
                even[k] += xs[u] * from_bits(pair << 16);
                odd[k] += xs[u] * from_bits(pair & 0xffff0000u);
            }
        }
        for (int k = 0; k < 16; ++k) {
            acc[j + 2 * k] = even[k];
            acc[j + 2 * k + 1] = odd[k];
        }
    }
    for (; j < n; ++j) {
        float s = acc[j];
        for (int64_t u = 0; u < U; ++u) s += xs[u] * float(block[u * out + j]);
        acc[j] = s;
    }
}

// columns in chunks whose partial rows stay in L2 while the input rows stream past them
inline int64_t column_chunk(int64_t rows) { return std::max<int64_t>(256, (32768 / rows) & ~int64_t(31)); }

// After every thread has its partial rows: y = their sum, column range by column range.
void team_sum(const float* partial, int64_t total, float* y) {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
#pragma omp barrier
    const int64_t lo = total * t / threads, hi = total * (t + 1) / threads;
    for (int64_t e = lo; e < hi; ++e) {
        float s = partial[e];
        for (int u = 1; u < threads; ++u) s += partial[u * total + e];
        y[e] = s;
    }
#pragma omp barrier
}

// y[b, :] = sum_i x[b, i] w[i, :], for b < rows, over dense fp32 or bf16 weights; x rows are ldx apart.
// Called by every thread of a parallel region: thread t reads input rows [in*t/T, in*(t+1)/T) in
// address order into its own partial rows, then the threads sum the partials column range by column
// range. `partial` holds T * rows * out floats. Sixteen input rows are read per pass over a partial
// row: with four, the partial's load and store per step held the stream to ~24 GB/s here (~29 now,
// within a few percent of a plain read).
template <typename Weight>
void team_matmul_dense(const float* x, int64_t rows, int64_t ldx, const Weight* w, int64_t in, int64_t out, float* y,
                       float* partial) {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = in * t / threads, last = in * (t + 1) / threads, chunk = column_chunk(rows);
    float* mine = partial + t * rows * out;
    for (int64_t c0 = 0; c0 < out; c0 += chunk) {
        const int64_t n = std::min(chunk, out - c0);
        for (int64_t b = 0; b < rows; ++b) std::fill_n(mine + b * out + c0, n, 0.0f);
        int64_t i = first;
        for (; i + U <= last; i += U) {
            const Weight* __restrict block = w + i * out + c0;
            for (int64_t b = 0; b < rows; ++b) {
                float xs[U];
                for (int64_t u = 0; u < U; ++u) xs[u] = x[b * ldx + i + u];
                accumulate(mine + b * out + c0, xs, block, out, n);
            }
        }
        for (; i < last; ++i) {
            const Weight* __restrict row = w + i * out + c0;
            for (int64_t b = 0; b < rows; ++b) {
                const float xi = x[b * ldx + i];
                float* __restrict acc = mine + b * out + c0;
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) acc[j] += xi * float(row[j]);
            }
        }
    }
    team_sum(partial, rows * out, y);
}

// ---------------------------------------------------------------------------------------------- quantized products
//
// A product over int8/int4 codes sums code x activation within a group, then scales the sum once per
// column. Widening every code to fp32 for that left the one-row products (decoding at batch 1) compute-
// bound at ~2.5x their bandwidth bound; here the sums are integer pair products (vpdpwssd where the CPU has VNNI, else
// AVX2's vpmaddwd), on the activations split into integers per block of input rows, exactly enough
// that the product is still the fp32 one over the dequantized weights up to summation order:
//   x = peak (hi + lo / 2^15 + fine / 2^30) / 32767,  peak = max|x| over the block,  hi, lo, fine int16:
// 30 bits against the block's largest value, so every value down to 2^-9 of it within 2^-22 of itself
// (fp32 rounds to 2^-24); a block holding a smaller nonzero value sums `fine` too (45 bits: within
// 2^-22 down to 2^-24 of the peak). Every partial sum fits int32: |code| <= 127 (int4: 15, its +8
// taken off after), |hi| <= 32767, |lo|, |fine| <= 16384, <= 128 rows a block.

constexpr float HI_UNIT = 1.0f / 32767, LO_UNIT = HI_UNIT / 32768, FINE_UNIT = LO_UNIT / 32768;
constexpr float FINE_BELOW = 1.0f / 512;  // a block with a nonzero |x| < FINE_BELOW peak sums `fine` too
constexpr int64_t MAX_SPLIT_ROWS = 128;  // rows per activation block: keeps every integer sum in int32
// Columns per chunk of a quantized product: a group's rows of one chunk (32 x 4096 int8 codes, 128 KiB) stay
// in L2 while the next group's are prefetched behind them (a 65536-column head at once measured ~30% slower).
constexpr int64_t QUANTIZED_CHUNK = 4096;
// The software prefetch runs one group ahead (the next group's rows at the same columns), into L2 (T2):
// into L1 (T0) it took the fill buffers the loads need and read ~12% slower here; without it ~25% slower.
constexpr int64_t PREFETCH_ROWS = 32;

// The block of input rows the activations are split over: the group, or its largest even divisor <= 128.
int64_t split_rows_per_block(int64_t group) {
    if (group <= MAX_SPLIT_ROWS) return group;
    for (int64_t d = MAX_SPLIT_ROWS; d >= 2; d -= 2)
        if (group % d == 0) return d;
    return 2;
}

// Activations [rows, count] split as above, block by block (`split` rows a block).
struct SplitRows {
    std::vector<int16_t> hi, lo, fine;
    std::vector<float> peak;    // [rows, count / split]; NaN where the block holds a NaN or an infinity
    std::vector<int32_t> sums;  // [rows, count / split, 3]: the block's sums of hi, lo, fine (int4's offset)
    std::vector<uint8_t> needs_fine;  // [rows, count / split]
};

void split_activations(const float* x, int64_t rows, int64_t ldx, int64_t count, int64_t split, SplitRows& q) {
    const int64_t blocks = count / split;
    for (auto* part : {&q.hi, &q.lo, &q.fine}) part->assign(size_t(rows * count), 0);
    q.peak.resize(size_t(rows * blocks));
    q.sums.assign(size_t(rows * blocks * 3), 0);
    q.needs_fine.assign(size_t(rows * blocks), 0);
    for (int64_t b = 0; b < rows; ++b)
        for (int64_t k = 0; k < blocks; ++k) {
            const float* v = x + b * ldx + k * split;
            const int64_t at = b * count + k * split, block = b * blocks + k;
            float peak = 0, probe = 0;  // probe: NaN if any value is NaN or infinite
            for (int64_t i = 0; i < split; ++i) {
                peak = std::max(peak, std::fabs(v[i]));
                probe += v[i] * 0.0f;
            }
            q.peak[block] = probe == 0 ? peak : NAN;  // (NaN != 0): all codes stay 0, the products NaN
            if (peak == 0 || probe != 0) continue;
            const double inverse = 32767.0 / peak;  // double: exact enough for 45 bits, a subnormal peak too
            int32_t* sums = q.sums.data() + block * 3;
            for (int64_t i = 0; i < split; ++i) {
                const double t = v[i] * inverse, h = std::nearbyint(t), r = (t - h) * 32768, l = std::nearbyint(r);
                q.hi[at + i] = int16_t(h);
                q.lo[at + i] = int16_t(l);
                q.fine[at + i] = int16_t(std::nearbyint((r - l) * 32768));
                sums[0] += q.hi[at + i];
                sums[1] += q.lo[at + i];
                sums[2] += q.fine[at + i];
                if (v[i] != 0 && std::fabs(v[i]) < FINE_BELOW * peak) q.needs_fine[block] = 1;
            }
        }
}

// The code of input row i, column j, of a block of int8 codes [R, out] or int4 nibble pairs [R/2, out]
// (int4 as stored: q + 8).
template <int Bits>
inline int32_t code_at(const void* codes, int64_t out, int64_t i, int64_t j) {
    if (Bits == 8) return static_cast<const int8_t*>(codes)[i * out + j];
    const uint8_t byte = static_cast<const uint8_t*>(codes)[(i / 2) * out + j];
    return i % 2 ? byte >> 4 : byte & 15;
}

#ifdef VISUALRWKV_SIMD
// int16 values 2p and 2p+1 as one int32 (the pair a broadcast hands every lane)
inline int32_t pair_at(const int16_t* v, int64_t p) {
    int32_t pair;
    std::memcpy(&pair, v + 2 * p, sizeof pair);
    return pair;
}

// acc + the pair products of a and b (int16 pairs summed into int32 lanes)
inline __m256i dot_pairs(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(__AVXVNNI__)
    return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

// The codes of input rows 2p and 2p+1, columns j..j+31, as four vectors of int16 pairs (8 columns each).
template <int Bits>
inline void code_pairs(const void* codes, int64_t out, int64_t p, int64_t j, __m256i& w0, __m256i& w1, __m256i& w2,
                       __m256i& w3) {
    if (Bits == 8) {
        const int8_t* r0 = static_cast<const int8_t*>(codes) + 2 * p * out + j;
        const int8_t* r1 = r0 + out;
        const __m128i a0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r0));
        const __m128i b0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1));
        const __m128i a1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r0 + 16));
        const __m128i b1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(r1 + 16));
        w0 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a0, b0));
        w1 = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a0, b0));
        w2 = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a1, b1));
        w3 = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a1, b1));
    } else {  // byte (p, j) -> the pair (low nibble, high nibble): bits 0-3 and 16-19 of its lane
        const uint8_t* row = static_cast<const uint8_t*>(codes) + p * out + j;
        const __m256i mask = _mm256_set1_epi32(0x000F000F);
        auto pairs = [&](int k) {
            const __m256i d = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 8 * k)));
            return _mm256_and_si256(_mm256_or_si256(d, _mm256_slli_epi32(d, 12)), mask);
        };
        w0 = pairs(0);
        w1 = pairs(1);
        w2 = pairs(2);
        w3 = pairs(3);
    }
}
#endif

// dst[j] += wscale[j] peak sum_i code[i, j] (a[i] ua + b[i] ub) for j < n: R input rows of codes (`out`
// apart) against one block of split activations, two of its parts (a, b; b null: a alone) with their
// sums (int4's offset); wscale the fp16 scales of the rows' group.
template <int Bits, bool Two>
void block_product(const void* codes, int64_t out, int64_t n, int64_t R, const int16_t* a, const int16_t* b, float ua,
                   float ub, const int32_t* sums, float peak, const uint16_t* wscale, float* __restrict dst) {
    const int32_t off_a = Bits == 4 ? 8 * sums[0] : 0, off_b = Bits == 4 && Two ? 8 * sums[1] : 0;
    int64_t j = 0;
#ifdef VISUALRWKV_SIMD
    const __m256 pv = _mm256_set1_ps(peak), ua_v = _mm256_set1_ps(ua), ub_v = _mm256_set1_ps(ub);
    const __m256i oa = _mm256_set1_epi32(off_a), ob = _mm256_set1_epi32(off_b);
    // 32 columns, their eight accumulators (the codes' pairs times the a and b parts)
    auto columns32 = [&](int64_t jj, int64_t p, __m256i xa, __m256i xb, __m256i& h0, __m256i& h1, __m256i& h2,
                         __m256i& h3, __m256i& l0, __m256i& l1, __m256i& l2, __m256i& l3) {
        __m256i w0, w1, w2, w3;
        code_pairs<Bits>(codes, out, p, jj, w0, w1, w2, w3);
        h0 = dot_pairs(h0, w0, xa);
        h1 = dot_pairs(h1, w1, xa);
        h2 = dot_pairs(h2, w2, xa);
        h3 = dot_pairs(h3, w3, xa);
        if (Two) {
            l0 = dot_pairs(l0, w0, xb);
            l1 = dot_pairs(l1, w1, xb);
            l2 = dot_pairs(l2, w2, xb);
            l3 = dot_pairs(l3, w3, xb);
        }
    };
    auto prefetch_next_group = [&](int64_t jj, int64_t p) {  // a cache line of each of its rows, same columns
        const char* row = static_cast<const char*>(codes) + ((Bits == 8 ? 2 * p : p) + PREFETCH_ROWS) * out + jj;
        _mm_prefetch(row, _MM_HINT_T2);
        if (Bits == 8) _mm_prefetch(row + out, _MM_HINT_T2);
    };
    auto flush32 = [&](int64_t jj, const __m256i h[4], const __m256i l[4]) {
        for (int k = 0; k < 4; ++k) {
            const __m256 sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(l[k], ob)), ub_v,
                                               _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(h[k], oa)), ua_v));
            const __m256 ws = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wscale + jj + 8 * k)));
            float* d = dst + jj + 8 * k;
            _mm256_storeu_ps(d, _mm256_fmadd_ps(_mm256_mul_ps(ws, pv), sum, _mm256_loadu_ps(d)));
        }
    };
    // int8: 64 columns a pass, a whole cache line of each row (10-15% faster here than 32; int4 measured
    // slower so)
    for (; Bits == 8 && j + 64 <= n; j += 64) {
        __m256i h0 = _mm256_setzero_si256(), h1 = h0, h2 = h0, h3 = h0, l0 = h0, l1 = h0, l2 = h0, l3 = h0;
        __m256i g0 = h0, g1 = h0, g2 = h0, g3 = h0, m0 = h0, m1 = h0, m2 = h0, m3 = h0;
        for (int64_t p = 0; p < R / 2; ++p) {
            prefetch_next_group(j, p);
            const __m256i xa = _mm256_set1_epi32(pair_at(a, p)), xb = Two ? _mm256_set1_epi32(pair_at(b, p)) : xa;
            columns32(j, p, xa, xb, h0, h1, h2, h3, l0, l1, l2, l3);
            columns32(j + 32, p, xa, xb, g0, g1, g2, g3, m0, m1, m2, m3);
        }
        const __m256i h[4] = {h0, h1, h2, h3}, l[4] = {l0, l1, l2, l3};
        const __m256i g[4] = {g0, g1, g2, g3}, m[4] = {m0, m1, m2, m3};
        flush32(j, h, l);
        flush32(j + 32, g, m);
    }
    for (; j + 32 <= n; j += 32) {
        __m256i h0 = _mm256_setzero_si256(), h1 = h0, h2 = h0, h3 = h0, l0 = h0, l1 = h0, l2 = h0, l3 = h0;
        for (int64_t p = 0; p < R / 2; ++p) {
            if ((j & 63) == 0) prefetch_next_group(j, p);
            const __m256i xa = _mm256_set1_epi32(pair_at(a, p)), xb = Two ? _mm256_set1_epi32(pair_at(b, p)) : xa;
            columns32(j, p, xa, xb, h0, h1, h2, h3, l0, l1, l2, l3);
        }
        const __m256i h[4] = {h0, h1, h2, h3}, l[4] = {l0, l1, l2, l3};
        flush32(j, h, l);
    }
#endif
    for (; j < n; ++j) {
        int32_t sa = 0, sb = 0;
        for (int64_t i = 0; i < R; ++i) {
            const int32_t c = code_at<Bits>(codes, out, i, j);
            sa += c * a[i];
            if (Two) sb += c * b[i];
        }
        dst[j] += half_to_float(wscale[j]) * peak * (float(sb - off_b) * ub + float(sa - off_a) * ua);
    }
}

// int8 codes against several rows (batched decoding), this thread's groups into its partial rows: each
// code widened to fp32 and summed in fp32, a group's sum scaled once per column. Where several rows share
// the codes the product is bound by arithmetic, not by reading them, and there this measured faster than
// the integer sums, which re-pair the codes for every row (C768/L12 decode at batch 4 / 8: 240 / 287 against
// 214 / 261 tok/s, alternated in one process); int4's widening measured no faster: it keeps the integer sums.
void widened_int8_rows(const float* x, int64_t rows, int64_t ldx, const Tensor& w, int64_t out, int64_t g_first,
                       int64_t g_last, float* mine) {
    const int64_t G = w.group, chunk = column_chunk(rows);
    static thread_local std::vector<float> sums, scale;
    sums.resize(size_t(rows * chunk));
    scale.resize(size_t(chunk));
    for (int64_t c0 = 0; c0 < out; c0 += chunk) {
        const int64_t n = std::min(chunk, out - c0);
        for (int64_t b = 0; b < rows; ++b) std::fill_n(mine + b * out + c0, n, 0.0f);
        for (int64_t g = g_first; g < g_last; ++g) {
            for (int64_t j = 0; j < n; ++j) scale[j] = half_to_float(w.scales[g * out + c0 + j]);
            const int8_t* codes = static_cast<const int8_t*>(w.data) + g * G * out + c0;
            for (int64_t b = 0; b < rows; ++b) {
                float* __restrict acc = sums.data() + b * chunk;
                std::fill_n(acc, n, 0.0f);
                const float* xg = x + b * ldx + g * G;
                int64_t i = 0;
                for (; i + U <= G; i += U) accumulate(acc, xg + i, codes + i * out, out, n);
                for (; i < G; ++i)
                    for (int64_t j = 0; j < n; ++j) acc[j] += xg[i] * float(codes[i * out + j]);
                float* __restrict dst = mine + b * out + c0;
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) dst[j] += scale[j] * acc[j];
            }
        }
    }
}

// y = x @ w over int8 or int4 codes, by every thread of the region: each thread takes whole groups of
// input rows, splits its part of the activations once, and streams its codes block by block (each
// group's scale row read once per column chunk) into its partial rows; then the partials are summed.
template <int Bits>
void team_matmul_quantized(const float* x, int64_t rows, int64_t ldx, const Tensor& w, int64_t in, int64_t out,
                           float* y, float* partial) {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t G = w.group, groups = in / G, split = split_rows_per_block(G);
    const int64_t chunk = std::min(column_chunk(rows), QUANTIZED_CHUNK);
    const int64_t g_first = groups * t / threads, g_last = groups * (t + 1) / threads;
    const int64_t count = (g_last - g_first) * G, blocks = count / split, per_group = G / split;
    float* mine = partial + t * rows * out;
    if (Bits == 8 && rows > 1) {
        widened_int8_rows(x, rows, ldx, w, out, g_first, g_last, mine);
        return team_sum(partial, rows * out, y);
    }
    static thread_local SplitRows q;
    split_activations(x + g_first * G, rows, ldx, count, split, q);
    for (int64_t c0 = 0; c0 < out; c0 += chunk) {
        const int64_t n = std::min(chunk, out - c0);
        for (int64_t b = 0; b < rows; ++b) std::fill_n(mine + b * out + c0, n, 0.0f);
        for (int64_t g = g_first; g < g_last; ++g) {
            const uint16_t* wscale = w.scales + g * out + c0;
            for (int64_t k = 0; k < per_group; ++k) {
                const int64_t first_row = g * G + k * split, block = (g - g_first) * per_group + k;
                const void* codes = static_cast<const char*>(w.data) + first_row / (Bits == 8 ? 1 : 2) * out + c0;
                for (int64_t b = 0; b < rows; ++b) {
                    const int64_t at = b * count + block * split, index = b * blocks + block;
                    const int32_t* sums = q.sums.data() + index * 3;
                    float* dst = mine + b * out + c0;
                    block_product<Bits, true>(codes, out, n, split, q.hi.data() + at, q.lo.data() + at, HI_UNIT,
                                              LO_UNIT, sums, q.peak[index], wscale, dst);
                    if (q.needs_fine[index])
                        block_product<Bits, false>(codes, out, n, split, q.fine.data() + at, nullptr, FINE_UNIT, 0,
                                                   sums + 2, q.peak[index], wscale, dst);
                }
            }
        }
    }
    team_sum(partial, rows * out, y);
}

// y [rows, out] = x [rows, in] (ldx apart) @ w [in, out], by every thread of the parallel region.
void team_matmul(const float* x, int64_t rows, int64_t ldx, const Tensor& w, int64_t in, int64_t out, float* y,
                 float* partial) {
    switch (w.kind) {
        case BF16: return team_matmul_dense(x, rows, ldx, static_cast<const bf16*>(w.data), in, out, y, partial);
        case INT8: return team_matmul_quantized<8>(x, rows, ldx, w, in, out, y, partial);
        case INT4: return team_matmul_quantized<4>(x, rows, ldx, w, in, out, y, partial);
        default: return team_matmul_dense(x, rows, ldx, static_cast<const float*>(w.data), in, out, y, partial);
    }
}

// y [rows, out] = x [rows, in] @ w [in, out] on `threads` threads.
void rows_matmul(const float* x, int64_t rows, const Tensor& w, int64_t in, int64_t out, float* y, int threads) {
    threads = std::max(threads, 1);
    static thread_local std::vector<float> partial;
    partial.resize(size_t(threads) * rows * out);
    float* part = partial.data();  // the calling thread's buffer, shared by the team
#pragma omp parallel num_threads(threads)
    team_matmul(x, rows, in, w, in, out, y, part);
}

}  // namespace
