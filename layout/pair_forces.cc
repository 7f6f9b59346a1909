// The all-pairs energies `euclid` and `repulsion` (layout/forces.py) and their gradient, in one pass
// over the unordered pairs i < j, as an XLA FFI handler. The definitions are the JAX pair functions
// euclid_pair and repulsion_pair; tests/test_native.py checks this against jax.grad of them.
//
// Per unordered pair, with d2 = |x_i - x_j|^2 and slope = dE/d(d2), both particles get their force
// at once: grad_i += 2 slope (x_i - x_j), grad_j -= 2 slope (x_i - x_j). Each row i runs over the
// columns j > i sixteen at a time (GCC vector extensions: one AVX-512 register, or two AVX ones);
// rows are shared out among OpenMP threads, each adding into its own gradient buffer.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int L = 16;  // lanes per vector
typedef float V __attribute__((vector_size(4 * L)));
typedef int32_t Vi __attribute__((vector_size(4 * L)));

enum Weighting { UNIFORM = 0, INVERSE = 1, INVERSE_SQUARE = 2 };

struct Settings {
  float euclid_scale, repulsion_scale, softening2, euclid_softening2, distance_floor;
};

inline V splat(float a) { return V{} + a; }

// 1 / sqrt(x) to float precision: the hardware estimate and one Newton step.
inline V rsqrt(V x) {
#if defined(__AVX512F__)
  V y = (V)_mm512_rsqrt14_ps((__m512)x);  // 14 bits
#elif defined(__AVX__)
  union { V v; __m256 h[2]; } in{x}, out;
  out.h[0] = _mm256_rsqrt_ps(in.h[0]);  // 12 bits
  out.h[1] = _mm256_rsqrt_ps(in.h[1]);
  V y = out.v;
#else
  V y;
  for (int k = 0; k < L; ++k) y[k] = 1.0f / std::sqrt(x[k]);
  return y;
#endif
  return y * (1.5f - 0.5f * x * y * y);
}

inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// The floats from p up to n (at most L), zeros after them: a row's last block never reads past its end.
inline V load_first(const float* p, int64_t n) {
  V v{};
  std::memcpy(&v, p, sizeof(float) * (n < L ? n : L));
  return v;
}

// lanes j0 + k with lo < j0 + k < hi: 1, others 0
inline V lanes_between(int64_t j0, int64_t lo, int64_t hi) {
  Vi k;
  for (int a = 0; a < L; ++a) k[a] = a;
  Vi j = k + int32_t(j0);
  Vi ok = (j > int32_t(lo)) & (j < int32_t(hi));
  return (V)(ok & (Vi)splat(1.0f));
}

struct Row {
  V x0, x1, x2, include;
  V g0{}, g1{}, g2{}, energy{};
};

// Columns j0 .. j0 + 15 of row i: their pair energies into row.energy, the gradient into row.g* (for
// i) and f (for the columns). mask: which lanes are pairs (1) or not (0).
template <int W, bool EU, bool REP, bool MASKED>
inline void block(Row& row, const float* x, const float* rest_row, const float* include, float* f,
                  int64_t P, int64_t PP, int64_t j0, V mask, const Settings& s) {
  const V d0 = row.x0 - load(x + j0), d1 = row.x1 - load(x + PP + j0), d2 = row.x2 - load(x + 2 * PP + j0);
  const V r2 = d0 * d0 + d1 * d1 + d2 * d2;
  V energy{}, slope{};  // slope: dE / d(r2)
  if (EU) {
    const V rest = MASKED ? load_first(rest_row + j0, P - j0) : load(rest_row + j0);
    const V s2 = r2 + s.euclid_softening2;
    const V inv_d = rsqrt(s2);
    V w = s.euclid_scale * row.include * load(include + j0);
    if (MASKED) w *= mask;
    if (W == INVERSE) w /= rest + s.distance_floor;
    if (W == INVERSE_SQUARE) w /= (rest + s.distance_floor) * (rest + s.distance_floor);
    const V gap = s2 * inv_d - rest;  // d - r, d = sqrt(r2 + softening^2)
    energy += w * gap * gap;
    slope += w * gap * inv_d;  // d/d(r2) of w (d - r)^2 = w (d - r) / d
  }
  if (REP) {
    V inv = rsqrt(r2 + s.softening2);
    if (MASKED) inv *= mask;
    energy += s.repulsion_scale * inv;
    slope -= (0.5f * s.repulsion_scale) * inv * inv * inv;
  }
  const V twice = slope + slope;
  const V a0 = twice * d0, a1 = twice * d1, a2 = twice * d2;
  row.g0 += a0;
  row.g1 += a1;
  row.g2 += a2;
  row.energy += energy;
  float* f0 = f + j0;
  float* f1 = f + PP + j0;
  float* f2 = f + 2 * PP + j0;
  const V n0 = load(f0) - a0, n1 = load(f1) - a1, n2 = load(f2) - a2;
  std::memcpy(f0, &n0, sizeof(V));
  std::memcpy(f1, &n1, sizeof(V));
  std::memcpy(f2, &n2, sizeof(V));
}

inline float sum(V v) {
  float total = 0.0f;
  for (int k = 0; k < L; ++k) total += v[k];
  return total;
}

// One system: x [P, 3], rest [P, P] (rest lengths, read above the diagonal only), include [P];
// writes grad [P, 3] and returns the energy.
template <int W, bool EU, bool REP>
double system(const float* x_in, const float* rest, const float* include_in, int64_t P, const Settings s,
              float* grad) {
  const int64_t PP = (P + L - 1) / L * L;  // columns padded to whole vectors
  std::vector<float> x(3 * PP, 0.0f), include(PP, 0.0f);
  for (int64_t i = 0; i < P; ++i) {
    for (int k = 0; k < 3; ++k) x[k * PP + i] = x_in[i * 3 + k];
    include[i] = EU ? include_in[i] : 0.0f;
  }
  // Rows go to the threads in a fixed round-robin order, and the threads' sums are added in thread
  // order: the same input gives the same bits (same seed, same trajectory).
  const int threads = omp_get_max_threads();
  std::vector<float> buffers(size_t(threads) * 3 * PP, 0.0f);
  std::vector<double> energies(threads, 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    float* f = buffers.data() + size_t(t) * 3 * PP;
#pragma omp for schedule(static, 4)
    for (int64_t i = 0; i < P - 1; ++i) {
      Row row{splat(x[i]), splat(x[PP + i]), splat(x[2 * PP + i]), splat(include[i])};
      const float* rest_row = EU ? rest + i * P : nullptr;
      const int64_t first = (i + 1) / L * L, last = (P - 1) / L * L;
      for (int64_t j0 = first; j0 <= last; j0 += L) {
        if (j0 == first || j0 == last)
          block<W, EU, REP, true>(row, x.data(), rest_row, include.data(), f, P, PP, j0,
                                  lanes_between(j0, i, P), s);
        else
          block<W, EU, REP, false>(row, x.data(), rest_row, include.data(), f, P, PP, j0, V{}, s);
      }
      f[i] += sum(row.g0);
      f[PP + i] += sum(row.g1);
      f[2 * PP + i] += sum(row.g2);
      energies[t] += sum(row.energy);
    }
  }
  double energy = 0.0;
  for (int t = 0; t < threads; ++t) energy += energies[t];
  for (int64_t i = 0; i < P; ++i)
    for (int k = 0; k < 3; ++k) {
      float total = 0.0f;
      for (int t = 0; t < threads; ++t) total += buffers[size_t(t) * 3 * PP + k * PP + i];
      grad[i * 3 + k] = total;
    }
  return energy;
}

using System = double (*)(const float*, const float*, const float*, int64_t, const Settings, float*);

System pick(int weighting, bool euclid, bool repulsion) {
  static const System with_euclid[3][2] = {
      {system<UNIFORM, true, false>, system<UNIFORM, true, true>},
      {system<INVERSE, true, false>, system<INVERSE, true, true>},
      {system<INVERSE_SQUARE, true, false>, system<INVERSE_SQUARE, true, true>}};
  if (euclid) return with_euclid[weighting][repulsion];
  return repulsion ? system<UNIFORM, false, true> : system<UNIFORM, false, false>;
}

// x [..., P, 3], rest [..., P, P] (unread without euclid), include [..., P], scales [..., 2] (euclid,
// repulsion) -> energy [...], grad [..., P, 3]; leading axes are independent systems (jax.vmap).
ffi::Error PairForcesImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> rest, ffi::Buffer<ffi::F32> include,
                          ffi::Buffer<ffi::F32> scales, ffi::ResultBuffer<ffi::F32> energy,
                          ffi::ResultBuffer<ffi::F32> grad, int32_t weighting, bool euclid, bool repulsion,
                          float softening, float euclid_softening, float distance_floor) {
  const auto dims = x.dimensions();
  if (dims.size() < 2 || dims.back() != 3) return ffi::Error::InvalidArgument("pair_forces: x must be [..., P, 3]");
  if (weighting < 0 || weighting > 2) return ffi::Error::InvalidArgument("pair_forces: weighting must be 0, 1 or 2");
  const int64_t P = dims[dims.size() - 2];
  if (P == 0) return ffi::Error::Success();
  const int64_t B = x.element_count() / (P * 3);
  if (euclid && rest.element_count() != B * P * P)
    return ffi::Error::InvalidArgument("pair_forces: rest must be [..., P, P]");
  const System run = pick(weighting, euclid, repulsion);
  for (int64_t b = 0; b < B; ++b) {
    const float* sc = scales.typed_data() + 2 * b;
    const Settings s{sc[0], sc[1], softening * softening, euclid_softening * euclid_softening, distance_floor};
    energy->typed_data()[b] = float(run(x.typed_data() + b * P * 3, euclid ? rest.typed_data() + b * P * P : nullptr,
                                        include.typed_data() + b * P, P, s, grad->typed_data() + b * P * 3));
  }
  return ffi::Error::Success();
}

// vectors [..., P, C] -> rest [..., P, P]: |v_i - v_j| above the diagonal (the pairs PairForces reads),
// 0 on and below it. Made once per call of a simulation chunk, so multi-threaded like the forces.
ffi::Error RestLengthsImpl(ffi::Buffer<ffi::F32> vectors, ffi::ResultBuffer<ffi::F32> rest) {
  const auto dims = vectors.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("rest_lengths: vectors must be [..., P, C]");
  const int64_t P = dims[dims.size() - 2], C = dims.back();
  if (P == 0) return ffi::Error::Success();
  const int64_t B = vectors.element_count() / (P * C);
  std::vector<float> columns(C * P);  // [C, P]: one coordinate of every particle, contiguous
  for (int64_t b = 0; b < B; ++b) {
    const float* v = vectors.typed_data() + b * P * C;
    float* out = rest->typed_data() + b * P * P;
    for (int64_t i = 0; i < P; ++i)
      for (int64_t k = 0; k < C; ++k) columns[k * P + i] = v[i * C + k];
#pragma omp parallel for schedule(dynamic, 16)
    for (int64_t i = 0; i < P; ++i) {
      float* row = out + i * P;
      for (int64_t j = 0; j < P; ++j) row[j] = 0.0f;
      for (int64_t k = 0; k < C; ++k) {
        const float vik = v[i * C + k];
        const float* column = columns.data() + k * P;
        for (int64_t j = i + 1; j < P; ++j) row[j] += (vik - column[j]) * (vik - column[j]);
      }
      for (int64_t j = i + 1; j < P; ++j) row[j] = std::sqrt(row[j]);
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RestLengths, RestLengthsImpl,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(PairForces, PairForcesImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("weighting")
                                  .Attr<bool>("euclid")
                                  .Attr<bool>("repulsion")
                                  .Attr<float>("softening")
                                  .Attr<float>("euclid_softening")
                                  .Attr<float>("distance_floor"));
