// Kakeya's native decoder step for CPU: a Llama-family forward over GGUF-style blocks of 32
// weights (Q4_1 / Q4_0 as Q4_1 with m = -8d, Q8_0), float32 activations, in one call.
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
inline v16 mul(v16 a, v16 b) { return _mm512_mul_ps(a, b); }
inline v16 div(v16 a, v16 b) { return _mm512_div_ps(a, b); }
// 16 unsigned bytes → floats; the low and high nibbles of 16 bytes → two sets of 16 floats
inline void nibbles(const uint8_t* p, v16& lo, v16& hi) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), mask = _mm_set1_epi8(15);
  lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, mask)));
  hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), mask)));
}
inline v16 int8s(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
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
typedef uint8_t u8x16 __attribute__((vector_size(16)));
typedef int8_t i8x16 __attribute__((vector_size(16)));
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
inline v16 mul(v16 a, v16 b) { return a * b; }
inline v16 div(v16 a, v16 b) { return a / b; }
inline void nibbles(const uint8_t* p, v16& lo, v16& hi) {
  u8x16 b;
  std::memcpy(&b, p, 16);
  lo = __builtin_convertvector(b & 15, v16);
  hi = __builtin_convertvector(b >> 4, v16);
}
inline v16 int8s(const int8_t* p) { i8x16 b; std::memcpy(&b, p, 16); return __builtin_convertvector(b, v16); }
inline float hsum(v16 a) {
  float s[16];
  store(s, a);
  for (int w = 8; w > 0; w /= 2)
    for (int i = 0; i < w; i++) s[i] += s[i + w];
  return s[0];
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

// ---------------------------------------------------------------------------------------------
// Block-quantized linear: y[M, N] = x[M, K] · Wᵀ, W dequantized row by row (w = d·q + m per
// block of 32) into a buffer shared by all M rows, so a verify of k+1 rows reads each weight once.

struct QWeight {
  int bits = 4;             // 4: qs [N, K/2] nibbles (byte j: weight j low, weight j+16 high); 8: qs [N, K] int8
  int64_t N = 0, K = 0;
  torch::Tensor qs, d, m;   // d, m: [N, K/32] float16, as ggml stores them (m unused for 8 bits)
};

void dequant_row(const QWeight& w, int64_t n, float* out) {
  const int64_t G = w.K / BLOCK;
  const at::Half* d = w.d.data_ptr<at::Half>() + n * G;
  if (w.bits == 4) {
    const uint8_t* q = w.qs.data_ptr<uint8_t>() + n * (w.K / 2);
    const at::Half* mn = w.m.data_ptr<at::Half>() + n * G;
    for (int64_t g = 0; g < G; g++) {
      v16 lo, hi;
      nibbles(q + g * 16, lo, hi);
      const v16 dv = splat(d[g]), mv = splat(mn[g]);
      store(out + g * BLOCK, fma(lo, dv, mv));
      store(out + g * BLOCK + 16, fma(hi, dv, mv));
    }
  } else {
    const int8_t* q = reinterpret_cast<const int8_t*>(w.qs.data_ptr()) + n * w.K;
    for (int64_t g = 0; g < G; g++) {
      const v16 dv = splat(d[g]);
      store(out + g * BLOCK, mul(int8s(q + g * BLOCK), dv));
      store(out + g * BLOCK + 16, mul(int8s(q + g * BLOCK + 16), dv));
    }
  }
}

constexpr int64_t NR = 4;  // weight rows per tile
constexpr int64_t MR = 4;  // activation rows per tile

// Every output y[m][n] is ONE chain acc = fma(w[k..k+16], x[k..k+16], acc) over k = 0, 16, ...,
// then hsum: the same sequence whichever path or tile computes it, hence row-invariant.

// M == 1: weights dequantized in registers, NRT rows' chains interleaved (NRT fixed: unrolled).
template <int BITS, int NRT>
void gemv_rows(const float* x, const QWeight& w, int64_t n0, float* y, bool add) {
  const int64_t K = w.K, G = K / BLOCK;
  const at::Half* d = w.d.data_ptr<at::Half>() + n0 * G;
  const at::Half* mn = BITS == 4 ? w.m.data_ptr<at::Half>() + n0 * G : nullptr;
  const uint8_t* q4 = BITS == 4 ? w.qs.data_ptr<uint8_t>() + n0 * (K / 2) : nullptr;
  const int8_t* q8 = BITS == 8 ? reinterpret_cast<const int8_t*>(w.qs.data_ptr()) + n0 * K : nullptr;
  v16 acc[NRT];
  for (int j = 0; j < NRT; j++) acc[j] = zero();
  for (int64_t g = 0; g < G; g++) {
    const v16 x0 = load(x + g * BLOCK), x1 = load(x + g * BLOCK + 16);
#pragma GCC unroll 4
    for (int j = 0; j < NRT; j++) {
      const v16 dv = splat(d[j * G + g]);
      v16 lo, hi;
      if constexpr (BITS == 4) {
        nibbles(q4 + j * (K / 2) + g * 16, lo, hi);
        const v16 mv = splat(mn[j * G + g]);
        lo = fma(lo, dv, mv);
        hi = fma(hi, dv, mv);
      } else {
        lo = mul(int8s(q8 + j * K + g * BLOCK), dv);
        hi = mul(int8s(q8 + j * K + g * BLOCK + 16), dv);
      }
      acc[j] = fma(hi, x1, fma(lo, x0, acc[j]));
    }
  }
  for (int j = 0; j < NRT; j++) y[n0 + j] = add ? y[n0 + j] + hsum(acc[j]) : hsum(acc[j]);
}

template <int BITS>
void gemv(const float* x, const QWeight& w, int64_t n0, int64_t nr, float* y, bool add) {
  if (nr == NR) return gemv_rows<BITS, NR>(x, w, n0, y, add);
  for (int64_t j = 0; j < nr; j++) gemv_rows<BITS, 1>(x, w, n0 + j, y, add);
}

// M > 1: nr rows dequantized once into buf [nr, K], then MR x nr tiles of chains.
void gemm_rows(const float* x, int64_t M, int64_t K, int64_t N, const float* buf, int64_t n0, int64_t nr,
               float* y, bool add) {
  for (int64_t m0 = 0; m0 < M; m0 += MR) {
    const int64_t mr = std::min(MR, M - m0);
    v16 acc[MR][NR];
    for (auto& row : acc)
      for (auto& a : row) a = zero();
    for (int64_t k = 0; k < K; k += 16) {
      v16 wv[NR];
      for (int64_t j = 0; j < nr; j++) wv[j] = load(buf + j * K + k);
      for (int64_t i = 0; i < mr; i++) {
        const v16 xv = load(x + (m0 + i) * K + k);
        for (int64_t j = 0; j < nr; j++) acc[i][j] = fma(wv[j], xv, acc[i][j]);
      }
    }
    for (int64_t i = 0; i < mr; i++) {
      float* yi = y + (m0 + i) * N + n0;
      for (int64_t j = 0; j < nr; j++) yi[j] = add ? yi[j] + hsum(acc[i][j]) : hsum(acc[i][j]);
    }
  }
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// ---------------------------------------------------------------------------------------------
// With AVX512-VNNI the activations are quantized as llama.cpp quantizes them (ggml's Q8 blocks:
// x ≈ dx · qx per block of 32, qx ∈ [−127, 127]) and the weights multiply as integers, 64 per
// vpdpbusd: y = Σ_g d_g·dx_g·Σ_j q_j·qx_j (+ Σ_g m_g·dx_g·Σ_j qx_j for 4-bit). The integer sums are
// exact; the float chain over block pairs is fixed, so rows stay independent.
constexpr const char* KERNEL = "avx512-vnni (q8 activations)";

// x [M, K] quantized once per call, in the byte order the weights unpack to: for 4-bit each pair
// of blocks g, g+1 is [x_g 0..15, x_g+1 0..15, x_g 16..31, x_g+1 16..31] (low nibbles, then high).
struct QRows {
  int64_t K = 0, P = 0, G16 = 0;
  std::vector<int8_t> q;      // [M, K]
  std::vector<float> dx;      // [M, P, 16]: each lane's block scale
  std::vector<int32_t> corr;  // [M, P, 16]: 8-bit weights are stored offset by 128: −128 · Σ of the lane's 4 qx
  std::vector<float> sx;      // [M, G16]: dx · Σ qx per block (the 4-bit minimum's term), zero-padded
};

// One row: 16 floats at a time, rounded to nearest even as std::nearbyint does (MXCSR default).
void quantize_row(const float* x, int64_t K, int bits, QRows& r, int64_t m) {
  const int64_t G = K / BLOCK;
  int8_t* q = r.q.data() + m * K;
  for (int64_t g = 0; g < G; g++) {
    const v16 a = load(x + g * BLOCK), b = load(x + g * BLOCK + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    const __m512i qa = _mm512_cvtps_epi32(mul(a, splat(id))), qb = _mm512_cvtps_epi32(mul(b, splat(id)));
    const int64_t p = g / 2, half = g % 2;
    // where weight j of this block sits in its unpacked pair: 4-bit [lo g, lo g+1, hi g, hi g+1]
    int8_t* dst = q + p * 64 + (bits == 4 ? half * 16 : half * 32);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtsepi32_epi8(qa));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + (bits == 4 ? 32 : 16)), _mm512_cvtsepi32_epi8(qb));
    r.sx[m * r.G16 + g] = d * static_cast<float>(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
    float* lanes = r.dx.data() + (m * r.P + p) * 16;
    for (int lane = 0; lane < 16; lane++)  // lane L holds bytes 4L..4L+3
      if ((bits == 4 ? (lane / 4) % 2 : lane / 8) == half) lanes[lane] = d;
  }
  if (bits == 8) {  // the weights are stored offset by 128: each lane's sum of 4 codes, times −128
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t p = 0; p < r.P; p++) {
      const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(q + p * 64));
      _mm512_storeu_si512(r.corr.data() + (m * r.P + p) * 16, _mm512_mullo_epi32(sums, _mm512_set1_epi32(-128)));
    }
  }
}

QRows quantize_rows(const float* x, int64_t M, int64_t K, int bits) {
  QRows r;
  const int64_t G = K / BLOCK;
  r.K = K, r.P = G / 2, r.G16 = (G + 15) / 16 * 16;
  r.q.resize(M * K), r.dx.resize(M * r.P * 16), r.sx.assign(M * r.G16, 0.f);
  if (bits == 8) r.corr.resize(M * r.P * 16);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; m++) quantize_row(x + m * K, K, bits, r, m);
  });
  return r;
}

template <int BITS>
inline __m512i unpack(const uint8_t* row, int64_t p) {  // row: the weight row's codes
  if constexpr (BITS == 4) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + p * 32));
    const __m256i m4 = _mm256_set1_epi8(15);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, m4)),
                              _mm256_and_si256(_mm256_srli_epi16(b, 4), m4), 1);
  }
  const __m512i b = _mm512_loadu_si512(row + p * 64);
  return _mm512_xor_si512(b, _mm512_set1_epi8(static_cast<char>(0x80)));  // q + 128 as unsigned
}

// A row's two block scales of pair p spread over the lanes in the unpacked order.
template <int BITS>
inline v16 lanes(const at::Half* two) {
  const __m512i idx = BITS == 4 ? _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0)
                                : _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  int32_t bits;
  std::memcpy(&bits, two, 4);
  const __m512 v = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
  return _mm512_permutexvar_ps(idx, v);
}

template <int BITS, int MRT, int NRT>
void tile(const QRows& xq, int64_t m0, const QWeight& w, int64_t n0, float* y, int64_t N, bool add) {
  const int64_t G = w.K / BLOCK, rowbytes = BITS == 4 ? w.K / 2 : w.K;
  const uint8_t* codes = static_cast<const uint8_t*>(w.qs.data_ptr()) + n0 * rowbytes;
  const at::Half* d = w.d.data_ptr<at::Half>() + n0 * G;
  const int8_t* xqs = xq.q.data() + m0 * xq.K;
  const float* xdx = xq.dx.data() + m0 * xq.P * 16;
  const int32_t* xcorr = xq.corr.data() + m0 * xq.P * 16;
  v16 acc[MRT][NRT];
  for (auto& row : acc)
    for (auto& a : row) a = zero();
  for (int64_t p = 0; p < xq.P; p++) {
    __m512i wv[NRT];
    v16 dv[NRT];
    for (int j = 0; j < NRT; j++) {
      wv[j] = unpack<BITS>(codes + j * rowbytes, p);
      dv[j] = lanes<BITS>(d + j * G + 2 * p);
      // the same bytes of the next tile's rows: one thread alone keeps too few lines in flight to
      // stream DRAM (measured: 8 GB/s per thread without, on a 30 GB/s machine)
      _mm_prefetch(reinterpret_cast<const char*>(codes + (j + NRT) * rowbytes + p * (BITS == 4 ? 32 : 64)), _MM_HINT_T0);
    }
    for (int i = 0; i < MRT; i++) {
      const int64_t at = (i * xq.P + p) * 16;
      const __m512i xv = _mm512_loadu_si512(xqs + i * xq.K + p * 64);
      const v16 sx = load(xdx + at);
      const __m512i init = BITS == 8 ? _mm512_loadu_si512(xcorr + at) : _mm512_setzero_si512();
      for (int j = 0; j < NRT; j++)
        acc[i][j] = fma(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, wv[j], xv)), mul(dv[j], sx), acc[i][j]);
    }
  }
  const at::Half* mins = BITS == 4 ? w.m.data_ptr<at::Half>() + n0 * G : nullptr;
  for (int i = 0; i < MRT; i++)
    for (int j = 0; j < NRT; j++) {
      float v = hsum(acc[i][j]);
      if constexpr (BITS == 4) {  // + Σ_g m_g · sx_g, one chain over the zero-padded blocks
        const at::Half* mn = mins + j * G;
        const float* sx = xq.sx.data() + (m0 + i) * xq.G16;
        v16 am = zero();
        for (int64_t g = 0; g < G; g += 16) {
          const __mmask16 k = G - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (G - g)) - 1);
          am = fma(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, mn + g)), load(sx + g), am);
        }
        v += hsum(am);
      }
      float* out = y + (m0 + i) * N + n0 + j;
      *out = add ? *out + v : v;
    }
}

template <int MRT>
void tiles(const QRows& xq, int64_t m0, const QWeight& w, int64_t n0, int64_t nr, float* y, bool add) {
  if (w.bits == 4) {
    if (nr == NR) return tile<4, MRT, NR>(xq, m0, w, n0, y, w.N, add);
    for (int64_t j = 0; j < nr; j++) tile<4, MRT, 1>(xq, m0, w, n0 + j, y, w.N, add);
  } else {
    if (nr == NR) return tile<8, MRT, NR>(xq, m0, w, n0, y, w.N, add);
    for (int64_t j = 0; j < nr; j++) tile<8, MRT, 1>(xq, m0, w, n0 + j, y, w.N, add);
  }
}

bool vnni_fits(const QWeight& w) { return w.K % 64 == 0; }

void qlinear_vnni(const float* x, int64_t M, const QWeight& w, float* y, bool add) {
  const QRows xq = quantize_rows(x, M, w.K, w.bits);
  at::parallel_for(0, (w.N + NR - 1) / NR, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const int64_t n0 = r * NR, nr = std::min(NR, w.N - n0);
      for (int64_t m0 = 0; m0 < M; m0 += MR) {
        switch (std::min(MR, M - m0)) {
          case 1: tiles<1>(xq, m0, w, n0, nr, y, add); break;
          case 2: tiles<2>(xq, m0, w, n0, nr, y, add); break;
          case 3: tiles<3>(xq, m0, w, n0, nr, y, add); break;
          default: tiles<4>(xq, m0, w, n0, nr, y, add); break;
        }
      }
    }
  });
}
#else
constexpr const char* KERNEL = "float32 (dequantized weights)";
bool vnni_fits(const QWeight&) { return false; }
void qlinear_vnni(const float*, int64_t, const QWeight&, float*, bool) {}
#endif

// y[m, n] (+)= x[m] · w[n]; `add`: y += (a residual connection), else y =.
void qlinear(const float* x, int64_t M, const QWeight& w, float* y, bool add) {
  if (vnni_fits(w)) return qlinear_vnni(x, M, w, y, add);
  const int64_t N = w.N, K = w.K;
  at::parallel_for(0, (N + NR - 1) / NR, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(M > 1 ? NR * K : 0);
    for (int64_t r = r0; r < r1; r++) {
      const int64_t n0 = r * NR, nr = std::min(NR, N - n0);
      if (M == 1) {
        if (w.bits == 4) gemv<4>(x, w, n0, nr, y, add);
        else gemv<8>(x, w, n0, nr, y, add);
        continue;
      }
      for (int64_t j = 0; j < nr; j++) dequant_row(w, n0 + j, buf.data() + j * K);
      gemm_rows(x, M, K, N, buf.data(), n0, nr, y, add);
    }
  });
}

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

// One query row over keys [0, L) of one KV head: softmax(q·kᵀ·scale) · v into out [D].
void attend_one(const float* q, const float* keys, const float* values, int64_t L, int64_t D, float scale,
                float* scores, float* out) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < L; j++) {
    const float* k = keys + j * D;
    v16 acc = zero();
    for (int64_t e = 0; e < D; e += 16) acc = fma(load(q + e), load(k + e), acc);
    scores[j] = hsum(acc) * scale;
    mx = std::max(mx, scores[j]);
  }
  float sum = 0.f;
  for (int64_t j = 0; j < L; j++) {
    scores[j] = std::exp(scores[j] - mx);
    sum += scores[j];
  }
  for (int64_t e = 0; e < D; e += 16) {
    v16 acc = zero();
    for (int64_t j = 0; j < L; j++) acc = fma(splat(scores[j]), load(values + j * D + e), acc);
    store(out + e, div(acc, splat(sum)));
  }
}

// ---------------------------------------------------------------------------------------------

// [qs, d, m] as BlockLinear holds them; bits from qs's dtype.
QWeight make_weight(const torch::Tensor& qs, const torch::Tensor& d, const torch::Tensor& m) {
  QWeight w;
  w.qs = qs.contiguous();
  w.d = d.to(torch::kHalf).contiguous();
  w.m = m.to(torch::kHalf).contiguous();
  w.bits = w.qs.scalar_type() == torch::kUInt8 ? 4 : 8;
  TORCH_CHECK(w.bits == 4 || w.qs.scalar_type() == torch::kInt8, "block codes must be uint8 (4-bit) or int8");
  w.N = w.qs.size(0);
  w.K = w.qs.size(1) * (w.bits == 4 ? 2 : 1);
  TORCH_CHECK(w.K % BLOCK == 0 && w.d.size(0) == w.N && w.d.size(1) == w.K / BLOCK, "block scales do not fit the codes");
  return w;
}

struct Layer {
  torch::Tensor ln1, ln2, q_norm, k_norm;  // q_norm/k_norm undefined unless Qwen3
  QWeight qkv, o, gate_up, down;
};

class Decoder {
 public:
  Decoder(int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t intermediate, double eps)
      : Hq(heads), Hkv(kv_heads), D(head_dim), I(intermediate), eps(static_cast<float>(eps)) {
    TORCH_CHECK(D % 16 == 0 && D <= 1024, "head_dim must be a multiple of 16 (at most 1024), got ", D);
  }

  void add_layer(std::vector<torch::Tensor> norms, std::vector<std::vector<torch::Tensor>> weights) {
    Layer l;
    l.ln1 = f32(norms.at(0));
    l.ln2 = f32(norms.at(1));
    if (norms.size() == 4) { l.q_norm = f32(norms[2]); l.k_norm = f32(norms[3]); }
    QWeight* ws[4] = {&l.qkv, &l.o, &l.gate_up, &l.down};
    for (int i = 0; i < 4; i++) *ws[i] = make_weight(weights.at(i).at(0), weights.at(i).at(1), weights.at(i).at(2));
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
      std::vector<float> scores(start + T);
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

// y = x · Wᵀ for one block-quantized weight: the kernel alone, for tests and the eager path.
torch::Tensor block_linear(torch::Tensor x, torch::Tensor qs, torch::Tensor d, torch::Tensor m) {
  const QWeight w = make_weight(qs, d, m);
  TORCH_CHECK(x.size(-1) == w.K, "x's last dimension must be the weight's K");
  auto xf = x.reshape({-1, w.K}).to(torch::kFloat).contiguous();
  auto y = torch::empty({xf.size(0), w.N}, xf.options());
  qlinear(xf.data_ptr<float>(), xf.size(0), w, y.data_ptr<float>(), false);
  auto shape = x.sizes().vec();
  shape.back() = w.N;
  return y.reshape(shape);
}

// "q8" where activations are quantized (VNNI, K a multiple of 64), else "f32".
std::string activation_format(int64_t K) {
  QWeight w;
  w.K = K;
  return vnni_fits(w) ? "q8" : "f32";
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("kernel") = KERNEL;
  m.def("activation_format", &activation_format, "q8 (ggml Q8 blocks, integer dot products) or f32, for a K");
  m.def("block_linear", &block_linear, "y = x · Wᵀ over blocks of 32 (Q4_1 nibbles or Q8_0 int8)");
  py::class_<Decoder>(m, "Decoder")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, double>())
      .def("add_layer", &Decoder::add_layer)
      .def("set_norm", &Decoder::set_norm)
      .def("forward", &Decoder::forward, py::call_guard<py::gil_scoped_release>());
}
