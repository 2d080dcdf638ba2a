"""`python-passthrough`: forwards every message unchanged (the Python twin of
`plugins/passthrough`, for benchmarks: what the SDK and the runtime cost)."""

from kwasm import Output, plugin

Handler = plugin(Output.forward)
