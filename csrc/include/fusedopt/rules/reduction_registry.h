// The list of reduction rules (Note [reduction rules] in
// python/fusedopt/registry.py): rules that are not elementwise, each stepped
// by its own reduction passes and element pass instead of the one elementwise
// traversal, so they stay out of FUSEDOPT_FOR_EACH_RULE (rules/registry.h).
// The binding expands FUSEDOPT_FOR_EACH_REDUCTION_RULE(X) with X(Type, name).
#pragma once

#include "fusedopt/rules/adafactor.h"

#define FUSEDOPT_FOR_EACH_REDUCTION_RULE(X) X(Adafactor, adafactor)
