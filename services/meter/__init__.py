"""The meter service: one process per household meter (``python -m services.meter``).

It owns its signing key and its LND node (nobody else holds either), meters a
simulated source into signed readings, streams them to settlement, places orders
with the matcher, keeps its relay blocked unless paid-up contracts cover its
consumption, and answers settlement's requests (sign, invoice, pay) only after
checking them against its own state.

Modules: :mod:`p2pep.settings.meter` (environment), :mod:`.sources` (what flows through the
meter), :mod:`p2pep.metering.contract_book` / :mod:`~p2pep.metering.request_checks` /
:mod:`~p2pep.metering.ordering` (pure decisions),
:mod:`.store` (SQLite), :mod:`.lightning` (its LND node), :mod:`.sender` (reading
stream), :mod:`.trader` (matcher), :mod:`.billing` (invoices and payments),
:mod:`.contract_desk` (signing and contract updates), :mod:`.meter` (the tick loop and
wiring), :mod:`.servicer` (gRPC MeterService), :mod:`.app` (process entry).
"""
