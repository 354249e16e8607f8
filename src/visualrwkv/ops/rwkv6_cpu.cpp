// One RWKV-6 decoding step on CPU, all layers in one call, and the few-row product it is built on.
//
// Decoding a token reads every weight once, so its speed is set by memory bandwidth. PyTorch's eager
// step spends ~2,500 operator calls on it (2-4 us each) and hands each one-row product to a BLAS that
// streams it on one core. Here each product streams its weight sequentially on every thread (one
// contiguous block of input rows per thread, partial rows summed), and everything between the
// products is a few loops over C values: one call, no allocation per operator, no Python.
// Weights are fp32 or bf16 (`Weight` below); bf16 halves the bytes a step reads, and the math stays fp32.
//
// Built by `visualrwkv.ops.cpu_kernels` with the machine's C++ compiler (-O3 -march=native -fopenmp)
// and called through ctypes; OpenMP resolves to the libgomp that torch has already loaded, so these
// threads are torch's threads. All math is fp32, as in the fp32 PyTorch step (rwkv/model.py), which
// stays the reference: results agree up to summation order (for bf16 weights: with the fp32 step on
// the same weights widened to fp32).

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// A bfloat16 weight: the top half of an fp32, so widening it is exact (a shift).
struct bf16 {
    uint16_t bits;
    operator float() const;
};

constexpr int64_t U = 16;  // input rows per pass over a partial row (see team_matmul)

inline float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline bf16::operator float() const { return from_bits(uint32_t(bits) << 16); }

// acc[j] += sum_u xs[u] block[u * out + j] for j < n, the U input rows of one pass.
inline void accumulate(float* __restrict acc, const float* xs, const float* __restrict block, int64_t out,
                       int64_t n) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
        float s = acc[j];
#pragma GCC unroll 16
        for (int64_t u = 0; u < U; ++u) s += xs[u] * block[u * out + j];
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

// y[b, :] = sum_i x[b, i] w[i, :], for b < rows; w is [in, out] row-major, x rows are ldx apart.
// Called by every thread of a parallel region: thread t reads input rows [in*t/T, in*(t+1)/T) in
// address order into its own partial rows, then the threads sum the partials column range by column
// range. `partial` holds T * rows * out floats. Sixteen input rows are read per pass over a partial
// row: with four, the partial's load and store per step held the stream to ~24 GB/s here (~29 now,
// within a few percent of a plain read).
template <typename Weight>
void team_matmul(const float* x, int64_t rows, int64_t ldx, const Weight* w, int64_t in, int64_t out,
                 float* y, float* partial) {
    const int threads = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = in * t / threads, last = in * (t + 1) / threads;
    float* mine = partial + t * rows * out;
    // columns in chunks whose partial rows stay in L2 while the input rows stream past them
    const int64_t chunk = std::max<int64_t>(256, (32768 / rows) & ~int64_t(31));
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
#pragma omp barrier
    const int64_t total = rows * out, lo = total * t / threads, hi = total * (t + 1) / threads;
    for (int64_t e = lo; e < hi; ++e) {
        float s = partial[e];
        for (int u = 1; u < threads; ++u) s += partial[u * total + e];
        y[e] = s;
    }
#pragma omp barrier
}

template <typename Weight>
void layer_norm(const float* x, const Weight* weight, const Weight* bias, float eps, int64_t n, float* y) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= n;
    for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.0f / std::sqrt(float(var / n) + eps), m = float(mean);
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * rstd * weight[i] + bias[i];
}

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }
inline float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

// The parameters of one layer, in the order `cpu_kernels.LAYER_PARAMETERS` lists them.
enum Param {
    LN1_W, LN1_B, LN2_W, LN2_B,
    MAA_X, MAA_W, MAA_K, MAA_V, MAA_R, MAA_G, MAA_W1, MAA_W2,
    DECAY, DECAY_W1, DECAY_W2, BONUS,
    W_R, W_K, W_V, W_G, W_O, LNX_W, LNX_B,
    FFN_MAA_K, FFN_MAA_R, FFN_W_K, FFN_W_R, FFN_W_V,
    PARAMS_PER_LAYER
};

// y [rows, out] = x [rows, in] @ w [in, out] on `threads` threads.
template <typename Weight>
void rows_matmul(const float* x, int64_t rows, const Weight* w, int64_t in, int64_t out, float* y, int threads) {
    threads = std::max(threads, 1);
    static thread_local std::vector<float> partial;
    partial.resize(size_t(threads) * rows * out);
    float* part = partial.data();  // the calling thread's buffer, shared by the team
#pragma omp parallel num_threads(threads)
    team_matmul(x, rows, in, w, in, out, y, part);
}

// One token through all layers. x [B, C]: the embeddings in, the last hidden state out (before
// ln_out). The state tensors are [L, B, C] (shifts) and [L, B, H, N, N] (WKV, [key, value]); the old
// state is read and the new one written to separate buffers. `params` holds PARAMS_PER_LAYER pointers
// per layer; every matrix is [in, out] row-major; `maa_w2` is [5, R, C] in the order (w, k, v, r, g).
template <typename Weight>
void rwkv6_step(int64_t L, int64_t B, int64_t C, int64_t H, int64_t N, int64_t R, int64_t D, int64_t F,
                const Weight* const* params, const Weight* ln0_w, const Weight* ln0_b, float ln_eps, float gn_eps,
                float* x, const float* att_shift, const float* wkv, const float* ffn_shift, float* new_att_shift,
                float* new_wkv, float* new_ffn_shift, int threads) {
    threads = std::max(threads, 1);
    std::vector<float> xa(B * C), dx(B * C), xxx(B * C), lora(B * 5 * R), mix(5 * B * C), xs(5 * B * C),
        rkvg(4 * B * C), dlo(B * D), wdelta(B * C), y(B * C), out(B * C), ffk(B * F), ffr(B * C);
    static thread_local std::vector<float> partial;
    partial.resize(size_t(threads) * B * std::max({C, F, 5 * R, D}));
    float* part = partial.data();

#pragma omp parallel num_threads(threads)
    for (int64_t l = 0; l < L; ++l) {
        const Weight* const* p = params + l * PARAMS_PER_LAYER;
        const int64_t BC = B * C;
#pragma omp single
        for (int64_t b = 0; b < B; ++b) {
            float* xb = x + b * C;
            if (l == 0) layer_norm(xb, ln0_w, ln0_b, ln_eps, C, xb);
            float* a = xa.data() + b * C;
            layer_norm(xb, p[LN1_W], p[LN1_B], ln_eps, C, a);
            const float* prev = att_shift + (l * B + b) * C;
            std::copy_n(a, C, new_att_shift + (l * B + b) * C);
            for (int64_t c = 0; c < C; ++c) {
                dx[b * C + c] = prev[c] - a[c];
                xxx[b * C + c] = a[c] + dx[b * C + c] * p[MAA_X][c];
            }
        }
        // ddlerp: five data-dependent mixes of the token and its predecessor, through a rank-R LoRA
        team_matmul(xxx.data(), B, C, p[MAA_W1], C, 5 * R, lora.data(), part);
#pragma omp single
        for (auto& v : lora) v = std::tanh(v);
        for (int s = 0; s < 5; ++s)
            team_matmul(lora.data() + s * R, B, 5 * R, p[MAA_W2] + s * R * C, R, C, mix.data() + s * BC, part);
#pragma omp single
        {
            const Weight* maa[5] = {p[MAA_W], p[MAA_K], p[MAA_V], p[MAA_R], p[MAA_G]};
            for (int s = 0; s < 5; ++s)
                for (int64_t e = 0; e < BC; ++e)
                    xs[s * BC + e] = xa[e] + dx[e] * (maa[s][e % C] + mix[s * BC + e]);
        }
        // slots of xs: 0 w, 1 k, 2 v, 3 r, 4 g; of rkvg: 0 r, 1 k, 2 v, 3 g
        team_matmul(xs.data() + 3 * BC, B, C, p[W_R], C, C, rkvg.data(), part);
        team_matmul(xs.data() + 1 * BC, B, C, p[W_K], C, C, rkvg.data() + BC, part);
        team_matmul(xs.data() + 2 * BC, B, C, p[W_V], C, C, rkvg.data() + 2 * BC, part);
        team_matmul(xs.data() + 4 * BC, B, C, p[W_G], C, C, rkvg.data() + 3 * BC, part);
        team_matmul(xs.data(), B, C, p[DECAY_W1], C, D, dlo.data(), part);
#pragma omp single
        for (auto& v : dlo) v = std::tanh(v);
        team_matmul(dlo.data(), B, D, p[DECAY_W2], D, C, wdelta.data(), part);

        // WKV per (row, head): y = r·(S + u k v^T), S' = diag(exp(-exp(w))) S + k v^T; then GroupNorm and the gate
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; ++bh) {
            const int64_t b = bh / H, h = bh % H, o = b * C + h * N;
            const float *r = rkvg.data() + o, *k = rkvg.data() + BC + o, *v = rkvg.data() + 2 * BC + o;
            const Weight* u = p[BONUS] + h * N;
            const float* S = wkv + ((l * B + b) * H + h) * N * N;
            float* S2 = new_wkv + ((l * B + b) * H + h) * N * N;
            float* yh = y.data() + o;
            float ruk = 0;
            for (int64_t i = 0; i < N; ++i) ruk += r[i] * u[i] * k[i];
            for (int64_t j = 0; j < N; ++j) yh[j] = ruk * v[j];
            for (int64_t i = 0; i < N; ++i) {
                const float decay = std::exp(-std::exp(p[DECAY][h * N + i] + wdelta[o + i]));
                const float ri = r[i], ki = k[i];
                const float* __restrict Si = S + i * N;
                float* __restrict S2i = S2 + i * N;
#pragma omp simd
                for (int64_t j = 0; j < N; ++j) {
                    yh[j] += ri * Si[j];
                    S2i[j] = decay * Si[j] + ki * v[j];
                }
            }
            float mean = 0, var = 0;
            for (int64_t j = 0; j < N; ++j) mean += yh[j];
            mean /= N;
            for (int64_t j = 0; j < N; ++j) var += (yh[j] - mean) * (yh[j] - mean);
            const float rstd = 1.0f / std::sqrt(var / N + gn_eps);
            const float* g = rkvg.data() + 3 * BC + o;
            for (int64_t j = 0; j < N; ++j)
                yh[j] = ((yh[j] - mean) * rstd * p[LNX_W][h * N + j] + p[LNX_B][h * N + j]) * silu(g[j]);
        }
        team_matmul(y.data(), B, C, p[W_O], C, C, out.data(), part);

#pragma omp single
        for (int64_t b = 0; b < B; ++b) {
            float* xb = x + b * C;
            for (int64_t c = 0; c < C; ++c) xb[c] += out[b * C + c];
            float* a = xa.data() + b * C;
            layer_norm(xb, p[LN2_W], p[LN2_B], ln_eps, C, a);
            const float* prev = ffn_shift + (l * B + b) * C;
            std::copy_n(a, C, new_ffn_shift + (l * B + b) * C);
            for (int64_t c = 0; c < C; ++c) {
                const float d = prev[c] - a[c];
                xs[b * C + c] = a[c] + d * p[FFN_MAA_K][c];
                xs[BC + b * C + c] = a[c] + d * p[FFN_MAA_R][c];
            }
        }
        team_matmul(xs.data(), B, C, p[FFN_W_K], C, F, ffk.data(), part);
#pragma omp single
        for (auto& v : ffk) v = v > 0 ? v * v : 0.0f;
        team_matmul(ffk.data(), B, F, p[FFN_W_V], F, C, out.data(), part);
        team_matmul(xs.data() + BC, B, C, p[FFN_W_R], C, C, ffr.data(), part);
#pragma omp single
        for (int64_t e = 0; e < BC; ++e) x[e] += sigmoid(ffr[e]) * out[e];
    }
}

}  // namespace

extern "C" {

int visualrwkv_params_per_layer() { return PARAMS_PER_LAYER; }

// The entry points take the weights' dtype as a flag: `bf16_weights` 0 for fp32, 1 for bf16.

// y [rows, out] = x [rows, in] @ w [in, out] on `threads` threads.
void visualrwkv_rows_matmul(int bf16_weights, const float* x, int64_t rows, const void* w, int64_t in, int64_t out,
                            float* y, int threads) {
    auto run = [&](auto weight) {
        using Weight = decltype(weight);
        rows_matmul(x, rows, static_cast<const Weight*>(w), in, out, y, threads);
    };
    bf16_weights ? run(bf16{}) : run(0.0f);
}

// `rwkv6_step`, every parameter in the one dtype.
void visualrwkv_rwkv6_step(int bf16_weights, int64_t L, int64_t B, int64_t C, int64_t H, int64_t N, int64_t R,
                           int64_t D, int64_t F, const void* const* params, const void* ln0_w, const void* ln0_b,
                           float ln_eps, float gn_eps, float* x, const float* att_shift, const float* wkv,
                           const float* ffn_shift, float* new_att_shift, float* new_wkv, float* new_ffn_shift,
                           int threads) {
    auto run = [&](auto weight) {
        using Weight = decltype(weight);
        rwkv6_step(L, B, C, H, N, R, D, F, reinterpret_cast<const Weight* const*>(params),
                   static_cast<const Weight*>(ln0_w), static_cast<const Weight*>(ln0_b), ln_eps, gn_eps, x, att_shift,
                   wkv, ffn_shift, new_att_shift, new_wkv, new_ffn_shift, threads);
    };
    bf16_weights ? run(bf16{}) : run(0.0f);
}

}  // extern "C"
