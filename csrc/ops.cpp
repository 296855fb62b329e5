// The Python module dgmfast._C. Loading it runs the TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL
// registrations of every family (csrc/cpu/<family>.cpp, csrc/cuda/<family>.cu) into the
// torch.ops.dgmfast_C namespace; build_info() tells what this build contains.
#include <Python.h>

#ifndef DGM_CPU_CAPABILITY
#define DGM_CPU_CAPABILITY "DEFAULT"
#endif
#ifdef DGM_WITH_CUDA
#define DGM_CUDA_FLAG "1"
#else
#define DGM_CUDA_FLAG "0"
#endif
#ifndef DGM_CUDA_ARCHS
#define DGM_CUDA_ARCHS ""
#endif

static PyObject* build_info(PyObject*, PyObject*) {
  return Py_BuildValue("{s:s,s:O,s:s}", "cpu_capability", DGM_CPU_CAPABILITY, "cuda",
                       DGM_CUDA_FLAG[0] == '1' ? Py_True : Py_False, "cuda_archs", DGM_CUDA_ARCHS);
}

static PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "What this build of dgmfast._C contains."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
