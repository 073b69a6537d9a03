// Kakeya's native decoder step for CPU: a Llama-family forward over GGUF blocks of 32 weights
// (Q4_0, Q4_1, Q8_0; blocks.h), float32 activations, in one call.
//
// Why: torch's per-op dispatch, its int4 kernel (re-dequantized per 4-row tile) and its CPU
// flash attention (≈ 200 µs per decode call) made a one-token step 3x what its weights cost.
// What makes it exact: every value is computed by code that does not look at how many rows
// there are. A linear output y[m][n] is one fixed sequence of fused multiply-adds over K; an
// attention output (row, head, query) reads exactly that query's keys in position order; norms
// and activations are per element or per row. So a token's logits are bit-identical whether it
// is decoded alone, verified among k drafts, prefilled with its prompt or batched with others,
// which is what makes greedy speculation equal plain decoding in this configuration.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int BLOCK = 32;  // weights per scale (ggml's QK4_1 / QK8_0)

// 16 float lanes: one AVX-512 register, or GCC's generic vectors elsewhere. Every multiply-add is
// an explicit fma (the ISO C++ mode torch builds in does not contract a·b + c by itself).
#ifdef __AVX512F__
#include <immintrin.h>
typedef __m512 v16;
inline v16 load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, v16 v) { _mm512_storeu_ps(p, v); }
inline v16 splat(float x) { return _mm512_set1_ps(x); }
inline v16 zero() { return _mm512_setzero_ps(); }
inline v16 fma(v16 a, v16 b, v16 c) { return _mm512_fmadd_ps(a, b, c); }
inline v16 add(v16 a, v16 b) { return _mm512_add_ps(a, b); }
inline v16 sub(v16 a, v16 b) { return _mm512_sub_ps(a, b); }
inline v16 mul(v16 a, v16 b) { return _mm512_mul_ps(a, b); }
inline v16 div(v16 a, v16 b) { return _mm512_div_ps(a, b); }
inline v16 vmax(v16 a, v16 b) { return _mm512_max_ps(a, b); }
inline float hmax(v16 a) { return _mm512_reduce_max_ps(a); }  // max is exact in any order
inline v16 first(v16 v, int64_t n, float fill) {  // lanes n.. replaced by fill
  return _mm512_mask_blend_ps(n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1), splat(fill), v);
}
// e^x per lane (Cephes' expf: x = n·ln2 + r, a degree-6 polynomial in r, times 2^n), for x ≤ 0.
inline v16 exp16(v16 x) {
  x = _mm512_max_ps(x, splat(-87.3f));
  const v16 n = _mm512_roundscale_ps(mul(x, splat(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  v16 r = _mm512_fnmadd_ps(n, splat(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, splat(-2.12194440e-4f), r);
  v16 p = splat(1.9875691500e-4f);
  for (float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f}) p = fma(p, r, splat(c));
  return _mm512_scalef_ps(add(fma(mul(p, r), r, r), splat(1.f)), n);
}
// Lane j: the sum of a[j]'s 16 lanes by one fixed tree (lanes i + 2 within each quarter, then
// i + 1, then the quarters 0+1 and 2+3, then the two halves), whatever the other vectors hold.
inline v16 transpose_sum(const v16* a) {
  v16 b[8], c[4];
  for (int i = 0; i < 8; i++) b[i] = add(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; i++) {
    const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
    c[i] = add(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const v16 d0 = add(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
  const v16 d1 = add(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xDD));
  return add(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xDD));
}
// A fixed pairwise tree (lanes i + 8, then i + 4, i + 2, i + 1), the same as the generic one below.
inline float hsum(v16 a) {
  __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}
#else
typedef float v16 __attribute__((vector_size(64)));
inline v16 load(const float* p) { v16 r; std::memcpy(&r, p, sizeof r); return r; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline v16 splat(float x) { return v16{} + x; }
inline v16 zero() { return v16{}; }
inline v16 fma(v16 a, v16 b, v16 c) {
  v16 r;
  for (int i = 0; i < 16; i++) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
}
inline v16 add(v16 a, v16 b) { return a + b; }
inline v16 sub(v16 a, v16 b) { return a - b; }
inline v16 mul(v16 a, v16 b) { return a * b; }
inline v16 div(v16 a, v16 b) { return a / b; }
inline float hsum(v16 a) {
  float s[16];
  store(s, a);
  for (int w = 8; w > 0; w /= 2)
    for (int i = 0; i < w; i++) s[i] += s[i + w];
  return s[0];
}
inline v16 vmax(v16 a, v16 b) { return a > b ? a : b; }
inline float hmax(v16 a) {
  float m = a[0];
  for (int i = 1; i < 16; i++) m = std::max(m, a[i]);
  return m;
}
inline v16 first(v16 v, int64_t n, float fill) {
  for (int64_t i = n; i < 16; i++) v[i] = fill;
  return v;
}
inline v16 exp16(v16 x) {
  for (int i = 0; i < 16; i++) x[i] = std::exp(x[i]);
  return x;
}
inline v16 transpose_sum(const v16* a) {
  v16 r;
  for (int j = 0; j < 16; j++) r[j] = hsum(a[j]);
  return r;
}
#endif

inline float dot(const float* a, const float* b, int64_t n) {  // n % 32 == 0
  v16 a0 = zero(), a1 = zero();
  for (int64_t k = 0; k < n; k += 32) {
    a0 = fma(load(a + k), load(b + k), a0);
    a1 = fma(load(a + k + 16), load(b + k + 16), a1);
  }
  return hsum(add(a0, a1));
}

#include "blocks.h"

// ---------------------------------------------------------------------------------------------
// Elementwise and per-row pieces, written op for op as transformers computes them in float32.

void rmsnorm_row(const float* xr, int64_t H, const float* weight, float eps, float* o) {
  float ss;
  if (H % 32 == 0) {
    ss = dot(xr, xr, H);
  } else {
    ss = 0.f;
    for (int64_t i = 0; i < H; i++) ss += xr[i] * xr[i];
  }
  const float inv = 1.f / std::sqrt(ss / H + eps);
  for (int64_t i = 0; i < H; i++) o[i] = weight[i] * (xr[i] * inv);
}

void rmsnorm(const float* x, int64_t rows, int64_t H, const float* weight, float eps, float* out) {
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) rmsnorm_row(x + r * H, H, weight, eps, out + r * H);
  });
}

// x [D] rotated in place with cos/sin [D]: x·cos + rotate_half(x)·sin.
void rope(float* x, const float* cos, const float* sin, int64_t D) {
  const int64_t h = D / 2;
  float tmp[1024];
  std::memcpy(tmp, x, D * sizeof(float));
  for (int64_t i = 0; i < h; i++) x[i] = tmp[i] * cos[i] - tmp[i + h] * sin[i];
  for (int64_t i = h; i < D; i++) x[i] = tmp[i] * cos[i] + tmp[i - h] * sin[i];
}

// scores[j] = (q · k_j)·scale for 16 keys (the first n real): one fma chain over D per key, then
// transpose_sum, so a key's score is the same whichever block of 16 it falls in.
void score16(const float* q, const float* keys, int64_t n, int64_t D, float scale, float* scores) {
  v16 a[16];
  for (int64_t j = 0; j < 16; j++) {
    v16 acc = zero();
    for (int64_t e = 0; j < n && e < D; e += 16) acc = fma(load(q + e), load(keys + j * D + e), acc);
    a[j] = acc;
  }
  store(scores, mul(transpose_sum(a), splat(scale)));
}

// out [D] = Σ_j p_j·v_j / sum over keys in position order; DV = D/16 chains side by side (0: any D).
template <int DV>
void weigh(const float* p, const float* values, int64_t L, int64_t D, float sum, float* out) {
  constexpr int64_t MAXV = 64;  // D ≤ 1024
  const int64_t nv = DV ? DV : D / 16;
  v16 acc[DV ? DV : MAXV];
  for (int64_t e = 0; e < nv; e++) acc[e] = zero();
  for (int64_t j = 0; j < L; j++) {
    const v16 pj = splat(p[j]);
    for (int64_t e = 0; e < nv; e++) acc[e] = fma(pj, load(values + j * D + 16 * e), acc[e]);
  }
  for (int64_t e = 0; e < nv; e++) store(out + 16 * e, div(acc[e], splat(sum)));
}

// One query row over keys [0, L) of one KV head: softmax(q·kᵀ·scale) · v into out [D]; `scores`
// has room for L rounded up to 16. Every value depends on L and the keys alone.
void attend_one(const float* q, const float* keys, const float* values, int64_t L, int64_t D, float scale,
                float* scores, float* out) {
  v16 mx = splat(-INFINITY);
  for (int64_t j = 0; j < L; j += 16) {
    score16(q, keys + j * D, std::min<int64_t>(16, L - j), D, scale, scores + j);
    mx = vmax(mx, first(load(scores + j), L - j, -INFINITY));
  }
  const v16 top = splat(hmax(mx));
  v16 sum = zero();
  for (int64_t j = 0; j < L; j += 16) {
    const v16 e = first(exp16(sub(load(scores + j), top)), L - j, 0.f);
    store(scores + j, e);
    sum = add(sum, e);
  }
  const float total = hsum(sum);
  if (D == 64) weigh<4>(scores, values, L, D, total, out);
  else if (D == 128) weigh<8>(scores, values, L, D, total, out);
  else weigh<0>(scores, values, L, D, total, out);
}

// ---------------------------------------------------------------------------------------------

struct Layer {
  torch::Tensor ln1, ln2, q_norm, k_norm;  // q_norm/k_norm undefined unless Qwen3
  Tiles qkv, o, gate_up, down;
};

class Decoder {
 public:
  Decoder(int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate, double eps)
      : Hq(heads), Hkv(kv_heads), D(head_dim), I(intermediate), eps(static_cast<float>(eps)) {
    TORCH_CHECK(D % 16 == 0 && D <= 1024, "head_dim must be a multiple of 16 (at most 1024), got ", D);
  }

  // weights: (tiles, N) of qkv, o, gate_up and down, as BlockLinear.weights() gives them
  void add_layer(std::vector<torch::Tensor> norms, std::vector<std::tuple<torch::Tensor, int64_t>> weights) {
    Layer l;
    l.ln1 = f32(norms.at(0));
    l.ln2 = f32(norms.at(1));
    if (norms.size() == 4) { l.q_norm = f32(norms[2]); l.k_norm = f32(norms[3]); }
    Tiles* ws[4] = {&l.qkv, &l.o, &l.gate_up, &l.down};
    for (int i = 0; i < 4; i++) *ws[i] = make_tiles(std::get<0>(weights.at(i)), std::get<1>(weights.at(i)));
    layers.push_back(std::move(l));
  }

  // x [B·T, H] float32 (row b's tokens at b·T .. b·T+T-1, right-padded); keys[b][l], values[b][l]:
  // [1, Hkv, capacity, D] buffers, positions starts[b] .. starts[b]+T-1 written here; cos/sin
  // [B, T, D]. Returns the hidden states [B·T, H] (after the final norm, once `set_norm` gave it).
  torch::Tensor forward(torch::Tensor x, std::vector<std::vector<torch::Tensor>> keys,
                        std::vector<std::vector<torch::Tensor>> values, std::vector<int64_t> starts,
                        torch::Tensor cos, torch::Tensor sin) {
    const int64_t B = static_cast<int64_t>(starts.size()), BT = x.size(0), T = BT / B, H = x.size(1);
    TORCH_CHECK(x.scalar_type() == torch::kFloat && x.is_contiguous(), "x must be contiguous float32");
    TORCH_CHECK(B * T == BT && cos.size(0) == B && cos.size(1) == T, "shapes of x, starts and cos disagree");
    x = x.clone();
    cos = cos.to(torch::kFloat).contiguous();
    sin = sin.to(torch::kFloat).contiguous();
    const int64_t QKV = (Hq + 2 * Hkv) * D;
    std::vector<float> h(BT * H), qkv(BT * QKV), attn(BT * Hq * D), gu(BT * 2 * I), act(BT * I);
    float* xs = x.data_ptr<float>();
    for (size_t l = 0; l < layers.size(); l++) {
      const Layer& L = layers[l];
      rmsnorm(xs, BT, H, L.ln1.data_ptr<float>(), eps, h.data());
      qlinear(h.data(), BT, L.qkv, qkv.data(), false);
      for (int64_t b = 0; b < B; b++) {
        const torch::Tensor& kb = keys.at(b).at(l);
        const torch::Tensor& vb = values.at(b).at(l);
        attention(L, qkv.data() + b * T * QKV, kb, vb, starts[b], T, cos, sin, b, attn.data() + b * T * Hq * D);
      }
      qlinear(attn.data(), BT, L.o, xs, true);
      rmsnorm(xs, BT, H, L.ln2.data_ptr<float>(), eps, h.data());
      qlinear(h.data(), BT, L.gate_up, gu.data(), false);
      at::parallel_for(0, BT * I, 512, [&](int64_t e0, int64_t e1) {  // silu(gate)·up, element by element
        for (int64_t e = e0; e < e1; e++) {
          const float* g = gu.data() + (e / I) * 2 * I + e % I;
          act[e] = g[0] / (1.f + std::exp(-g[0])) * g[I];
        }
      });
      qlinear(act.data(), BT, L.down, xs, true);
    }
    if (norm.defined()) rmsnorm(xs, BT, H, norm.data_ptr<float>(), eps, xs);
    return x;
  }

  void set_norm(torch::Tensor w) { norm = f32(w); }

 private:
  static torch::Tensor f32(const torch::Tensor& t) { return t.to(torch::kFloat).contiguous(); }

  // q/k norms, rope and the KV write for T tokens of one row, then attention per (head, query).
  void attention(const Layer& L, float* qkv, const torch::Tensor& kbuf, const torch::Tensor& vbuf,
                 int64_t start, int64_t T, const torch::Tensor& cos, const torch::Tensor& sin, int64_t b, float* out) {
    const int64_t QKV = (Hq + 2 * Hkv) * D, cap = kbuf.size(2);
    TORCH_CHECK(start + T <= cap && kbuf.is_contiguous() && vbuf.is_contiguous(), "KV buffer too small or strided");
    float* kd = kbuf.data_ptr<float>();  // float32: the native step runs float32 models only
    float* vd = vbuf.data_ptr<float>();
    const float* cs = cos.data_ptr<float>() + b * T * D;
    const float* sn = sin.data_ptr<float>() + b * T * D;
    const float* qn = L.q_norm.defined() ? L.q_norm.data_ptr<float>() : nullptr;
    const float* kn = L.k_norm.defined() ? L.k_norm.data_ptr<float>() : nullptr;
    at::parallel_for(0, T, 8, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; t++) {
        float* row = qkv + t * QKV;
        for (int64_t hh = 0; hh < Hq + Hkv; hh++) {  // q heads, then k heads
          float* v = row + hh * D;
          if (qn != nullptr) rmsnorm_row(v, D, hh < Hq ? qn : kn, eps, v);
          rope(v, cs + t * D, sn + t * D, D);
        }
        for (int64_t g = 0; g < Hkv; g++) {
          const int64_t p = (g * cap + start + t) * D;
          std::memcpy(kd + p, row + (Hq + g) * D, D * sizeof(float));
          std::memcpy(vd + p, row + (Hq + Hkv + g) * D, D * sizeof(float));
        }
      }
    });
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    const int64_t group = Hq / Hkv;
    at::parallel_for(0, Hq * T, 1, [&](int64_t i0, int64_t i1) {
      std::vector<float> scores((start + T + 15) / 16 * 16);
      for (int64_t i = i0; i < i1; i++) {
        const int64_t hq = i / T, t = i % T, g = hq / group;
        attend_one(qkv + t * QKV + hq * D, kd + g * cap * D, vd + g * cap * D, start + t + 1, D, scale,
                   scores.data(), out + (t * Hq + hq) * D);
      }
    });
  }

  int64_t Hq, Hkv, D, I;
  float eps;
  std::vector<Layer> layers;
  torch::Tensor norm;
};

// y = x · Wᵀ for one weight in tiles (pack_blocks): the kernel alone, for tests and the eager path.
torch::Tensor block_linear(torch::Tensor x, torch::Tensor tiles, int64_t N) {
  const Tiles w = make_tiles(tiles, N);
  TORCH_CHECK(x.size(-1) == w.K, "x's last dimension must be the weight's K");
  auto xf = x.reshape({-1, w.K}).to(torch::kFloat).contiguous();
  auto y = torch::empty({xf.size(0), w.N}, xf.options());
  qlinear(xf.data_ptr<float>(), xf.size(0), w, y.data_ptr<float>(), false);
  auto shape = x.sizes().vec();
  shape.back() = w.N;
  return y.reshape(shape);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("kernel") = KERNEL;
  m.attr("activations") = ACTIVATIONS;  // "q8" (ggml Q8 blocks, integer dot products) or "f32"
  m.def("pack_blocks", &pack_blocks, "ggml-layout blocks (qs, d, m) → 16-column tiles [C, G, bytes]");
  m.def("pack_q6k", &pack_q6k, "Q6_K codes − 32, int8 scales per 16, d per 256 → tiles [C, K/256, bytes]");
  m.def("embed_rows", &embed_rows, "rows ids of a weight in tiles, dequantized to float32");
  m.def("block_linear", &block_linear, "y = x · Wᵀ for a weight in tiles with N columns");
  py::class_<Decoder>(m, "Decoder")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, double>())
      .def("add_layer", &Decoder::add_layer)
      .def("set_norm", &Decoder::set_norm)
      .def("forward", &Decoder::forward, py::call_guard<py::gil_scoped_release>());
}
