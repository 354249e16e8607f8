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
#include <initializer_list>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------- tensors

enum Kind : int64_t { F32 = 0, BF16 = 1, INT8 = 2, INT4 = 3 };

// What Python hands over for every parameter (`cpu_kernels.TensorArg`). Dense matrices are [in, out]
// row-major; int8/int4 codes are tiles (see the quantized products below, and `quant.to_tiles`), fp16
// scales [in/group, out]. A null `data` is a parameter the layer does not have.
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

// acc[j] += sum_u xs[u] block[u * out + j] for j < n, the U input rows of one pass (fp32 weights).
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

// This thread's partial rows of y = x @ w (mine [rows, out]: the sums over its input rows) over dense
// fp32 or bf16 weights; x rows are ldx apart. Thread t reads input rows [in*t/T, in*(t+1)/T) in address
// order. Sixteen input rows are read per pass over a partial row: with four, the partial's load and
// store per step held the stream to ~24 GB/s here (~29 now, within a few percent of a plain read).
template <typename Weight>
void partial_dense(const float* x, int64_t rows, int64_t ldx, const Weight* w, int64_t in, int64_t out, float* mine) {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = in * t / threads, last = in * (t + 1) / threads, chunk = column_chunk(rows);
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
}

// ---------------------------------------------------------------------------------------------- quantized products
//
// A product over int8/int4 codes sums code x activation within a group, then scales the sum once per
// column. Here the sums are integer: vpdpbusd (AVX512-VNNI or AVX-VNNI; AVX2 emulates it exactly) takes
// four unsigned code bytes and four signed activation bytes per 32-bit lane, so the codes are stored for
// it (the tile layout, ops/quant.py) and the activations split into exact signed bytes per block of rows:
//   x = peak (d3 2^24 + d2 2^16 + d1 2^8 + d0 + (e1 2^8 + e0) / 2^15) / 2^30,  peak = max|x| over the block:
// the four digits d hold 30 bits against the block's largest value, so every value down to 2^-9 of it is
// within 2^-22 of itself (fp32 rounds to 2^-24); a block holding a smaller nonzero value sums the two
// digits e too (45 bits: within 2^-22 down to 2^-24 of the peak). So the product is still the fp32 one
// over the dequantized weights up to summation order, where llama.cpp rounds the activations to 8 bits.
// The codes are stored offset (int8 q + 128, int4 q + 8: unsigned, as the instruction takes them); the
// offset times the digits' sum comes off after. Each digit's sum over a block of <= 128 rows is below
// 2^24 in magnitude (128 x 255 x 128), so it converts to fp32 exactly.
//
// Tile layout (what `quant.to_tiles` writes): per group of G input rows (padded to Gp, a multiple of 8,
// with zero codes), per block of 64 output columns (the last one narrower: width wb), one contiguous tile;
// inside it, rows in fours (int8: quad q, bytes q*4*wb + 4c + k = row 4q+k of column c) or, for int4, in
// eights (byte o*4*wb + 4c + k: row 8o+k in the low nibble, 8o+4+k in the high one). A thread's groups
// are one contiguous stream; a 64-column pass reads 256 bytes (int8) of every row quad, a whole tile.

constexpr int64_t TILE_COLUMNS = 64;
constexpr int64_t MAX_BLOCK_ROWS = 128;  // rows per activation block: keeps each digit's sum exact in fp32
constexpr float FINE_BELOW = 1.0f / 512;  // a block with a nonzero |x| < FINE_BELOW peak sums the e digits too
constexpr float DIGIT_UNIT = 1.0f / 1073741824.0f, FINE_UNIT = DIGIT_UNIT / 32768;  // 2^-30, 2^-45
// Columns per chunk of a quantized product: a group's part of one chunk (32 x 4096 int8 codes, 128 KiB)
// stays in L2 while the partial rows accumulate (a 65536-column head at once measured ~30% slower).
constexpr int64_t QUANTIZED_CHUNK = 4096;
// The software prefetch runs this far ahead in a thread's stream of tiles.
constexpr int64_t PREFETCH_BYTES = 4096;

inline int64_t padded_group(int64_t group) { return (group + 7) / 8 * 8; }

// Activations [rows, count] (whole groups) as digits, block by block: blocks of <= 128 rows within each
// group, at their padded positions (the padding rows' digits are 0).
struct Digits {
    int64_t G = 0, Gp = 0, per_group = 0, padded = 0;  // padded: the rows' padded count
    std::vector<int8_t> digits;      // [rows, 6, padded]: d0..d3, then e0, e1
    std::vector<float> peak;         // [rows, blocks]; NaN where the block holds a NaN or an infinity
    std::vector<int32_t> sums;       // [rows, blocks, 6]: each digit's sum over the block
    std::vector<uint8_t> needs_fine;  // [rows, blocks]
};

inline int64_t block_rows(const Digits& d, int64_t k) { return std::min(MAX_BLOCK_ROWS, d.Gp - k * MAX_BLOCK_ROWS); }

void split_digits(const float* x, int64_t rows, int64_t ldx, int64_t groups, int64_t G, Digits& d) {
    d.G = G;
    d.Gp = padded_group(G);
    d.per_group = (d.Gp + MAX_BLOCK_ROWS - 1) / MAX_BLOCK_ROWS;
    d.padded = groups * d.Gp;
    const int64_t blocks = groups * d.per_group;
    d.digits.assign(size_t(rows * 6 * d.padded), 0);
    d.peak.assign(size_t(rows * blocks), 0.0f);
    d.sums.assign(size_t(rows * blocks * 6), 0);
    d.needs_fine.assign(size_t(rows * blocks), 0);
    for (int64_t b = 0; b < rows; ++b)
        for (int64_t g = 0; g < groups; ++g)
            for (int64_t k = 0; k < d.per_group; ++k) {
                const int64_t first = k * MAX_BLOCK_ROWS, n = std::min(block_rows(d, k), G - first);
                const int64_t block = b * blocks + g * d.per_group + k, at = g * d.Gp + first;
                const float* v = x + b * ldx + g * G + first;
                float peak = 0, probe = 0;  // probe: NaN if any value is NaN or infinite
                for (int64_t i = 0; i < n; ++i) {
                    peak = std::max(peak, std::fabs(v[i]));
                    probe += v[i] * 0.0f;
                }
                d.peak[block] = probe == 0 ? peak : NAN;  // (NaN != 0): all digits stay 0, the products NaN
                if (peak == 0 || probe != 0) continue;
                const double inverse = 1073741824.0 / peak;  // double: exact enough for 45 bits, a subnormal peak too
                int8_t* digits = d.digits.data() + b * 6 * d.padded + at;
                int32_t* sums = d.sums.data() + block * 6;
                for (int64_t i = 0; i < n; ++i) {
                    const double t = v[i] * inverse, whole = std::nearbyint(t);
                    int32_t rest = int32_t(whole);  // |rest| <= 2^30: four balanced digits, the top one in [-65, 65]
                    for (int j = 0; j < 4; ++j) {
                        const int8_t digit = int8_t(uint8_t(rest & 255));
                        digits[j * d.padded + i] = digit;
                        sums[j] += digit;
                        rest = (rest - digit) / 256;
                    }
                    rest = int32_t(std::nearbyint((t - whole) * 32768));  // |rest| <= 2^14
                    for (int j = 0; j < 2; ++j) {
                        const int8_t digit = int8_t(uint8_t(rest & 255));
                        digits[(4 + j) * d.padded + i] = digit;
                        sums[4 + j] += digit;
                        rest = (rest - digit) / 256;
                    }
                    if (v[i] != 0 && std::fabs(v[i]) < FINE_BELOW * peak) d.needs_fine[block] = 1;
                }
            }
}

// The offset code of input row i (of the group), column c, of a tile `width` wide.
template <int Bits>
inline int32_t tile_code(const uint8_t* tile, int64_t width, int64_t i, int64_t c) {
    if (Bits == 8) return tile[(i / 4) * 4 * width + 4 * c + i % 4];
    const uint8_t byte = tile[(i / 8) * 4 * width + 4 * c + i % 4];
    return i % 8 < 4 ? byte & 15 : byte >> 4;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
struct Lanes {  // 16 lanes of 32 bits
    using I = __m512i;
    using F = __m512;
    static constexpr int64_t N = 16, V = 4;  // a pass: 4 vectors, a whole 64-column tile
    static I zero() { return _mm512_setzero_si512(); }
    static I load(const uint8_t* p) { return _mm512_loadu_si512(p); }
    static I broadcast(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return _mm512_set1_epi32(v); }
    static I low_nibbles(I v) { return _mm512_and_si512(v, _mm512_set1_epi8(15)); }
    static I high_nibbles(I v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15)); }
    static I dot4(I acc, I codes, I digits) { return _mm512_dpbusd_epi32(acc, codes, digits); }
    static F real(I v, int32_t offset) { return _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(offset))); }
    static F set(float v) { return _mm512_set1_ps(v); }
    static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
    static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
    static F halves(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static F loadf(const float* p) { return _mm512_loadu_ps(p); }
    static void storef(float* p, F v) { _mm512_storeu_ps(p, v); }
};
#define VISUALRWKV_LANES 1
#elif defined(VISUALRWKV_SIMD)
struct Lanes {  // 8 lanes of 32 bits
    using I = __m256i;
    using F = __m256;
    static constexpr int64_t N = 8, V = 2;  // a pass: 2 vectors (16 registers hold 8 digit sums)
    static I zero() { return _mm256_setzero_si256(); }
    static I load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    static I broadcast(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return _mm256_set1_epi32(v); }
    static I low_nibbles(I v) { return _mm256_and_si256(v, _mm256_set1_epi8(15)); }
    static I high_nibbles(I v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(15)); }
    static I dot4(I acc, I codes, I digits) {
#if defined(__AVXVNNI__)
        return _mm256_dpbusd_avx_epi32(acc, codes, digits);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
        return _mm256_dpbusd_epi32(acc, codes, digits);
#else  // bytes 0 and 2, then 1 and 3, as 16-bit pairs: vpmaddwd sums them exactly (no vpmaddubsw saturation)
        const __m256i even = _mm256_and_si256(codes, _mm256_set1_epi32(0x00FF00FF)), odd = _mm256_srli_epi16(codes, 8);
        const __m256i d_even = _mm256_srai_epi16(_mm256_slli_epi16(digits, 8), 8), d_odd = _mm256_srai_epi16(digits, 8);
        return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(even, d_even), _mm256_madd_epi16(odd, d_odd)));
#endif
    }
    static F real(I v, int32_t offset) { return _mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(offset))); }
    static F set(float v) { return _mm256_set1_ps(v); }
    static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
    static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
    static F halves(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static F loadf(const float* p) { return _mm256_loadu_ps(p); }
    static void storef(float* p, F v) { _mm256_storeu_ps(p, v); }
};
#define VISUALRWKV_LANES 1
#endif

// The weight of digit k (d0..d3, then e0, e1) in units of the block's peak.
constexpr float digit_unit(int k) {
    return k < 4 ? DIGIT_UNIT * float(1 << (8 * k)) : FINE_UNIT * float(1 << (8 * (k - 4)));
}

// One activation block against one tile's columns [c, c + V N) (V vectors of N lanes a pass: a 64-column
// tile in one pass with 16 lanes, in four with 8): the integer sums of its digits First..First+ND-1 over
// the block's R rows (from padded row r0), then dst[j] += scale[j] peak sum_k unit_k (sum_k - offset
// digit_sum_k). `digits` and `sums` are the block's (digit 0's).
#ifdef VISUALRWKV_LANES
template <int Bits, int First, int ND>
inline void tile_pass(const uint8_t* tile, int64_t c, int64_t r0, int64_t R, const int8_t* digits, int64_t stride,
                      const int32_t* sums, float peak, const uint16_t* scale, float* __restrict dst) {
    digits += First * stride;
    sums += First;
    using L = Lanes;
    constexpr int64_t V = L::V, N = L::N, row_bytes = 4 * TILE_COLUMNS;
    typename L::I acc[ND][V];
    for (int k = 0; k < ND; ++k)
        for (int v = 0; v < V; ++v) acc[k][v] = L::zero();
    for (int64_t q = r0 / (Bits == 8 ? 4 : 8); q < (r0 + R) / (Bits == 8 ? 4 : 8); ++q) {
        const uint8_t* row = tile + q * row_bytes + 4 * c;
        for (int64_t line = 0; line < 4 * V * N; line += 64)
            _mm_prefetch(reinterpret_cast<const char*>(row + PREFETCH_BYTES + line), _MM_HINT_T0);
        for (int v = 0; v < V; ++v) {
            const typename L::I w = L::load(row + 4 * N * v);
            if (Bits == 8) {
                for (int k = 0; k < ND; ++k) acc[k][v] = L::dot4(acc[k][v], w, L::broadcast(digits + k * stride + 4 * q));
            } else {  // an int4 row of lanes holds eight input rows: four in the low nibbles, four in the high
                const typename L::I low = L::low_nibbles(w), high = L::high_nibbles(w);
                for (int k = 0; k < ND; ++k)
                    acc[k][v] = L::dot4(L::dot4(acc[k][v], low, L::broadcast(digits + k * stride + 8 * q)), high,
                                        L::broadcast(digits + k * stride + 8 * q + 4));
            }
        }
    }
    const int32_t offset = Bits == 8 ? 128 : 8;
    const typename L::F pv = L::set(peak);
    for (int v = 0; v < V; ++v) {
        typename L::F sum = L::mul(L::real(acc[0][v], offset * sums[0]), L::set(digit_unit(First)));
        for (int k = 1; k < ND; ++k)
            sum = L::fmadd(L::real(acc[k][v], offset * sums[k]), L::set(digit_unit(First + k)), sum);
        float* out = dst + c + N * v;
        L::storef(out, L::fmadd(L::mul(L::halves(scale + c + N * v), pv), sum, L::loadf(out)));
    }
}
#endif

// One activation block (R rows from padded row r0, its digits `stride` apart: First..First+ND-1 of them)
// against the columns [0, n) of one group's tiles (`tiles`: the group's first tile of the chunk; n a
// multiple of 64 but at the end).
template <int Bits, int First, int ND>
void block_product(const uint8_t* tiles, int64_t Gp, int64_t n, int64_t r0, int64_t R, const int8_t* digits,
                   int64_t stride, const int32_t* sums, float peak, const uint16_t* scale, float* __restrict dst) {
    const int32_t offset = Bits == 8 ? 128 : 8;
    for (int64_t c0 = 0; c0 < n; c0 += TILE_COLUMNS) {
        const int64_t width = std::min(TILE_COLUMNS, n - c0);
        const uint8_t* tile = tiles + c0 * Gp / (Bits == 8 ? 1 : 2);
        int64_t c = 0;
#ifdef VISUALRWKV_LANES
        if (width == TILE_COLUMNS)
            for (; c < width; c += Lanes::V * Lanes::N)
                tile_pass<Bits, First, ND>(tile, c, r0, R, digits, stride, sums, peak, scale + c0, dst + c0);
#endif
        for (; c < width; ++c) {
            float sum = 0;
            for (int k = First; k < First + ND; ++k) {
                int32_t s = 0;
                for (int64_t i = r0; i < r0 + R; ++i) s += tile_code<Bits>(tile, width, i, c) * digits[k * stride + i];
                sum += float(s - offset * sums[k]) * digit_unit(k);
            }
            dst[c0 + c] += half_to_float(scale[c0 + c]) * peak * sum;
        }
    }
}

// This thread's partial rows of y = x @ w over int8 or int4 tiles: each thread takes whole groups of
// input rows (one contiguous stream of tiles), splits its part of the activations once, and streams its
// tiles chunk by chunk of columns into its partial rows (each group's scale row read once per chunk).
// Several rows (batched decoding) re-read each tile from L1/L2.
template <int Bits>
void partial_quantized(const float* x, int64_t rows, int64_t ldx, const Tensor& w, int64_t in, int64_t out,
                       float* mine) {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t G = w.group, Gp = padded_group(G), groups = in / G;
    const int64_t chunk = std::min(column_chunk(rows), QUANTIZED_CHUNK) / TILE_COLUMNS * TILE_COLUMNS;
    const int64_t g_first = groups * t / threads, g_last = groups * (t + 1) / threads;
    static thread_local Digits d;
    split_digits(x + g_first * G, rows, ldx, g_last - g_first, G, d);
    const int64_t blocks = (g_last - g_first) * d.per_group, group_bytes = Gp * out / (Bits == 8 ? 1 : 2);
    const uint8_t* base = static_cast<const uint8_t*>(w.data);
    for (int64_t c0 = 0; c0 < out; c0 += chunk) {
        const int64_t n = std::min(chunk, out - c0);
        for (int64_t b = 0; b < rows; ++b) std::fill_n(mine + b * out + c0, n, 0.0f);
        for (int64_t g = g_first; g < g_last; ++g) {
            const uint8_t* tiles = base + g * group_bytes + c0 * Gp / (Bits == 8 ? 1 : 2);
            const uint16_t* scale = w.scales + g * out + c0;
            for (int64_t k = 0; k < d.per_group; ++k) {
                const int64_t r0 = k * MAX_BLOCK_ROWS, R = block_rows(d, k), at = (g - g_first) * Gp;
                for (int64_t b = 0; b < rows; ++b) {
                    const int64_t index = b * blocks + (g - g_first) * d.per_group + k;
                    const int32_t* sums = d.sums.data() + index * 6;
                    float* dst = mine + b * out + c0;
                    const int8_t* digits = d.digits.data() + b * 6 * d.padded + at;
                    const float peak = d.peak[index];
                    // e0, e1 where the block needs them: int8 sums them in the same pass (codes loaded once, 2-5%
                    // faster here), int4 in a second one (in the same pass ~3% slower: six digits' sums with the
                    // nibbles do not fit its registers; 32-column passes that fit them, no faster)
                    if (!d.needs_fine[index]) {
                        block_product<Bits, 0, 4>(tiles, Gp, n, r0, R, digits, d.padded, sums, peak, scale, dst);
                    } else if (Bits == 8) {
                        block_product<Bits, 0, 6>(tiles, Gp, n, r0, R, digits, d.padded, sums, peak, scale, dst);
                    } else {
                        block_product<Bits, 0, 4>(tiles, Gp, n, r0, R, digits, d.padded, sums, peak, scale, dst);
                        block_product<Bits, 4, 2>(tiles, Gp, n, r0, R, digits, d.padded, sums, peak, scale, dst);
                    }
                }
            }
        }
    }
}

// The weights of output columns [a, b) of an int8/int4 tile matrix, dequantized (code x scale in fp32, then
// rounded to bf16 if asked) into y [in, b - a] row-major: the [b - a, in] weight in input-major memory, as a
// prompt's GEMM takes it. By every thread of the region, a share of the (group, tile) pairs each.
template <int Bits, typename Out>
void team_dequantize(const Tensor& w, int64_t in, int64_t out, int64_t a, int64_t b, Out* y) {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t G = w.group, Gp = padded_group(G), groups = in / G, width = b - a;
    const int64_t first_tile = a / TILE_COLUMNS, tiles = (b + TILE_COLUMNS - 1) / TILE_COLUMNS - first_tile;
    const int32_t offset = Bits == 8 ? 128 : 8;
    const uint8_t* base = static_cast<const uint8_t*>(w.data);
    const int64_t work = groups * tiles;
    for (int64_t item = work * t / threads; item < work * (t + 1) / threads; ++item) {
        const int64_t g = item / tiles, c0 = (first_tile + item % tiles) * TILE_COLUMNS;
        const int64_t tile_width = std::min(TILE_COLUMNS, out - c0), lo = std::max(a, c0), hi = std::min(b, c0 + tile_width);
        const uint8_t* tile = base + (g * Gp * out + c0 * Gp) / (Bits == 8 ? 1 : 2);
        float scale[TILE_COLUMNS];
        for (int64_t c = lo; c < hi; ++c) scale[c - c0] = half_to_float(w.scales[g * out + c]);
        for (int64_t i = 0; i < G; ++i) {
            Out* row = y + (g * G + i) * width - a;
            for (int64_t c = lo; c < hi; ++c) {
                const float v = float(tile_code<Bits>(tile, tile_width, i, c - c0) - offset) * scale[c - c0];
                if constexpr (sizeof(Out) == 2) {  // bf16, rounded to nearest even (v is finite)
                    uint32_t bits;
                    std::memcpy(&bits, &v, sizeof bits);
                    row[c] = Out{uint16_t((bits + 0x7fffu + ((bits >> 16) & 1)) >> 16)};
                } else {
                    row[c] = v;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------- team products

// One product of a set: y [rows, out] = x [rows, in] (rows ldx apart) @ w.
struct Product {
    const float* x;
    int64_t ldx;
    const Tensor* w;
    int64_t in, out;
    float* y;
};

// This thread's partial rows of one product, for any kind of matrix.
void partial_product(const Product& p, int64_t rows, float* mine) {
    switch (p.w->kind) {
        case BF16: return partial_dense(p.x, rows, p.ldx, static_cast<const bf16*>(p.w->data), p.in, p.out, mine);
        case INT8: return partial_quantized<8>(p.x, rows, p.ldx, *p.w, p.in, p.out, mine);
        case INT4: return partial_quantized<4>(p.x, rows, p.ldx, *p.w, p.in, p.out, mine);
        default: return partial_dense(p.x, rows, p.ldx, static_cast<const float*>(p.w->data), p.in, p.out, mine);
    }
}

// Stores each sum as it is (see team_products).
struct Store {
    float operator()(int, int64_t, float sum) const { return sum; }
};

// Products whose inputs are all ready, by every thread of the parallel region: each thread computes its
// partial rows of every one (`partial` holds T * rows * the products' total columns), then, after one
// barrier, sums one range of all their columns: y_p[e] = finish(p, e, sum). `finish` is where a
// nonlinearity or a residual add happens, on the thread that sums that column, so neither costs a
// serial section and its barrier; one barrier closes the set. Products with a shared input (RWKV-6's
// r, k, v, g and the decay LoRA's first half) so pay two barriers instead of ten.
template <typename Finish = Store>
void team_products(std::initializer_list<Product> products, int64_t rows, float* partial, Finish finish = {}) {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    int64_t total = 0;
    for (const Product& p : products) total += rows * p.out;
    float* mine = partial + t * total;
    for (const Product& p : products) {
        partial_product(p, rows, mine);
        mine += rows * p.out;
    }
#pragma omp barrier
    const int64_t lo = total * t / threads, hi = total * (t + 1) / threads;
    int64_t start = 0, index = 0;
    for (const Product& p : products) {
        const int64_t size = rows * p.out, a = std::max(lo, start), b = std::min(hi, start + size);
        for (int64_t e = a; e < b; ++e) {
            float sum = partial[e];
            for (int u = 1; u < threads; ++u) sum += partial[u * total + e];
            p.y[e - start] = finish(int(index), e - start, sum);
        }
        start += size;
        ++index;
    }
#pragma omp barrier
}

// y [rows, out] = x [rows, in] (ldx apart) @ w [in, out], by every thread of the parallel region.
template <typename Finish = Store>
void team_matmul(const float* x, int64_t rows, int64_t ldx, const Tensor& w, int64_t in, int64_t out, float* y,
                 float* partial, Finish finish = {}) {
    team_products({Product{x, ldx, &w, in, out, y}}, rows, partial, finish);
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
