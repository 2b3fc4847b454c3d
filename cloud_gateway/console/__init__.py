"""The operators' web console on the gateway's HTTP port (``/console``).

One static page (HTML, a small script, a style sheet: no build step, nothing
fetched from elsewhere) that polls JSON calls under ``/console/api/``: the
agents and what they run, rollouts with their progress, model and policy
versions with their signatures, each policy's tuning curve, and the newest hard
examples. Operators promote, roll back, pause and resume rollouts from it;
viewers only look.

:func:`console_routes` gives the routes; :class:`FleetConsole` what they show.
"""

from edgecloud.cloud_gateway.console.routes import console_routes
from edgecloud.cloud_gateway.console.views import FleetConsole

__all__ = ["FleetConsole", "console_routes"]
