"""The runtime every P2PEP service is built on.

A service process is: settings from the environment (:class:`BaseServiceSettings`),
structured logs (:func:`configure_logging`), one gRPC server with health checking
and one small HTTP server with ``/metrics``, ``/healthz`` and ``/livez`` (:class:`ServiceHost`;
health means ready: the conditions the service declares on ``host.readiness``,
:mod:`p2pep.servicekit.readiness`), run under :func:`run_service`, which turns SIGTERM/SIGINT
into a graceful stop.

A typical ``services/<name>/__main__.py``::

    async def main(stop: asyncio.Event) -> None:
        settings = MySettings()
        configure_logging(settings.log_level, json=settings.log_json)
        host = ServiceHost(settings, name="my-service")
        my_pb2_grpc.add_MyServiceServicer_to_server(MyServicer(), host.grpc_server)
        host.readiness.watch_peer("settlement", settlement_channel)  # what it needs
        await host.start(serving=["p2pep.v1.MyService"])  # NOT_SERVING until ready
        await host.wait_and_stop(stop)

    if __name__ == "__main__":
        raise SystemExit(run_service(main))
"""

from p2pep.servicekit.host import ServiceHost
from p2pep.servicekit.logs import configure_logging
from p2pep.servicekit.runtime import install_signal_handlers, run_service
from p2pep.servicekit.settings import BaseServiceSettings, load_settings
from p2pep.servicekit.supervise import Backoff, GaveUp, supervised

__all__ = [
    "Backoff",
    "BaseServiceSettings",
    "GaveUp",
    "ServiceHost",
    "configure_logging",
    "load_settings",
    "install_signal_handlers",
    "run_service",
    "supervised",
]
