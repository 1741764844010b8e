// A counting CPU allocator for torch: live and peak tensor bytes, like CUDA's allocator stats.
//
// torch's CPU allocator keeps no byte counters (its profiler hooks only see allocations made by
// a thread that has the profiler's thread-local state, so frees on gloo's worker threads are
// missed). This allocator wraps c10::alloc_cpu / free_cpu for every thread: each block carries
// its size in a header one alignment unit long, so the data stays aligned as alloc_cpu aligns
// it. Installed with a priority above the default allocator, before the benchmark allocates.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/alignment.h>
#include <c10/core/impl/alloc_cpu.h>

#include <atomic>
#include <cstdint>

namespace {

constexpr size_t kHeader = c10::gAlignment;
std::atomic<int64_t> live_bytes{0};
std::atomic<int64_t> peak_bytes{0};

void record(int64_t delta) {
  const int64_t now = live_bytes.fetch_add(delta) + delta;
  int64_t seen = peak_bytes.load();
  while (now > seen && !peak_bytes.compare_exchange_weak(seen, now)) {
  }
}

void counted_free(void* data) {
  if (data == nullptr) return;
  char* base = static_cast<char*>(data) - kHeader;
  record(-static_cast<int64_t>(*reinterpret_cast<size_t*>(base)));
  c10::free_cpu(base);
}

struct CountingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    char* base = static_cast<char*>(c10::alloc_cpu(n + kHeader));
    *reinterpret_cast<size_t*>(base) = n;
    record(static_cast<int64_t>(n));
    void* data = base + kHeader;
    return {data, data, &counted_free, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &counted_free; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CountingAllocator allocator;

}  // namespace

extern "C" {
void counting_allocator_install() { c10::SetCPUAllocator(&allocator, /*priority=*/100); }
int64_t counting_allocator_live_bytes() { return live_bytes.load(); }
int64_t counting_allocator_peak_bytes() { return peak_bytes.load(); }
void counting_allocator_reset_peak() { peak_bytes.store(live_bytes.load()); }
}
