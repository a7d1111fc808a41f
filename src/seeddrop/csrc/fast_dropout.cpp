// The host path of seeddrop.dropout on CUDA tensors, in C++.
//
// Python plans a call (ops/dropout.py: tile shape, grid, the compiled Triton kernel) once
// per layout and hands back a *recipe*: the kernel's CUfunction, grid, block, shared memory
// and, for each kernel parameter, where its value comes from (x, out, the seed, p's
// constants, or a fixed integer). Later calls with the same layout are launched from here
// with cuLaunchKernel, without Python; a new layout calls the Python planner, which also
// runs that call. The mask stream and every planning decision stay in Python and Triton.
//
// Three entries use the same launcher:
//   dropout_forward (pybind): the eager call of seeddrop.dropout, with a C++ autograd node
//     whose backward regenerates the mask from the saved seed;
//   seeddrop::dropout's CUDA and AutogradCUDA kernels: what torch.compile'd graphs call.
// No CUDA header is needed: the stream comes from c10, cuLaunchKernel from libcuda.so.1.
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/extension.h>
#include <torch/library.h>

namespace py = pybind11;

namespace {

// ---------------------------------------------------------------------------
// cuLaunchKernel, resolved from the driver library the process already loaded
// ---------------------------------------------------------------------------
using LaunchKernelFn = int (*)(void* function, unsigned grid_x, unsigned grid_y, unsigned grid_z,
                               unsigned block_x, unsigned block_y, unsigned block_z, unsigned shared_bytes,
                               void* stream, void** params, void** extra);
using ErrorStringFn = int (*)(int error, const char** message);
using CtxGetCurrentFn = int (*)(void** context);
using CtxSetCurrentFn = int (*)(void* context);
using PrimaryCtxRetainFn = int (*)(void** context, int device);

struct Driver {
  LaunchKernelFn launch = nullptr;
  ErrorStringFn error_string = nullptr;
  CtxGetCurrentFn ctx_get_current = nullptr;
  CtxSetCurrentFn ctx_set_current = nullptr;
  PrimaryCtxRetainFn primary_ctx_retain = nullptr;
  Driver() {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (lib == nullptr) lib = dlopen("libcuda.so.1", RTLD_NOW);
    TORCH_CHECK(lib != nullptr, "seeddrop: cannot open libcuda.so.1");
    launch = reinterpret_cast<LaunchKernelFn>(dlsym(lib, "cuLaunchKernel"));
    error_string = reinterpret_cast<ErrorStringFn>(dlsym(lib, "cuGetErrorString"));
    ctx_get_current = reinterpret_cast<CtxGetCurrentFn>(dlsym(lib, "cuCtxGetCurrent"));
    ctx_set_current = reinterpret_cast<CtxSetCurrentFn>(dlsym(lib, "cuCtxSetCurrent"));
    primary_ctx_retain = reinterpret_cast<PrimaryCtxRetainFn>(dlsym(lib, "cuDevicePrimaryCtxRetain"));
    TORCH_CHECK(launch != nullptr && ctx_get_current != nullptr && ctx_set_current != nullptr &&
                    primary_ctx_retain != nullptr,
                "seeddrop: libcuda.so.1 lacks a driver function the launcher needs");
  }
};

const Driver& driver() {
  static Driver instance;
  return instance;
}

void check(int status, const char* what) {
  if (status == 0) return;
  const char* message = "unknown error";
  if (driver().error_string != nullptr) driver().error_string(status, &message);
  TORCH_CHECK(false, "seeddrop: ", what, " failed with CUDA error ", status, ": ", message);
}

// A thread that has made no CUDA runtime call yet (e.g. autograd's device thread when the
// caching allocator serves its tensors) has no current context; the driver API needs one.
// As Triton's launcher does, make the device's primary context current.
void ensure_context(int device) {
  void* context = nullptr;
  check(driver().ctx_get_current(&context), "cuCtxGetCurrent");
  if (context != nullptr) return;
  check(driver().primary_ctx_retain(&context, device), "cuDevicePrimaryCtxRetain");
  check(driver().ctx_set_current(context), "cuCtxSetCurrent");
}

// ---------------------------------------------------------------------------
// recipes
// ---------------------------------------------------------------------------
// Where a kernel parameter's value comes from (ops/dropout.py: _PARAM_SOURCES).
enum Source : int64_t { kConst = 0, kX = 1, kOut = 2, kSeedPtr = 3, kSeedValue = 4, kThreshold = 5,
                        kScaleHi = 6, kScaleLo = 7 };

struct Param {
  int64_t source;
  int64_t bytes;  // 4 or 8
  int64_t value;  // kConst only
};

struct Recipe {
  void* function = nullptr;
  unsigned grid = 0, block = 0, shared_bytes = 0;
  std::vector<Param> params;
};

struct KeyHash {
  size_t operator()(const std::vector<int64_t>& key) const {
    size_t h = 1469598103934665603ull;
    for (int64_t v : key) h = (h ^ static_cast<size_t>(v)) * 1099511628211ull;
    return h;
  }
};

struct PConstants {
  int64_t threshold = 0, scale_hi = 0, scale_lo = 0;
};

constexpr size_t kMaxRecipes = 4096;
constexpr size_t kMaxParams = 64;
std::mutex cache_mutex;
std::unordered_map<std::vector<int64_t>, std::shared_ptr<const Recipe>, KeyHash> recipes;
std::unordered_map<double, PConstants> p_cache;  // a model uses a few p
// Python callables, never destroyed (the interpreter may be gone when statics are):
py::object* planner = nullptr;      // (x, out, seed_tensor, seed_value, p, shared, per_row) -> recipe or None
py::object* p_constants = nullptr;  // p -> (threshold, scale_hi, scale_lo)

int64_t alignment_code(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Everything the Python plan depends on (ops/dropout.py: launch's key, pointer alignment).
std::vector<int64_t> layout_key(const at::Tensor& x, const at::Tensor& out, const at::Tensor* seed,
                                at::IntArrayRef shared, bool per_row) {
  std::vector<int64_t> key;
  const int64_t ndim = x.dim();
  key.reserve(3 * ndim + shared.size() + 10);
  key.push_back(ndim);
  for (int64_t s : x.sizes()) key.push_back(s);
  for (int64_t s : x.strides()) key.push_back(s);
  for (int64_t s : out.strides()) key.push_back(s);
  key.push_back(static_cast<int64_t>(out.scalar_type()));
  key.push_back(x.get_device());
  key.push_back(per_row);
  key.push_back(seed == nullptr ? 2 : alignment_code(seed->data_ptr()));
  key.push_back(alignment_code(x.data_ptr()));
  key.push_back(alignment_code(out.data_ptr()));
  for (int64_t d : shared) key.push_back(d);
  return key;
}

Recipe parse_recipe(const py::handle& obj) {
  auto items = obj.cast<py::tuple>();
  Recipe recipe;
  recipe.function = reinterpret_cast<void*>(items[0].cast<uintptr_t>());
  recipe.grid = items[1].cast<unsigned>();
  recipe.block = items[2].cast<unsigned>();
  recipe.shared_bytes = items[3].cast<unsigned>();
  auto params = items[4].cast<py::tuple>();
  TORCH_CHECK(params.size() <= kMaxParams, "seeddrop: a recipe with ", params.size(), " kernel parameters");
  for (auto param : params) {
    auto fields = param.cast<py::tuple>();
    recipe.params.push_back({fields[0].cast<int64_t>(), fields[1].cast<int64_t>(), fields[2].cast<int64_t>()});
    TORCH_CHECK(recipe.params.back().bytes == 4 || recipe.params.back().bytes == 8,
                "seeddrop: a kernel parameter of ", recipe.params.back().bytes, " bytes");
  }
  return recipe;
}

PConstants constants_for(double p) {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto found = p_cache.find(p);
    if (found != p_cache.end()) return found->second;
  }
  py::gil_scoped_acquire gil;
  auto values = (*p_constants)(p).cast<py::tuple>();
  PConstants c{values[0].cast<int64_t>(), values[1].cast<int64_t>(), values[2].cast<int64_t>()};
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (p_cache.size() >= kMaxRecipes) p_cache.clear();
  p_cache.emplace(p, c);
  return c;
}

void launch_recipe(const Recipe& recipe, const at::Tensor& x, const at::Tensor& out, const at::Tensor* seed,
                   int64_t seed_value, double p) {
  const PConstants c = constants_for(p);
  const size_t n = recipe.params.size();
  std::array<uint64_t, kMaxParams + 2> slots{};  // + Triton's global and profile scratch pointers (null)
  std::array<void*, kMaxParams + 2> pointers;
  for (size_t i = 0; i < n; ++i) {
    const Param& param = recipe.params[i];
    int64_t value = param.value;
    switch (param.source) {
      case kX: value = reinterpret_cast<int64_t>(x.data_ptr()); break;
      case kOut: value = reinterpret_cast<int64_t>(out.data_ptr()); break;
      case kSeedPtr: value = reinterpret_cast<int64_t>(seed->data_ptr()); break;
      case kSeedValue: value = seed_value; break;
      case kThreshold: value = c.threshold; break;
      case kScaleHi: value = c.scale_hi; break;
      case kScaleLo: value = c.scale_lo; break;
      default: break;
    }
    if (param.bytes == 4) {
      const int32_t narrow = static_cast<int32_t>(value);
      std::memcpy(&slots[i], &narrow, 4);
    } else {
      std::memcpy(&slots[i], &value, 8);
    }
    pointers[i] = &slots[i];
  }
  pointers[n] = &slots[n];
  pointers[n + 1] = &slots[n + 1];
  const c10::Device device = x.device();
  void* stream = c10::impl::getDeviceGuardImpl(device.type())->getStream(device).native_handle();
  ensure_context(device.index());
  check(driver().launch(recipe.function, recipe.grid, 1, 1, recipe.block, 1, 1, recipe.shared_bytes, stream,
                        pointers.data(), nullptr),
        "cuLaunchKernel");
}

// out = dropout(x) on the GPU: a cached recipe, or the Python planner (which runs the call).
void run_dropout(const at::Tensor& x, const at::Tensor& out, const std::optional<at::Tensor>& seed_tensor,
                 int64_t seed_value, double p, at::IntArrayRef shared, bool per_row) {
  if (x.numel() == 0) return;
  const at::Tensor* seed = seed_tensor.has_value() && seed_tensor->defined() ? &*seed_tensor : nullptr;
  c10::DeviceGuard device_guard(x.device());
  auto key = layout_key(x, out, seed, shared, per_row);
  {
    std::unique_lock<std::mutex> lock(cache_mutex);
    auto found = recipes.find(key);
    if (found != recipes.end()) {
      const std::shared_ptr<const Recipe> recipe = found->second;
      lock.unlock();
      launch_recipe(*recipe, x, out, seed, seed_value, p);
      return;
    }
  }
  TORCH_CHECK(planner != nullptr, "seeddrop: the C++ host path was called before seeddrop set its planner");
  py::gil_scoped_acquire gil;
  py::object seed_obj = seed == nullptr ? py::none() : py::cast(*seed);
  py::object result = (*planner)(x, out, seed_obj, seed_value, p, py::tuple(py::cast(shared.vec())), per_row);
  if (!result.is_none()) {
    auto recipe = std::make_shared<const Recipe>(parse_recipe(result));
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (recipes.size() >= kMaxRecipes) recipes.clear();  // e.g. a new sequence length every step
    recipes.emplace(std::move(key), std::move(recipe));
  }
}

// The checks Python's seed handling guarantees for its own calls (the op can be called directly).
void check_seed(const at::Tensor& x, const at::Tensor& seed, at::IntArrayRef shared, bool per_row) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.device() == x.device(),
              "seeddrop::dropout: seed_tensor must be int64 on the device of x, but got ", seed.scalar_type(), " on ",
              seed.device());
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) {
    if (std::find(shared.begin(), shared.end(), d) == shared.end()) rows *= x.size(d);
  }
  const bool ok = per_row ? seed.dim() == 1 && seed.numel() == rows : seed.dim() == 0;
  if (!ok) {
    // The shapes are formatted here: streaming seed.sizes() into TORCH_CHECK's message
    // segfaulted in the CUDA build (torch 2.11, H200, 2026-12-01); the cause was not pinned down.
    std::string expected = per_row ? "[" + std::to_string(rows) + "]" : std::string("[]");
    std::string got = "[";
    for (int64_t d = 0; d < seed.dim(); ++d) got += (d ? ", " : "") + std::to_string(seed.size(d));
    got += "]";
    TORCH_CHECK(false, "seeddrop::dropout: seed_tensor must have shape " + expected + " but got " + got);
  }
}

at::Tensor dropout_cuda(const at::Tensor& x, const std::optional<at::Tensor>& seed_tensor, int64_t seed_value,
                        double p, at::IntArrayRef shared, bool per_row) {
  if (seed_tensor.has_value() && seed_tensor->defined()) check_seed(x, *seed_tensor, shared, per_row);
  at::Tensor out = at::empty_like(x);
  run_dropout(x, out, seed_tensor, seed_value, p, shared, per_row);
  return out;
}

// ---------------------------------------------------------------------------
// autograd: saves the seed only; backward is dropout of the gradient with the same seed.
// Both directions call seeddrop::dropout through the dispatcher, so tracers (fake tensors
// under torch.compile) see the op instead of a launch.
// ---------------------------------------------------------------------------
at::Tensor call_op(const at::Tensor& x, const std::optional<at::Tensor>& seed_tensor, c10::SymInt seed_value, double p,
                   c10::SymIntArrayRef shared, bool per_row) {
  static const auto op = c10::Dispatcher::singleton()
      .findSchemaOrThrow("seeddrop::dropout", "")
      .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, c10::SymInt, double,
                        c10::SymIntArrayRef, bool)>();
  return op.call(x, seed_tensor, std::move(seed_value), p, shared, per_row);
}

struct DropoutFunction : public torch::autograd::Function<DropoutFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& seed_tensor, c10::SymInt seed_value, double p,
                            std::vector<c10::SymInt> shared, bool per_row) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({seed_tensor.has_value() ? *seed_tensor : at::Tensor()});
    ctx->saved_data["seed_value"] = seed_value;
    ctx->saved_data["p"] = p;
    ctx->saved_data["shared"] = shared;
    ctx->saved_data["per_row"] = per_row;
    return call_op(x, seed_tensor, seed_value, p, shared, per_row);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor seed = ctx->get_saved_variables()[0];
    std::optional<at::Tensor> seed_tensor;
    if (seed.defined()) seed_tensor = seed;
    const auto shared = ctx->saved_data["shared"].toSymIntVector();
    at::Tensor grad_x = call_op(grads[0], seed_tensor, ctx->saved_data["seed_value"].toSymInt(),
                                     ctx->saved_data["p"].toDouble(), shared, ctx->saved_data["per_row"].toBool());
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor dropout_autograd(const at::Tensor& x, const std::optional<at::Tensor>& seed_tensor, c10::SymInt seed_value,
                            double p, c10::SymIntArrayRef shared, bool per_row) {
  if (at::GradMode::is_enabled() && x.requires_grad()) {
    return DropoutFunction::apply(x, seed_tensor, seed_value, p, shared.vec(), per_row);
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return call_op(x, seed_tensor, seed_value, p, shared, per_row);
}

// ---------------------------------------------------------------------------
// the eager entry
// ---------------------------------------------------------------------------
constexpr int64_t kSeedLow = INT64_MIN;
constexpr int64_t kSeedHigh = INT64_MAX;

// The seed _common.draw_seed draws: Tensor.random_(kSeedLow, kSeedHigh) of a CPU int64
// tensor from torch's default CPU generator, i.e. ATen's uniform_int_from_to_distribution
// (one random64() for a range >= 2**28). tests/test_extension.py checks both draws agree.
int64_t draw_seed() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  const uint64_t range = static_cast<uint64_t>(kSeedHigh) - static_cast<uint64_t>(kSeedLow);
  const uint64_t bits = at::check_generator<at::CPUGeneratorImpl>(generator)->random64();
  return static_cast<int64_t>(bits % range + static_cast<uint64_t>(kSeedLow));
}

// seeddrop.dropout(x, p, seed=...) on a CUDA tensor, after Python validated the call.
// draw: draw the seed here (draw_seed()) instead of using seed_value.
at::Tensor dropout_forward(const at::Tensor& x, const std::optional<at::Tensor>& seed_tensor, int64_t seed_value,
                           bool draw, double p, std::vector<int64_t> shared, bool per_row) {
  if (draw) seed_value = draw_seed();
  if (at::GradMode::is_enabled() && x.requires_grad()) {
    return DropoutFunction::apply(x, seed_tensor, c10::SymInt(seed_value), p, c10::fromIntArrayRefSlow(shared).vec(), per_row);
  }
  return dropout_cuda(x, seed_tensor, seed_value, p, shared, per_row);
}

void set_planner(py::object plan, py::object constants) {
  planner = new py::object(std::move(plan));
  p_constants = new py::object(std::move(constants));
}

size_t cached_recipes() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return recipes.size();
}

void clear_recipes() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  recipes.clear();
  p_cache.clear();
}

}  // namespace

TORCH_LIBRARY_IMPL(seeddrop, CUDA, m) { m.impl("dropout", dropout_cuda); }
TORCH_LIBRARY_IMPL(seeddrop, AutogradCUDA, m) { m.impl("dropout", dropout_autograd); }
#ifdef SEEDDROP_CPU_DISPATCH_FOR_TESTS  // CPU tensors through the same code (the planner runs every call)
TORCH_LIBRARY_IMPL(seeddrop, CPU, m) { m.impl("dropout", dropout_cuda); }
TORCH_LIBRARY_IMPL(seeddrop, AutogradCPU, m) { m.impl("dropout", dropout_autograd); }
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout_forward", &dropout_forward);
  m.def("set_planner", &set_planner);
  m.def("cached_recipes", &cached_recipes);
  m.def("clear_recipes", &clear_recipes);
}
