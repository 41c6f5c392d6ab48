"""Triton backend (issue 4): placeholder until the kernels land."""

from fusedopt.backends import Backend


class TritonBackend(Backend):
    name = "triton"

    def unavailable_reason(self):
        return "the Triton kernels are not part of this build yet"

    def unsupported_reason(self, bucket):
        return self.unavailable_reason()
