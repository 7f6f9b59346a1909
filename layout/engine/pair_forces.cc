// The all-pairs energies `euclid` and `repulsion` (layout/forces.py) and their gradient, in one pass
// over the unordered pairs i < j, as an XLA FFI handler. The definitions are the JAX pair functions
// euclid_pair and repulsion_pair; tests/test_native.py checks this against jax.grad of them.
//
// Per unordered pair, with s2 = |x_i - x_j|^2 + softening^2 and slope = dE/d(s2), both particles get
// their force at once: grad_i += 2 slope (x_i - x_j), grad_j -= 2 slope (x_i - x_j). Each row i runs
// over the columns j > i sixteen at a time (GCC vector extensions: one AVX-512 register, or two AVX
// ones). The rows are dealt into chunks, which run on XLA's own intra-op thread pool; each chunk adds
// into its own gradient buffer, and the chunks' sums are added in chunk order, so the same input
// gives the same bits whichever thread ran which chunk (same seed, same trajectory).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int L = 16;  // lanes per vector
constexpr int ROWS = 4;  // rows dealt to a chunk at a time
constexpr int CHUNKS_PER_THREAD = 4;  // a thread that starts late takes fewer chunks
constexpr int64_t PARALLEL_SUM = 1 << 18;  // additions from which the chunks' gradients are summed in parallel
constexpr int GROUP = 2;  // rows evaluated together (1: 10% slower; 4: no faster)
// rest lengths are fetched from memory this many floats ahead: the hardware's own prefetching stops at
// every 4 KiB page of a row (15-20% of the time at N = 10,000, where they do not fit in the caches)
constexpr int PREFETCH = 512;
typedef float V __attribute__((vector_size(4 * L)));
typedef int32_t Vi __attribute__((vector_size(4 * L)));

// UNIT: uniform weights where every particle takes part in euclid (what PairForces uses then). Every
// pair's euclid weight is the same scale, so the pair loop adds slope / scale (one multiplication and one
// load fewer per block) and the gradient and euclid's energy are multiplied by scale once, at the end:
// 1.03x on the whole step at N = 1,000 and 10,000 (old and new kernel side by side in one process).
enum Weighting { UNIFORM = 0, INVERSE = 1, INVERSE_SQUARE = 2, UNIT = 3 };

inline V splat(float a) { return V{} + a; }

inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// ---------------------------------------------------------------------------------------------
// Work on XLA's thread pool

// Runs work(0) .. work(n - 1), each exactly once, on the caller and on XLA's intra-op threads: every
// thread claims the next chunk nobody has taken. The caller takes chunks too, so nothing waits for a
// pool thread that is busy elsewhere, and returns when all chunks are done. Tasks that start after
// that find nothing left to claim and touch only the shared counters, which they keep alive.
struct Claims {
  std::atomic<int64_t> next{0}, done{0};
};

// Claims and runs chunks until none is left.
template <typename Work>
void claim_chunks(Claims& claims, int64_t n, const Work* work) {
  for (int64_t c; (c = claims.next.fetch_add(1)) < n;) {
    (*work)(c);
    claims.done.fetch_add(1, std::memory_order_release);
  }
}

template <typename Work>
void run_chunks(ffi::ThreadPool& pool, int64_t n, const Work& work) {
  auto claims = std::make_shared<Claims>();
  const Work* w = &work;  // alive until every chunk is done; a task that starts later claims none
  for (int64_t h = 0; h < std::min<int64_t>(pool.num_threads() - 1, n - 1); ++h)
    pool.Schedule([claims, n, w] { claim_chunks(*claims, n, w); });
  claim_chunks(*claims, n, w);
  while (claims->done.load(std::memory_order_acquire) < n) pause();
}

// Chunks of rows: chunk c gets rows ROWS * (c + k * chunks) ... + ROWS - 1, so every chunk has about
// the same number of pairs.
int64_t chunk_count(ffi::ThreadPool& pool, int64_t P) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(CHUNKS_PER_THREAD * threads, (P + ROWS - 1) / ROWS));
}

// Calls rows(start, end) for each run of rows [start, end) of `chunk` among rows 0 .. n - 1.
template <typename Rows>
void chunk_rows(int64_t chunk, int64_t chunks, int64_t n, const Rows& rows) {
  for (int64_t start = ROWS * chunk; start < n; start += ROWS * chunks) rows(start, std::min(start + ROWS, n));
}

// ---------------------------------------------------------------------------------------------
// Vector arithmetic

// 2 / sqrt(x) to float precision: the hardware estimate and one Newton step, y (3 - x y^2), whose
// usual factor 1/2 the callers' constants carry (one vector operation fewer).
inline V twice_rsqrt(V x) {
#if defined(__AVX512F__)
  V y = (V)_mm512_rsqrt14_ps((__m512)x);  // 14 bits
#elif defined(__AVX__)
  union { V v; __m256 h[2]; } in{x}, out;
  out.h[0] = _mm256_rsqrt_ps(in.h[0]);  // 12 bits
  out.h[1] = _mm256_rsqrt_ps(in.h[1]);
  V y = out.v;
#else
  V y;
  for (int k = 0; k < L; ++k) y[k] = 2.0f / std::sqrt(x[k]);
  return y;
#endif
  return y * (3.0f - x * y * y);
}

inline V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

inline void store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }

// The floats from p up to n (at most L), zeros after them: a row's last block never reads past its end.
inline V load_first(const float* p, int64_t n) {
#if defined(__AVX512F__)
  return (V)_mm512_maskz_loadu_ps(__mmask16(n >= L ? 0xFFFF : (1u << n) - 1), p);
#else
  V v{};
  std::memcpy(&v, p, sizeof(float) * (n < L ? n : L));
  return v;
#endif
}

// lanes j0 + k with lo < j0 + k < hi: 1, others 0
inline V lanes_between(int64_t j0, int64_t lo, int64_t hi) {
  Vi k;
  for (int a = 0; a < L; ++a) k[a] = a;
  Vi j = k + int32_t(j0);
  Vi ok = (j > int32_t(lo)) & (j < int32_t(hi));
  return (V)(ok & (Vi)splat(1.0f));
}

// The sum of the lanes, pairwise (a serial sum of 16 lanes costs as much as a row's dozen blocks).
inline float sum(V v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#else
  for (int width = L / 2; width > 0; width /= 2)
    for (int k = 0; k < width; ++k) v[k] += v[k + width];
  return v[0];
#endif
}

// ---------------------------------------------------------------------------------------------
// The pair loop

struct Settings {
  float euclid_scale, repulsion_scale, softening2, euclid_softening2, distance_floor;
  float common = 1.0f;  // the weight every euclid pair shares, factored out of the pair loop (UNIT), else 1
};

// The settings the pair loop uses, as vectors held in registers (read through a reference, they would
// be loaded again after every store to the gradient, which might alias them).
struct Constants {
  V euclid_softening2, extra_softening2, repulsion_eighth, distance_floor;

  explicit Constants(const Settings& s)
      : euclid_softening2(splat(s.euclid_softening2)), extra_softening2(splat(s.softening2 - s.euclid_softening2)),
        repulsion_eighth(splat(s.repulsion_scale / 8 / s.common)), distance_floor(splat(s.distance_floor)) {}
};

// One system's particles as columns, each padded with zeros to S floats (S: `stride`): x [3, S];
// spring [S]: euclid's scale where a particle takes part in euclid, else 0. rest: row i of the
// rest lengths starts at rest + i * R.
struct Columns {
  const float* x;
  const float* spring;
  const float* rest;
  int64_t P, S, R;
};

// NR rows i, i + 1, ... at once: the columns' loads and stores are shared, and the rows' independent
// arithmetic keeps the vector units busy while one row waits on its square roots. The rows' gradients
// g*, their energies summed: springs (euclid's energy) and repulsion (sum of 2 / d).
template <int NR>
struct Rows {
  V x0[NR], x1[NR], x2[NR], mask[NR];
  V g0[NR]{}, g1[NR]{}, g2[NR]{};
  V springs{}, repulsion{};
  const float* rest[NR];
};

// Columns j0 .. j0 + 15 of the rows. mask: which lanes are pairs (1) or not (0), when MASKED. EU:
// whether the rows take part in euclid. E: whether the energies are summed too (a step that records
// no frame needs the gradient only: 26 vector operations per row of 16 pairs instead of 31, and 25 with
// UNIT weights, whose w is 1 outside the masked blocks). f: the chunk's gradient buffer [3, S].
template <int W, bool EU, bool REP, bool E, bool MASKED, int NR>
inline void block(Rows<NR>& rows, const Columns& c, float* f, int64_t j0, const Constants& s) {
  const V x0 = load(c.x + j0), x1 = load(c.x + c.S + j0), x2 = load(c.x + 2 * c.S + j0);
  // scale where j takes part in euclid (UNIT: 1, the scale comes at the end)
  const V spring = EU && W != UNIT ? load(c.spring + j0) : splat(1.0f);
  V f0 = load(f + j0), f1 = load(f + c.S + j0), f2 = load(f + 2 * c.S + j0);
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r) {
    const V d0 = rows.x0[r] - x0, d1 = rows.x1[r] - x1, d2 = rows.x2[r] - x2;
    const V s2 = d0 * d0 + (d1 * d1 + (d2 * d2 + s.euclid_softening2));  // three fused multiply-adds
    V slope{};  // 2 dE / d(s2)
    if (EU) {
      if (!MASKED) __builtin_prefetch(rows.rest[r] + j0 + PREFETCH);
      const V rest = MASKED ? load_first(rows.rest[r] + j0, c.P - j0) : load(rows.rest[r] + j0);
      const V two_inv_d = twice_rsqrt(s2);  // 2 / d, d = sqrt(r^2 + softening^2)
      V w = MASKED ? spring * rows.mask[r] : spring;  // scale x w_ij (UNIT: 1 or the mask)
      if (W == INVERSE) w /= rest + s.distance_floor;
      if (W == INVERSE_SQUARE) w /= (rest + s.distance_floor) * (rest + s.distance_floor);
      if (E) {
        const V gap = (0.5f * s2) * two_inv_d - rest;  // d - r
        const V t = w * gap;
        rows.springs += t * gap;  // scale w (d - r)^2 (over the common weight)
        slope = t * two_inv_d;  // 2 d/d(s2) of scale w (d - r)^2 = 2 scale w (d - r) / d
      } else {
        slope = w * (2.0f - rest * two_inv_d);  // the same, as d (2 / d) = 2: two operations fewer
      }
    }
    if (REP) {
      V two_inv = twice_rsqrt(s2 + s.extra_softening2);  // 2 / d', d' = sqrt(r^2 + its softening^2)
      if (MASKED) two_inv *= rows.mask[r];
      if (E) rows.repulsion += two_inv;
      // 2 d/d(s2) of scale / d' = -scale / d'^3 = -(scale / 8) (2 / d')^3
      slope -= (s.repulsion_eighth * two_inv) * (two_inv * two_inv);
    }
    rows.g0[r] += slope * d0;
    rows.g1[r] += slope * d1;
    rows.g2[r] += slope * d2;
    f0 -= slope * d0;
    f1 -= slope * d1;
    f2 -= slope * d2;
  }
  store(f + j0, f0);
  store(f + c.S + j0, f1);
  store(f + 2 * c.S + j0, f2);
}

// Rows i .. i + NR - 1 against the columns after them: their pair energies and the gradient into f.
// The first and last blocks are masked (pairs j > row, j < P).
template <int W, bool EU, bool REP, bool E, int NR>
Rows<NR> rows_pairs(const Columns& c, float* __restrict__ f, int64_t i, const Settings& settings) {
  const Constants s(settings);
  Rows<NR> rows;
  for (int r = 0; r < NR; ++r) {
    rows.x0[r] = splat(c.x[i + r]);
    rows.x1[r] = splat(c.x[c.S + i + r]);
    rows.x2[r] = splat(c.x[2 * c.S + i + r]);
    rows.rest[r] = EU ? c.rest + (i + r) * c.R : nullptr;
  }
  const int64_t first = (i + 1) / L * L, last = (c.P - 1) / L * L;
  for (int r = 0; r < NR; ++r) rows.mask[r] = lanes_between(first, i + r, c.P);
  block<W, EU, REP, E, true>(rows, c, f, first, s);
  for (int64_t j0 = first + L; j0 < last; j0 += L) block<W, EU, REP, E, false>(rows, c, f, j0, s);
  if (last > first) {
    for (int r = 0; r < NR; ++r) rows.mask[r] = lanes_between(last, i + r, c.P);
    block<W, EU, REP, E, true>(rows, c, f, last, s);
  }
  return rows;
}

// Rows i .. i + NR - 1: the pairs, then each row's gradient into f and the energies into the sums.
template <int W, bool EU, bool REP, bool E, int NR>
void add_rows(const Columns& c, float* f, int64_t i, const Settings& s, double& springs, double& repulsion) {
  const Rows<NR> rows = rows_pairs<W, EU, REP, E, NR>(c, f, i, s);
  for (int r = 0; r < NR; ++r) {
    f[i + r] += sum(rows.g0[r]);
    f[c.S + i + r] += sum(rows.g1[r]);
    f[2 * c.S + i + r] += sum(rows.g2[r]);
  }
  springs += sum(rows.springs);
  repulsion += sum(rows.repulsion);
}

// One chunk's rows: energies (euclid, repulsion) into energy [2] (NaN unless E) and gradient into
// f [3, S] (zeroed here). Rows that take no part in euclid (spring 0) go one at a time without it.
template <int W, bool EU, bool REP, bool E>
void chunk_pairs(const Columns& c, const Settings& s, int64_t chunk, int64_t chunks, float* f, double* energy) {
  std::memset(f, 0, sizeof(float) * 3 * c.S);
  double springs = 0.0, repulsion = 0.0;
  chunk_rows(chunk, chunks, c.P - 1, [&](int64_t start, int64_t end) {  // the last row has no pairs
    int64_t i = start;
    for (; i + GROUP <= end && (!EU || std::all_of(c.spring + i, c.spring + i + GROUP, [](float w) { return w != 0; }));
         i += GROUP)
      add_rows<W, EU, REP, E, GROUP>(c, f, i, s, springs, repulsion);
    for (; i < end; ++i) {
      if (EU && c.spring[i] != 0.0f)
        add_rows<W, true, REP, E, 1>(c, f, i, s, springs, repulsion);
      else if (REP)
        add_rows<W, false, REP, E, 1>(c, f, i, s, springs, repulsion);
    }
  });
  energy[0] = E ? springs : NAN;
  energy[1] = E ? 0.5 * s.repulsion_scale * repulsion : NAN;
}

using Chunk = void (*)(const Columns&, const Settings&, int64_t, int64_t, float*, double*);

// The chunk function for these terms: [repulsion][energy].
template <int W, bool EU>
struct Variants {
  static constexpr Chunk table[2][2] = {{chunk_pairs<W, EU, false, false>, chunk_pairs<W, EU, false, true>},
                                        {chunk_pairs<W, EU, true, false>, chunk_pairs<W, EU, true, true>}};
};

Chunk pick(int weighting, bool euclid, bool repulsion, bool energy) {
  if (!euclid) return Variants<UNIFORM, false>::table[1][energy];
  if (weighting == INVERSE) return Variants<INVERSE, true>::table[repulsion][energy];
  if (weighting == INVERSE_SQUARE) return Variants<INVERSE_SQUARE, true>::table[repulsion][energy];
  if (weighting == UNIT) return Variants<UNIT, true>::table[repulsion][energy];
  return Variants<UNIFORM, true>::table[repulsion][energy];
}

// Where the arrays of the pair loop lie. A load from an address that equals a recent store's modulo
// 4096 bytes waits for that store ("4K aliasing"; about 20% of the loop's time here, where a stride of
// 1024 particles puts x_j and f_j of all three coordinates at one offset). So every array read or
// written in the loop (rest row, x0, x1, x2, spring, f0, f1, f2) starts STEP floats after the previous
// one modulo a PAGE: their offsets are 1344 bytes apart, and no load is within 64 bytes of a store
// of the last dozen blocks.
constexpr int64_t PAGE = 1024, STEP = 336;  // floats: 4096 and 1344 bytes

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The stride S >= P, whole vectors, with S = STEP modulo PAGE.
int64_t stream_stride(int64_t P) {
  const int64_t whole = round_up(P, L);
  return whole + ((STEP - whole % PAGE) % PAGE + PAGE) % PAGE;
}

// The rest lengths' row stride R >= P, a whole number of pages, so that every row starts at the same
// offset modulo a page (RestLengths writes [P, R]; PairForces reads it).
int64_t rest_stride(int64_t P) { return round_up(P, PAGE); }

// Scratch kept between calls, one per calling thread: columns, then the chunks' gradient buffers.
struct Scratch {
  std::vector<float> storage;
  std::vector<double> energies;
};

// The chunks' gradient buffers added into chunk 0's, in chunk order (the same bits whichever threads
// ran them), and written out as grad [P, 3], times `common` (Settings). Blocks of columns go to the threads when
// there is enough to add: with many cores there are many chunks, and one thread adding them all would
// cost more than the pairs.
void add_chunks(ffi::ThreadPool& pool, float* buffers, int64_t chunks, int64_t per_chunk, int64_t S, int64_t P,
                float common, float* grad) {
  const int64_t blocks = (chunks - 1) * 3 * P >= PARALLEL_SUM ? chunks : 1;
  const int64_t width = round_up((P + blocks - 1) / blocks, L);
  run_chunks(pool, blocks, [&](int64_t b) {
    const int64_t lo = b * width, hi = std::min(P, lo + width);
    for (int k = 0; k < 3; ++k)
      for (int64_t c = 1; c < chunks; ++c)
        for (int64_t i = lo; i < hi; ++i) buffers[k * S + i] += buffers[c * per_chunk + k * S + i];
    for (int64_t i = lo; i < hi; ++i)
      for (int k = 0; k < 3; ++k) grad[i * 3 + k] = buffers[k * S + i] * common;
  });
}

// One system: x [P, 3], rest [P, R] (rest lengths, read above the diagonal only), include [P] (whether
// a particle takes part in euclid); writes grad [P, 3] and the energies of euclid and repulsion, energy [2].
void system(ffi::ThreadPool& pool, Chunk run, const float* x, const float* rest, const bool* include, int64_t P,
              bool euclid, const Settings& s, float* grad, float* energy) {
  thread_local Scratch scratch;
  const int64_t S = stream_stride(P), chunks = chunk_count(pool, P);
  const int64_t per_chunk = round_up(3 * S, PAGE);  // every chunk's f0 at the same offset modulo a page
  scratch.storage.resize(4 * S + chunks * per_chunk + PAGE);
  scratch.energies.assign(2 * chunks, 0.0);
  // x0 one STEP after the rest rows modulo a page (rest is aligned to 64 bytes or more)
  const uintptr_t anchor = rest ? uintptr_t(rest) : 0, here = uintptr_t(scratch.storage.data());
  float* columns = scratch.storage.data() + ((anchor + 4 * STEP - here) % (4 * PAGE)) / 4;
  float* buffers = columns + 4 * S;
  std::fill(columns, buffers, 0.0f);
  for (int64_t i = 0; i < P; ++i) {
    for (int k = 0; k < 3; ++k) columns[k * S + i] = x[i * 3 + k];
    columns[3 * S + i] = euclid && include[i] ? s.euclid_scale : 0.0f;
  }
  const Columns c{columns, columns + 3 * S, rest, P, S, rest_stride(P)};
  double* energies = scratch.energies.data();
  run_chunks(pool, chunks, [&](int64_t k) { run(c, s, k, chunks, buffers + k * per_chunk, energies + 2 * k); });
  for (int t = 0; t < 2; ++t) {
    double total = 0.0;
    for (int64_t k = 0; k < chunks; ++k) total += energies[2 * k + t];
    energy[t] = float(t == 0 ? total * s.common : total);
  }
  add_chunks(pool, buffers, chunks, per_chunk, S, P, s.common, grad);
}

// x [..., P, 3], rest [..., P, R] (R = rest_stride(P); unread without euclid), include [..., P],
// scales [..., 2] (euclid, repulsion), energies [...] (whether to sum the energies) -> energy [..., 2]
// (euclid's, repulsion's; NaN where not summed), grad [..., P, 3]; leading axes are independent
// systems (jax.vmap).
ffi::Error PairForcesImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> rest,
                          ffi::Buffer<ffi::PRED> include, ffi::Buffer<ffi::F32> scales,
                          ffi::Buffer<ffi::PRED> energies, ffi::ResultBuffer<ffi::F32> energy,
                          ffi::ResultBuffer<ffi::F32> grad, int32_t weighting, bool euclid, bool repulsion, float softening,
                          float euclid_softening, float distance_floor) {
  const auto dims = x.dimensions();
  if (dims.size() < 2 || dims.back() != 3) return ffi::Error::InvalidArgument("pair_forces: x must be [..., P, 3]");
  if (weighting < 0 || weighting > 2) return ffi::Error::InvalidArgument("pair_forces: weighting must be 0, 1 or 2");
  const int64_t P = dims[dims.size() - 2];
  if (P == 0) {
    std::fill(energy->typed_data(), energy->typed_data() + energy->element_count(), 0.0f);
    return ffi::Error::Success();
  }
  const int64_t B = x.element_count() / (P * 3);
  const int64_t R = rest_stride(P);
  if (euclid && rest.element_count() != B * P * R)
    return ffi::Error::InvalidArgument("pair_forces: rest must be [..., P, P rounded up to 1024]");
  if (energies.element_count() != B) return ffi::Error::InvalidArgument("pair_forces: energies must be [...]");
  for (int64_t b = 0; b < B; ++b) {
    const float* sc = scales.typed_data() + 2 * b;
    const bool* in = include.typed_data() + b * P;
    const bool unit = euclid && weighting == UNIFORM && std::isnormal(sc[0]) && sc[0] > 0 &&
                      std::all_of(in, in + P, [](bool i) { return i; });
    const Chunk run = pick(unit ? UNIT : weighting, euclid, repulsion, energies.typed_data()[b]);
    const Settings s{sc[0], sc[1], softening * softening, euclid_softening * euclid_softening, distance_floor,
                     unit ? sc[0] : 1.0f};
    float* g = grad->typed_data() + b * P * 3;
    float* e = energy->typed_data() + 2 * b;
    if (!euclid && !repulsion) {
      std::fill(g, g + P * 3, 0.0f);
      e[0] = e[1] = 0.0f;
      continue;
    }
    system(pool, run, x.typed_data() + b * P * 3, euclid ? rest.typed_data() + b * P * R : nullptr,
           include.typed_data() + b * P, P, euclid, s, g, e);
  }
  return ffi::Error::Success();
}

// v [P, C] -> columns [C, P]: one coordinate of every particle, contiguous.
void as_columns(const float* v, int64_t P, int64_t C, std::vector<float>& columns) {
  columns.resize(C * P);
  for (int64_t i = 0; i < P; ++i)
    for (int64_t k = 0; k < C; ++k) columns[k * P + i] = v[i * C + k];
}

// Row i of one system's rest lengths (R floats): |v_i - v_j| for j > i, 0 elsewhere.
void rest_row(const float* v, const float* columns, int64_t P, int64_t C, int64_t i, float* row, int64_t R) {
  std::fill(row, row + R, 0.0f);
  for (int64_t k = 0; k < C; ++k) {
    const float vik = v[i * C + k];
    const float* column = columns + k * P;
    for (int64_t j = i + 1; j < P; ++j) row[j] += (vik - column[j]) * (vik - column[j]);
  }
  for (int64_t j = i + 1; j < P; ++j) row[j] = std::sqrt(row[j]);
}

// vectors [..., P, C] -> rest [..., P, R]: |v_i - v_j| above the diagonal (the pairs PairForces reads),
// 0 elsewhere. Made once per simulation, on the thread pool like the forces.
ffi::Error RestLengthsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> vectors, ffi::ResultBuffer<ffi::F32> rest) {
  const auto dims = vectors.dimensions();
  if (dims.size() < 2) return ffi::Error::InvalidArgument("rest_lengths: vectors must be [..., P, C]");
  const int64_t P = dims[dims.size() - 2], C = dims.back();
  if (P == 0) return ffi::Error::Success();
  const int64_t B = vectors.element_count() / (P * C), R = rest_stride(P);
  if (rest->element_count() != B * P * R)
    return ffi::Error::InvalidArgument("rest_lengths: rest must be [..., P, P rounded up to 1024]");
  std::vector<float> columns;
  for (int64_t b = 0; b < B; ++b) {
    const float* v = vectors.typed_data() + b * P * C;
    float* out = rest->typed_data() + b * P * R;
    as_columns(v, P, C, columns);
    const int64_t chunks = chunk_count(pool, P);
    run_chunks(pool, chunks, [&](int64_t chunk) {
      chunk_rows(chunk, chunks, P, [&](int64_t start, int64_t end) {
        for (int64_t i = start; i < end; ++i) rest_row(v, columns.data(), P, C, i, out + i * R, R);
      });
    });
  }
  return ffi::Error::Success();
}


// ---------------------------------------------------------------------------------------------
// Sampled pairs (layout/engine/sampled.py: the definition, in JAX; tests/test_scale.py checks this
// against it). Two groups of pairs, each row's gradient summed by the row itself (no two threads write
// the same particle, and the sums run in a fixed order: same input, same bits):
// - the neighbour pairs, as a symmetric list in compressed rows (each pair listed from both ends with
//   its weight: row i adds its side of the gradient, the energy counts each listing half);
// - the shifted pairs: with the particles in the sampling's order, row a meets a + s and a - s for
//   every shift s (both ends' side of the pair (a - s, a) and (a, a + s): the pair a, a + s is then met
//   from both of its ends), sixteen rows at a time from arrays stored twice over, so that a + s and
//   a - s + P are plain contiguous loads; the neighbour pairs a shift meets are subtracted afterwards.

inline V vsqrt(V x) {
#if defined(__AVX512F__)
  return (V)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__)
  union { V v; __m256 h[2]; } in{x}, out;
  out.h[0] = _mm256_sqrt_ps(in.h[0]);
  out.h[1] = _mm256_sqrt_ps(in.h[1]);
  return out.v;
#else
  for (int k = 0; k < L; ++k) x[k] = std::sqrt(x[k]);
  return x;
#endif
}

inline float vsqrt(float x) { return std::sqrt(x); }
inline float twice_rsqrt(float x) { return 2.0f / std::sqrt(x); }
inline float splat_as(float, float a) { return a; }
inline V splat_as(V, float a) { return splat(a); }

struct SampledSettings {
  float euclid_scale, repulsion_scale, softening2, euclid_softening2, distance_floor;
};

// One pair group's energies at squared 3D distances d2, rest lengths r, both (1 where both ends take
// part in euclid) and weight w: adds w x (spring energy) to springs and w x (charge) to charges, and
// returns w x d(scaled energy) / d(d2). T: float or V (sixteen pairs at once).
template <int W, bool EU, bool REP, typename T>
inline T pair_slope(T d2, T r, T both, T w, const SampledSettings& s, T& springs, T& charges) {
  T slope = splat_as(d2, 0.0f);
  if (EU) {
    const T s2 = d2 + s.euclid_softening2;
    const T inv_d = 0.5f * twice_rsqrt(s2);  // 1 / d
    T wt = both * w;
    if (W == INVERSE) wt = wt / (r + s.distance_floor);
    if (W == INVERSE_SQUARE) wt = wt / ((r + s.distance_floor) * (r + s.distance_floor));
    const T gap = s2 * inv_d - r;  // d - r
    springs += wt * gap * gap;
    slope = s.euclid_scale * wt * gap * inv_d;  // d/d(d2) of w (d - r)^2 = w (d - r) / d
  }
  if (REP) {
    const T q = 0.5f * twice_rsqrt(d2 + s.softening2);  // 1 / d'
    charges += w * q;
    slope -= (0.5f * s.repulsion_scale) * w * (q * q * q);
  }
  return slope;
}

// Positions, vectors and euclid membership in the sampling's order, each stored twice over and padded
// by L: x [3, S2], v [C, S2], in [S2], S2 >= 2 P + L.
struct Doubled {
  const float *x, *v, *in;
  int64_t P, C, S2;
};

// Rows a0 .. a1 - 1 (a1 - a0 <= L lanes, the rest masked) against their partners at +s and -s for
// every shift: their gradient (times 2 / far weight's) into g [3, P] (place order), their summed
// energies into springs / charges.
template <int W, bool EU, bool REP>
void shifted_rows(const Doubled& d, const int32_t* shifts, int64_t m, int64_t a0, int64_t a1,
                  const SampledSettings& s, float* g, V& springs, V& charges) {
  const V mask = lanes_between(a0, a0 - 1, a1);
  const V x0 = load(d.x + a0), x1 = load(d.x + d.S2 + a0), x2 = load(d.x + 2 * d.S2 + a0);
  const V in = EU ? load(d.in + a0) : splat(0.0f);
  V g0{}, g1{}, g2{};
  for (int64_t t = 0; t < m; ++t) {
    for (int side = 0; side < 2; ++side) {
      const int64_t b = a0 + (side == 0 ? shifts[t] : d.P - shifts[t]);
      const V d0 = x0 - load(d.x + b), d1 = x1 - load(d.x + d.S2 + b), d2 = x2 - load(d.x + 2 * d.S2 + b);
      V r2{};
      if (EU)
        for (int64_t c = 0; c < d.C; ++c) {
          const V e = load(d.v + c * d.S2 + a0) - load(d.v + c * d.S2 + b);
          r2 += e * e;
        }
      const V both = EU ? in * load(d.in + b) : splat(0.0f);
      const V slope = pair_slope<W, EU, REP>(d0 * d0 + d1 * d1 + d2 * d2, EU ? vsqrt(r2) : r2, both, mask, s,
                                             springs, charges);
      g0 += slope * d0;
      g1 += slope * d1;
      g2 += slope * d2;
    }
  }
  const int64_t n = a1 - a0;
  for (int64_t k = 0; k < n; ++k) {
    g[a0 + k] = g0[k];
    g[d.P + a0 + k] = g1[k];
    g[2 * d.P + a0 + k] = g2[k];
  }
}

// The neighbour list's rows i0 .. i1 - 1 (original order, x [P, 3]): their gradient into grad [P, 3],
// their summed energies (each listing counting half) into springs / charges.
template <int W, bool EU, bool REP>
void neighbour_rows(const float* x, const int32_t* start, const int32_t* col, const float* weight,
                    const float* rest, const float* both, int64_t i0, int64_t i1, const SampledSettings& s,
                    float* grad, double& springs, double& charges) {
  for (int64_t i = i0; i < i1; ++i) {
    float sp = 0.0f, ch = 0.0f, g[3] = {0.0f, 0.0f, 0.0f};
    for (int32_t e = start[i]; e < start[i + 1]; ++e) {
      const float* xj = x + 3 * int64_t(col[e]);
      const float d[3] = {x[3 * i] - xj[0], x[3 * i + 1] - xj[1], x[3 * i + 2] - xj[2]};
      const float slope = pair_slope<W, EU, REP>(d[0] * d[0] + d[1] * d[1] + d[2] * d[2], EU ? rest[e] : 0.0f,
                                                 EU ? both[e] : 0.0f, weight[e], s, sp, ch);
      for (int k = 0; k < 3; ++k) g[k] += 2.0f * slope * d[k];
    }
    for (int k = 0; k < 3; ++k) grad[3 * i + k] = g[k];
    springs += 0.5 * sp;
    charges += 0.5 * ch;
  }
}

// The energies and gradient of one met neighbour pair (a, a + s), to take away from the shifted pairs'.
template <int W, bool EU, bool REP>
void remove_met(const Doubled& d, int64_t a, int64_t shift, float far, const SampledSettings& s, float* g,
                double& springs, double& charges) {
  const int64_t b = a + shift;
  float diff[3], r2 = 0.0f;
  for (int k = 0; k < 3; ++k) diff[k] = d.x[k * d.S2 + a] - d.x[k * d.S2 + b];
  if (EU)
    for (int64_t c = 0; c < d.C; ++c) {
      const float e = d.v[c * d.S2 + a] - d.v[c * d.S2 + b];
      r2 += e * e;
    }
  float sp = 0.0f, ch = 0.0f;
  const float slope = pair_slope<W, EU, REP>(diff[0] * diff[0] + diff[1] * diff[1] + diff[2] * diff[2],
                                             std::sqrt(r2), EU ? d.in[a] * d.in[b] : 0.0f, 1.0f, s, sp, ch);
  const int64_t bp = b % d.P;
  for (int k = 0; k < 3; ++k) {
    g[k * d.P + a] -= 2.0f * far * slope * diff[k];
    g[k * d.P + bp] += 2.0f * far * slope * diff[k];
  }
  springs -= far * sp;
  charges -= far * ch;
}

struct SampledInputs {
  const float* x;  // [P, 3]
  const int32_t* order;  // [P]
  const float *vectors, *include;  // [C, S2], [S2]: in place order, twice over
  const int32_t* shifts;  // [m]
  const int32_t* met_place;  // [m, H]
  const bool* met;  // [m, H]
  const int32_t *start, *col;  // [P + 1], [E]
  const float *weight, *rest, *both;  // [E]
  int64_t P, C, S2, m, H;
};

template <int W, bool EU, bool REP>
void sampled_system(ffi::ThreadPool& pool, const SampledInputs& in, const SampledSettings& s, float* grad,
                    float* energy) {
  const int64_t P = in.P;
  std::vector<float> doubled_x(3 * in.S2, 0.0f), place_grad(3 * P);
  for (int64_t a = 0; a < P; ++a)
    for (int k = 0; k < 3; ++k)
      doubled_x[k * in.S2 + a] = doubled_x[k * in.S2 + P + a] = in.x[3 * int64_t(in.order[a]) + k];
  const Doubled d{doubled_x.data(), in.vectors, in.include, P, in.C, in.S2};
  const float far = float(P - 1) / float(2 * in.m);  // each shifted pair's weight in the estimate
  const int64_t blocks = (P + L - 1) / L;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(4 * std::max<int64_t>(1, pool.num_threads()), blocks));
  std::vector<double> sums(4 * chunks, 0.0);
  run_chunks(pool, chunks, [&](int64_t c) {
    V springs{}, charges{};
    for (int64_t blk = blocks * c / chunks; blk < blocks * (c + 1) / chunks; ++blk)
      shifted_rows<W, EU, REP>(d, in.shifts, in.m, L * blk, std::min(L * (blk + 1), P), s, place_grad.data(),
                               springs, charges);
    sums[4 * c] = 0.5 * far * sum(springs);
    sums[4 * c + 1] = 0.5 * far * sum(charges);
    neighbour_rows<W, EU, REP>(in.x, in.start, in.col, in.weight, in.rest, in.both, P * c / chunks,
                               P * (c + 1) / chunks, s, grad, sums[4 * c + 2], sums[4 * c + 3]);
  });
  for (int64_t k = 0; k < 3 * P; ++k) place_grad[k] *= 2.0f * far;
  double springs = 0.0, charges = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    springs += sums[4 * c] + sums[4 * c + 2];
    charges += sums[4 * c + 1] + sums[4 * c + 3];
  }
  std::vector<int32_t> places;
  for (int64_t t = 0; t < in.m; ++t) {  // the neighbour pairs the shifts met, each once per shift
    places.clear();
    for (int64_t h = 0; h < in.H; ++h)
      if (in.met[t * in.H + h]) places.push_back(in.met_place[t * in.H + h]);
    std::sort(places.begin(), places.end());
    places.erase(std::unique(places.begin(), places.end()), places.end());
    for (int32_t a : places) remove_met<W, EU, REP>(d, a, in.shifts[t], far, s, place_grad.data(), springs, charges);
  }
  for (int64_t a = 0; a < P; ++a)
    for (int k = 0; k < 3; ++k) grad[3 * int64_t(in.order[a]) + k] += place_grad[k * P + a];
  energy[0] = float(s.euclid_scale * springs);
  energy[1] = float(s.repulsion_scale * charges);
}

typedef void (*SampledSystem)(ffi::ThreadPool&, const SampledInputs&, const SampledSettings&, float*, float*);

template <int W>
SampledSystem pick_sampled(bool euclid, bool repulsion) {
  if (euclid) return repulsion ? sampled_system<W, true, true> : sampled_system<W, true, false>;
  return repulsion ? sampled_system<W, false, true> : sampled_system<W, false, false>;
}

// x [P, 3], order [P], vectors [C, S2] and include [S2] (in the sampling's order, twice over, S2 >= 2 P +
// 16), shifts [m], met_place and met [m, H], the neighbour list in compressed rows: start [P + 1], col,
// weight, rest and both [E]; scales [2] -> energy [2] (euclid's, repulsion's estimates), grad [P, 3].
ffi::Error SampledForcesImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> order,
                             ffi::Buffer<ffi::F32> vectors, ffi::Buffer<ffi::F32> include,
                             ffi::Buffer<ffi::S32> shifts, ffi::Buffer<ffi::S32> met_place, ffi::Buffer<ffi::PRED> met,
                             ffi::Buffer<ffi::S32> start, ffi::Buffer<ffi::S32> col, ffi::Buffer<ffi::F32> weight,
                             ffi::Buffer<ffi::F32> rest, ffi::Buffer<ffi::F32> both, ffi::Buffer<ffi::F32> scales,
                             ffi::ResultBuffer<ffi::F32> energy, ffi::ResultBuffer<ffi::F32> grad, int32_t weighting,
                             bool euclid, bool repulsion, float softening, float euclid_softening,
                             float distance_floor) {
  const auto xd = x.dimensions(), vd = vectors.dimensions();
  if (xd.size() != 2 || xd[1] != 3) return ffi::Error::InvalidArgument("sampled_forces: x must be [P, 3]");
  if (weighting < 0 || weighting > 2) return ffi::Error::InvalidArgument("sampled_forces: weighting must be 0, 1 or 2");
  const int64_t P = xd[0];
  if (vd.size() != 2 || vd[1] < 2 * P + L || include.element_count() != vd[1] || order.element_count() != P ||
      start.element_count() != P + 1 || met.element_count() != met_place.element_count() ||
      met_place.element_count() % std::max<int64_t>(1, shifts.element_count()) != 0)
    return ffi::Error::InvalidArgument("sampled_forces: inconsistent shapes");
  float* g = grad->typed_data();
  std::fill(g, g + 3 * P, 0.0f);
  const int64_t m = shifts.element_count();
  if (P < 2 || m == 0 || (!euclid && !repulsion)) {
    energy->typed_data()[0] = energy->typed_data()[1] = 0.0f;
    return ffi::Error::Success();
  }
  const float* sc = scales.typed_data();
  const SampledSettings s{sc[0], sc[1], softening * softening, euclid_softening * euclid_softening, distance_floor};
  const SampledInputs in{x.typed_data(), order.typed_data(), vectors.typed_data(), include.typed_data(),
                         shifts.typed_data(), met_place.typed_data(), met.typed_data(), start.typed_data(),
                         col.typed_data(), weight.typed_data(), rest.typed_data(), both.typed_data(),
                         P, int64_t(vd[0]), int64_t(vd[1]), m, int64_t(met_place.element_count()) / m};
  const SampledSystem run = weighting == INVERSE ? pick_sampled<INVERSE>(euclid, repulsion)
                            : weighting == INVERSE_SQUARE ? pick_sampled<INVERSE_SQUARE>(euclid, repulsion)
                                                          : pick_sampled<UNIFORM>(euclid, repulsion);
  run(pool, in, s, g, energy->typed_data());
  return ffi::Error::Success();
}

}  // namespace

// The same rest lengths for one system, vectors [P, C] -> rest [P, R], on the calling thread and without
// XLA (called with ctypes): a new process would spend longer compiling a program for them than computing
// them, for up to a few thousand particles.
extern "C" void RestLengthsHere(const float* vectors, int64_t P, int64_t C, float* rest) {
  std::vector<float> columns;
  as_columns(vectors, P, C, columns);
  const int64_t R = rest_stride(P);
  for (int64_t i = 0; i < P; ++i) rest_row(vectors, columns.data(), P, C, i, rest + i * R, R);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RestLengths, RestLengthsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(PairForces, PairForcesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("weighting")
                                  .Attr<bool>("euclid")
                                  .Attr<bool>("repulsion")
                                  .Attr<float>("softening")
                                  .Attr<float>("euclid_softening")
                                  .Attr<float>("distance_floor"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SampledForces, SampledForcesImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
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
