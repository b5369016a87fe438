"""Where the time goes, for the benchmarks that ask: `host_tracer` serves the dev host instrumented
(every storage request logged against the route that sent it, with a pyinstrument profile),
`host_sampler` samples the dev host's GIL holder with py-spy and sums it by area, `azurite` sums a
V8 CPU profile of Azurite by area."""
