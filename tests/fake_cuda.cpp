// A CUDA device guard and CUDA hooks that do nothing, so that autograd runs over FakeTensorMode's
// "cuda" tensors in a CPU-only torch build (the engine asks the device guard for streams, and the
// CUDA hooks whether an accelerator exists). Loaded by tests/fake_gpu_step.py before torch is
// imported: torch reads the CUDA hooks once, at import. torch.cuda.is_available() stays False.
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

namespace at {
struct FakeCUDAHooks : public CUDAHooksInterface {
  FakeCUDAHooks(CUDAHooksArgs) {}
  bool hasCUDA() const override { return true; }
  bool isAvailable() const override { return true; }
  bool isBuilt() const override { return true; }
  bool hasPrimaryContext(DeviceIndex) const override { return true; }
  DeviceIndex deviceCount() const override { return 1; }
  DeviceIndex getCurrentDevice() const override { return 0; }
  void setCurrentDevice(DeviceIndex) const override {}
  DeviceIndex exchangeDevice(DeviceIndex) const override { return 0; }
  DeviceIndex maybeExchangeDevice(DeviceIndex) const override { return 0; }
};
}  // namespace at

extern "C" int register_fake_cuda() {
  int done = 0;
  if (!c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)) {
    static c10::impl::FakeGuardImpl<c10::DeviceType::CUDA> guard;
    c10::impl::registerDeviceGuard(c10::DeviceType::CUDA, &guard);
    done += 1;
  }
  if (!at::CUDAHooksRegistry()->Has("CUDAHooks")) {
    at::CUDAHooksRegistry()->Register(
        "CUDAHooks", [](at::CUDAHooksArgs args) -> std::unique_ptr<at::CUDAHooksInterface> {
          return std::make_unique<at::FakeCUDAHooks>(args);
        });
    done += 2;
  }
  return done;
}
