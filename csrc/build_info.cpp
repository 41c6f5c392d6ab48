// fusedopt._build: what fusedopt._C was built against, readable without
// loading _C (and so without torch). fusedopt._extension compares
// torch_version with the running torch's before it loads _C, which loads only
// into the torch it was compiled against. FUSEDOPT_TORCH_VERSION comes from
// CMakeLists.txt (torch.__version__ at configure time).
#include <Python.h>

#ifndef FUSEDOPT_TORCH_VERSION
#error "CMakeLists.txt defines FUSEDOPT_TORCH_VERSION"
#endif

PyMODINIT_FUNC PyInit__build(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_build",
                                   "what fusedopt._C was built against", -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "torch_version", FUSEDOPT_TORCH_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
