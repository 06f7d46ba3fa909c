"""Meter-side domain: energy sources, registers, signed readings, the relay, and the
meter's decisions about its contracts and orders.

Pure and synchronous; the meter service (``services/meter``) does the I/O.

- :mod:`.profiles`   exact integer energy profiles (W·ms) over time
- :mod:`.clock`      simulated time with an acceleration factor
- :mod:`.sources`    demandlib H0 household, pvlib PV, prosumer netting, CSV replay
- :mod:`.registers`  cumulative import/export registers (Wh) and sequence numbers
- :mod:`.readings`   reading and signed-reading types
- :mod:`.signing`    secp256k1 meter keys (coincurve), reading signatures
- :mod:`.relay`      relay state machine: energized only while contracts cover demand
- :mod:`.simulation` source -> registers over simulated time
- :mod:`.contract_book`  the meter's own view of its contracts: attributed, paid, relay cover
- :mod:`.request_checks` its checks of settlement's requests (sign, invoice, pay) against that view
- :mod:`.ordering`   order sizing per window, order ids
"""
