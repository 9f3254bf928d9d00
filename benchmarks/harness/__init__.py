"""What every benchmark scenario shares, one module per concern:

* :mod:`~benchmarks.harness.common`: paths and the constants every scenario agrees on;
* :mod:`~benchmarks.harness.processes`: servers started and always stopped, ports, CPU
  accounting, waiting for an idle machine;
* :mod:`~benchmarks.harness.onboarding`: the sandbox Directory service, a TPP's software
  onboarded through its API, clients registered at the servers under test;
* :mod:`~benchmarks.harness.signing`: pre-signed registration requests and client assertions;
* :mod:`~benchmarks.harness.servers`: gunicorn and granian launchers for the example bank and
  the plain WSGI apps of :mod:`~benchmarks.harness.apps`, and node-oidc-provider;
* :mod:`~benchmarks.harness.authlib_peer`: Authlib's own RFC 7591 registration endpoint, the
  Python peer;
* :mod:`~benchmarks.harness.wrk`: running wrk with ``benchmarks/wrk/post_lines.lua``, parsing
  what it prints;
* :mod:`~benchmarks.harness.report`: markdown tables, paired ratios, CPU per request, the JSON
  record and the chart;
* :mod:`~benchmarks.harness.profiling`: py-spy on a server under load, and its summary;
* :mod:`~benchmarks.harness.runs`: the options every HTTP scenario takes, re-running a
  disturbed cell.
"""
