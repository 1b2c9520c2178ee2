"""Run the service the ways it runs for real, and wait for it: used by the tests and the benchmark.

`paths` names the repository's files; `servers` starts `bentoml serve` (or any HTTP server) as a
process and waits until it is ready; `containers` runs the image the way the Helm chart runs it.
Nothing here imports pytest.
"""
