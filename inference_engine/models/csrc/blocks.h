// Block-quantized linear layers: y[M, N] = x[M, K] · Wᵀ over ggml's blocks of 32 weights
// (Q4_0, Q4_1, Q8_0, Q6_K), rearranged once at load into tiles whose vector lanes are output columns.
//
// Why columns in lanes: a row-major block layout makes every block of every column a horizontal
// job (its 32 products summed across lanes, its scale applied per block pair), about ten vector
// operations per 64 weights and per activation row. With 16 columns side by side, one vpdpbusd
// takes 4 weights of each of 16 columns against 4 broadcast activation bytes, the block's integer
// sums land in the lanes where they belong, and a block costs 8 dot products, one conversion and
// one or two FMAs for 16 columns — per activation row, with the unpacking shared by all rows:
// about 12 vector operations per 512 weights for each extra row of a verify, against 32 before.
//
// Tile layout (`pack_blocks`): output columns in groups of 16 (the last padded with zero columns);
// group c's tiles for blocks g = 0 .. G-1 are contiguous, one tile per (c, g):
//   4-bit: 4 chunks of 64 code bytes; chunk s, bytes 4L .. 4L+3 = bytes 4s .. 4s+3 of column L's
//          ggml block (byte j: weight j in the low nibble, weight j + 16 in the high one); then
//          16 float16 d; then, for Q4_1 only, 16 float16 m (Q4_0's m is −8d: 18 bytes per 32
//          weights, as in the file)
//   8-bit: 8 chunks of 64 code bytes; chunk t, bytes 4L .. 4L+3 = weights 4t .. 4t+3 of column L,
//          each + 128 (vpdpbusd multiplies unsigned by signed bytes); then 16 float16 d
//   6-bit (Q6_K, the head llama.cpp's quantizer writes): super-blocks of 256 weights, eight tiles of
//          416 bytes then the 16 columns' float16 d (3,360 bytes: Q6_K's 6.5625 bits per weight).
//          A tile: the codes' low 4 bits as the 4-bit layout (256 bytes); their high 2 bits, for
//          weights 0..15 then 16..31 (2 × 64 bytes: byte 4L + e holds, at bits 2j, those of
//          weight 4j + e of column L); the two sub-blocks' int8 scales (16 + 16 bytes).
//          w = (d·sc)·(q − 32), q ∈ [0, 63], as transformers' GGUF reader computes it.
// So chunk j's low nibbles (4-bit, j < 4), its high nibbles (as j + 4), or chunk j (8-bit) hold
// the weights that multiply activation bytes 4j .. 4j+3 of the block.
//
// Exactness: y[m][n] is one fixed chain over the blocks, acc = fma(S_g, d_g·dx_g, acc) (then
// acc = fma(m_g, dx_g·Σqx_g, acc) for Q4_1), S_g an exact integer; the same whichever tile,
// thread or row count computes it.

constexpr int64_t LANES = 16;  // output columns per tile

inline int64_t tile_bytes(int bits, bool sym) { return bits == 8 ? 512 + 32 : 256 + 32 + (sym ? 0 : 32); }
constexpr int64_t Q6_TILE = 256 + 128 + 32, Q6_SUPER = 8 * Q6_TILE + 32;

struct Tiles {
  int64_t N = 0, K = 0, G = 0, C = 0;  // G blocks of 32; C groups of 16 columns
  int64_t per = 1, TB = 0, sub = 0;    // blocks per stored group (8 for Q6_K), its bytes, a block's tile bytes
  int bits = 4;
  bool sym = false;  // 4-bit with m = −8d (Q4_0): no minimums stored
  const uint8_t* data = nullptr;
  torch::Tensor keep;
  const uint8_t* tile(int64_t c, int64_t g) const { return data + (c * (G / per) + g / per) * TB + (g % per) * sub; }
  const uint8_t* q6_d(int64_t c, int64_t g) const { return data + (c * (G / per) + g / per) * TB + per * sub; }
};

// tiles [C, G / per, TB] uint8 as pack_blocks / pack_q6k made them, for an N-column weight.
Tiles make_tiles(const torch::Tensor& t, int64_t N) {
  TORCH_CHECK(t.dim() == 3 && t.scalar_type() == torch::kUInt8 && t.is_contiguous(), "tiles must be contiguous uint8 [C, G, TB]");
  Tiles w;
  w.keep = t, w.data = t.data_ptr<uint8_t>();
  w.C = t.size(0), w.TB = t.size(2), w.N = N;
  TORCH_CHECK(w.C == (N + LANES - 1) / LANES, "tiles hold ", w.C, " groups of 16 columns, not ", N, " columns");
  if (w.TB == Q6_SUPER) w.bits = 6, w.per = 8;
  else if (w.TB == tile_bytes(8, false)) w.bits = 8;
  else if (w.TB == tile_bytes(4, true)) w.sym = true;
  else TORCH_CHECK(w.TB == tile_bytes(4, false), "unknown tile size ", w.TB);
  w.G = t.size(1) * w.per, w.K = w.G * BLOCK, w.sub = w.bits == 6 ? Q6_TILE : w.TB;
  return w;
}

// Q6_K → tiles. q: int8 [N, K] codes − 32 (∈ [−32, 31]); sc: int8 [N, K/16]; d: [N, K/256].
torch::Tensor pack_q6k(torch::Tensor q, torch::Tensor sc, torch::Tensor d) {
  q = q.to(torch::kChar).contiguous(), sc = sc.to(torch::kChar).contiguous(), d = d.to(torch::kHalf).contiguous();
  const int64_t N = q.size(0), K = q.size(1), S = K / 256, C = (N + LANES - 1) / LANES;
  TORCH_CHECK(K % 256 == 0 && sc.size(0) == N && sc.size(1) == K / 16 && d.size(0) == N && d.size(1) == S,
              "Q6_K codes, scales and d do not fit");
  auto out = torch::zeros({C, S, Q6_SUPER}, torch::kUInt8);
  const int8_t* qs = q.data_ptr<int8_t>();
  const int8_t* scs = sc.data_ptr<int8_t>();
  const at::Half* ds = d.data_ptr<at::Half>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++)
      for (int64_t s = 0; s < S; s++) {
        uint8_t* sup = dst + (c * S + s) * Q6_SUPER;
        for (int64_t L = 0; L < LANES && c * LANES + L < N; L++) {
          const int64_t n = c * LANES + L;
          reinterpret_cast<at::Half*>(sup + 8 * Q6_TILE)[L] = ds[n * S + s];
          for (int64_t t = 0; t < 8; t++) {
            const int64_t g = s * 8 + t;
            uint8_t* tile = sup + t * Q6_TILE;
            const int8_t* w = qs + n * K + g * BLOCK;
            for (int j = 0; j < 4; j++)
              for (int e = 0; e < 4; e++) {
                const int lo = w[4 * j + e] + 32, hi = w[16 + 4 * j + e] + 32;  // ∈ [0, 63]
                tile[64 * j + 4 * L + e] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
                tile[256 + 4 * L + e] |= static_cast<uint8_t>(((lo >> 4) & 3) << (2 * j));
                tile[320 + 4 * L + e] |= static_cast<uint8_t>(((hi >> 4) & 3) << (2 * j));
              }
            tile[384 + L] = static_cast<uint8_t>(scs[n * (K / 16) + 2 * g]);
            tile[400 + L] = static_cast<uint8_t>(scs[n * (K / 16) + 2 * g + 1]);
          }
        }
      }
  });
  return out;
}

// A Q6_K tile's code of column L, weight k (∈ [0, 63]).
inline int q6_code(const uint8_t* tile, int64_t L, int k) {
  const int j = (k % 16) / 4, e = k % 4, hi = k >= 16;
  const int low = (tile[64 * j + 4 * L + e] >> (4 * hi)) & 15;
  return low | (((tile[256 + 64 * hi + 4 * L + e] >> (2 * j)) & 3) << 4);
}

// ggml-layout blocks → tiles. qs: uint8 [N, K/2] nibbles (4-bit) or int8 [N, K] (8-bit); d, m:
// [N, K/32] (m empty for 8-bit). Q4_1 blocks whose every m is −8d are stored as Q4_0.
torch::Tensor pack_blocks(torch::Tensor qs, torch::Tensor d, torch::Tensor m) {
  const int bits = qs.scalar_type() == torch::kUInt8 ? 4 : 8;
  TORCH_CHECK(bits == 4 || qs.scalar_type() == torch::kInt8, "block codes must be uint8 (4-bit) or int8");
  qs = qs.contiguous();
  d = d.to(torch::kHalf).contiguous();
  const int64_t N = qs.size(0), K = qs.size(1) * (bits == 4 ? 2 : 1), G = K / BLOCK, C = (N + LANES - 1) / LANES;
  TORCH_CHECK(K % BLOCK == 0 && d.size(0) == N && d.size(1) == G, "block scales do not fit the codes");
  bool sym = false;
  if (bits == 4) {
    m = m.to(torch::kHalf).contiguous();
    TORCH_CHECK(m.sizes() == d.sizes(), "block minimums do not fit the scales");
    sym = torch::equal(m.to(torch::kFloat), d.to(torch::kFloat) * -8.f);
  }
  const int64_t TB = tile_bytes(bits, sym), rowbytes = bits == 4 ? K / 2 : K, code = bits == 4 ? 256 : 512;
  auto out = torch::zeros({C, G, TB}, torch::kUInt8);  // padding columns: codes and scales 0
  const uint8_t* src = reinterpret_cast<const uint8_t*>(qs.data_ptr());
  const at::Half* ds = d.data_ptr<at::Half>();
  const at::Half* ms = bits == 4 ? m.data_ptr<at::Half>() : nullptr;
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++)
      for (int64_t g = 0; g < G; g++) {
        uint8_t* t = dst + (c * G + g) * TB;
        for (int64_t L = 0; L < LANES && c * LANES + L < N; L++) {
          const int64_t n = c * LANES + L;
          const uint8_t* b = src + n * rowbytes + g * (rowbytes / G);
          for (int j = 0; j < code / 64; j++)
            for (int e = 0; e < 4; e++) t[64 * j + 4 * L + e] = bits == 4 ? b[4 * j + e] : b[4 * j + e] ^ 0x80;
          reinterpret_cast<at::Half*>(t + code)[L] = ds[n * G + g];
          if (bits == 4 && !sym) reinterpret_cast<at::Half*>(t + code + 32)[L] = ms[n * G + g];
        }
      }
  });
  return out;
}

// Column L's 32 weights of block g of group c, as transformers' GGUF reader dequantizes them:
// d·(q − 8), d·q + m (two roundings), d·q, (d·sc)·(q − 32). The one float definition of a tile's
// weights: token embeddings and the kernel without VNNI read it.
void dequant_lane(const Tiles& w, int64_t c, int64_t g, int64_t L, float* out) {
  const uint8_t* tile = w.tile(c, g);
  if (w.bits == 6) {
    const float d = reinterpret_cast<const at::Half*>(w.q6_d(c, g))[L];
    for (int k = 0; k < BLOCK; k++)
      out[k] = d * static_cast<float>(static_cast<int8_t>(tile[384 + 16 * (k / 16) + L])) * static_cast<float>(q6_code(tile, L, k) - 32);
    return;
  }
  const int64_t code = w.bits == 8 ? 512 : 256;
  const float d = reinterpret_cast<const at::Half*>(tile + code)[L];
  const float m = w.bits == 4 && !w.sym ? static_cast<float>(reinterpret_cast<const at::Half*>(tile + code + 32)[L]) : 0.f;
  for (int j = 0; j < code / 64; j++)
    for (int e = 0; e < 4; e++) {
      const int b = tile[64 * j + 4 * L + e];
      if (w.bits == 8) {
        out[4 * j + e] = d * static_cast<float>(b - 128);
      } else if (w.sym) {
        out[4 * j + e] = d * static_cast<float>((b & 15) - 8);
        out[16 + 4 * j + e] = d * static_cast<float>((b >> 4) - 8);
      } else {
        out[4 * j + e] = d * static_cast<float>(b & 15) + m;
        out[16 + 4 * j + e] = d * static_cast<float>(b >> 4) + m;
      }
    }
}

// Rows of the weight (a tied head's rows are the token embeddings) as float32 [len(ids), K].
torch::Tensor embed_rows(torch::Tensor tiles, int64_t N, torch::Tensor ids) {
  const Tiles w = make_tiles(tiles, N);
  ids = ids.to(torch::kLong).contiguous();
  const int64_t T = ids.numel();
  const int64_t* id = ids.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; t++) TORCH_CHECK(id[t] >= 0 && id[t] < N, "token id ", id[t], " is outside [0, ", N, ")");
  auto out = torch::empty({T, w.K}, torch::kFloat);
  float* o = out.data_ptr<float>();
  for (int64_t t = 0; t < T; t++)
    for (int64_t g = 0; g < w.G; g++) dequant_lane(w, id[t] / LANES, g, id[t] % LANES, o + t * w.K + g * BLOCK);
  return out;
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// The activations are quantized as llama.cpp quantizes them (ggml's Q8 blocks: x ≈ dx·qx per block
// of 32, qx ∈ [−127, 127]) and multiply the weights as integers; the block sums are exact.
constexpr const char* KERNEL = "avx512-vnni (q8 activations, 16-column tiles)";
constexpr const char* ACTIVATIONS = "q8";

struct QRows {
  int64_t K = 0, G = 0;
  std::vector<int8_t> q;     // [M, K]
  std::vector<float> dx;     // [M, G] block scales
  std::vector<float> sx;     // [M, G] dx · Σ qx (Q4_1's minimum term)
  std::vector<int32_t> sum;  // [M, G] Σ qx (Q4_0's −8 and Q8_0's −128 offsets)
  std::vector<int32_t> half; // [M, G, 2] Σ qx over weights 0..15 and 16..31 (Q6_K's −32, per scale)
};

QRows quantize_rows(const float* x, int64_t M, int64_t K) {
  QRows r;
  r.K = K, r.G = K / BLOCK;
  r.q.resize(M * K), r.dx.resize(M * r.G), r.sx.resize(M * r.G), r.sum.resize(M * r.G), r.half.resize(2 * M * r.G);
  at::parallel_for(0, M * r.G, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {  // i = row · G + block
      const float* xb = x + i * BLOCK;  // rows are K = G · 32 floats apart
      const v16 a = load(xb), b = load(xb + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
      const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
      // rounded to nearest even, as std::nearbyint does (MXCSR default)
      const __m512i qa = _mm512_cvtps_epi32(mul(a, splat(id))), qb = _mm512_cvtps_epi32(mul(b, splat(id)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(r.q.data() + i * BLOCK), _mm512_cvtsepi32_epi8(qa));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(r.q.data() + i * BLOCK + 16), _mm512_cvtsepi32_epi8(qb));
      const int32_t sa = _mm512_reduce_add_epi32(qa), sb = _mm512_reduce_add_epi32(qb);
      r.dx[i] = d, r.sum[i] = sa + sb, r.sx[i] = d * static_cast<float>(sa + sb);
      r.half[2 * i] = sa, r.half[2 * i + 1] = sb;
    }
  });
  return r;
}

// MRT activation rows × one group of 16 columns, all G blocks. Fixed MRT: fully unrolled.
template <int BITS, bool SYM, int MRT>
void tile(const QRows& xq, int64_t m0, const Tiles& w, int64_t c, float* y, bool add) {
  constexpr int CODE = BITS == 8 ? 512 : 256;
  constexpr int32_t OFFSET = BITS == 8 ? -128 : (SYM ? -8 : 0);  // the codes' zero point (Q6_K: per half)
  constexpr int64_t AHEAD = 4;  // tiles prefetched ahead
  const int64_t G = w.G, sub = w.sub;
  const __m512i nib = _mm512_set1_epi8(15), top = _mm512_set1_epi8(0x30);
  v16 acc[MRT];
  for (auto& a : acc) a = zero();
  for (int64_t g = 0; g < G; g++) {
    __m512i W[8];
    v16 dv, mv;  // Q6_K: the two halves' d·sc
    const uint8_t* t = w.tile(c, g);
    // one thread alone keeps too few lines in flight to stream DRAM (8 of 30 GB/s measured);
    // past the group's last tile this runs into the next group, which this thread runs next
    const uint8_t* next = t + AHEAD * sub;
    for (int64_t off = 0; off < sub; off += 64) _mm_prefetch(reinterpret_cast<const char*>(next + off), _MM_HINT_T0);
    for (int j = 0; j < CODE / 64; j++) {
      const __m512i b = _mm512_loadu_si512(t + 64 * j);
      if constexpr (BITS == 8) {
        W[j] = b;
      } else {
        W[j] = _mm512_and_si512(b, nib);
        W[j + 4] = _mm512_and_si512(_mm512_srli_epi16(b, 4), nib);
      }
    }
    if constexpr (BITS == 6) {  // the high 2 bits to bits 4-5 of each code byte
      for (int h = 0; h < 2; h++) {
        const __m512i hb = _mm512_loadu_si512(t + 256 + 64 * h);
        __m512i* Wh = W + 4 * h;
        Wh[0] = _mm512_or_si512(Wh[0], _mm512_and_si512(_mm512_slli_epi16(hb, 4), top));
        Wh[1] = _mm512_or_si512(Wh[1], _mm512_and_si512(_mm512_slli_epi16(hb, 2), top));
        Wh[2] = _mm512_or_si512(Wh[2], _mm512_and_si512(hb, top));
        Wh[3] = _mm512_or_si512(Wh[3], _mm512_and_si512(_mm512_srli_epi16(hb, 2), top));
      }
      const v16 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.q6_d(c, g))));
      const __m128i* sc = reinterpret_cast<const __m128i*>(t + 384);
      dv = mul(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(sc))));
      mv = mul(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(sc + 1))));
    } else {
      dv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + CODE)));
      if constexpr (BITS == 4 && !SYM) mv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + CODE + 32)));
    }
    for (int i = 0; i < MRT; i++) {
      const int64_t at = (m0 + i) * G + g;
      const int32_t* xw = reinterpret_cast<const int32_t*>(xq.q.data() + at * BLOCK);
      const v16 dx = splat(xq.dx[at]);
      if constexpr (BITS == 6) {  // two halves, each Σ (q − 32)·qx times its own scale
        __m512i s0 = _mm512_set1_epi32(-32 * xq.half[2 * at]), s1 = _mm512_set1_epi32(-32 * xq.half[2 * at + 1]);
        for (int j = 0; j < 4; j++) {
          s0 = _mm512_dpbusd_epi32(s0, W[j], _mm512_set1_epi32(xw[j]));
          s1 = _mm512_dpbusd_epi32(s1, W[j + 4], _mm512_set1_epi32(xw[j + 4]));
        }
        acc[i] = fma(_mm512_cvtepi32_ps(s0), mul(dv, dx), acc[i]);
        acc[i] = fma(_mm512_cvtepi32_ps(s1), mul(mv, dx), acc[i]);
      } else {
        __m512i s0 = _mm512_set1_epi32(OFFSET * xq.sum[at]), s1 = _mm512_setzero_si512();  // two chains: exact either way
        for (int j = 0; j < 8; j += 2) {
          s0 = _mm512_dpbusd_epi32(s0, W[j], _mm512_set1_epi32(xw[j]));
          s1 = _mm512_dpbusd_epi32(s1, W[j + 1], _mm512_set1_epi32(xw[j + 1]));
        }
        acc[i] = fma(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), mul(dv, dx), acc[i]);
        if constexpr (BITS == 4 && !SYM) acc[i] = fma(mv, splat(xq.sx[at]), acc[i]);
      }
    }
  }
  const int64_t n0 = c * LANES;
  const __mmask16 k = w.N - n0 >= LANES ? 0xFFFF : static_cast<__mmask16>((1u << (w.N - n0)) - 1);
  for (int i = 0; i < MRT; i++) {
    float* out = y + (m0 + i) * w.N + n0;
    _mm512_mask_storeu_ps(out, k, add ? _mm512_add_ps(_mm512_maskz_loadu_ps(k, out), acc[i]) : acc[i]);
  }
}

template <int BITS, bool SYM>
void qlinear_t(const QRows& xq, int64_t M, const Tiles& w, float* y, bool add) {
  // one column group per task (measured: four groups side by side for one row ran 15 % slower on
  // the 135M model, likely register spills), rows in as few passes of at most 8 as possible,
  // evenly (9 rows: 5 + 4): each pass unpacks the group's weights once for all its rows
  const int64_t passes = (M + 7) / 8, per = (M + passes - 1) / passes;
  at::parallel_for(0, w.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; c++)
      for (int64_t m0 = 0; m0 < M; m0 += per) {
        switch (std::min(per, M - m0)) {
          case 1: tile<BITS, SYM, 1>(xq, m0, w, c, y, add); break;
          case 2: tile<BITS, SYM, 2>(xq, m0, w, c, y, add); break;
          case 3: tile<BITS, SYM, 3>(xq, m0, w, c, y, add); break;
          case 4: tile<BITS, SYM, 4>(xq, m0, w, c, y, add); break;
          case 5: tile<BITS, SYM, 5>(xq, m0, w, c, y, add); break;
          case 6: tile<BITS, SYM, 6>(xq, m0, w, c, y, add); break;
          case 7: tile<BITS, SYM, 7>(xq, m0, w, c, y, add); break;
          default: tile<BITS, SYM, 8>(xq, m0, w, c, y, add); break;
        }
      }
  });
}

// y[m, n] (+)= x[m] · w[n]; `add`: y += (a residual connection), else y =.
void qlinear(const float* x, int64_t M, const Tiles& w, float* y, bool add) {
  const QRows xq = quantize_rows(x, M, w.K);
  if (w.bits == 8) qlinear_t<8, false>(xq, M, w, y, add);
  else if (w.bits == 6) qlinear_t<6, false>(xq, M, w, y, add);
  else if (w.sym) qlinear_t<4, true>(xq, M, w, y, add);
  else qlinear_t<4, false>(xq, M, w, y, add);
}
#else
// Without VNNI: each tile dequantized to float32 once for all rows (dequant_lane), then one fma
// chain per output over k.
constexpr const char* KERNEL = "float32 (dequantized 16-column tiles)";
constexpr const char* ACTIVATIONS = "f32";

void dequant_tile(const Tiles& w, int64_t c, int64_t g, float out[BLOCK][LANES]) {
  float lane[BLOCK];
  for (int64_t L = 0; L < LANES; L++) {
    dequant_lane(w, c, g, L, lane);
    for (int k = 0; k < BLOCK; k++) out[k][L] = lane[k];
  }
}

void qlinear(const float* x, int64_t M, const Tiles& w, float* y, bool add) {
  at::parallel_for(0, w.C, 1, [&](int64_t c0, int64_t c1) {
    std::vector<v16> acc(M);
    alignas(64) float wt[BLOCK][LANES];
    for (int64_t c = c0; c < c1; c++) {
      for (auto& a : acc) a = zero();
      for (int64_t g = 0; g < w.G; g++) {
        dequant_tile(w, c, g, wt);
        for (int64_t i = 0; i < M; i++) {
          const float* xb = x + i * w.K + g * BLOCK;
          for (int k = 0; k < BLOCK; k++) acc[i] = fma(load(wt[k]), splat(xb[k]), acc[i]);
        }
      }
      const int64_t n0 = c * LANES, nr = std::min(LANES, w.N - n0);
      for (int64_t i = 0; i < M; i++) {
        float lanes[LANES];
        store(lanes, acc[i]);
        float* out = y + i * w.N + n0;
        for (int64_t L = 0; L < nr; L++) out[L] = add ? out[L] + lanes[L] : lanes[L];
      }
    }
  });
}
#endif
