// One-pass Adam update for XLA:CPU, called through the XLA FFI (gmvc/fused_adam.py).
//
// For each element: m = (1 - b1) g + b1 m;  v = (1 - b2) g^2 + b2 v;
//                   p = p + (-lr) * (m / c1) / (sqrt(v / c2) + eps),   c1 = 1 - b1^t, c2 = 1 - b2^t,
// the arithmetic of optax.adam followed by optax.apply_updates, reading p, g, m and v once and
// writing p, m and v once (in place: the call aliases them to its results). XLA:CPU runs the
// same update as three loop fusions, one per output, ten passes over the weights.
//
// `scalars` holds k rows of (lr, b1, b2, 1 - b1, 1 - b2, c1, c2, eps), 1 - b1 and 1 - b2 rounded
// from double precision as optax's are: the buffers are k equal slabs, slab j
// updated with row j (k > 1 under jax.vmap, one row per restart). The work is cut into chunks
// shared by the calling thread and the XLA intra-op thread pool. The operand `after` is read by
// nothing: it orders the call after the weight's last reader in the backward pass (gmvc/update_order.py).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 1 << 15;   // elements per task: 128 KiB of each array
constexpr int64_t kScalars = 8;       // per row of `scalars`

void Update(int64_t n, const float* __restrict__ g, const float* __restrict__ p_in,
            const float* __restrict__ m_in, const float* __restrict__ v_in, float* __restrict__ p,
            float* __restrict__ m, float* __restrict__ v, const float* s) {
  const float lr = s[0], b1 = s[1], b2 = s[2], a1 = s[3], a2 = s[4], c1 = s[5], c2 = s[6], eps = s[7];
  const float neg_lr = -lr;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = a1 * gi + b1 * m_in[i];
    const float vi = a2 * (gi * gi) + b2 * v_in[i];
    m[i] = mi;
    v[i] = vi;
    p[i] = p_in[i] + neg_lr * ((mi / c1) / (std::sqrt(vi / c2) + eps));
  }
}

struct Work {
  const float *g, *p_in, *m_in, *v_in, *scalars;
  float *p, *m, *v;
  int64_t slab, chunks_per_slab, chunks;
  std::atomic<int64_t> next{0}, done{0};

  void Run(int64_t c) {
    const int64_t j = c / chunks_per_slab, lo = j * slab + (c % chunks_per_slab) * kChunk;
    const int64_t hi = std::min(lo + kChunk, (j + 1) * slab);
    Update(hi - lo, g + lo, p_in + lo, m_in + lo, v_in + lo, p + lo, m + lo, v + lo, scalars + kScalars * j);
  }
  void Drain() {
    for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
      Run(c);
      done.fetch_add(1);
    }
  }
};

}  // namespace

static ffi::Error AdamImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> p,
                           ffi::Buffer<ffi::F32> m, ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> scalars,
                           ffi::AnyBuffer /*after*/, ffi::ResultBuffer<ffi::F32> p_out,
                           ffi::ResultBuffer<ffi::F32> m_out,
                           ffi::ResultBuffer<ffi::F32> v_out) {
  const int64_t n = static_cast<int64_t>(g.element_count());
  const int64_t k = static_cast<int64_t>(scalars.element_count()) / kScalars;
  if (k < 1 || kScalars * k != static_cast<int64_t>(scalars.element_count()) || n % k != 0 ||
      p.element_count() != g.element_count() || m.element_count() != g.element_count() ||
      v.element_count() != g.element_count()) {
    return ffi::Error::InvalidArgument("gmvc_adam: scalars must be k rows of 8 for k equal slabs of p, g, m, v");
  }
  if (n == 0) return ffi::Error::Success();
  auto work = std::make_shared<Work>();
  work->g = g.typed_data();
  work->p_in = p.typed_data();
  work->m_in = m.typed_data();
  work->v_in = v.typed_data();
  work->scalars = scalars.typed_data();
  work->p = p_out->typed_data();
  work->m = m_out->typed_data();
  work->v = v_out->typed_data();
  work->slab = n / k;
  work->chunks_per_slab = (work->slab + kChunk - 1) / kChunk;
  work->chunks = k * work->chunks_per_slab;
  // Helpers that start after the caller has taken every chunk find none left and return; the
  // caller waits only for chunks a helper has taken, which that helper is running.
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, work->chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work]() { work->Drain(); });
  work->Drain();
  while (work->done.load() < work->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(GmvcAdam, AdamImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // g
                                  .Arg<ffi::Buffer<ffi::F32>>()   // p
                                  .Arg<ffi::Buffer<ffi::F32>>()   // m
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v
                                  .Arg<ffi::Buffer<ffi::F32>>()   // scalars [k, 8]
                                  .Arg<ffi::AnyBuffer>()          // after: read by nothing (ordering only)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // p
                                  .Ret<ffi::Buffer<ffi::F32>>()   // m
                                  .Ret<ffi::Buffer<ffi::F32>>());  // v
