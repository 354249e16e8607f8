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
inline float squared_relu(float v) { return v > 0 ? v * v : 0.0f; }

// y = a + d * coefficient, over one row of C values (a token-shift mix)
inline void mix_rows(const float* a, const float* d, const float* coefficient, int64_t C, float* y) {
    for (int64_t c = 0; c < C; ++c) y[c] = a[c] + d[c] * coefficient[c];
}

// The finish of a product that adds onto the residual stream x (see team_products)
inline auto residual(float* x) {
    return [x](int, int64_t e, float sum) {
        x[e] += sum;
        return sum;
    };
}

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
        for (int64_t b = 0; b < B; ++b) mix_rows(m.xa.data() + b * C, m.dx.data() + b * C, v[MAA_X], C, m.xxx.data() + b * C);
    }
    // ddlerp: five data-dependent mixes of the token and its predecessor, through a rank-R LoRA (tanh between)
    team_matmul(m.xxx.data(), B, C, p[MAA_W1], C, 5 * R, m.lora.data(), part, [](int, int64_t, float e) { return std::tanh(e); });
    const Tensor up[5] = {rows_from(p[MAA_W2], 0, C), rows_from(p[MAA_W2], R, C), rows_from(p[MAA_W2], 2 * R, C),
                          rows_from(p[MAA_W2], 3 * R, C), rows_from(p[MAA_W2], 4 * R, C)};
    float* mix = m.mix.data();
    team_products({Product{m.lora.data(), 5 * R, &up[0], R, C, mix}, Product{m.lora.data() + R, 5 * R, &up[1], R, C, mix + BC},
                   Product{m.lora.data() + 2 * R, 5 * R, &up[2], R, C, mix + 2 * BC},
                   Product{m.lora.data() + 3 * R, 5 * R, &up[3], R, C, mix + 3 * BC},
                   Product{m.lora.data() + 4 * R, 5 * R, &up[4], R, C, mix + 4 * BC}}, B, part);
#pragma omp single
    {
        const float* maa[5] = {v[MAA_W], v[MAA_K], v[MAA_V], v[MAA_R], v[MAA_G]};
        for (int k = 0; k < 5; ++k)
            for (int64_t b = 0; b < B; ++b) {
                const float *xa = m.xa.data() + b * C, *dx = m.dx.data() + b * C, *mk = mix + k * BC + b * C;
                float* xs = m.xs.data() + k * BC + b * C;
                for (int64_t c = 0; c < C; ++c) xs[c] = xa[c] + dx[c] * (maa[k][c] + mk[c]);
            }
    }
    // slots of xs: 0 w, 1 k, 2 v, 3 r, 4 g; of rkvg: 0 r, 1 k, 2 v, 3 g. All five products read the mixes
    // just made: one set (the decay LoRA's tanh as its finish)
    const float* xs = m.xs.data();
    float* rkvg = m.rkvg.data();
    team_products({Product{xs + 3 * BC, C, &p[W_R], C, C, rkvg}, Product{xs + BC, C, &p[W_K], C, C, rkvg + BC},
                   Product{xs + 2 * BC, C, &p[W_V], C, C, rkvg + 2 * BC}, Product{xs + 4 * BC, C, &p[W_G], C, C, rkvg + 3 * BC},
                   Product{xs, C, &p[DECAY_W1], C, D, m.dlo.data()}}, B, part,
                  [](int product, int64_t, float e) { return product == 4 ? std::tanh(e) : e; });
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
    team_matmul(m.y.data(), B, C, p[W_O], C, C, m.out.data(), part, residual(s.x));

#pragma omp single
    {
        shift_in(s, l, v[LN2_W], v[LN2_B], s.ffn_shift, s.new_ffn_shift, m.xa.data(), m.dx.data(), nullptr, nullptr);
        for (int64_t b = 0; b < B; ++b) {
            mix_rows(m.xa.data() + b * C, m.dx.data() + b * C, v[FFN_MAA_K], C, m.xs.data() + b * C);
            mix_rows(m.xa.data() + b * C, m.dx.data() + b * C, v[FFN_MAA_R], C, m.xs.data() + BC + b * C);
        }
    }
    team_products({Product{xs, C, &p[FFN_W_K], C, F, m.ffk.data()}, Product{xs + BC, C, &p[FFN_W_R], C, C, m.ffr.data()}},
                  B, part, [](int product, int64_t, float e) { return product == 0 ? squared_relu(e) : e; });
    const float* ffr = m.ffr.data();
    team_matmul(m.ffk.data(), B, F, p[FFN_W_V], F, C, m.out.data(), part, [&](int, int64_t e, float sum) {
        s.x[e] += sigmoid(ffr[e]) * sum;
        return sum;
    });
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
    std::vector<float> xa, dx, mixes, rkv, v_first, lo_w, lo_a, lo_v, lo_g, wdelta, adelta, vdelta, gate, y, out, ffk;
    Buffers7(int64_t B, int64_t C, const int64_t* sizes)
        : xa(B * C), dx(B * C), mixes(6 * B * C), rkv(3 * B * C), v_first(B * C), lo_w(B * sizes[0]),
          lo_a(B * sizes[1]), lo_v(B * sizes[2]), lo_g(B * sizes[3]), wdelta(B * C), adelta(B * C), vdelta(B * C),
          gate(B * C), y(B * C), out(B * C), ffk(B * sizes[4]) {}
};

// One RWKV-7 layer, by every thread of the step's parallel region. The WKV state is [value, key].
void rwkv7_layer(const Step& s, int64_t l, Buffers7& m, const float** v) {
    const int64_t B = s.B, C = s.C, H = s.H, N = s.N, BC = B * C;
    const int64_t D = s.sizes[0], A = s.sizes[1], G = s.sizes[3], F = s.sizes[4];
    const int64_t V = l > 0 ? s.sizes[2] : 0;  // layer 0 has no value LoRA: its products are empty
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
            for (int64_t b = 0; b < B; ++b)
                mix_rows(m.xa.data() + b * C, m.dx.data() + b * C, coefficient[k], C, mix[k] + b * C);
    }
    // r, k, v and the first halves of the four LoRAs (w, a, v, g: x @ down, then tanh / - / - / sigmoid) all
    // read the mixes just made: one set; then the LoRAs' second halves, another
    float* rkv = m.rkv.data();
    team_products({Product{mix[0], C, &p[L7_W_R], C, C, rkv}, Product{mix[2], C, &p[L7_W_K], C, C, rkv + BC},
                   Product{mix[3], C, &p[L7_W_V], C, C, rkv + 2 * BC}, Product{mix[1], C, &p[W1], C, D, m.lo_w.data()},
                   Product{mix[4], C, &p[A1], C, A, m.lo_a.data()}, Product{mix[3], C, &p[V1], C, V, m.lo_v.data()},
                   Product{mix[5], C, &p[G1], C, G, m.lo_g.data()}}, B, part,
                  [](int product, int64_t, float e) { return product == 3 ? std::tanh(e) : product == 6 ? sigmoid(e) : e; });
    team_products({Product{m.lo_w.data(), D, &p[W2], D, C, m.wdelta.data()},
                   Product{m.lo_a.data(), A, &p[A2], A, C, m.adelta.data()},
                   Product{m.lo_v.data(), V, &p[V2], V, V > 0 ? C : 0, m.vdelta.data()},
                   Product{m.lo_g.data(), G, &p[G2], G, C, m.gate.data()}}, B, part);

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
    team_matmul(m.y.data(), B, C, p[L7_W_O], C, C, m.out.data(), part, residual(s.x));

#pragma omp single
    {
        shift_in(s, l, v[L7_LN2_W], v[L7_LN2_B], s.ffn_shift, s.new_ffn_shift, m.xa.data(), m.dx.data(), nullptr,
                 nullptr);
        for (int64_t b = 0; b < B; ++b) mix_rows(m.xa.data() + b * C, m.dx.data() + b * C, v[FFN_X_K], C, mix[0] + b * C);
    }
    team_matmul(mix[0], B, C, p[L7_FFN_W_K], C, F, m.ffk.data(), part, [](int, int64_t, float e) { return squared_relu(e); });
    team_matmul(m.ffk.data(), B, F, p[L7_FFN_W_V], F, C, m.out.data(), part, residual(s.x));
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

// Output columns [a, b) of an int8/int4 matrix `w` [in, out] dequantized into y [in, b - a] (fp32, or bf16
// where `bf16_out`), on `threads` threads.
void visualrwkv_dequantize(const Tensor* w, int64_t in, int64_t out, int64_t a, int64_t b, int bf16_out, void* y,
                           int threads) {
#pragma omp parallel num_threads(std::max(threads, 1))
    {
        if (w->kind == INT8 && bf16_out) team_dequantize<8>(*w, in, out, a, b, static_cast<bf16*>(y));
        if (w->kind == INT8 && !bf16_out) team_dequantize<8>(*w, in, out, a, b, static_cast<float*>(y));
        if (w->kind == INT4 && bf16_out) team_dequantize<4>(*w, in, out, a, b, static_cast<bf16*>(y));
        if (w->kind == INT4 && !bf16_out) team_dequantize<4>(*w, in, out, a, b, static_cast<float*>(y));
    }
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
    // `widest`: the most columns one set of products has (the partial rows hold that many per thread and row)
    if (version == 7) {
        if (N > 256) return -1;
        Buffers7 buffers(B, C, sizes);
        const int64_t widest = std::max({3 * C + sizes[0] + sizes[1] + sizes[2] + sizes[3], 4 * C, sizes[4]});
        run_layers(s, buffers, threads, widest, PARAMS_7, rwkv7_layer);
    } else {
        Buffers6 buffers(B, C, sizes[0], sizes[1], sizes[2]);
        const int64_t widest = std::max({5 * sizes[0], 5 * C, 4 * C + sizes[1], sizes[2] + C});
        run_layers(s, buffers, threads, widest, PARAMS_6, rwkv6_layer);
    }
    return 0;
}

}  // extern "C"
