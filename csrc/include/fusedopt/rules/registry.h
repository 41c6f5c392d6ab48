// The one list of update rules: the single place where C++ names them. Every
// layer that serves all rules (CPU loops, CUDA kernels, op registration, the
// test-only emulation) expands FUSEDOPT_FOR_EACH_RULE(X) with its own X(Type,
// name); `name` is the op's (fusedopt::<name>_step_) and Python's
// (fusedopt/registry.py) name of the rule.
#pragma once

#include "fusedopt/core/rule.h"
#include "fusedopt/rules/adadelta.h"
#include "fusedopt/rules/adagrad.h"
#include "fusedopt/rules/adam.h"
#include "fusedopt/rules/adamax.h"
#include "fusedopt/rules/asgd.h"
#include "fusedopt/rules/lion.h"
#include "fusedopt/rules/nadam.h"
#include "fusedopt/rules/radam.h"
#include "fusedopt/rules/rmsprop.h"
#include "fusedopt/rules/rprop.h"
#include "fusedopt/rules/sgd.h"

#define FUSEDOPT_FOR_EACH_RULE(X) \
  X(Adadelta, adadelta)           \
  X(Adagrad, adagrad)             \
  X(Adam, adam)                   \
  X(Adamax, adamax)               \
  X(Asgd, asgd)                   \
  X(Lion, lion)                   \
  X(NAdam, nadam)                 \
  X(Radam, radam)                 \
  X(Rmsprop, rmsprop)             \
  X(Rprop, rprop)                 \
  X(Sgd, sgd)

namespace fusedopt {
#define FUSEDOPT_CHECK_RULE(Type, name) static_assert(check_rule<Type>());
FUSEDOPT_FOR_EACH_RULE(FUSEDOPT_CHECK_RULE)
#undef FUSEDOPT_CHECK_RULE
}  // namespace fusedopt
