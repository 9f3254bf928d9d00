"""flask-obdcr's benchmarks: scenarios run as ``python -m benchmarks.<scenario>`` from the checkout.

What the scenarios share (processes, onboarding at the sandbox Directory, pre-signed requests,
the gunicorn / granian / node-oidc-provider launchers, wrk, the report) is in
:mod:`benchmarks.harness`; ``benchmarks/README.md`` lists the scenarios and their figures.
"""
