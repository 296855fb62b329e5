// C++ Autograd kernels of the dgmfast_C ops that eager calls reach directly (FusedOp's native_autograd,
// dgmfast/ops/common.py): one C++ graph node per call instead of a Python torch.autograd.Function, whose
// forward and backward cost tens of microseconds per step, as much as a small fused kernel. A node saves what
// the op's Python setup_context saves and its backward makes the same dgmfast_C backward call, so the
// dgmfast::<op> custom op (the path of traced graphs) and the eager path give identical results.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>

#include <string>

namespace dgm::cpu {

// The typed handle of dgmfast_C::<name>, called through the dispatcher (so one node serves every device).
template <typename Fn>
c10::TypedOperatorHandle<Fn> dgmfast_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow((std::string("dgmfast_C::") + name).c_str(), "").typed<Fn>();
}

// As FusedOp's Python backward (check_first_order in dgmfast/ops/common.py): the fused backward kernels record
// no graph, so create_graph=True through a node (grad mode on in its backward) while one of its `inputs` (its
// tensor inputs that were given: an absent optional tensor has no edge) takes a gradient is an error, not a
// silent zero second derivative.
inline void check_first_order(const char* op, torch::autograd::AutogradContext* ctx, size_t inputs) {
  if (!at::GradMode::is_enabled()) return;
  bool needs_grad = false;
  for (size_t i = 0; i < inputs; ++i) needs_grad = needs_grad || ctx->needs_input_grad(i);
  TORCH_CHECK(!needs_grad, "dgmfast: dgmfast::", op,
              " has no double backward (create_graph=True through it): its backward is a fused kernel that records "
              "no graph; for higher-order gradients run the reference backend (dgmfast.use_backend('torch'))");
}

}  // namespace dgm::cpu
