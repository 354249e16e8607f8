// One RWKV decoding step on CPU (RWKV-6 or RWKV-7), all layers in one call, and the few-row product
// it is built on (the products themselves: cpu_products.h).
//
// Decoding a token reads every weight once, so its speed is set by memory bandwidth. PyTorch's eager
// step spends ~2,500 operator calls on it (2-4 us each) and hands each one-row product to a BLAS that
// streams it on one core. Here each product streams its weight sequentially on every thread (one
// contiguous block of input rows per thread, partial rows summed), and everything between the
// products is a few loops over C values: one call, no allocation per operator, no Python.
//
// Every tensor arrives as a `Tensor` with its own kind, so one model may mix them (rwkv/precision.py
// keeps the large matrices reduced and everything else fp32): a matrix is fp32, bf16, int8 or int4
// (ops/quant.py's groups along the input, fp16 scales), a vector fp32 or bf16 (widened once a layer).
// Whatever the weights, the activations and the state stay fp32, and so does the arithmetic, but for the
// integer sums of the quantized products (on activations split into exact integer parts, see there).
//
// The two generations share the product, the norms, the token shift and the step's driver; each has
// its own block function (`rwkv6_layer`, `rwkv7_layer`), the same math as rwkv/model.py and
// rwkv/rwkv7.py, whose PyTorch step stays the reference: results agree up to summation order (for
// reduced weights: with the fp32 step on the weights widened or dequantized to fp32).
//
// Built by `visualrwkv.ops.cpu_kernels` with the machine's C++ compiler (-O3 -march=native -fopenmp)
// and called through ctypes; OpenMP resolves to the libgomp that torch has already loaded, so these
// threads are torch's threads.

#include "cpu_products.h"  // the tensors and the products (fp32, bf16, int8, int4)

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------- shared math

void layer_norm(const float* x, const float* weight, const float* bias, float eps, int64_t n, float* y) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= n;
    for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    const float rstd = 1.0f / std::sqrt(float(var / n) + eps), m = float(mean);
    for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - m) * rstd * weight[i] + bias[i];
}

// GroupNorm of one head's n values in place, then the per-channel affine.
void group_norm(float* y, const float* weight, const float* bias, float eps, int64_t n) {
    float mean = 0, var = 0;
    for (int64_t j = 0; j < n; ++j) mean += y[j];
    mean /= n;
    for (int64_t j = 0; j < n; ++j) var += (y[j] - mean) * (y[j] - mean);
    const float rstd = 1.0f / std::sqrt(var / n + eps);
    for (int64_t j = 0; j < n; ++j) y[j] = (y[j] - mean) * rstd * weight[j] + bias[j];
}

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }
inline float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

// The sizes and buffers of one step, and where its state lives (see `visualrwkv_step`).
struct Step {
    int64_t L, B, C, H, N;
    const int64_t* sizes;  // RWKV-6: mix, decay, ffn; RWKV-7: decay, a, value, gate, ffn
    const Tensor* params;  // per layer, in the order of the generation's enum
    int64_t per_layer;
    const Tensor* ln0;     // weight, bias
    float ln_eps, gn_eps;
    float* x;              // [B, C]: the embeddings in, the last hidden state out (before ln_out)
    const float *att_shift, *wkv, *ffn_shift;  // [L, B, C], [L, B, H, N, N], [L, B, C]
    float *new_att_shift, *new_wkv, *new_ffn_shift;
    float* partial;        // the products' partial rows
    float* vectors;        // per_layer * C floats: the layer's vectors widened to fp32
};

// The layer's vector parameters as fp32 (called in a `single` region).
void widen_vectors(const Step& s, const Tensor* p, const int* which, int count, const float** out) {
    for (int i = 0; i < count; ++i) out[which[i]] = as_floats(p[which[i]], s.C, s.vectors + which[i] * s.C);
}

// The start of a block, row by row: ln0 (layer 0), `a` = ln(x), the token-shift difference prev - a,
// and `a` saved as the new shift. Called in a `single` region.
void shift_in(const Step& s, int64_t l, const float* ln_w, const float* ln_b, const float* shift, float* new_shift,
              float* a, float* dx, const float* ln0_w, const float* ln0_b) {
    const int64_t B = s.B, C = s.C;
    for (int64_t b = 0; b < B; ++b) {
        float* xb = s.x + b * C;
        if (l == 0 && ln0_w) layer_norm(xb, ln0_w, ln0_b, s.ln_eps, C, xb);
        layer_norm(xb, ln_w, ln_b, s.ln_eps, C, a + b * C);
        const float* prev = shift + (l * B + b) * C;
        std::copy_n(a + b * C, C, new_shift + (l * B + b) * C);
        for (int64_t c = 0; c < C; ++c) dx[b * C + c] = prev[c] - a[b * C + c];
    }
}

// ---------------------------------------------------------------------------------------------- RWKV-6

// The parameters of one RWKV-6 layer, in the order `cpu_kernels.RWKV6_PARAMETERS` lists them.
enum Param6 {
    LN1_W, LN1_B, LN2_W, LN2_B,
    MAA_X, MAA_W, MAA_K, MAA_V, MAA_R, MAA_G, MAA_W1, MAA_W2,
    DECAY, DECAY_W1, DECAY_W2, BONUS,
    W_R, W_K, W_V, W_G, W_O, LNX_W, LNX_B,
    FFN_MAA_K, FFN_MAA_R, FFN_W_K, FFN_W_R, FFN_W_V,
    PARAMS_6
};
constexpr int VECTORS_6[] = {LN1_W, LN1_B, LN2_W, LN2_B, MAA_X, MAA_W, MAA_K, MAA_V, MAA_R, MAA_G,
                             DECAY, BONUS, LNX_W, LNX_B, FFN_MAA_K, FFN_MAA_R};

// Buffers of an RWKV-6 step, sized once per call.
struct Buffers6 {
    std::vector<float> xa, dx, xxx, lora, mix, xs, rkvg, dlo, wdelta, y, out, ffk, ffr;
    Buffers6(int64_t B, int64_t C, int64_t R, int64_t D, int64_t F)
        : xa(B * C), dx(B * C), xxx(B * C), lora(B * 5 * R), mix(5 * B * C), xs(5 * B * C), rkvg(4 * B * C),
          dlo(B * D), wdelta(B * C), y(B * C), out(B * C), ffk(B * F), ffr(B * C) {}
};

// One RWKV-6 layer, by every thread of the step's parallel region. maa_w2 is [5, R, C] in the order
// (w, k, v, r, g); the WKV state is [key, value].
void rwkv6_layer(const Step& s, int64_t l, Buffers6& m, const float** v) {
    const int64_t B = s.B, C = s.C, H = s.H, N = s.N, R = s.sizes[0], D = s.sizes[1], F = s.sizes[2], BC = B * C;
    const Tensor* p = s.params + l * s.per_layer;
    float* part = s.partial;
#pragma omp single
    {
        widen_vectors(s, p, VECTORS_6, sizeof VECTORS_6 / sizeof *VECTORS_6, v);
        const float* ln0[2] = {as_floats(s.ln0[0], C, m.ffr.data()), as_floats(s.ln0[1], C, m.y.data())};
        shift_in(s, l, v[LN1_W], v[LN1_B], s.att_shift, s.new_att_shift, m.xa.data(), m.dx.data(), ln0[0], ln0[1]);
        for (int64_t e = 0; e < BC; ++e) m.xxx[e] = m.xa[e] + m.dx[e] * v[MAA_X][e % C];
    }
    // ddlerp: five data-dependent mixes of the token and its predecessor, through a rank-R LoRA
    team_matmul(m.xxx.data(), B, C, p[MAA_W1], C, 5 * R, m.lora.data(), part);
#pragma omp single
    for (auto& e : m.lora) e = std::tanh(e);
    for (int k = 0; k < 5; ++k)
        team_matmul(m.lora.data() + k * R, B, 5 * R, rows_from(p[MAA_W2], k * R, C), R, C, m.mix.data() + k * BC,
                    part);
#pragma omp single
    {
        const float* maa[5] = {v[MAA_W], v[MAA_K], v[MAA_V], v[MAA_R], v[MAA_G]};
        for (int k = 0; k < 5; ++k)
            for (int64_t e = 0; e < BC; ++e) m.xs[k * BC + e] = m.xa[e] + m.dx[e] * (maa[k][e % C] + m.mix[k * BC + e]);
    }
    // slots of xs: 0 w, 1 k, 2 v, 3 r, 4 g; of rkvg: 0 r, 1 k, 2 v, 3 g
    team_matmul(m.xs.data() + 3 * BC, B, C, p[W_R], C, C, m.rkvg.data(), part);
    team_matmul(m.xs.data() + 1 * BC, B, C, p[W_K], C, C, m.rkvg.data() + BC, part);
    team_matmul(m.xs.data() + 2 * BC, B, C, p[W_V], C, C, m.rkvg.data() + 2 * BC, part);
    team_matmul(m.xs.data() + 4 * BC, B, C, p[W_G], C, C, m.rkvg.data() + 3 * BC, part);
    team_matmul(m.xs.data(), B, C, p[DECAY_W1], C, D, m.dlo.data(), part);
#pragma omp single
    for (auto& e : m.dlo) e = std::tanh(e);
    team_matmul(m.dlo.data(), B, D, p[DECAY_W2], D, C, m.wdelta.data(), part);

    // WKV per (row, head): y = r·(S + u k v^T), S' = diag(exp(-exp(w))) S + k v^T; then GroupNorm and the gate
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
        const int64_t b = bh / H, h = bh % H, o = b * C + h * N;
        const float *r = m.rkvg.data() + o, *k = m.rkvg.data() + BC + o, *val = m.rkvg.data() + 2 * BC + o;
        const float* u = v[BONUS] + h * N;
        const float* S = s.wkv + ((l * B + b) * H + h) * N * N;
        float* S2 = s.new_wkv + ((l * B + b) * H + h) * N * N;
        float* yh = m.y.data() + o;
        float ruk = 0;
        for (int64_t i = 0; i < N; ++i) ruk += r[i] * u[i] * k[i];
        for (int64_t j = 0; j < N; ++j) yh[j] = ruk * val[j];
        for (int64_t i = 0; i < N; ++i) {
            const float decay = std::exp(-std::exp(v[DECAY][h * N + i] + m.wdelta[o + i]));
            const float ri = r[i], ki = k[i];
            const float* __restrict Si = S + i * N;
            float* __restrict S2i = S2 + i * N;
#pragma omp simd
            for (int64_t j = 0; j < N; ++j) {
                yh[j] += ri * Si[j];
                S2i[j] = decay * Si[j] + ki * val[j];
            }
        }
        group_norm(yh, v[LNX_W] + h * N, v[LNX_B] + h * N, s.gn_eps, N);
        const float* g = m.rkvg.data() + 3 * BC + o;
        for (int64_t j = 0; j < N; ++j) yh[j] *= silu(g[j]);
    }
    team_matmul(m.y.data(), B, C, p[W_O], C, C, m.out.data(), part);

#pragma omp single
    {
        for (int64_t e = 0; e < BC; ++e) s.x[e] += m.out[e];
        shift_in(s, l, v[LN2_W], v[LN2_B], s.ffn_shift, s.new_ffn_shift, m.xa.data(), m.dx.data(), nullptr, nullptr);
        for (int64_t e = 0; e < BC; ++e) {
            m.xs[e] = m.xa[e] + m.dx[e] * v[FFN_MAA_K][e % C];
            m.xs[BC + e] = m.xa[e] + m.dx[e] * v[FFN_MAA_R][e % C];
        }
    }
    team_matmul(m.xs.data(), B, C, p[FFN_W_K], C, F, m.ffk.data(), part);
#pragma omp single
    for (auto& e : m.ffk) e = e > 0 ? e * e : 0.0f;
    team_matmul(m.ffk.data(), B, F, p[FFN_W_V], F, C, m.out.data(), part);
    team_matmul(m.xs.data() + BC, B, C, p[FFN_W_R], C, C, m.ffr.data(), part);
#pragma omp single
    for (int64_t e = 0; e < BC; ++e) s.x[e] += sigmoid(m.ffr[e]) * m.out[e];
}

// ---------------------------------------------------------------------------------------------- RWKV-7

// The parameters of one RWKV-7 layer, in the order `cpu_kernels.RWKV7_PARAMETERS` lists them
// (layer 0 has no V0/V1/V2: it defines the value residual).
enum Param7 {
    L7_LN1_W, L7_LN1_B, L7_LN2_W, L7_LN2_B,
    X_R, X_W, X_K, X_V, X_A, X_G,
    W0, W1, W2, A0, A1, A2, V0, V1, V2, G1, G2, K_K, K_A, R_K,
    L7_W_R, L7_W_K, L7_W_V, L7_W_O, L7_LNX_W, L7_LNX_B,
    FFN_X_K, L7_FFN_W_K, L7_FFN_W_V,
    PARAMS_7
};
constexpr int VECTORS_7[] = {L7_LN1_W, L7_LN1_B, L7_LN2_W, L7_LN2_B, X_R, X_W, X_K, X_V, X_A, X_G,
                             W0, A0, V0, K_K, K_A, R_K, L7_LNX_W, L7_LNX_B, FFN_X_K};
constexpr float DECAY_SCALE_7 = 0.60653065971263342f;  // exp(-0.5): log-decay = -e^-0.5 sigmoid(z)

struct Buffers7 {
    std::vector<float> xa, dx, mixes, rkv, v_first, lo, wdelta, adelta, vdelta, gate, y, out, ffk;
    Buffers7(int64_t B, int64_t C, int64_t low_rank, int64_t F)
        : xa(B * C), dx(B * C), mixes(6 * B * C), rkv(3 * B * C), v_first(B * C), lo(B * low_rank),
          wdelta(B * C), adelta(B * C), vdelta(B * C), gate(B * C), y(B * C), out(B * C), ffk(B * F) {}
};

// (x @ down) @ up with an optional nonlinearity between: a LoRA of rank `rank`.
template <typename Inner>
void team_lora(const Step& s, const float* x, const Tensor& down, const Tensor& up, int64_t rank, float* y,
               std::vector<float>& lo, Inner inner) {
    team_matmul(x, s.B, s.C, down, s.C, rank, lo.data(), s.partial);
#pragma omp single
    for (int64_t e = 0; e < s.B * rank; ++e) lo[e] = inner(lo[e]);
    team_matmul(lo.data(), s.B, rank, up, rank, s.C, y, s.partial);
}

// One RWKV-7 layer, by every thread of the step's parallel region. The WKV state is [value, key].
void rwkv7_layer(const Step& s, int64_t l, Buffers7& m, const float** v) {
    const int64_t B = s.B, C = s.C, H = s.H, N = s.N, BC = B * C;
    const int64_t D = s.sizes[0], A = s.sizes[1], V = s.sizes[2], G = s.sizes[3], F = s.sizes[4];
    const Tensor* p = s.params + l * s.per_layer;
    float* part = s.partial;
    // slots of mixes: 0 r, 1 w, 2 k, 3 v, 4 a, 5 g; of rkv: 0 r, 1 k, 2 v
    float* mix[6];
    for (int k = 0; k < 6; ++k) mix[k] = m.mixes.data() + k * BC;
#pragma omp single
    {
        widen_vectors(s, p, VECTORS_7, sizeof VECTORS_7 / sizeof *VECTORS_7, v);
        const float* ln0[2] = {as_floats(s.ln0[0], C, m.out.data()), as_floats(s.ln0[1], C, m.y.data())};
        shift_in(s, l, v[L7_LN1_W], v[L7_LN1_B], s.att_shift, s.new_att_shift, m.xa.data(), m.dx.data(), ln0[0],
                 ln0[1]);
        const float* coefficient[6] = {v[X_R], v[X_W], v[X_K], v[X_V], v[X_A], v[X_G]};
        for (int k = 0; k < 6; ++k)
            for (int64_t e = 0; e < BC; ++e) mix[k][e] = m.xa[e] + m.dx[e] * coefficient[k][e % C];
    }
    team_matmul(mix[0], B, C, p[L7_W_R], C, C, m.rkv.data(), part);
    team_matmul(mix[2], B, C, p[L7_W_K], C, C, m.rkv.data() + BC, part);
    team_matmul(mix[3], B, C, p[L7_W_V], C, C, m.rkv.data() + 2 * BC, part);
    auto tanh_ = [](float e) { return std::tanh(e); };
    auto none = [](float e) { return e; };
    auto sigmoid_ = [](float e) { return sigmoid(e); };
    team_lora(s, mix[1], p[W1], p[W2], D, m.wdelta.data(), m.lo, tanh_);
    team_lora(s, mix[4], p[A1], p[A2], A, m.adelta.data(), m.lo, none);
    if (l > 0) team_lora(s, mix[3], p[V1], p[V2], V, m.vdelta.data(), m.lo, none);
    team_lora(s, mix[5], p[G1], p[G2], G, m.gate.data(), m.lo, sigmoid_);

    // per (row, head): the value residual, the in-context rate, κ̂, the delta-rule update
    //   S' = S diag(w) + (S (-κ̂)) (κ̂ a)ᵀ + v kᵀ,  y = S' r,  then GroupNorm, the bonus (Σ r k r_k) v, the gate
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
        const int64_t b = bh / H, h = bh % H, o = b * C + h * N, c0 = h * N;
        const float* r = m.rkv.data() + o;
        float* k = m.rkv.data() + BC + o;
        float* val = m.rkv.data() + 2 * BC + o;
        float w[256], a[256], kk[256], kka[256];  // N <= 256 (checked by the caller)
        float* vf = m.v_first.data() + o;
        for (int64_t j = 0; j < N; ++j) {
            if (l == 0)
                vf[j] = val[j];
            else
                val[j] += (vf[j] - val[j]) * sigmoid(v[V0][c0 + j] + m.vdelta[o + j]);
            w[j] = std::exp(-DECAY_SCALE_7 * sigmoid(v[W0][c0 + j] + m.wdelta[o + j]));
            a[j] = sigmoid(v[A0][c0 + j] + m.adelta[o + j]);
            kk[j] = k[j] * v[K_K][c0 + j];
        }
        float norm = 0;
        for (int64_t j = 0; j < N; ++j) norm += kk[j] * kk[j];
        const float inv = 1.0f / std::max(std::sqrt(norm), 1e-12f);  // F.normalize's eps
        for (int64_t j = 0; j < N; ++j) {
            kk[j] *= inv;
            kka[j] = kk[j] * a[j];
            k[j] *= 1 + (a[j] - 1) * v[K_A][c0 + j];
        }
        const float* S = s.wkv + ((l * B + b) * H + h) * N * N;
        float* S2 = s.new_wkv + ((l * B + b) * H + h) * N * N;
        float* yh = m.y.data() + o;
        for (int64_t i = 0; i < N; ++i) {
            const float* __restrict Si = S + i * N;
            float* __restrict S2i = S2 + i * N;
            float sa = 0;
#pragma omp simd reduction(+ : sa)
            for (int64_t j = 0; j < N; ++j) sa -= Si[j] * kk[j];
            const float vi = val[i];
            float yi = 0;
#pragma omp simd reduction(+ : yi)
            for (int64_t j = 0; j < N; ++j) {
                S2i[j] = Si[j] * w[j] + sa * kka[j] + vi * k[j];
                yi += S2i[j] * r[j];
            }
            yh[i] = yi;
        }
        group_norm(yh, v[L7_LNX_W] + c0, v[L7_LNX_B] + c0, s.gn_eps, N);
        float bonus = 0;
        for (int64_t j = 0; j < N; ++j) bonus += r[j] * k[j] * v[R_K][c0 + j];
        const float* g = m.gate.data() + o;
        for (int64_t j = 0; j < N; ++j) yh[j] = (yh[j] + bonus * val[j]) * g[j];
    }
    team_matmul(m.y.data(), B, C, p[L7_W_O], C, C, m.out.data(), part);

#pragma omp single
    {
        for (int64_t e = 0; e < BC; ++e) s.x[e] += m.out[e];
        shift_in(s, l, v[L7_LN2_W], v[L7_LN2_B], s.ffn_shift, s.new_ffn_shift, m.xa.data(), m.dx.data(), nullptr,
                 nullptr);
        for (int64_t e = 0; e < BC; ++e) mix[0][e] = m.xa[e] + m.dx[e] * v[FFN_X_K][e % C];
    }
    team_matmul(mix[0], B, C, p[L7_FFN_W_K], C, F, m.ffk.data(), part);
#pragma omp single
    for (auto& e : m.ffk) e = e > 0 ? e * e : 0.0f;
    team_matmul(m.ffk.data(), B, F, p[L7_FFN_W_V], F, C, m.out.data(), part);
#pragma omp single
    for (int64_t e = 0; e < BC; ++e) s.x[e] += m.out[e];
}

// ---------------------------------------------------------------------------------------------- the step

// All layers of one token in one parallel region.
template <typename Buffers, typename Layer>
void run_layers(Step& s, Buffers& buffers, int threads, int64_t widest, int per_layer, Layer layer) {
    static thread_local std::vector<float> partial, vectors;
    partial.resize(size_t(threads) * s.B * widest);
    vectors.resize(size_t(per_layer) * s.C);
    s.partial = partial.data();
    s.vectors = vectors.data();
    std::vector<const float*> v(per_layer);
#pragma omp parallel num_threads(threads)
    for (int64_t l = 0; l < s.L; ++l) layer(s, l, buffers, v.data());
}

}  // namespace

extern "C" {

int visualrwkv_params_per_layer(int version) { return version == 7 ? PARAMS_7 : PARAMS_6; }

// y [rows, out] = x [rows, in] @ w [in, out] on `threads` threads, for any kind of matrix.
void visualrwkv_matmul(const float* x, int64_t rows, const Tensor* w, int64_t in, int64_t out, float* y, int threads) {
    rows_matmul(x, rows, *w, in, out, y, threads);
}

// The same for a dense matrix, its dtype as a flag: `bf16_weights` 0 for fp32, 1 for bf16.
void visualrwkv_rows_matmul(int bf16_weights, const float* x, int64_t rows, const void* w, int64_t in, int64_t out,
                            float* y, int threads) {
    const Tensor t{w, nullptr, bf16_weights ? BF16 : F32, 0};
    rows_matmul(x, rows, t, in, out, y, threads);
}

// One token through all L layers of an RWKV-`version` model (see `Step` for the arguments); `sizes`
// as `Step::sizes`, `params` PARAMS_6 or PARAMS_7 tensors per layer. Returns 0, or -1 for a head
// size the RWKV-7 block does not take (N > 256).
int visualrwkv_step(int version, int64_t L, int64_t B, int64_t C, int64_t H, int64_t N, const int64_t* sizes,
                    const Tensor* params, const Tensor* ln0, float ln_eps, float gn_eps, float* x,
                    const float* att_shift, const float* wkv, const float* ffn_shift, float* new_att_shift,
                    float* new_wkv, float* new_ffn_shift, int threads) {
    threads = std::max(threads, 1);
    Step s{L, B, C, H, N, sizes, params, version == 7 ? PARAMS_7 : PARAMS_6, ln0, ln_eps, gn_eps, x, att_shift, wkv,
           ffn_shift, new_att_shift, new_wkv, new_ffn_shift, nullptr, nullptr};
    if (version == 7) {
        if (N > 256) return -1;
        const int64_t low_rank = std::max({sizes[0], sizes[1], sizes[2], sizes[3]});
        Buffers7 buffers(B, C, low_rank, sizes[4]);
        run_layers(s, buffers, threads, std::max({C, sizes[4], low_rank}), PARAMS_7, rwkv7_layer);
    } else {
        Buffers6 buffers(B, C, sizes[0], sizes[1], sizes[2]);
        run_layers(s, buffers, threads, std::max({C, sizes[2], 5 * sizes[0], sizes[1]}), PARAMS_6, rwkv6_layer);
    }
    return 0;
}

}  // extern "C"
