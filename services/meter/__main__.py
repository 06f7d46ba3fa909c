"""``python -m services.meter``: one meter, configured by ``P2PEP_METER_*``."""

from p2pep.servicekit import run_service
from services.meter.app import main

if __name__ == "__main__":
    raise SystemExit(run_service(main))
