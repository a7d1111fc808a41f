// The host path of seeddrop.dropout and seeddrop.dropout_add on CUDA tensors, in C++.
//
// Python plans a call (ops/dropout.py, ops/dropout_add.py: tile shape, grid, the compiled
// Triton kernel) once per layout and hands back a *recipe*: the kernel's CUfunction, grid,
// block, shared memory and, for each kernel parameter, where its value comes from (one of
// the call's tensors, the seed, p's constants, or a fixed integer). Later calls with the
// same layout are launched from here with cuLaunchKernel, without Python; a new layout
// calls the Python planner, which also runs that call. The mask stream and every planning
// decision stay in Python and Triton.
//
// Entries that use the same launcher:
//   dropout_forward (pybind): the eager call of seeddrop.dropout, with a C++ autograd node
//     whose backward regenerates the mask from the saved seed;
//   the CUDA and AutogradCUDA kernels of seeddrop::dropout, dropout_add and
//     dropout_add_backward: what torch.compile'd graphs call;
//   dropout_add_forward (pybind): the eager call of seeddrop.dropout_add for contiguous
//     operands of one shape, with a C++ autograd node (backward: one kernel for grad_x and
//     the bias-gradient partial sums, then their column sum).
// No CUDA header is needed: the stream comes from c10, cuLaunchKernel from libcuda.so.1.
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
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
// Where a kernel parameter's value comes from (ops/dropout.py: _PARAM_SOURCES,
// ops/dropout_add.py: _FWD_PARAM_SOURCES / _BWD_PARAM_SOURCES). kTensor0..4 are the call's
// tensors in the order each entry lists them (LaunchArgs::tensors).
enum Source : int64_t { kConst = 0, kTensor0 = 1, kTensor1 = 2, kSeedPtr = 3, kSeedValue = 4, kThreshold = 5,
                        kScaleHi = 6, kScaleLo = 7, kTensor2 = 8, kTensor3 = 9, kTensor4 = 10 };

struct Param {
  int64_t source;
  int64_t bytes;  // 4 or 8
  int64_t value;  // kConst only
};

struct Recipe {
  void* function = nullptr;
  unsigned grid = 0, block = 0, shared_bytes = 0;
  std::vector<Param> params;
  // dropout_add's backward: the bias-gradient workspace each call allocates (none when empty)
  std::vector<int64_t> workspace_sizes;
  at::ScalarType workspace_dtype = at::kFloat;
};

// The values of one launch: tensors[i] fills kTensor<i> (nullptr where absent).
struct LaunchArgs {
  std::array<const at::Tensor*, 5> tensors{};
  const at::Tensor* seed = nullptr;
  int64_t seed_value = 0;
  double p = 0.0;
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

// The first entry of every key: which planner made the recipe.
enum Kind : int64_t { kDropout = 1, kDropoutAddForward = 2, kDropoutAddBackward = 3 };

constexpr size_t kMaxRecipes = 4096;
constexpr size_t kMaxParams = 64;
std::mutex cache_mutex;
std::unordered_map<std::vector<int64_t>, std::shared_ptr<const Recipe>, KeyHash> recipes;
std::unordered_map<double, PConstants> p_cache;  // a model uses a few p
// Python callables, heap-allocated so that no static destructor runs them at exit (the
// interpreter may be gone by then); set_planners replaces them:
struct Planners {
  py::object dropout;               // (x, out, seed_tensor, seed_value, p, shared, per_row) -> recipe or None
  py::object dropout_add_forward;   // (x, residual, bias, out, seed_tensor, seed_value, p, masked, act) -> recipe or None
  py::object dropout_add_backward;  // (grad, x, bias, grad_x, seed_tensor, seed_value, p, masked, act, reduce_bias)
                                    //   -> (recipe or None, workspace or None)
  py::object p_constants;           // p -> (threshold, scale_hi, scale_lo)
  // the Python kernels of seeddrop::dropout_add / dropout_add_backward (op arguments), for the
  // calls their C++ kernels do not take, and the op's autograd (calls that need a gradient)
  py::object dropout_add_op;
  py::object dropout_add_backward_op;
  py::object dropout_add_autograd;
  py::object dropout_add_backward_autograd;
};
Planners* planners = nullptr;

const Planners& get_planners() {
  TORCH_CHECK(planners != nullptr, "seeddrop: the C++ host path was called before seeddrop set its planners");
  return *planners;
}

int64_t alignment_code(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// A tensor's part of a key: everything a plan or Triton's specialization can depend on.
void append_tensor(std::vector<int64_t>& key, const at::Tensor* t) {
  if (t == nullptr || !t->defined()) {
    key.push_back(-1);
    return;
  }
  key.push_back(t->dim());
  for (int64_t s : t->sizes()) key.push_back(s);
  for (int64_t s : t->strides()) key.push_back(s);
  key.push_back(static_cast<int64_t>(t->scalar_type()));
  key.push_back(alignment_code(t->data_ptr()));
}

// `head` (the kind and the call's flags), then each tensor's part.
std::vector<int64_t> tensors_key(std::initializer_list<int64_t> head,
                                 std::initializer_list<const at::Tensor*> tensors) {
  std::vector<int64_t> key(head);
  for (const at::Tensor* t : tensors) append_tensor(key, t);
  return key;
}

// Everything the Python plan depends on (ops/dropout.py: launch's key, pointer alignment).
std::vector<int64_t> layout_key(const at::Tensor& x, const at::Tensor& out, const at::Tensor* seed,
                                at::IntArrayRef shared, bool per_row) {
  std::vector<int64_t> key;
  const int64_t ndim = x.dim();
  key.reserve(3 * ndim + shared.size() + 11);
  key.push_back(kDropout);
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

std::shared_ptr<const Recipe> find_recipe(const std::vector<int64_t>& key) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto found = recipes.find(key);
  return found == recipes.end() ? nullptr : found->second;
}

void store_recipe(std::vector<int64_t> key, Recipe recipe) {
  auto stored = std::make_shared<const Recipe>(std::move(recipe));
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (recipes.size() >= kMaxRecipes) recipes.clear();  // e.g. a new sequence length every step
  recipes.emplace(std::move(key), std::move(stored));
}

// nullptr for an absent or undefined tensor (saved variables come back undefined).
const at::Tensor* present(const at::Tensor* t) { return t != nullptr && t->defined() ? t : nullptr; }

py::object optional_tensor(const at::Tensor* t) { return t == nullptr || !t->defined() ? py::none() : py::cast(*t); }

PConstants constants_for(double p) {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto found = p_cache.find(p);
    if (found != p_cache.end()) return found->second;
  }
  py::gil_scoped_acquire gil;
  auto values = get_planners().p_constants(p).cast<py::tuple>();
  PConstants c{values[0].cast<int64_t>(), values[1].cast<int64_t>(), values[2].cast<int64_t>()};
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (p_cache.size() >= kMaxRecipes) p_cache.clear();
  p_cache.emplace(p, c);
  return c;
}

bool is_pointer_source(int64_t source) {
  return source == kTensor0 || source == kTensor1 || source == kSeedPtr || (source >= kTensor2 && source <= kTensor4);
}

void launch_recipe(const Recipe& recipe, const LaunchArgs& args, c10::Device device) {
  const PConstants c = constants_for(args.p);
  const size_t n = recipe.params.size();
  std::array<uint64_t, kMaxParams + 2> slots{};  // + Triton's global and profile scratch pointers (null)
  std::array<void*, kMaxParams + 2> pointers;
  for (size_t i = 0; i < n; ++i) {
    const Param& param = recipe.params[i];
    int64_t value = param.value;
    const at::Tensor* tensor = nullptr;
    switch (param.source) {
      case kTensor0: tensor = args.tensors[0]; break;
      case kTensor1: tensor = args.tensors[1]; break;
      case kTensor2: tensor = args.tensors[2]; break;
      case kTensor3: tensor = args.tensors[3]; break;
      case kTensor4: tensor = args.tensors[4]; break;
      case kSeedPtr: tensor = args.seed; break;
      case kSeedValue: value = args.seed_value; break;
      case kThreshold: value = c.threshold; break;
      case kScaleHi: value = c.scale_hi; break;
      case kScaleLo: value = c.scale_lo; break;
      default: break;
    }
    if (is_pointer_source(param.source)) {
      // The key makes a recipe's pointer parameters present exactly when its tensors are.
      TORCH_CHECK(tensor != nullptr && tensor->defined(), "seeddrop: a recipe expects a tensor the call lacks");
      value = reinterpret_cast<int64_t>(tensor->data_ptr());
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
  if (auto recipe = find_recipe(key)) {
    launch_recipe(*recipe, LaunchArgs{{&x, &out, nullptr, nullptr, nullptr}, seed, seed_value, p}, x.device());
    return;
  }
  py::gil_scoped_acquire gil;  // before the planners: set_planners replaces them under the GIL
  const Planners& plan = get_planners();
  py::object result = plan.dropout(x, out, optional_tensor(seed), seed_value, p, py::tuple(py::cast(shared.vec())),
                                   per_row);
  if (!result.is_none()) store_recipe(std::move(key), parse_recipe(result));
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

// A new tensor = dropout(x), for a seed already checked (by Python or by dropout_cuda).
at::Tensor dropout_to_new(const at::Tensor& x, const std::optional<at::Tensor>& seed_tensor, int64_t seed_value,
                          double p, at::IntArrayRef shared, bool per_row) {
  at::Tensor out = at::empty_like(x);
  run_dropout(x, out, seed_tensor, seed_value, p, shared, per_row);
  return out;
}

at::Tensor dropout_cuda(const at::Tensor& x, const std::optional<at::Tensor>& seed_tensor, int64_t seed_value,
                        double p, at::IntArrayRef shared, bool per_row) {
  std::optional<at::Tensor> seed;
  if (seed_tensor.has_value() && seed_tensor->defined()) {
    check_seed(x, *seed_tensor, shared, per_row);
    seed = seed_tensor->contiguous();  // the kernel reads a seed vector densely
  }
  return dropout_to_new(x, seed, seed_value, p, shared, per_row);
}

// ---------------------------------------------------------------------------
// autograd: saves the seed only; backward is dropout of the gradient with the same seed.
// Both directions call seeddrop::dropout through the dispatcher, so tracers (fake tensors
// under torch.compile, compiled autograd) see the op instead of a launch; an eager backward
// on a plain tensor calls the backend kernel the dispatcher would reach, two hops sooner.
// ---------------------------------------------------------------------------
at::Tensor call_op(const at::Tensor& x, const std::optional<at::Tensor>& seed_tensor, c10::SymInt seed_value, double p,
                   c10::SymIntArrayRef shared, bool per_row) {
  static const auto op = c10::Dispatcher::singleton()
      .findSchemaOrThrow("seeddrop::dropout", "")
      .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, c10::SymInt, double,
                        c10::SymIntArrayRef, bool)>();
  return op.call(x, seed_tensor, std::move(seed_value), p, shared, per_row);
}

// Whether the dispatcher, below autograd, would send a call on `t` straight to dropout_cuda:
// a plain tensor of a backend this file serves, under no tracing mode (fake, functional or
// Python-dispatch tensors and modes take the dispatcher, so tracers still record the op).
bool reaches_backend_kernel(const at::Tensor& t) {
  const auto tls = c10::impl::tls_local_dispatch_key_set();
  const auto keys = ((t.key_set() | tls.included_) - tls.excluded_) & c10::after_ADInplaceOrView_keyset;
  const auto top = keys.remove(c10::DispatchKey::BackendSelect).highestPriorityTypeId();  // (a fallthrough)
#ifdef SEEDDROP_CPU_DISPATCH_FOR_TESTS
  if (top == c10::DispatchKey::CPU) return true;
#endif
  return top == c10::DispatchKey::CUDA;
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
    const c10::SymInt seed_value = ctx->saved_data["seed_value"].toSymInt();
    const double p = ctx->saved_data["p"].toDouble();
    const bool per_row = ctx->saved_data["per_row"].toBool();
    const auto concrete_seed = seed_value.maybe_as_int();
    const auto concrete_shared = c10::asIntArrayRefSlowOpt(shared);
    at::Tensor grad_x;
    if (!at::GradMode::is_enabled() && concrete_seed && concrete_shared && reaches_backend_kernel(grads[0]) &&
        (!seed.defined() || reaches_backend_kernel(seed))) {
      grad_x = dropout_cuda(grads[0], seed_tensor, *concrete_seed, p, *concrete_shared, per_row);
    } else {
      grad_x = call_op(grads[0], seed_tensor, seed_value, p, shared, per_row);
    }
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
  return dropout_to_new(x, seed_tensor, seed_value, p, shared, per_row);  // Python checked the seed
}

// ---------------------------------------------------------------------------
// dropout_add: residual + dropout(act(x + bias)) for contiguous x, residual of one shape
// (Python sends every other layout, shared dims and per-row seeds down its own path)
// ---------------------------------------------------------------------------
at::Tensor run_dropout_add_forward(const at::Tensor& x, const at::Tensor& residual, const at::Tensor* bias,
                                   const at::Tensor* seed, int64_t seed_value, double p, bool masked, int64_t act) {
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::promote_types(x.scalar_type(), residual.scalar_type())));
  if (x.numel() == 0) return out;
  bias = present(bias);
  seed = masked ? present(seed) : nullptr;
  c10::DeviceGuard device_guard(x.device());
  auto key = tensors_key({kDropoutAddForward, x.get_device(), act, masked}, {&x, &residual, &out, bias, seed});
  if (auto recipe = find_recipe(key)) {
    launch_recipe(*recipe, LaunchArgs{{&x, &out, &residual, bias, nullptr}, seed, seed_value, p}, x.device());
    return out;
  }
  py::gil_scoped_acquire gil;  // before the planners: set_planners replaces them under the GIL
  const Planners& plan = get_planners();
  py::object result = plan.dropout_add_forward(x, residual, optional_tensor(bias), out, optional_tensor(seed),
                                               seed_value, p, masked, act);
  if (!result.is_none()) store_recipe(std::move(key), parse_recipe(result));
  return out;
}

// grad_x = grad * multiplier * act'(x + bias) (x, bias: only with an activation); returns the
// [chunks, C] bias-gradient partial sums when reduce_bias, else an undefined tensor.
at::Tensor run_dropout_add_backward(const at::Tensor& grad, const at::Tensor* x, const at::Tensor* bias,
                                    const at::Tensor& grad_x, const at::Tensor* seed, int64_t seed_value, double p,
                                    bool masked, int64_t act, bool reduce_bias) {
  seed = masked ? present(seed) : nullptr;
  x = act != 0 ? present(x) : nullptr;  // act'(z) = 1: x + bias is not read
  bias = act != 0 ? present(bias) : nullptr;
  c10::DeviceGuard device_guard(grad.device());
  auto key = tensors_key({kDropoutAddBackward, grad.get_device(), act, masked, reduce_bias},
                         {&grad, x, &grad_x, bias, seed});
  if (auto recipe = find_recipe(key)) {
    at::Tensor workspace;
    if (!recipe->workspace_sizes.empty()) {
      workspace = at::empty(recipe->workspace_sizes, grad.options().dtype(recipe->workspace_dtype));
    }
    const at::Tensor* partial = workspace.defined() ? &workspace : nullptr;
    launch_recipe(*recipe, LaunchArgs{{&grad, &grad_x, x, bias, partial}, seed, seed_value, p}, grad.device());
    return workspace;
  }
  py::gil_scoped_acquire gil;  // before the planners: set_planners replaces them under the GIL
  const Planners& plan = get_planners();
  auto result = plan.dropout_add_backward(grad, optional_tensor(x), optional_tensor(bias), grad_x,
                                          optional_tensor(seed), seed_value, p, masked, act, reduce_bias)
                    .cast<py::tuple>();
  at::Tensor workspace = result[1].is_none() ? at::Tensor() : result[1].cast<at::Tensor>();
  if (!result[0].is_none()) {
    Recipe recipe = parse_recipe(result[0]);
    if (workspace.defined()) {
      recipe.workspace_sizes = workspace.sizes().vec();
      recipe.workspace_dtype = workspace.scalar_type();
    }
    store_recipe(std::move(key), std::move(recipe));
  }
  return workspace;
}

// dropout_add's backward on dense copies of its operands (a no-op for what forward saved or a
// compiled graph passes; a saved_tensors_hooks unpack or a transposed gradient may give other
// layouts): grad_x in x_dtype, and the bias gradient's column sums in the compute type when
// reduce_bias (else undefined), summed in a fixed order over the chunks' partial sums.
std::tuple<at::Tensor, at::Tensor> dropout_add_backward_dense(const at::Tensor& grad, const at::Tensor* x,
                                                              const at::Tensor* bias, const at::Tensor* seed,
                                                              int64_t seed_value, double p, bool masked, int64_t act,
                                                              at::ScalarType x_dtype, bool reduce_bias) {
  const at::Tensor dense_grad = grad.contiguous();
  const at::Tensor dense_x = present(x) != nullptr ? x->contiguous() : at::Tensor();
  const at::Tensor dense_bias = present(bias) != nullptr ? bias->contiguous() : at::Tensor();
  at::Tensor grad_x = at::empty(dense_grad.sizes(), dense_grad.options().dtype(x_dtype));
  at::Tensor partial = run_dropout_add_backward(dense_grad, &dense_x, &dense_bias, grad_x, seed, seed_value, p,
                                                masked, act, reduce_bias);
  return {grad_x, reduce_bias ? partial.sum(0) : at::Tensor()};
}

// Autograd of dropout_add. Saved: the seed, plus x and bias only with an activation (its
// derivative needs x + bias); dtypes and flags in saved_data.
struct DropoutAddFunction : public torch::autograd::Function<DropoutAddFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& residual,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& seed_tensor,
                            int64_t seed_value, double p, bool masked, int64_t act) {
    const at::Tensor* bias_ptr = bias.has_value() ? present(&*bias) : nullptr;
    const at::Tensor* seed_ptr = seed_tensor.has_value() ? present(&*seed_tensor) : nullptr;
    at::Tensor out = run_dropout_add_forward(x, residual, bias_ptr, seed_ptr, seed_value, p, masked, act);
    const bool keep_inputs = act != 0;
    ctx->save_for_backward({seed_ptr != nullptr ? *seed_ptr : at::Tensor(), keep_inputs ? x : at::Tensor(),
                            keep_inputs && bias_ptr != nullptr ? *bias_ptr : at::Tensor()});
    ctx->saved_data["seed_value"] = seed_value;
    ctx->saved_data["p"] = p;
    ctx->saved_data["masked"] = masked;
    ctx->saved_data["act"] = act;
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["residual_dtype"] = static_cast<int64_t>(residual.scalar_type());
    ctx->saved_data["bias_dtype"] = bias_ptr != nullptr ? static_cast<int64_t>(bias_ptr->scalar_type()) : -1;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    // as ops/dropout_add.py: check_first_order (the kernels record no graph)
    TORCH_CHECK(!(at::GradMode::is_enabled() &&
                  (grads[0].requires_grad() || saved[1].requires_grad() || saved[2].requires_grad())),
                "seeddrop.dropout_add: its backward is not differentiable (create_graph=True through dropout_add is "
                "not supported)");
    const int64_t bias_dtype = ctx->saved_data["bias_dtype"].toInt();
    // next edges: x, residual, then bias when it was given (then the seed tensor)
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_residual = ctx->needs_input_grad(1);
    const bool need_bias = bias_dtype >= 0 && ctx->needs_input_grad(2);
    const at::Tensor grad = grads[0].contiguous();
    at::Tensor grad_x, grad_residual, grad_bias;
    if (need_x || need_bias) {
      auto [x_grad, bias_sum] = dropout_add_backward_dense(
          grad, &saved[1], &saved[2], &saved[0], ctx->saved_data["seed_value"].toInt(),
          ctx->saved_data["p"].toDouble(), ctx->saved_data["masked"].toBool(), ctx->saved_data["act"].toInt(),
          static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()), need_bias);
      if (need_bias) grad_bias = bias_sum.to(static_cast<at::ScalarType>(bias_dtype));
      if (need_x) grad_x = x_grad;
    }
    if (need_residual) grad_residual = grad.to(static_cast<at::ScalarType>(ctx->saved_data["residual_dtype"].toInt()));
    return {grad_x, grad_residual, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// seeddrop.dropout_add on CUDA after Python validated the call and chose this path.
// draw: draw the seed here (draw_seed()) instead of using seed_value.
at::Tensor dropout_add_forward(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& bias,
                               const std::optional<at::Tensor>& seed_tensor, int64_t seed_value, bool draw, double p,
                               bool masked, int64_t act) {
  if (draw) seed_value = draw_seed();
  const bool bias_grad = bias.has_value() && bias->defined() && bias->requires_grad();
  if (at::GradMode::is_enabled() && (x.requires_grad() || residual.requires_grad() || bias_grad)) {
    return DropoutAddFunction::apply(x, residual, bias, seed_tensor, seed_value, p, masked, act);
  }
  const at::Tensor* bias_ptr = bias.has_value() ? present(&*bias) : nullptr;
  const at::Tensor* seed_ptr = seed_tensor.has_value() ? present(&*seed_tensor) : nullptr;
  return run_dropout_add_forward(x, residual, bias_ptr, seed_ptr, seed_value, p, masked, act);
}

// ---------------------------------------------------------------------------
// seeddrop::dropout_add and seeddrop::dropout_add_backward, the ops torch.compile'd graphs
// call: their CUDA kernels replay recipes for the eager entry's layouts and hand every other
// call (shared dims, per-row seeds, broadcast or strided operands, empty tensors) to the
// Python kernels; their Autograd kernels go below autograd here and leave calls that need a
// gradient (tracing a training graph, eager op calls) to the op's Python autograd.
// ---------------------------------------------------------------------------
const at::Tensor* optional_ptr(const std::optional<at::Tensor>& t) { return t.has_value() ? present(&*t) : nullptr; }

// A scalar seed tensor the kernels read as one int64 on `like`'s device (or none).
bool plain_seed(const at::Tensor* seed, const at::Tensor& like) {
  return seed == nullptr || (seed->dim() == 0 && seed->scalar_type() == at::kLong && seed->device() == like.device());
}

// The dtypes seeddrop's kernels are built for (the public API's check_float_tensor).
bool kernel_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// What the kernels take from an op call (anything else goes to Python, whose checks or
// layouts handle it): tensors of a kernel dtype on like's device, `same` of like's shape,
// bias of like's last size.
bool kernel_operands(const at::Tensor& like, std::initializer_list<const at::Tensor*> same, const at::Tensor* bias) {
  if (like.dim() == 0 || !kernel_dtype(like.scalar_type())) return false;
  for (const at::Tensor* t : same) {
    if (t != nullptr && (t->sizes() != like.sizes() || t->device() != like.device() || !kernel_dtype(t->scalar_type()))) {
      return false;
    }
  }
  return bias == nullptr || (bias->dim() == 1 && bias->size(0) == like.size(-1) && bias->device() == like.device() &&
                             kernel_dtype(bias->scalar_type()));
}

at::Tensor dropout_add_cuda(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& bias,
                            const std::optional<at::Tensor>& seed_tensor, int64_t seed_value, double p, bool masked,
                            at::IntArrayRef shared, bool per_row, int64_t act) {
  const at::Tensor* bias_ptr = optional_ptr(bias);
  const at::Tensor* seed = masked ? optional_ptr(seed_tensor) : nullptr;
  if (shared.empty() && !per_row && x.numel() > 0 && kernel_operands(x, {&residual}, bias_ptr) && x.is_contiguous() &&
      residual.is_contiguous() && (bias_ptr == nullptr || bias_ptr->is_contiguous()) && plain_seed(seed, x)) {
    return run_dropout_add_forward(x, residual, bias_ptr, seed, seed_value, p, masked, act);
  }
  py::gil_scoped_acquire gil;
  return get_planners()
      .dropout_add_op(x, residual, optional_tensor(bias_ptr), optional_tensor(optional_ptr(seed_tensor)), seed_value,
                      p, masked, shared.vec(), per_row, act)
      .cast<at::Tensor>();
}

std::tuple<at::Tensor, at::Tensor> dropout_add_backward_cuda(
    const at::Tensor& grad, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& seed_tensor, int64_t seed_value, double p, bool masked, at::IntArrayRef shared,
    bool per_row, int64_t act, at::ScalarType x_dtype, bool reduce_bias) {
  const at::Tensor* seed = masked ? optional_ptr(seed_tensor) : nullptr;
  const at::Tensor* x_ptr = optional_ptr(x);
  const at::Tensor* bias_ptr = optional_ptr(bias);
  if (shared.empty() && !per_row && grad.numel() > 0 && kernel_operands(grad, {x_ptr}, bias_ptr) &&
      kernel_dtype(x_dtype) && plain_seed(seed, grad)) {
    auto [grad_x, bias_sum] =
        dropout_add_backward_dense(grad, x_ptr, bias_ptr, seed, seed_value, p, masked, act, x_dtype, reduce_bias);
    if (bias_sum.defined()) return {grad_x, bias_sum};
    const auto compute = grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    return {grad_x, at::empty({0}, grad.options().dtype(compute))};  // the op's "no bias gradient"
  }
  py::gil_scoped_acquire gil;
  auto result = get_planners()
                    .dropout_add_backward_op(grad, optional_tensor(x_ptr), optional_tensor(bias_ptr),
                                             optional_tensor(optional_ptr(seed_tensor)), seed_value, p, masked,
                                             shared.vec(), per_row, act, x_dtype, reduce_bias)
                    .cast<py::tuple>();
  return {result[0].cast<at::Tensor>(), result[1].cast<at::Tensor>()};
}

bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined() && t->requires_grad(); }

at::Tensor dropout_add_autograd(const at::Tensor& x, const at::Tensor& residual, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& seed_tensor, c10::SymInt seed_value, double p,
                                bool masked, c10::SymIntArrayRef shared, bool per_row, c10::SymInt act) {
  if (at::GradMode::is_enabled() && (x.requires_grad() || residual.requires_grad() || requires_grad(bias))) {
    py::gil_scoped_acquire gil;
    return get_planners()
        .dropout_add_autograd(x, residual, bias, seed_tensor, seed_value, p, masked, shared, per_row, act)
        .cast<at::Tensor>();
  }
  static const auto op = c10::Dispatcher::singleton()
      .findSchemaOrThrow("seeddrop::dropout_add", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                        const std::optional<at::Tensor>&, c10::SymInt, double, bool, c10::SymIntArrayRef, bool,
                        c10::SymInt)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, residual, bias, seed_tensor, std::move(seed_value), p, masked, shared, per_row, std::move(act));
}

std::tuple<at::Tensor, at::Tensor> dropout_add_backward_autograd(
    const at::Tensor& grad, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& seed_tensor, c10::SymInt seed_value, double p, bool masked,
    c10::SymIntArrayRef shared, bool per_row, c10::SymInt act, at::ScalarType x_dtype, bool reduce_bias) {
  if (at::GradMode::is_enabled() && (grad.requires_grad() || requires_grad(x) || requires_grad(bias))) {
    py::gil_scoped_acquire gil;
    auto result = get_planners()
                      .dropout_add_backward_autograd(grad, x, bias, seed_tensor, seed_value, p, masked, shared,
                                                     per_row, act, x_dtype, reduce_bias)
                      .cast<py::tuple>();
    return {result[0].cast<at::Tensor>(), result[1].cast<at::Tensor>()};
  }
  static const auto op = c10::Dispatcher::singleton()
      .findSchemaOrThrow("seeddrop::dropout_add_backward", "")
      .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const std::optional<at::Tensor>&,
                                                const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                                c10::SymInt, double, bool, c10::SymIntArrayRef, bool, c10::SymInt,
                                                at::ScalarType, bool)>();
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(grad, x, bias, seed_tensor, std::move(seed_value), p, masked, shared, per_row, std::move(act),
                 x_dtype, reduce_bias);
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

void set_planners(py::object dropout, py::object dropout_add_forward, py::object dropout_add_backward,
                  py::object p_constants, py::object dropout_add_op, py::object dropout_add_backward_op,
                  py::object dropout_add_autograd, py::object dropout_add_backward_autograd) {
  delete planners;  // (the GIL is held: pybind calls this)
  planners = new Planners{std::move(dropout), std::move(dropout_add_forward), std::move(dropout_add_backward),
                          std::move(p_constants), std::move(dropout_add_op), std::move(dropout_add_backward_op),
                          std::move(dropout_add_autograd), std::move(dropout_add_backward_autograd)};
  clear_recipes();  // recipes of the previous planners
}

}  // namespace

#define SEEDDROP_BACKEND_KERNELS(m)                              \
  m.impl("dropout", dropout_cuda);                               \
  m.impl("dropout_add", dropout_add_cuda);                       \
  m.impl("dropout_add_backward", dropout_add_backward_cuda)
#define SEEDDROP_AUTOGRAD_KERNELS(m)                             \
  m.impl("dropout", dropout_autograd);                           \
  m.impl("dropout_add", dropout_add_autograd);                   \
  m.impl("dropout_add_backward", dropout_add_backward_autograd)

TORCH_LIBRARY_IMPL(seeddrop, CUDA, m) { SEEDDROP_BACKEND_KERNELS(m); }
TORCH_LIBRARY_IMPL(seeddrop, AutogradCUDA, m) { SEEDDROP_AUTOGRAD_KERNELS(m); }
#ifdef SEEDDROP_CPU_DISPATCH_FOR_TESTS  // CPU tensors through the same code (the planner runs every call)
TORCH_LIBRARY_IMPL(seeddrop, CPU, m) { SEEDDROP_BACKEND_KERNELS(m); }
TORCH_LIBRARY_IMPL(seeddrop, AutogradCPU, m) { SEEDDROP_AUTOGRAD_KERNELS(m); }
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dropout_forward", &dropout_forward);
  m.def("dropout_add_forward", &dropout_add_forward);
  m.def("set_planners", &set_planners, py::arg("dropout"), py::arg("dropout_add_forward"),
        py::arg("dropout_add_backward"), py::arg("p_constants"), py::arg("dropout_add_op"),
        py::arg("dropout_add_backward_op"), py::arg("dropout_add_autograd"), py::arg("dropout_add_backward_autograd"));
  m.def("cached_recipes", &cached_recipes);
  m.def("clear_recipes", &clear_recipes);
}
