// The one binding between torch and fusedopt's kernels: the op family
// fusedopt::<rule>_step_ (Note [one op family] in step_args.h), registered for
// every rule of fusedopt/rules/registry.h, with boxed kernels that unpack the
// call and dispatch to the CPU loops or the CUDA kernels. Fake (meta)
// implementations are registered from Python (fusedopt/_fake.py).
//
// Torch headers cost ~22 s of compile time per translation unit (measured with
// torch 2.14): the binding keeps them to this file and checks.cpp.
#include <Python.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "checks.h"
#include "cpu_step.h"
#include "factored_step.h"
#include "fusedopt/mta/args.h"
#include "fusedopt/rules/reduction_registry.h"
#include "fusedopt/rules/registry.h"
#include "norm_op.h"
#include "step_args.h"
#ifdef FUSEDOPT_WITH_CUDA
#include "cuda_step.h"
#endif

namespace fusedopt::binding {
namespace {

// The boxed kernel of rule R on one device: `step` is step_cpu<R> or step_cuda<R>.
template <class R, void (*step)(const char*, const StepArgs&), const char* kName>
void boxed_step(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  step(kName, peek_step_args<R>(*stack, 0));
  torch::jit::drop(*stack, step_arg_count<R>());
}

#define FUSEDOPT_RULE_NAME(Type, name) constexpr char k##Type##Name[] = #name;
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_RULE_NAME)
FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_RULE_NAME)
#undef FUSEDOPT_RULE_NAME

}  // namespace

TORCH_LIBRARY(fusedopt, m) {
#define FUSEDOPT_DEF(Type, name)                                          \
  m.def(step_schema<Type>(#name "_step_", "float").c_str());               \
  m.def(step_schema<Type>(#name "_step_.tensor_lr", "Tensor").c_str());
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_DEF)
  FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_DEF)
#undef FUSEDOPT_DEF
  // The global gradient norm (norm_op.h): fusedopt.clip_grad_norm_ and max_grad_norm.
  m.def("grad_norm(Tensor[] tensors, float norm_type=2.0) -> Tensor");
}

#define FUSEDOPT_IMPL(Type, name, step)                                                 \
  m.impl(#name "_step_",                                                                 \
         torch::CppFunction::makeFromBoxedFunction<&boxed_step<Type, &step<Type>, k##Type##Name>>()); \
  m.impl(#name "_step_.tensor_lr",                                                       \
         torch::CppFunction::makeFromBoxedFunction<&boxed_step<Type, &step<Type>, k##Type##Name>>());

TORCH_LIBRARY_IMPL(fusedopt, CPU, m) {
#define FUSEDOPT_IMPL_CPU(Type, name) FUSEDOPT_IMPL(Type, name, step_cpu)
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_IMPL_CPU)
#undef FUSEDOPT_IMPL_CPU
  m.impl("grad_norm", &grad_norm_cpu);
  // The reduction rules' CPU passes (factored_step.h).
#define FUSEDOPT_IMPL_FACTORED_CPU(Type, name) FUSEDOPT_IMPL(Type, name, factored_step_cpu)
  FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_IMPL_FACTORED_CPU)
#undef FUSEDOPT_IMPL_FACTORED_CPU
}

#ifdef FUSEDOPT_WITH_CUDA
TORCH_LIBRARY_IMPL(fusedopt, CUDA, m) {
#define FUSEDOPT_IMPL_CUDA(Type, name) FUSEDOPT_IMPL(Type, name, step_cuda)
  FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_IMPL_CUDA)
#undef FUSEDOPT_IMPL_CUDA
  m.impl("grad_norm", &grad_norm_cuda);
  // The reduction rules' CUDA passes (factored_step.h).
#define FUSEDOPT_IMPL_FACTORED_CUDA(Type, name) FUSEDOPT_IMPL(Type, name, factored_step_cuda)
  FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_IMPL_FACTORED_CUDA)
#undef FUSEDOPT_IMPL_FACTORED_CUDA
}
#endif
#undef FUSEDOPT_IMPL

// The op's hyperparameter checks (the rule's R::check and the lr's) without a
// step: fusedopt._C.check_hyper(rule, lr, hyper), hyper in R::kHyper's order.
// The Python backends (triton, reference) and the optimizers' up-front check
// of every group call it, so each range is written once, in the rule's header.
template <class R>
void check_hyper_of(const char* rule, double lr, const std::vector<double>& hyper) {
  TORCH_CHECK(hyper.size() == std::size(R::kHyper), "fusedopt: ", rule, " takes ",
              std::size(R::kHyper), " hyperparameters, got ", hyper.size());
  HyperCheck ck;
  R::check(hyper.data(), ck);
  check_hyper(rule, lr, ck);
}

PyObject* check_hyper_py(PyObject*, PyObject* args) {
  const char* rule = nullptr;
  double lr = 0.0;
  PyObject* values = nullptr;
  if (!PyArg_ParseTuple(args, "sdO", &rule, &lr, &values)) return nullptr;
  PyObject* seq = PySequence_Fast(values, "fusedopt: hyper must be a sequence of numbers");
  if (seq == nullptr) return nullptr;
  std::vector<double> hyper(PySequence_Fast_GET_SIZE(seq));
  for (size_t i = 0; i < hyper.size(); ++i) {
    hyper[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
  }
  Py_DECREF(seq);
  if (PyErr_Occurred()) return nullptr;
  try {
#define FUSEDOPT_CHECK_HYPER(Type, name)            \
  if (std::strcmp(rule, k##Type##Name) == 0) {      \
    check_hyper_of<Type>(k##Type##Name, lr, hyper); \
    Py_RETURN_NONE;                                 \
  }
    FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_CHECK_HYPER)
    FUSEDOPT_FOR_EACH_REDUCTION_RULE(FUSEDOPT_CHECK_HYPER)
#undef FUSEDOPT_CHECK_HYPER
    TORCH_CHECK(false, "fusedopt: no rule named ", rule);
  } catch (const c10::Error& error) {
    // The op's exception type and message: RuntimeError, as TORCH_CHECK gives.
    PyErr_SetString(PyExc_RuntimeError, error.what_without_backtrace());
    return nullptr;
  }
}

}  // namespace fusedopt::binding

// `import fusedopt._C` loads the library (which registers the ops above) and
// exposes what was built, for fusedopt.report().
PyMODINIT_FUNC PyInit__C(void) {
  static PyMethodDef methods[] = {
      {"check_hyper", fusedopt::binding::check_hyper_py, METH_VARARGS,
       "check_hyper(rule, lr, hyper): the op's hyperparameter checks, RuntimeError if one fails"},
      {nullptr, nullptr, 0, nullptr}};
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                   "fusedopt's compiled ops (registered under torch.ops.fusedopt)",
                                   -1, methods};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
#ifdef FUSEDOPT_WITH_CUDA
  PyModule_AddIntConstant(module, "cuda_built", 1);
  PyModule_AddStringConstant(module, "cuda_archs", FUSEDOPT_CUDA_ARCHS);
#else
  PyModule_AddIntConstant(module, "cuda_built", 0);
  PyModule_AddStringConstant(module, "cuda_archs", "");
#endif
  PyModule_AddIntConstant(module, "kernel_arg_bytes",
                          static_cast<long>(fusedopt::mta::kMaxKernelArgBytes));
  PyModule_AddStringConstant(module, "cpu_isa", fusedopt::cpu::selected_isa());
  return module;
}
